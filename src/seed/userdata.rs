//! A profile's `userdata_file` (salt-cloud's convention in its EC2, OpenStack, ... drivers):
//! the user's own cloud-init user-data, merged with virtseed's for `seed: cloud-init` clones.
//!
//! Only `#cloud-config` YAML can be merged key by key; MIME multipart, scripts and
//! `#include` are refused with a message saying so. virtseed's keys win: `salt_minion` (its
//! identity) and `swap` (the profile's `swap:`) replace the user's, and `write_files` is the
//! user's entries followed by virtseed's (the master's key). Each of these overlaps is a
//! conflict, which `check-config` reports.

use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

/// Where virtseed writes the master's public key in the guest (its `write_files` entry).
pub const MASTER_PUB_PATH: &str = "/etc/salt/pki/minion/minion_master.pub";
/// Where a minion that verifies its masters' signed keys finds the signing key
/// (`master_sign_key_name` `master_sign`, in its `pki_dir`).
pub const MASTER_SIGN_PUB_PATH: &str = "/etc/salt/pki/minion/master_sign.pub";

/// A `#cloud-config` file, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct UserData {
    pub path: PathBuf,
    pub config: Mapping,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("userdata_file {path}: {msg}")]
pub struct UserDataError {
    pub path: String,
    pub msg: String,
}

impl UserData {
    /// Reads and checks `path` (absolute: salt-cloud reads it relative to wherever it was
    /// started, which a sidecar cannot guess).
    pub fn load(path: &Path) -> Result<UserData, UserDataError> {
        let err = |msg: String| UserDataError {
            path: path.display().to_string(),
            msg,
        };
        if !path.is_absolute() {
            return Err(err("must be an absolute path".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        UserData::parse(path, &text).map_err(err)
    }

    fn parse(path: &Path, text: &str) -> Result<UserData, String> {
        let first = text.lines().next().unwrap_or("").trim_end();
        if first != "#cloud-config" {
            return Err(format!(
                "must be cloud-config YAML whose first line is `#cloud-config` (virtseed merges it \
                 with its own; MIME multipart, scripts and #include are not supported), found {first:?}"
            ));
        }
        let config = match yaml_serde::from_str::<Value>(text) {
            Ok(Value::Mapping(m)) => m,
            Ok(Value::Null) => Mapping::new(),
            Ok(other) => {
                return Err(format!(
                    "must be a YAML mapping of cloud-config keys, found {}",
                    crate::config::yaml::kind(&other)
                ))
            }
            Err(e) => return Err(format!("is not valid YAML: {e}")),
        };
        Ok(UserData {
            path: path.to_path_buf(),
            config,
        })
    }

    /// What virtseed overrides of the user's file, given what the profile makes virtseed
    /// set (`swap`): one line per conflict, empty when none.
    pub fn conflicts(&self, swap: bool) -> Vec<String> {
        let mut out = Vec::new();
        if self.config.contains_key("salt_minion") {
            out.push(
                "`salt_minion` is virtseed's (the clone's identity): the file's is replaced".into(),
            );
        }
        if swap && self.config.contains_key("swap") {
            out.push("`swap` is set by the profile's `swap:`: the file's is replaced".into());
        }
        let writes_master_pub = self
            .config
            .get("write_files")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("path").and_then(Value::as_str))
            .find(|p| [MASTER_PUB_PATH, MASTER_SIGN_PUB_PATH].contains(p));
        if let Some(path) = writes_master_pub {
            out.push(format!(
                "`write_files` writes {path}, which virtseed writes after it (the master's key)"
            ));
        }
        out
    }

    /// virtseed's user-data `ours` over the user's: `write_files` concatenated (the user's
    /// first), every other key of `ours` replacing the user's.
    pub fn merged_under(&self, ours: Mapping) -> Mapping {
        let mut out = self.config.clone();
        for (k, v) in ours {
            let concat = match (k.as_str(), out.get(&k), &v) {
                (Some("write_files"), Some(Value::Sequence(theirs)), Value::Sequence(mine)) => {
                    Some(theirs.iter().chain(mine).cloned().collect())
                }
                _ => None,
            };
            match concat {
                Some(all) => out.insert(k, Value::Sequence(all)),
                None => out.insert(k, v),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ud(text: &str) -> Result<UserData, String> {
        UserData::parse(Path::new("/etc/salt/ud"), text)
    }

    #[test]
    fn only_cloud_config_mappings() {
        assert!(ud("#cloud-config\npackages: [htop]\n").is_ok());
        assert!(ud("#cloud-config\n").unwrap().config.is_empty());
        assert!(ud("#!/bin/sh\necho hi\n")
            .unwrap_err()
            .contains("#cloud-config"));
        assert!(ud("#cloud-config\n- a\n").unwrap_err().contains("mapping"));
        assert!(ud("#cloud-config\na: [b\n").unwrap_err().contains("YAML"));
        let e = UserData::load(Path::new("relative.yaml")).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = UserData::load(Path::new("/nonexistent/virtseed-ud")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/virtseed-ud: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn ours_wins_and_write_files_concatenate() {
        let u = ud("#cloud-config\nsalt_minion: {conf: {master: evil}}\nswap: {size: 1}\nruncmd: [x]\nwrite_files:\n- {path: /etc/motd, content: hi}\n- {path: /etc/salt/pki/minion/minion_master.pub, content: k}\n").unwrap();
        assert_eq!(u.conflicts(false).len(), 2);
        let c = u.conflicts(true);
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(
            c[0].contains("salt_minion") && c[1].contains("swap") && c[2].contains("write_files")
        );
        let ours: Mapping = yaml_serde::from_str(
            "salt_minion: {conf: {master: good}}\nwrite_files:\n- {path: /etc/salt/pki/minion/minion_master.pub, content: real}\n",
        )
        .unwrap();
        let m = u.merged_under(ours);
        assert_eq!(m["salt_minion"]["conf"]["master"].as_str(), Some("good"));
        assert_eq!(m["runcmd"][0].as_str(), Some("x"));
        let wf = m["write_files"].as_sequence().unwrap();
        assert_eq!(wf.len(), 3);
        assert_eq!(wf[2]["content"].as_str(), Some("real"));
        assert!(ud("#cloud-config\npackages: [htop]\n")
            .unwrap()
            .conflicts(true)
            .is_empty());
    }
}
