//! `accept: on_first_auth`: for images that make their own minion key on first boot. A
//! pending key for id X is accepted only if virtseed made X (its metadata says
//! `on_first_auth`), less than the profile's `autoaccept_window` ago, X has no accepted key,
//! and it is the first key seen for X -- once. A different key for X later stays where the
//! master put it and fires `virtseed/key/denied`; the accepted key is never removed.
//!
//! Salt's documented reactor for this trusts the id the minion reports; this does not.

use super::service::Service;
use super::Progress;
use salt_proto::event::Event;
use salt_proto::keys::pem_finger;
use salt_proto::msgpack;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;

fn seen_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("first-keys").join(id)
}

/// The fingerprint of the first key seen for `id`, if any.
pub fn first_seen(state_dir: &Path, id: &str) -> Option<String> {
    std::fs::read_to_string(seen_path(state_dir, id))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Forgets `id` (its VM was destroyed).
pub fn forget(state_dir: &Path, id: &str) {
    let _ = std::fs::remove_file(seen_path(state_dir, id));
}

/// Records `finger` as the first key seen for `id`; false if another one was first.
fn record_first(state_dir: &Path, id: &str, finger: &str) -> std::io::Result<bool> {
    let path = seen_path(state_dir, id);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(finger.as_bytes())?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(first_seen(state_dir, id).as_deref() == Some(finger))
        }
        Err(e) => Err(e),
    }
}

/// What became of one pending key.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Accepted,
    /// Not ours to decide (not a VM virtseed made for on_first_auth, or out of its window).
    Ignored(String),
    Denied(String),
}

/// Decides on a pending key for `id` (blocking: libvirt and files).
pub fn decide(svc: &Service, id: &str, pub_pem: &str) -> Decision {
    let Some(mc) = &svc.cloud.master else {
        return Decision::Ignored("no master context".into());
    };
    if super::names::check(id).is_err() {
        return Decision::Ignored("not an instance name".into());
    }
    let finger = pem_finger(pub_pem);
    let (_, inst) = match svc.cloud.locate(id) {
        Ok(x) => x,
        Err(_) => return Decision::Ignored(format!("{id} is not a VM virtseed made")),
    };
    if inst.ownership.accept != "on_first_auth" {
        return Decision::Ignored(format!("{id} was made with a pre-accepted key"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now.saturating_sub(inst.ownership.created) > inst.ownership.window {
        return Decision::Ignored(format!(
            "{id} was made {} s ago, outside its autoaccept_window of {} s",
            now.saturating_sub(inst.ownership.created),
            inst.ownership.window
        ));
    }
    match crate::pki::accepted_state(&mc.pki_dir, id, pub_pem) {
        Ok(crate::pki::Accepted::Absent) => {}
        Ok(crate::pki::Accepted::Ours) => return Decision::Ignored("already accepted".into()),
        Ok(crate::pki::Accepted::Other) => {
            return Decision::Denied(format!("{id} already has another accepted key"))
        }
        Err(e) => return Decision::Ignored(e.to_string()),
    }
    match record_first(&mc.state_dir, id, &finger) {
        Ok(true) => {}
        Ok(false) => return Decision::Denied(format!("another key was seen first for {id}")),
        Err(e) => return Decision::Ignored(format!("cannot record the first key: {e}")),
    }
    // Accept exactly the key the master holds as pending, if it is the one announced.
    let pending = match std::fs::read_to_string(mc.pki_dir.join("minions_pre").join(id)) {
        Ok(t) if pem_finger(&t) == finger => t,
        Ok(_) => {
            return Decision::Denied(format!(
                "the pending key for {id} is not the one that asked"
            ))
        }
        Err(e) => return Decision::Ignored(format!("no pending key for {id}: {e}")),
    };
    match crate::pki::pre_accept(&mc.pki_dir, id, &pending) {
        Ok(crate::pki::Accepted::Ours) => Decision::Accepted,
        Ok(_) => Decision::Denied(format!("{id} already has another accepted key")),
        Err(e) => Decision::Ignored(e.to_string()),
    }
}

/// Whether the master recorded the denial of `pub_pem` for `id` (`salt/auth` events prove
/// nothing by themselves).
fn recorded_denial(svc: &Service, id: &str, pub_pem: &str) -> bool {
    let Some(mc) = &svc.cloud.master else {
        return false;
    };
    if super::names::check(id).is_err() {
        return false;
    }
    std::fs::read_to_string(mc.pki_dir.join("minions_denied").join(id))
        .is_ok_and(|t| pem_finger(&t) == pem_finger(pub_pem))
}

/// Watches `salt/auth` for pending keys and decides on each. The events are hints: the
/// decision reads the key the master itself stored (`minions_pre/<id>`).
pub async fn watch(
    svc: Arc<Service>,
    progress: Arc<dyn Progress>,
    mut rx: broadcast::Receiver<Event>,
) {
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if ev.tag != "salt/auth" {
            continue;
        }
        let get = |k| {
            msgpack::get(&ev.data, k)
                .and_then(msgpack::str_of)
                .map(str::to_string)
        };
        let (Some(id), Some(act), Some(pub_pem)) = (get("id"), get("act"), get("pub")) else {
            continue;
        };
        if act == "denied" {
            // The master itself refused a different key for an id that has one; say so for
            // VMs virtseed made (their accepted key stays). Any minion can fire `salt/auth`:
            // only a denial the master recorded (`minions_denied/<id>`, the key it names)
            // is reported.
            let s = svc.clone();
            let id2 = id.clone();
            let ours = tokio::task::spawn_blocking(move || {
                recorded_denial(&s, &id2, &pub_pem) && s.cloud.locate(&id2).is_ok()
            })
            .await
            .unwrap_or(false);
            if ours {
                tracing::warn!(
                    id,
                    "the master denied a different key for a VM virtseed made"
                );
                progress.fire(
                    "virtseed/key/denied",
                    json!({"id": id, "reason": "a different key for an id that already has an accepted key"}),
                );
            }
            continue;
        }
        if act != "pend" {
            continue;
        }
        let s = svc.clone();
        let id2 = id.clone();
        let d = tokio::task::spawn_blocking(move || decide(&s, &id2, &pub_pem)).await;
        match d {
            Ok(Decision::Accepted) => {
                let act = svc.cloud.master.as_ref().map_or("accept", |m| m.accept_act);
                tracing::info!(
                    id,
                    "accepted the first key of a VM virtseed made (on_first_auth)"
                );
                progress.fire("salt/key", json!({"result": true, "act": act, "id": id}));
            }
            Ok(Decision::Denied(why)) => {
                tracing::warn!(id, "{why}: key not accepted");
                progress.fire("virtseed/key/denied", json!({"id": id, "reason": why}));
            }
            Ok(Decision::Ignored(why)) => tracing::debug!(id, "pending key left alone: {why}"),
            Err(e) => tracing::warn!(id, "deciding on a pending key: {e}"),
        }
    }
}
