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
    /// A master cluster (3007+): `cluster_id`, and `cluster_pki_dir` (Salt falls back to
    /// `pki_dir`), where the cluster keeps every minion key and its own `cluster.pub`.
    pub cluster_id: Option<String>,
    pub cluster_pki_dir: Option<PathBuf>,
    /// 3008's `keys.cache_driver` (absent before 3008; Salt's default is `localfs_key`, the
    /// files in `pki_dir`).
    pub keys_cache_driver: Option<String>,
    /// 3008's `cluster_isolated_filesystem`: each node of a cluster keeps a key store of its
    /// own, synced through the cluster's channel.
    pub cluster_isolated_filesystem: bool,
    /// `minion_data_cache` (default on): whether the master keeps each minion's grains and
    /// pillar, and so whether its grain, pillar and compound targeting can see them.
    pub minion_data_cache: bool,
    /// `nodegroups`, as the master expands them inside compound targets.
    pub nodegroups: serde_json::Map<String, serde_json::Value>,
    /// `syndic_master`: this master is a syndic node under that master of masters (one, or
    /// several joined with ", ").
    pub syndic_master: Option<String>,
    /// `master_sign_pubkey`: the master signs its public key in every sign-in answer
    /// (`pub_sig`), and a minion must verify it (`verify_master_pubkey_sign`) or fail.
    pub master_sign_pubkey: bool,
    /// `master_sign_key_name`: the signing key pair `pki_dir/<name>.pem|.pub`.
    pub master_sign_key_name: String,
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
            cluster_id: v
                .get("cluster_id")
                .and_then(yaml::as_text)
                .filter(|c| !c.is_empty()),
            cluster_pki_dir: v
                .get("cluster_pki_dir")
                .and_then(yaml::as_text)
                .filter(|c| !c.is_empty())
                .map(PathBuf::from),
            keys_cache_driver: v.get("keys.cache_driver").and_then(yaml::as_text),
            cluster_isolated_filesystem: v
                .get("cluster_isolated_filesystem")
                .and_then(yaml::as_bool)
                .unwrap_or(false),
            minion_data_cache: v
                .get("minion_data_cache")
                .and_then(yaml::as_bool)
                .unwrap_or(true),
            nodegroups: v
                .get("nodegroups")
                .and_then(|n| serde_json::to_value(n).ok())
                .and_then(|n| match n {
                    serde_json::Value::Object(m) => Some(m),
                    _ => None,
                })
                .unwrap_or_default(),
            master_sign_pubkey: v
                .get("master_sign_pubkey")
                .and_then(yaml::as_bool)
                .unwrap_or(false),
            master_sign_key_name: s("master_sign_key_name", "master_sign"),
            syndic_master: v.get("syndic_master").and_then(|m| match m {
                Value::Sequence(l) => {
                    let l: Vec<String> = l.iter().filter_map(yaml::as_text).collect();
                    (!l.is_empty()).then(|| l.join(", "))
                }
                m => yaml::as_text(m).filter(|m| !m.is_empty()),
            }),
        })
    }

    /// Why virtseed cannot accept keys on this master, if it cannot: a 3008 key store that is
    /// not the `minions/` files (`keys.cache_driver: mmap_key` keeps an index a file written
    /// beside it never enters; salt/cache/mmap_key.py has no file fallback).
    pub fn key_store_problem(&self) -> Option<String> {
        if self.cluster_id.is_some() && self.cluster_isolated_filesystem {
            return Some(format!(
                "the master cluster's `cluster_isolated_filesystem: True` gives each node a key store of its own, which Salt keeps in step through the cluster's channel: a key virtseed writes as a file in {}/minions on this node is not seen by the others; remove the setting and give the nodes one shared `cluster_pki_dir` (Salt's cluster guide)",
                self.key_dir().display()
            ));
        }
        match self.keys_cache_driver.as_deref() {
            None | Some("localfs_key") => None,
            Some(other) => Some(format!(
                "the master's `keys.cache_driver: {other}` keeps minion keys where virtseed cannot write them through Salt; virtseed accepts keys as files in {}/minions, which only `localfs_key` (Salt's default) reads: remove the setting, or set it to localfs_key",
                self.key_dir().display()
            )),
        }
    }

    /// Where the master keeps minion keys (`minions/`, `minions_pre/`, ...): `pki_dir`, or in
    /// a cluster `cluster_pki_dir` (salt/channel/server.py `_auth`, salt/key.py).
    pub fn key_dir(&self) -> &Path {
        match (&self.cluster_id, &self.cluster_pki_dir) {
            (Some(_), Some(d)) => d,
            _ => &self.pki_dir,
        }
    }

    /// The public key minions must trust: `master.pub`, or in a cluster the cluster's
    /// `cluster.pub` (every node signs in with it, salt/crypt.py `MasterKeys.get_pub_str`).
    pub fn trusted_key_path(&self) -> PathBuf {
        if self.cluster_id.is_some() {
            self.key_dir().join("cluster.pub")
        } else {
            self.pki_dir.join("master.pub")
        }
    }

    /// The public half of the key the master signs its own key with, when it does
    /// (`master_sign_pubkey`): `pki_dir/<master_sign_key_name>.pub` (salt/crypt.py
    /// `MasterKeys`; never in a cluster's directory).
    pub fn sign_pub_path(&self) -> Option<PathBuf> {
        self.master_sign_pubkey.then(|| {
            self.pki_dir
                .join(format!("{}.pub", self.master_sign_key_name))
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

    #[test]
    fn a_syndic_node_names_its_master_of_masters() {
        let d = tempdir();
        std::fs::write(d.join("master"), "pki_dir: /p\n").unwrap();
        assert_eq!(MasterOpts::load(&d).unwrap().syndic_master, None);
        std::fs::write(d.join("master"), "syndic_master: top.example\n").unwrap();
        let m = MasterOpts::load(&d).unwrap();
        assert_eq!(m.syndic_master.as_deref(), Some("top.example"));
        std::fs::write(d.join("master"), "syndic_master: [t1, t2]\n").unwrap();
        let m = MasterOpts::load(&d).unwrap();
        assert_eq!(m.syndic_master.as_deref(), Some("t1, t2"));
        std::fs::write(d.join("master"), "syndic_master: ''\n").unwrap();
        assert_eq!(MasterOpts::load(&d).unwrap().syndic_master, None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_cluster_keeps_keys_and_its_public_key_in_cluster_pki_dir() {
        let d = tempdir();
        std::fs::write(d.join("master"), "pki_dir: /p\n").unwrap();
        let m = MasterOpts::load(&d).unwrap();
        assert_eq!(m.key_dir(), Path::new("/p"));
        assert_eq!(m.trusted_key_path(), PathBuf::from("/p/master.pub"));
        std::fs::write(
            d.join("master"),
            "pki_dir: /p\ncluster_id: c1\ncluster_pki_dir: /shared/pki\n",
        )
        .unwrap();
        let m = MasterOpts::load(&d).unwrap();
        assert_eq!(m.cluster_id.as_deref(), Some("c1"));
        assert_eq!(m.key_dir(), Path::new("/shared/pki"));
        assert_eq!(
            m.trusted_key_path(),
            PathBuf::from("/shared/pki/cluster.pub")
        );
        // cluster_id without cluster_pki_dir: Salt uses pki_dir for both.
        std::fs::write(d.join("master"), "pki_dir: /p\ncluster_id: c1\n").unwrap();
        let m = MasterOpts::load(&d).unwrap();
        assert_eq!(m.key_dir(), Path::new("/p"));
        assert_eq!(m.trusted_key_path(), PathBuf::from("/p/cluster.pub"));
        assert_eq!(m.key_store_problem(), None);
        std::fs::write(d.join("master"), "keys.cache_driver: localfs_key\n").unwrap();
        assert_eq!(MasterOpts::load(&d).unwrap().key_store_problem(), None);
        std::fs::write(d.join("master"), "keys.cache_driver: mmap_key\n").unwrap();
        let why = MasterOpts::load(&d).unwrap().key_store_problem().unwrap();
        assert!(why.contains("`keys.cache_driver: mmap_key`"), "{why}");
        // 3008's isolated cluster nodes: refused by name; the setting alone (no cluster) is
        // Salt's no-op.
        std::fs::write(
            d.join("master"),
            "cluster_id: c1\ncluster_pki_dir: /c\ncluster_isolated_filesystem: True\n",
        )
        .unwrap();
        let why = MasterOpts::load(&d).unwrap().key_store_problem().unwrap();
        assert!(why.contains("`cluster_isolated_filesystem: True`"), "{why}");
        std::fs::write(d.join("master"), "cluster_isolated_filesystem: True\n").unwrap();
        assert_eq!(MasterOpts::load(&d).unwrap().key_store_problem(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("virtseed-test-{}", salt_proto::auth::new_nonce()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
