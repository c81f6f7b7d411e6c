//! virtseed's own settings: `DIR/virtseed` (YAML). Every key is optional.
//!
//! ```yaml
//! id: virtseed                 # the sidecar's minion id on the master's bus
//! pki_dir: /etc/salt/pki/virtseed   # its own keypair and the pinned master key
//! salt_version: 3007.17        # the master's Salt release (event bus framing); detected if absent
//! master_finger: 'aa:bb:...'   # refuse a master whose key has another fingerprint
//! ```

use super::{yaml, ConfigError};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Settings {
    pub id: String,
    pub pki_dir: PathBuf,
    pub salt_version: Option<salt_proto::version::SaltVersion>,
    pub master_finger: Option<String>,
}

impl Settings {
    pub fn load(config_dir: &Path) -> Result<Self, ConfigError> {
        let path = config_dir.join("virtseed");
        let v = if path.exists() {
            yaml::load_file(&path)?
        } else {
            yaml_serde::Value::Mapping(Default::default())
        };
        let text = |key: &str| v.get(key).and_then(yaml::as_text);
        let id = text("id").unwrap_or_else(|| "virtseed".into());
        if !crate::names::valid_minion_id(&id) {
            return Err(ConfigError::Key {
                path,
                key: "id".into(),
                expected: format!("must be a valid minion id (letters, digits, `.-_`), not {id:?}"),
            });
        }
        let salt_version = match text("salt_version") {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| ConfigError::Key {
                path: path.clone(),
                key: "salt_version".into(),
                expected: format!("must be a Salt release like 3007.17, not {s:?}"),
            })?),
        };
        Ok(Self {
            pki_dir: text("pki_dir")
                .map_or_else(|| config_dir.join("pki").join("virtseed"), PathBuf::from),
            id,
            salt_version,
            master_finger: text("master_finger"),
        })
    }
}
