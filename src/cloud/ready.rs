//! Readiness: a new minion is up when it has answered a job with a proof that only its own
//! key can make.
//!
//! Nothing on the master's bus is authenticated: any accepted minion can fire
//! `salt/minion/<id>/start` or `salt/job/<jid>/ret/<id>` for any id, and write a return for
//! any id into the job cache (`_syndic_return`). So bus events are only hints here (when to
//! ask, and the `first_auth`/`minion_start` timings), and the answer that counts is the one
//! that proves the clone's key: the readiness job asks the minion for
//! HMAC-SHA256(its `minion.pem`, a fresh nonce), through Salt's own `slsutil.renderer` and
//! `hashutil.hmac_compute`, and only the key virtseed minted for the clone gives the value
//! virtseed expects. Another minion sees the nonce in the publication (without
//! `zmq_filtering`) but cannot compute the answer.
//!
//! With `accept: on_first_auth` the key is the one read from inside the VM
//! (`super::autoaccept`). With `accept: manual` too, once the key the operator accepted for
//! the clone's name is the one the VM holds (`autoaccept::held_and_accepted`): an impostor's
//! key accepted by mistake never makes the clone ready. Only a manual clone of a base without
//! the guest agent's channel has no key virtseed can know: its readiness is a plain
//! `test.ping` answer, only as good as the bus, and its return says so (`readiness`).

use crate::bus::clear::ClearChannel;
use hmac::{KeyInit, Mac};
use salt_proto::event::Event;
use salt_proto::msgpack;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use zeroize::Zeroizing;

/// When each readiness milestone was seen, in ms since the request began. `first_auth` and
/// `minion_start` are hints from the bus (the last seen before the proven answer);
/// `first_ping` is the proven answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ready {
    pub first_auth_ms: Option<u64>,
    pub minion_start_ms: Option<u64>,
    pub first_ping_ms: u64,
}

/// A clone's private key (its PEM, as the guest's `minion.pem` holds it: minted by virtseed,
/// or read from inside the VM for `on_first_auth`): what the clone's readiness answer must
/// prove it holds. Never printed.
#[derive(Clone)]
pub struct ProofKey(Zeroizing<String>);

impl ProofKey {
    pub fn new(pem: Zeroizing<String>) -> Self {
        ProofKey(pem)
    }

    /// HMAC-SHA256 of `nonce` keyed with the PEM (surrounding white space trimmed, as the
    /// challenge trims the file it reads), in hex: `hashutil.hmac_compute`'s answer.
    fn answer(&self, nonce: &str) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.0.trim().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(nonce.as_bytes());
        hex_of(&mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofKey(<secret>)")
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The readiness job for a clone with a known key: Salt's renderer computes, on the minion,
/// the HMAC of `nonce` keyed with the minion's own private key file.
fn challenge(nonce: &str) -> (&'static str, Vec<salt_proto::Value>) {
    let template = format!(
        "{{{{ salt[\"hashutil.hmac_compute\"](\"{nonce}\", salt[\"file.read\"](salt[\"config.get\"](\"pki_dir\") ~ \"/minion.pem\") | trim) }}}}"
    );
    let kwargs = msgpack::map([
        ("string", msgpack::text(template)),
        ("default_renderer", msgpack::text("jinja")),
        ("__kwarg__", salt_proto::Value::Boolean(true)),
    ]);
    ("slsutil.renderer", vec![kwargs])
}

/// How long the first readiness ping is given, and the most any later one is. Long enough
/// for a CPU-starved minion: every ping asked again is one more job, and Salt's minion
/// rebuilds all its loaders for each job (`gen_modules` in `_thread_return`, seconds under
/// TCG), so asking again after 10 s made ten clones on two cores run five pings each and
/// answer the first ~100 s after their start. A minion that is not starved answers within
/// seconds, long before either.
const PING_WAIT_FIRST: Duration = Duration::from_secs(30);
const PING_WAIT_MAX: Duration = Duration::from_secs(60);
/// A start event asks again at once, unless a ping went out this recently: a real start that
/// follows a forged one is asked at once, and a flood of forged ones costs the real minion at
/// most one job per this long.
const START_ASKS_AFTER: Duration = Duration::from_secs(5);

/// Waits until `id` answers its readiness job (with the proof of `key`, when virtseed minted
/// it), until `deadline`. The job is first published when the minion's start event is seen,
/// and asked again as it goes unanswered.
pub async fn wait_minion(
    clear: &ClearChannel,
    events: &mut broadcast::Receiver<Event>,
    id: &str,
    key: Option<&ProofKey>,
    t0: Instant,
    deadline: Instant,
) -> Result<Ready, String> {
    let ms = || t0.elapsed().as_millis() as u64;
    let mut ready = Ready::default();
    let start_tag = format!("salt/minion/{id}/start");
    let mut pings = Pings::new(id, key);
    // When the next readiness job goes out: at the first start event, then as each goes
    // unanswered, waiting longer each time (see PING_WAIT_FIRST).
    let mut next: Option<Instant> = None;
    let mut last_sent: Option<Instant> = None;
    let mut wait = PING_WAIT_FIRST;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(match (&last_sent, ready.first_auth_ms) {
                (Some(_), _) => {
                    format!("{id} started but did not answer its readiness check in time")
                }
                (None, Some(_)) => {
                    format!("{id} did not start its minion in time (it authenticated)")
                }
                (None, None) => {
                    format!("{id} did not start its minion in time (no minion signed in under this name: check the VM's console and network; a base whose guest takes no identity from the seed, with neither virtseed's guest side nor cloud-init's salt_minion module, keeps its template's minion id: docs/golden-images.md)")
                }
            });
        }
        if next.is_some_and(|at| now >= at) {
            let nonce = salt_proto::auth::new_nonce();
            let (fun, arg) = match key {
                Some(_) => challenge(&nonce),
                None => ("test.ping", vec![]),
            };
            if last_sent.is_some() {
                tracing::info!(
                    id,
                    "no proven answer yet; asking again (waiting {}s)",
                    wait.as_secs()
                );
            }
            let p = clear
                .publish(id, "glob", fun, arg)
                .await
                .map_err(|e| format!("publishing the readiness check to {id}: {e}"))?;
            pings.published(&p.jid, &nonce);
            last_sent = Some(now);
            next = Some(now + wait);
            wait = (wait * 2).min(PING_WAIT_MAX);
        }
        let until = next.unwrap_or(deadline).min(deadline);
        let ev =
            match tokio::time::timeout(until.saturating_duration_since(now), events.recv()).await {
                Err(_) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) => return Err("the master's event bus closed".into()),
                Ok(Ok(ev)) => ev,
            };
        let data_id = msgpack::get(&ev.data, "id").and_then(msgpack::str_of);
        if ev.tag == "salt/auth" && data_id == Some(id) {
            if msgpack::get(&ev.data, "act").and_then(msgpack::str_of) == Some("accept") {
                ready.first_auth_ms = Some(ms());
            }
        } else if ev.tag == start_tag {
            ready.minion_start_ms = Some(ms());
            if last_sent.is_none_or(|t| t.elapsed() >= START_ASKS_AFTER) {
                next = Some(Instant::now());
            }
        } else {
            match pings.check(&ev) {
                Answer::Proven => {
                    ready.first_ping_ms = ms();
                    return Ok(ready);
                }
                Answer::Unproven => tracing::warn!(
                    id,
                    tag = %ev.tag,
                    sender = sender(&ev),
                    "ignored an answer to the readiness check that does not prove the clone's key"
                ),
                Answer::NotOurs => {}
            }
        }
    }
}

/// Who sent an event, where Salt says: a minion's `_minion_event` in its `tag`/`data` form
/// carries the sender's authenticated id at the top of the data.
pub fn sender(ev: &Event) -> &str {
    match msgpack::get(&ev.data, "cmd").and_then(msgpack::str_of) {
        Some("_minion_event") => msgpack::get(&ev.data, "id")
            .and_then(msgpack::str_of)
            .unwrap_or("unknown"),
        _ => "unknown",
    }
}

/// What an event says about the readiness checks.
#[derive(Debug, PartialEq)]
enum Answer {
    /// The return of one of our checks, with the proof (or, without a key, `true`).
    Proven,
    /// A return under one of our checks' tags whose content proves nothing.
    Unproven,
    NotOurs,
}

/// The readiness checks published to one minion, and whether an event answers one of them.
struct Pings<'a> {
    id: &'a str,
    key: Option<&'a ProofKey>,
    /// `salt/job/JID/ret/ID` of each check published, with the answer it expects.
    expected: Vec<(String, Zeroizing<String>)>,
}

impl<'a> Pings<'a> {
    fn new(id: &'a str, key: Option<&'a ProofKey>) -> Self {
        Pings {
            id,
            key,
            expected: Vec::new(),
        }
    }

    fn published(&mut self, jid: impl std::fmt::Display, nonce: &str) {
        let answer = self.key.map(|k| k.answer(nonce)).unwrap_or_default();
        self.expected.push((
            format!("salt/job/{jid}/ret/{}", self.id),
            Zeroizing::new(answer),
        ));
    }

    /// Any of our checks counts: a starved minion answers the first while the next one is
    /// awaited (counting only the newest kept ten clones on two cores waiting ~300 s after
    /// their minions had answered).
    fn check(&self, ev: &Event) -> Answer {
        let Some((_, want)) = self.expected.iter().find(|(tag, _)| *tag == ev.tag) else {
            return Answer::NotOurs;
        };
        let ret = msgpack::get(&ev.data, "return");
        let proven = match self.key {
            None => ret == Some(&salt_proto::Value::Boolean(true)),
            Some(_) => ret
                .and_then(msgpack::str_of)
                .is_some_and(|got| got.trim() == want.as_str()),
        };
        if proven {
            Answer::Proven
        } else {
            Answer::Unproven
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salt_proto::Value;

    const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nAAA\n-----END RSA PRIVATE KEY-----\n";

    fn key() -> ProofKey {
        ProofKey::new(Zeroizing::new(PEM.into()))
    }

    fn ret(jid: &str, id: &str, v: Value) -> Event {
        Event {
            tag: format!("salt/job/{jid}/ret/{id}"),
            data: Value::Map(vec![(Value::String("return".into()), v)]),
        }
    }

    #[test]
    fn the_answer_is_hashutil_hmac_compute_of_the_trimmed_key_file() {
        // Python: hmac.new(PEM.strip().encode(), b"0123abcd", hashlib.sha256).hexdigest()
        assert_eq!(
            key().answer("0123abcd"),
            "dc2a52145de13cd38d691f85e5951c42b3ff3175794980496afa7327390ce57e"
        );
        assert!(!format!("{:?}", key()).contains("AAA"));
    }

    #[test]
    fn a_proven_late_answer_to_an_earlier_check_counts() {
        let k = key();
        let mut p = Pings::new("web1", Some(&k));
        p.published("20261202000000000001", "n1");
        p.published("20261202000000000002", "n2");
        let a1 = Value::String(k.answer("n1").into());
        assert_eq!(
            p.check(&ret("20261202000000000001", "web1", a1)),
            Answer::Proven
        );
        // Salt's renderer may end the text with a newline.
        let a2 = Value::String(format!("{}\n", k.answer("n2")).into());
        assert_eq!(
            p.check(&ret("20261202000000000002", "web1", a2)),
            Answer::Proven
        );
    }

    #[test]
    fn what_a_forger_can_send_proves_nothing() {
        let k = key();
        let mut p = Pings::new("web1", Some(&k));
        p.published("20261202000000000001", "n1");
        let jid = "20261202000000000001";
        // `true` (a forged test.ping), another nonce's answer, garbage: unproven.
        for v in [
            Value::Boolean(true),
            Value::String(k.answer("n2").into()),
            Value::String("00".into()),
            Value::Nil,
        ] {
            assert_eq!(p.check(&ret(jid, "web1", v)), Answer::Unproven);
        }
        // Other jobs and other minions are not ours at all.
        let a = Value::String(k.answer("n1").into());
        assert_eq!(
            p.check(&ret("20261202000000000009", "web1", a.clone())),
            Answer::NotOurs
        );
        assert_eq!(p.check(&ret(jid, "web10", a.clone())), Answer::NotOurs);
        let mut ev = ret(jid, "web1", a);
        ev.tag = format!("salt/job/{jid}/new");
        assert_eq!(p.check(&ev), Answer::NotOurs);
    }

    #[test]
    fn without_a_known_key_a_true_answer_counts() {
        let mut p = Pings::new("web1", None);
        p.published("20261202000000000001", "n1");
        let jid = "20261202000000000001";
        assert_eq!(
            p.check(&ret(jid, "web1", Value::Boolean(true))),
            Answer::Proven
        );
        assert_eq!(
            p.check(&ret(jid, "web1", Value::Boolean(false))),
            Answer::Unproven
        );
    }

    #[test]
    fn the_challenge_asks_the_renderer_for_the_hmac_of_the_nonce() {
        let (fun, arg) = challenge("abcd");
        assert_eq!(fun, "slsutil.renderer");
        let t = msgpack::get(&arg[0], "string")
            .and_then(msgpack::str_of)
            .unwrap();
        assert_eq!(
            t,
            r#"{{ salt["hashutil.hmac_compute"]("abcd", salt["file.read"](salt["config.get"]("pki_dir") ~ "/minion.pem") | trim) }}"#
        );
        assert_eq!(
            msgpack::get(&arg[0], "default_renderer").and_then(msgpack::str_of),
            Some("jinja")
        );
    }
}
