//! `accept: on_first_auth`: for images that make their own minion key on first boot. The key
//! accepted for VM X is the one VM X holds, read from inside it through the QEMU guest agent
//! (a channel only the VM and its hypervisor share: `libvirt::agent`), never the first key
//! some host presents under X: any minion can learn a new clone's name from a publication
//! and sign in under it first. It is accepted once, inside the profile's
//! `autoaccept_window`, and only while X has no accepted key; a pending key under X that is
//! not the VM's is removed and reported (`virtseed/key/denied`). The key pair read (the VM's
//! `minion.pem`) also lets readiness ask X to prove it holds it, as for a key virtseed
//! minted.
//!
//! Salt's documented reactor for this trusts the id a minion reports; this does not. The
//! `salt/auth` events are watched only to report the denials the master recorded.

use super::ready::ProofKey;
use super::service::Service;
use super::Progress;
use crate::libvirt::agent::AgentError;
use salt_proto::event::Event;
use salt_proto::keys::{pem_finger, PrivateKey, PublicKey};
use salt_proto::msgpack;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use zeroize::Zeroizing;

fn seen_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("first-keys").join(id)
}

/// The fingerprint of the key accepted for `id` (on_first_auth), if any.
pub fn first_seen(state_dir: &Path, id: &str) -> Option<String> {
    std::fs::read_to_string(seen_path(state_dir, id))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Forgets `id` (its VM was destroyed).
pub fn forget(state_dir: &Path, id: &str) {
    let _ = std::fs::remove_file(seen_path(state_dir, id));
}

/// Records `finger` as the key accepted for `id`, once; false if another one was.
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

/// Why a VM's own key was not accepted (yet).
#[derive(Debug, PartialEq)]
pub enum PinError {
    /// For good: not a VM for this, out of its window, another key accepted.
    Refused(String),
    /// Not yet: no agent answering, no key made yet.
    NotYet(String),
}

/// The guest's minion key directory: the profile's `minion: pki_dir`, else Salt's default.
pub fn guest_pki_dir(minion: &yaml_serde::Mapping) -> String {
    minion
        .get("pki_dir")
        .and_then(|v| v.as_str())
        .unwrap_or("/etc/salt/pki/minion")
        .trim_end_matches('/')
        .to_string()
}

/// Reads VM `id`'s own key pair from inside it and accepts its public key (blocking:
/// libvirt and files).
pub fn pin_once(svc: &Service, id: &str, guest_pki: &str) -> Result<ProofKey, PinError> {
    use PinError::{NotYet, Refused};
    let mc = master_for(svc, id)?;
    let (_, inst) = svc
        .cloud
        .locate(id)
        .map_err(|e| Refused(format!("{id}: {e}")))?;
    if inst.ownership.accept != "on_first_auth" {
        return Err(Refused(format!(
            "{id} was not made with accept: on_first_auth"
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let age = now.saturating_sub(inst.ownership.created);
    if age > inst.ownership.window {
        return Err(Refused(format!(
            "{id} was made {age} s ago, outside its autoaccept_window of {} s",
            inst.ownership.window
        )));
    }
    let (pem, pub_text) = vm_key(svc, id, guest_pki)?;
    let finger = pem_finger(&pub_text);
    if let Some((other, list)) = known_elsewhere(&mc.pki_dir, id, &finger) {
        return Err(NotYet(format!(
            "the VM holds the key the master has for {other} ({list}): a key copied from a template that was booted with a minion of its own; virtseed accepts it for no clone (the template's /etc/salt/pki/minion must go: virtseed's guest side removes it, see docs/golden-images.md)"
        )));
    }
    match record_first(&mc.state_dir, id, &finger) {
        Ok(true) => {}
        Ok(false) => return Err(Refused(format!("another key was accepted for {id} before"))),
        Err(e) => return Err(NotYet(format!("cannot record the key: {e}"))),
    }
    match crate::pki::pre_accept(&mc.pki_dir, id, &pub_text) {
        Ok(crate::pki::Accepted::Ours) => {}
        Ok(_) => return Err(Refused(format!("{id} already has another accepted key"))),
        Err(e) => return Err(NotYet(e.to_string())),
    }
    Ok(ProofKey::new(Zeroizing::new(pem.to_string())))
}

/// The master whose key store VM `id`'s key goes to, `id` checked as a name.
fn master_for<'a>(svc: &'a Service, id: &str) -> Result<&'a super::MasterCtx, PinError> {
    let mc = svc
        .cloud
        .master
        .as_ref()
        .ok_or_else(|| PinError::Refused("no master context".into()))?;
    super::names::check(id).map_err(PinError::Refused)?;
    Ok(mc)
}

/// The key pair VM `id` holds (`minion.pem`, `minion.pub` in `guest_pki`), read from inside it
/// through the QEMU guest agent; `NotYet` while there is none (or no agent answers).
fn vm_key(
    svc: &Service,
    id: &str,
    guest_pki: &str,
) -> Result<(Zeroizing<String>, String), PinError> {
    use PinError::NotYet;
    let read = |file: &str| -> Result<Zeroizing<String>, PinError> {
        let path = format!("{guest_pki}/{file}");
        let bytes = svc
            .cloud
            .guest_file(id, &path)
            .map_err(|e| NotYet(e.to_string()))?
            .map_err(|e| match e {
                AgentError::NoFile { .. } => NotYet(format!("the VM has no {path} yet")),
                other => NotYet(other.to_string()),
            })?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| NotYet(format!("{path} is not text")))
    };
    let pem = read("minion.pem")?;
    let private = PrivateKey::from_pem(&pem)
        .map_err(|e| NotYet(format!("the VM's minion.pem is not a key (yet?): {e}")))?;
    let pub_text = read("minion.pub")?;
    let public = PublicKey::from_pem(&pub_text)
        .map_err(|e| NotYet(format!("the VM's minion.pub is not a key (yet?): {e}")))?;
    if public != *private.public_key() {
        return Err(NotYet(
            "the VM's minion.pub is not the public half of its minion.pem (yet?)".into(),
        ));
    }
    Ok((pem, pub_text.to_string()))
}

/// `accept: manual`: the key VM `id` holds, once the key accepted for `id` (by the operator)
/// is that one; `NotYet` until then, saying what is awaited.
fn held_and_accepted_once(svc: &Service, id: &str, guest_pki: &str) -> Result<ProofKey, PinError> {
    use PinError::NotYet;
    let mc = master_for(svc, id)?;
    let (pem, pub_text) = vm_key(svc, id, guest_pki)?;
    match crate::pki::accepted_state(&mc.pki_dir, id, &pub_text) {
        Ok(crate::pki::Accepted::Ours) => Ok(ProofKey::new(pem)),
        Ok(crate::pki::Accepted::Other) => Err(NotYet(format!(
            "the key accepted for {id} is not the one the VM holds (fingerprint {}): another host's; delete it (`salt-key -d {id}`) and accept the VM's",
            pem_finger(&pub_text)
        ))),
        Ok(crate::pki::Accepted::Absent) => Err(NotYet(format!(
            "waiting for {id}'s key to be accepted (accept: manual: `salt-key -f {id}` shows it, fingerprint {} is the VM's)",
            pem_finger(&pub_text)
        ))),
        Err(e) => Err(NotYet(e.to_string())),
    }
}

/// `accept: manual`, until `deadline`: the key VM `id` holds (read through its guest agent),
/// once it is the key accepted for `id`: what its readiness answer must prove it holds. A
/// key accepted for `id` that is not the VM's (an impostor's, accepted by mistake) is never
/// taken for it.
pub async fn held_and_accepted(
    svc: Arc<Service>,
    id: &str,
    guest_pki: &str,
    deadline: Instant,
) -> Result<ProofKey, String> {
    let mut said = String::new();
    loop {
        let (s, i, dir) = (svc.clone(), id.to_string(), guest_pki.to_string());
        let last =
            match tokio::task::spawn_blocking(move || held_and_accepted_once(&s, &i, &dir)).await {
                Ok(Ok(key)) => return Ok(key),
                Ok(Err(PinError::Refused(why))) => return Err(why),
                Ok(Err(PinError::NotYet(why))) => why,
                Err(e) => e.to_string(),
            };
        if last != said {
            tracing::info!(id, "readiness: {last}");
            said = last.clone();
        }
        if Instant::now() + PIN_EVERY >= deadline {
            return Err(format!(
                "{id}'s minion did not prove it holds the key accepted for it ({last}); with accept: manual, readiness reads the key the VM made through the QEMU guest agent"
            ));
        }
        tokio::time::sleep(PIN_EVERY).await;
    }
}

/// Another minion id under which the master holds the key `finger` (accepted, pending,
/// rejected or denied), with the list it is in: one key is one minion, and a clone that
/// holds another minion's key (its template's) is not itself.
fn known_elsewhere(pki_dir: &Path, id: &str, finger: &str) -> Option<(String, &'static str)> {
    for list in [
        "minions",
        "minions_pre",
        "minions_rejected",
        "minions_denied",
    ] {
        let Ok(dir) = std::fs::read_dir(pki_dir.join(list)) else {
            continue;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == id || name.starts_with('.') {
                continue;
            }
            if std::fs::read_to_string(e.path()).is_ok_and(|t| pem_finger(&t) == finger) {
                return Some((name, list));
            }
        }
    }
    None
}

/// A key pending under `id` that is not `finger` (the VM's, now accepted) came from another
/// host: removed, so the master's list shows the id accepted only. Returns whether one was.
fn drop_pending(pki_dir: &Path, id: &str, finger: &str) -> bool {
    let path = pki_dir.join("minions_pre").join(id);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    let _ = std::fs::remove_file(&path);
    pem_finger(&text) != finger
}

/// Says that VM `id`'s own key is accepted, and removes (and reports) a pending key under
/// `id` that is not it.
fn accepted(svc: &Service, progress: &dyn Progress, id: &str) {
    let Some(mc) = &svc.cloud.master else {
        return;
    };
    tracing::info!(
        id,
        "accepted the key the VM holds, read through its guest agent (on_first_auth)"
    );
    progress.fire(
        "salt/key",
        json!({"result": true, "act": mc.accept_act, "id": id}),
    );
    let finger = first_seen(&mc.state_dir, id).unwrap_or_default();
    if drop_pending(&mc.pki_dir, id, &finger) {
        tracing::warn!(id, "removed a pending key that is not the key the VM holds (another host signed in under its id)");
        progress.fire(
            "virtseed/key/denied",
            json!({"id": id, "reason": "a pending key that is not the one the VM holds"}),
        );
    }
}

/// Until `deadline`: VM `id`'s own key read from inside it and accepted (see the module).
pub async fn pin(
    svc: Arc<Service>,
    progress: Arc<dyn Progress>,
    id: &str,
    guest_pki: &str,
    deadline: Instant,
) -> Result<ProofKey, String> {
    loop {
        let (s, i, dir) = (svc.clone(), id.to_string(), guest_pki.to_string());
        let last = match tokio::task::spawn_blocking(move || pin_once(&s, &i, &dir)).await {
            Ok(Ok(key)) => {
                let act = svc.cloud.master.as_ref().map_or("accept", |m| m.accept_act);
                tracing::info!(
                    id,
                    "accepted the key the VM holds, read through its guest agent (on_first_auth)"
                );
                progress.fire("salt/key", json!({"result": true, "act": act, "id": id}));
                if let Some(mc) = &svc.cloud.master {
                    let finger = first_seen(&mc.state_dir, id).unwrap_or_default();
                    if drop_pending(&mc.pki_dir, id, &finger) {
                        tracing::warn!(id, "removed a pending key for a VM virtseed made that is not the key the VM holds (another host signed in under its id)");
                        progress.fire(
                            "virtseed/key/denied",
                            json!({"id": id, "reason": "a pending key that is not the one the VM holds"}),
                        );
                    }
                }
                return Ok(key);
            }
            Ok(Err(PinError::Refused(why))) => return Err(why),
            Ok(Err(PinError::NotYet(why))) => why,
            Err(e) => e.to_string(),
        };
        if Instant::now() + PIN_EVERY >= deadline {
            return Err(format!(
                "no key of {id} accepted: virtseed could not read the key the VM holds ({last}); accept: on_first_auth reads it through the QEMU guest agent: install qemu-guest-agent in the template and keep its org.qemu.guest_agent.0 channel"
            ));
        }
        tokio::time::sleep(PIN_EVERY).await;
    }
}

const PIN_EVERY: Duration = Duration::from_secs(2);

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

/// Watches `salt/auth` for the denials the master recorded for VMs virtseed made.
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
        if act == "pend" {
            // A sign-in under `id` is pending: if `id` is a VM virtseed made for
            // on_first_auth, the key it holds is read from inside it and accepted, whatever
            // key is pending (the pending one may be another host's).
            let (s, i) = (svc.clone(), id.clone());
            let dir = super::autoaccept::guest_pki_dir(&yaml_serde::Mapping::new());
            let r = tokio::task::spawn_blocking(move || pin_once(&s, &i, &dir)).await;
            match r {
                Ok(Ok(_)) => accepted(&svc, &*progress, &id),
                Ok(Err(PinError::NotYet(why))) => {
                    tracing::info!(id, "pending key not accepted yet: {why}")
                }
                Ok(Err(PinError::Refused(why))) => {
                    tracing::debug!(id, "pending key left alone: {why}")
                }
                Err(e) => tracing::warn!(id, "deciding on a pending key: {e}"),
            }
            continue;
        }
        if act != "denied" {
            continue;
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    const KEY_B: &str = "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n";

    #[test]
    fn a_key_the_master_has_for_another_id_is_found_in_any_list() {
        let d = tempfile::tempdir().unwrap();
        let put = |list: &str, id: &str, key: &str| {
            std::fs::create_dir_all(d.path().join(list)).unwrap();
            std::fs::write(d.path().join(list).join(id), key).unwrap();
        };
        let a = pem_finger(KEY_A);
        assert_eq!(
            known_elsewhere(d.path(), "web1", &a),
            None,
            "no lists at all"
        );
        // The clone's own entry is not "elsewhere"; neither is another key.
        put("minions_pre", "web1", KEY_A);
        put("minions", "db1", KEY_B);
        assert_eq!(known_elsewhere(d.path(), "web1", &a), None);
        for list in [
            "minions",
            "minions_pre",
            "minions_rejected",
            "minions_denied",
        ] {
            let d2 = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(d2.path().join(list)).unwrap();
            // Salt's files may have \r\n or no final newline: the fingerprint is the key's.
            std::fs::write(
                d2.path().join(list).join("template"),
                KEY_A.replace('\n', "\r\n"),
            )
            .unwrap();
            assert_eq!(
                known_elsewhere(d2.path(), "web1", &a),
                Some(("template".to_string(), list)),
                "{list}"
            );
        }
    }
}
