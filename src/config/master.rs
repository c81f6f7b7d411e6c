//! What the sidecar needs of the Salt master's configuration (`DIR/master` and
//! `DIR/master.d/*.conf`), with Salt's defaults (`salt/config/__init__.py:DEFAULT_MASTER_OPTS`).

use super::{yaml, ConfigError};
use std::path::{Path, PathBuf};
use yaml_serde::Value;

#[derive(Debug, Clone)]
pub struct MasterOpts {
    /// The config dir the master reads (`-c`).
    pub config_dir: PathBuf,
    /// Where to reach the master: `interface`, or 127.0.0.1 when it listens on all.
    pub host: String,
    pub ret_port: u16,
    pub publish_port: u16,
    pub pki_dir: PathBuf,
    pub cachedir: PathBuf,
    pub sock_dir: PathBuf,
    pub extension_modules: PathBuf,
    pub user: String,
    pub zmq_filtering: bool,
    pub transport: String,
}

impl MasterOpts {
    pub fn load(config_dir: &Path) -> Result<Self, ConfigError> {
        let path = config_dir.join("master");
        let mut v = if path.exists() {
            yaml::load_file(&path)?
        } else {
            Value::Mapping(Default::default())
        };
        // default_include: master.d/*.conf, applied in name order.
        let dropins = config_dir.join("master.d");
        if let Ok(rd) = std::fs::read_dir(&dropins) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            files.sort();
            for f in files {
                yaml::merge_top(&mut v, yaml::load_file(&f)?);
            }
        }
        let s = |key: &str, default: &str| -> String {
            v.get(key)
                .and_then(yaml::as_text)
                .unwrap_or_else(|| default.to_string())
        };
        let port = |key: &str, default: u16| -> Result<u16, ConfigError> {
            match v.get(key) {
                None => Ok(default),
                Some(x) => yaml::as_i64(x)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| ConfigError::Key {
                        path: path.clone(),
                        key: key.into(),
                        expected: "must be a port number (1-65535)".into(),
                    }),
            }
        };
        let interface = s("interface", "0.0.0.0");
        let host = match interface.as_str() {
            "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" => "::1".to_string(),
            other => other.to_string(),
        };
        let cachedir = PathBuf::from(s("cachedir", "/var/cache/salt/master"));
        // Salt's default does not follow `cachedir` (DEFAULT_MASTER_OPTS in salt/config).
        let extension_modules =
            PathBuf::from(s("extension_modules", "/var/cache/salt/master/extmods"));
        Ok(Self {
            config_dir: config_dir.to_path_buf(),
            host,
            ret_port: port("ret_port", 4506)?,
            publish_port: port("publish_port", 4505)?,
            pki_dir: PathBuf::from(s("pki_dir", "/etc/salt/pki/master")),
            sock_dir: PathBuf::from(s("sock_dir", "/var/run/salt/master")),
            extension_modules,
            cachedir,
            user: s("user", "root"),
            zmq_filtering: v
                .get("zmq_filtering")
                .and_then(yaml::as_bool)
                .unwrap_or(false),
            transport: s("transport", "zeromq"),
        })
    }

    /// `tcp://host:port` of the request server.
    pub fn ret_endpoint(&self) -> String {
        format!("tcp://{}:{}", bracket(&self.host), self.ret_port)
    }

    pub fn publish_endpoint(&self) -> String {
        format!("tcp://{}:{}", bracket(&self.host), self.publish_port)
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_dropins() {
        let d = tempdir();
        std::fs::write(
            d.join("master"),
            "interface: 0.0.0.0\nret_port: 14506\npki_dir: /p\ncachedir: /c\n",
        )
        .unwrap();
        std::fs::create_dir(d.join("master.d")).unwrap();
        std::fs::write(
            d.join("master.d/a.conf"),
            "publish_port: '14505'\nzmq_filtering: yes\n",
        )
        .unwrap();
        let m = MasterOpts::load(&d).unwrap();
        assert_eq!(m.ret_endpoint(), "tcp://127.0.0.1:14506");
        assert_eq!(m.publish_port, 14505);
        assert!(m.zmq_filtering);
        assert_eq!(m.pki_dir, PathBuf::from("/p"));
        assert_eq!(m.sock_dir, PathBuf::from("/var/run/salt/master"));
        // Salt's default `extension_modules` does not follow `cachedir`.
        assert_eq!(m.cachedir, PathBuf::from("/c"));
        assert_eq!(
            m.extension_modules,
            PathBuf::from("/var/cache/salt/master/extmods")
        );
        std::fs::write(d.join("master"), "ret_port: 70000\n").unwrap();
        let e = MasterOpts::load(&d).unwrap_err().to_string();
        assert!(e.contains("`ret_port` must be a port number"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("virtseed-test-{}", salt_proto::auth::new_nonce()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
