//! Step `key_accepted`: the minted key pre-accepted on the master, before the guest can ask:
//! `pki_dir/minions/<name>` written atomically in the exact text the minion will send, never
//! over another machine's key (unless `force: true`), then `salt/key` fired. Makes nothing
//! without a master or without a minted key (`accept: on_first_auth` or `manual`). With
//! `seed: ssh` the key is the public half of the pair the driver deploys over SSH.
//!
//! An [`Intent::Key`], undone by revoking the key only while it has this fingerprint, with
//! the master's cache for the id ([`undo`]).

use super::runner::{Action, Intents};
use super::{Made, Step};
use crate::cloud::journal::Intent;
use crate::cloud::{CloudError, MasterCtx, Progress};
use crate::pki::Accepted;
use serde_json::json;

pub struct Key<'a> {
    pub master: Option<&'a MasterCtx>,
    pub profile: &'a crate::config::cloud::Profile,
    pub name: &'a str,
    /// The profile's `force`: replace another key under this id.
    pub force: bool,
    /// Where `salt/key` is fired.
    pub progress: &'a dyn Progress,
}

impl Action<Made> for Key<'_> {
    fn make(&self, made: &mut Made, intents: &mut Intents<'_>) -> Result<(), CloudError> {
        let (Some(mc), Some(key)) = (self.master, made.public_key()) else {
            return Ok(());
        };
        let name = self.name;
        let pem = key.pem();
        intents.intend(Intent::Key {
            id: name.into(),
            finger: made.fingerprint(),
        })?;
        let internal = |e: crate::pki::PkiError| CloudError::Internal(e.to_string());
        match crate::pki::pre_accept(&mc.pki_dir, name, pem).map_err(internal)? {
            Accepted::Ours | Accepted::Absent => {}
            Accepted::Other if self.force => {
                crate::pki::force_accept(&mc.pki_dir, name, pem).map_err(internal)?;
            }
            Accepted::Other => return Err(CloudError::KeyTaken(name.into())),
        }
        // The other masters of a multi-master list: the same key, never over another.
        for peer in mc.peers_for(&self.profile.name, &self.profile.minion)? {
            match crate::pki::pre_accept(&peer.key_dir, name, pem).map_err(internal)? {
                Accepted::Ours | Accepted::Absent => {}
                Accepted::Other => {
                    return Err(CloudError::Config(format!(
                        "another key is accepted for {name} on the master in {}",
                        peer.config_dir.display()
                    )))
                }
            }
            let _ = std::fs::remove_file(peer.key_dir.join("minions_pre").join(name));
        }
        // Masters on hosts of their own: through the sidecar beside each (`crate::peers`).
        // A peer that says no fails the create (and rollback takes the key back from those
        // that said yes); one that does not answer is said, and offered again until it does.
        if let Some(remote) = mc
            .remote
            .as_ref()
            .filter(|_| crate::cloud::MasterCtx::listed_masters(&self.profile.minion) > 1)
        {
            for o in remote.accept(name, pem) {
                match o.result {
                    Ok(()) => {}
                    Err(crate::cloud::PeerFailure::Refused(e)) => {
                        return Err(CloudError::Config(format!("the master {}: {e}", o.master)))
                    }
                    Err(crate::cloud::PeerFailure::Unconfirmed(e)) => {
                        tracing::warn!(id = name, master = %o.master, "the key is not confirmed there yet ({e}); virtseed offers it again every {}s", crate::peers::RETRY_EVERY.as_secs());
                        self.progress.fire(
                            "virtseed/key/unconfirmed",
                            json!({"id": name, "master": o.master, "reason": e}),
                        );
                    }
                }
            }
        }
        self.progress.fire(
            "salt/key",
            json!({"result": true, "act": mc.accept_act, "id": name}),
        );
        // A key pending under the new name is not the minted one (pre_accept removed ours):
        // another host signed in under it first. 3008's key store reads pending before
        // accepted (salt/cache/localfs_key.py), so left there it would keep the clone out.
        let pre = mc.pki_dir.join("minions_pre").join(name);
        if pre.exists() && std::fs::remove_file(&pre).is_ok() {
            tracing::warn!(
                id = name,
                "removed a pending key that is not the one virtseed minted (another host signed in under the new name)"
            );
            self.progress.fire(
                "virtseed/key/denied",
                json!({"id": name, "reason": "a pending key that is not the one virtseed minted"}),
            );
        }
        Ok(())
    }

    fn step(&self) -> Step {
        Step::KeyAccepted
    }
}

/// Undoes an [`Intent::Key`]: removes the accepted key of `id` if it has fingerprint
/// `finger`, and the master's cache for it, and says so on the bus.
pub fn undo(mc: &MasterCtx, id: &str, finger: &str, progress: &dyn Progress) -> Result<(), String> {
    let mut removed =
        crate::pki::revoke(&mc.pki_dir, &mc.cachedir, id, finger).map_err(|e| e.to_string())?;
    for p in &mc.peers {
        removed |= crate::pki::revoke(&p.key_dir, &p.cachedir, id, finger)
            .map_err(|e| format!("{}: {e}", p.config_dir.display()))?;
    }
    // Peers that did not confirm are asked again until they do (`crate::peers`).
    if let Some(remote) = &mc.remote {
        remote.revoke(id, finger);
    }
    if removed {
        progress.fire(
            "salt/key",
            json!({"result": true, "act": "delete", "id": id}),
        );
    }
    Ok(())
}
