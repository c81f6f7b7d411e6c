//! virtseed's own settings: `DIR/virtseed` (YAML). Every key is optional.
//!
//! ```yaml
//! id: virtseed                 # the sidecar's minion id on the master's bus
//! pki_dir: /etc/salt/pki/virtseed   # its own keypair and the pinned master key
//! salt_version: '3007.17'      # the master's Salt release: event bus framing, and whether to
//!                              # work around 3007's CLI race (see jobs::SALT_3007_RETURN_FLOOR)
//! master_finger: 'aa:bb:...'   # refuse a master whose key has another fingerprint
//! masters: [/etc/salt-m2]      # the config dirs of the other masters of a multi-master or
//!                              # failover list (on this host or a shared filesystem): a
//!                              # clone whose `minion: master:` lists several masters gets its
//!                              # key accepted on each of them
//! ```

use super::{yaml, ConfigError};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Settings {
    pub id: String,
    pub pki_dir: PathBuf,
    pub salt_version: Option<salt_proto::version::SaltVersion>,
    pub master_finger: Option<String>,
    /// Other masters' config dirs (multi-master, failover).
    pub masters: Vec<PathBuf>,
}

impl Settings {
    /// Reads `DIR/virtseed`, or the file `VIRTSEED_SETTINGS` names (one per sidecar when
    /// several serve one master: dist/systemd/virtseed@.service).
    pub fn load(config_dir: &Path) -> Result<Self, ConfigError> {
        let path = std::env::var_os("VIRTSEED_SETTINGS")
            .map_or_else(|| config_dir.join("virtseed"), PathBuf::from);
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
        // YAML reads `3006.30` as the float 3006.3, and 3006.3 is another release: the
        // version must be a string.
        let salt_version = match v.get("salt_version") {
            None | Some(yaml_serde::Value::Null) => None,
            Some(yaml_serde::Value::String(s)) => Some(s.parse().map_err(|_| ConfigError::Key {
                path: path.clone(),
                key: "salt_version".into(),
                expected: format!("must be a Salt release like '3007.17', not {s:?}"),
            })?),
            Some(other) => {
                return Err(ConfigError::Key {
                    path,
                    key: "salt_version".into(),
                    expected: format!(
                        "must be quoted (salt_version: '3006.30'): YAML reads an unquoted {} as a number and drops trailing zeros",
                        yaml::as_text(other).unwrap_or_default()
                    ),
                })
            }
        };
        let masters = match v.get("masters") {
            None | Some(yaml_serde::Value::Null) => vec![],
            Some(yaml_serde::Value::Sequence(items)) => items
                .iter()
                .map(|i| {
                    yaml::as_text(i)
                        .map(PathBuf::from)
                        .filter(|p| p.is_absolute())
                        .ok_or_else(|| ConfigError::Key {
                            path: path.clone(),
                            key: "masters".into(),
                            expected: "must list absolute paths (other masters' config dirs)"
                                .into(),
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ConfigError::Key {
                    path,
                    key: "masters".into(),
                    expected: "must be a list of other masters' config dirs".into(),
                })
            }
        };
        Ok(Self {
            masters,
            pki_dir: text("pki_dir")
                .map_or_else(|| config_dir.join("pki").join("virtseed"), PathBuf::from),
            id,
            salt_version,
            master_finger: text("master_finger"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_must_be_quoted_and_ids_valid() {
        let d = std::env::temp_dir().join(format!(
            "virtseed-settings-{}",
            salt_proto::auth::new_nonce()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("virtseed"), "salt_version: 3006.30\n").unwrap();
        let e = Settings::load(&d).unwrap_err().to_string();
        assert!(e.contains("must be quoted"), "{e}");
        std::fs::write(d.join("virtseed"), "salt_version: '3006.30'\nid: sc1\n").unwrap();
        let s = Settings::load(&d).unwrap();
        assert_eq!(
            s.salt_version,
            Some(salt_proto::version::SaltVersion::new(3006, 30))
        );
        assert_eq!(s.id, "sc1");
        assert_eq!(s.pki_dir, d.join("pki/virtseed"));
        std::fs::write(d.join("virtseed"), "id: ../x\n").unwrap();
        assert!(Settings::load(&d)
            .unwrap_err()
            .to_string()
            .contains("valid minion id"));
        std::fs::remove_dir_all(&d).ok();
    }
}
