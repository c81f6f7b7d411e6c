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
