//! Undoing a journaled [`Intent`], driven by the intent alone as the journal stores it: the
//! rollback of a failed create and the reconcile of a dead process's journal both come here.
//! Each kind of intent is undone by the function beside the step that makes it.

use super::runner::Undo;
use super::{define, key, nvram, volume};
use crate::cloud::journal::Intent;
use crate::cloud::{MasterCtx, Progress};
use crate::libvirt::{Hypervisor, LibvirtError};

/// Undoes intents on one hypervisor and master. Keys and files are undone even when
/// libvirt is unreachable (`hv` is the error of connecting to it).
pub struct Undoer<'a> {
    pub hv: Result<&'a Hypervisor, &'a LibvirtError>,
    pub master: Option<&'a MasterCtx>,
    /// Where `salt/key` is fired for a revoked key.
    pub progress: &'a dyn Progress,
}

impl Undo for Undoer<'_> {
    fn undo(&self, i: &Intent) -> Result<(), String> {
        let hv = || self.hv.map_err(|e| e.to_string());
        let r = match i {
            Intent::Domain { name, uuid } => hv().and_then(|hv| define::undo(hv, name, uuid)),
            Intent::Volume { pool, name } => hv().and_then(|hv| volume::undo(hv, pool, name)),
            Intent::File { path } => nvram::undo_file(path),
            Intent::Key { id, finger } => match self.master {
                Some(mc) => key::undo(mc, id, finger, self.progress),
                None => Ok(()),
            },
        };
        r.map_err(|e| format!("{}: {e}", describe(i)))
    }
}

/// What an intent makes, for people.
pub fn describe(i: &Intent) -> String {
    match i {
        Intent::Volume { pool, name } => format!("volume {name} (pool {pool})"),
        Intent::File { path } => format!("file {path}"),
        Intent::Domain { name, .. } => format!("domain {name}"),
        Intent::Key { id, .. } => format!("accepted key of {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::create::runner::undo_in_reverse;
    use crate::cloud::journal::Entry;

    /// A journal entry as the create code before the step files wrote it (one of each kind).
    fn old_entry(nvram: &str) -> String {
        format!(
            r#"{{
  "name": "web1",
  "request": "r1",
  "job": null,
  "profile": "p",
  "uri": "qemu:///system",
  "owner": {{ "pid": 0, "start": 0 }},
  "step": "key_accepted",
  "intents": [
    {{ "kind": "volume", "pool": "default", "name": "web1-vda.qcow2" }},
    {{ "kind": "file", "path": "{nvram}" }},
    {{ "kind": "volume", "pool": "default", "name": "web1-seed.img" }},
    {{ "kind": "domain", "name": "web1", "uuid": "5d1a4a3c-4a4b-4c0e-9b1e-0a1b2c3d4e5f" }},
    {{ "kind": "key", "id": "web1", "finger": "aa:bb" }}
  ],
  "done": null
}}"#
        )
    }

    #[test]
    fn an_old_journal_is_undone_by_its_intents_even_without_libvirt() {
        let dir = tempfile::tempdir().unwrap();
        let nvram = dir.path().join("web1_VARS.fd");
        std::fs::write(&nvram, b"vars").unwrap();
        let entry: Entry = serde_json::from_str(&old_entry(&nvram.display().to_string())).unwrap();
        let down = LibvirtError::Call {
            uri: "qemu:///system".into(),
            op: "connect".into(),
            msg: "libvirtd is down".into(),
            code: 38,
        };
        let undoer = Undoer {
            hv: Err(&down),
            master: None,
            progress: &crate::cloud::Quiet,
        };
        let left = undo_in_reverse(&entry.intents, &undoer);
        assert!(!nvram.exists(), "the file is undone without libvirt");
        let err = "libvirt qemu:///system: connect: libvirtd is down";
        assert_eq!(
            left,
            [
                format!("domain web1: {err}"),
                format!("volume web1-seed.img (pool default): {err}"),
                format!("volume web1-vda.qcow2 (pool default): {err}"),
            ]
        );
        // Undoing again finds nothing of the file, and that is no error.
        assert_eq!(undo_in_reverse(&entry.intents, &undoer).len(), 3);
    }
}
