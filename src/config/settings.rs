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
//! peers:                       # sidecars beside the other masters of a multi-master or
//!   - id: virtseed-b           # failover list, on hosts of their own (no shared files):
//!     master: 192.0.2.12       # each clone's public key goes to them over those masters'
//!     ret_port: 4506           # bus, signed; they accept it there (see crate::peers)
//!     master_finger: 'aa:..'   # optional: refuse that master if its key differs
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
    /// Sidecars beside other masters, reached over those masters' bus (`crate::peers`).
    pub peers: Vec<PeerSidecar>,
}

/// A sidecar beside another master, on a host of its own: virtseed signs in to that master
/// as a minion (its key accepted there once, by the operator) and trusts offers signed by
/// that sidecar's key as its own master accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSidecar {
    /// The peer sidecar's minion id.
    pub id: String,
    /// Its master's address, as minions reach it.
    pub master: String,
    pub ret_port: u16,
    pub master_finger: Option<String>,
}

impl PeerSidecar {
    /// `host:port`, as logs and key states name the peer's master.
    pub fn address(&self) -> String {
        if self.master.contains(':') {
            format!("[{}]:{}", self.master, self.ret_port)
        } else {
            format!("{}:{}", self.master, self.ret_port)
        }
    }
}

fn peers(
    path: &Path,
    own: &str,
    v: Option<&yaml_serde::Value>,
) -> Result<Vec<PeerSidecar>, ConfigError> {
    let bad = |expected: String| ConfigError::Key {
        path: path.to_path_buf(),
        key: "peers".into(),
        expected,
    };
    let items = match v {
        None | Some(yaml_serde::Value::Null) => return Ok(vec![]),
        Some(yaml_serde::Value::Sequence(items)) => items,
        Some(_) => {
            return Err(bad(
                "must be a list of the other sidecars: `- {id: virtseed-b, master: HOST, ret_port: 4506}`".into(),
            ))
        }
    };
    let mut out: Vec<PeerSidecar> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = |k: &str| item.get(k).and_then(yaml::as_text);
        let id = field("id").ok_or_else(|| {
            bad(format!(
                "item {}: needs `id`, the sidecar's minion id beside that master",
                i + 1
            ))
        })?;
        if !crate::names::valid_minion_id(&id) || id == own {
            return Err(bad(format!(
                "item {}: `id` must be a valid minion id other than this sidecar's ({own:?}), not {id:?}",
                i + 1
            )));
        }
        let master = field("master")
            .map(|m| {
                m.trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            })
            .filter(|m| !m.is_empty() && !m.contains(char::is_whitespace))
            .ok_or_else(|| {
                bad(format!(
                    "item {} ({id}): needs `master`, the address of the master beside it",
                    i + 1
                ))
            })?;
        let ret_port = match item.get("ret_port") {
            None | Some(yaml_serde::Value::Null) => 4506,
            Some(p) => yaml::as_i64(p)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    bad(format!(
                        "item {} ({id}): `ret_port` must be a port number",
                        i + 1
                    ))
                })?,
        };
        if out.iter().any(|p| p.id == id) {
            return Err(bad(format!("lists {id:?} twice")));
        }
        out.push(PeerSidecar {
            id,
            master,
            ret_port,
            master_finger: field("master_finger"),
        });
    }
    Ok(out)
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
            peers: peers(&path, &id, v.get("peers"))?,
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

    #[test]
    fn peers_are_checked() {
        let p = Path::new("/etc/salt/virtseed");
        let v = yaml::parse(p, "peers:\n  - {id: vs-b, master: 192.0.2.2}\n  - {id: vs-c, master: '[::1]', ret_port: '4510'}\n").unwrap();
        let got = peers(p, "vs-a", v.get("peers")).unwrap();
        assert_eq!(got[0].address(), "192.0.2.2:4506");
        assert_eq!(got[1].address(), "[::1]:4510");
        for (bad, says) in [
            ("peers: vs-b", "must be a list"),
            ("peers: [{master: h}]", "needs `id`"),
            (
                "peers: [{id: vs-a, master: h}]",
                "other than this sidecar's",
            ),
            ("peers: [{id: '../x', master: h}]", "valid minion id"),
            ("peers: [{id: vs-b}]", "needs `master`"),
            (
                "peers: [{id: vs-b, master: h, ret_port: 70000}]",
                "port number",
            ),
            (
                "peers: [{id: vs-b, master: h}, {id: vs-b, master: g}]",
                "twice",
            ),
        ] {
            let v = yaml::parse(p, bad).unwrap();
            let e = peers(p, "vs-a", v.get("peers")).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("`peers`"), "{bad}: {e}");
        }
    }
}
