//! Readiness: a new minion is up when it has authenticated, started, and answered a real
//! `test.ping` published through the master (events alone are not the authority).

use crate::bus::clear::ClearChannel;
use salt_proto::event::Event;
use salt_proto::msgpack;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// When each readiness milestone was seen, in ms since the request began.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ready {
    pub first_auth_ms: Option<u64>,
    pub minion_start_ms: Option<u64>,
    pub first_ping_ms: u64,
}

/// How long the first readiness ping is given, and the most any later one is. Long enough
/// for a CPU-starved minion: every ping asked again is one more job, and Salt's minion
/// rebuilds all its loaders for each job (`gen_modules` in `_thread_return`, seconds under
/// TCG), so asking again after 10 s made ten clones on two cores run five pings each and
/// answer the first ~100 s after their start. A minion that is not starved answers within
/// seconds, long before either.
const PING_WAIT_FIRST: Duration = Duration::from_secs(30);
const PING_WAIT_MAX: Duration = Duration::from_secs(60);

/// Waits for `id` to authenticate, start and answer test.ping, until `deadline`.
pub async fn wait_minion(
    clear: &ClearChannel,
    events: &mut broadcast::Receiver<Event>,
    id: &str,
    t0: Instant,
    deadline: Instant,
) -> Result<Ready, String> {
    let ms = || t0.elapsed().as_millis() as u64;
    let mut ready = Ready::default();
    let start_tag = format!("salt/minion/{id}/start");
    // Authenticated and started.
    while ready.minion_start_ms.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{id} did not start its minion in time ({})",
                if ready.first_auth_ms.is_some() {
                    "it authenticated"
                } else {
                    "it never authenticated"
                }
            ));
        }
        match tokio::time::timeout(left, events.recv()).await {
            Err(_) => continue,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) => return Err("the master's event bus closed".into()),
            Ok(Ok(ev)) => {
                let data_id = msgpack::get(&ev.data, "id").and_then(msgpack::str_of);
                if ev.tag == "salt/auth" && data_id == Some(id) {
                    let act = msgpack::get(&ev.data, "act").and_then(msgpack::str_of);
                    if act == Some("accept") && ready.first_auth_ms.is_none() {
                        ready.first_auth_ms = Some(ms());
                    }
                } else if ev.tag == start_tag {
                    ready.minion_start_ms = Some(ms());
                }
            }
        }
    }
    // One real ping, asked again if it goes unanswered, waiting longer each time (every
    // ping asked again is one more job for the minion: see PING_WAIT_FIRST). The answer to
    // any of them counts: a starved minion answers the first ping while the next one is
    // awaited (counting only the newest kept ten clones on two cores waiting ~300 s after
    // their minions had answered).
    let mut pings = Pings::new(id);
    let mut wait = PING_WAIT_FIRST;
    loop {
        if Instant::now() >= deadline {
            return Err(format!("{id} started but did not answer test.ping in time"));
        }
        let p = clear
            .publish(id, "glob", "test.ping", vec![])
            .await
            .map_err(|e| format!("publishing test.ping to {id}: {e}"))?;
        pings.published(&p.jid);
        let until = (Instant::now() + wait).min(deadline);
        if wait > PING_WAIT_FIRST {
            tracing::info!(
                id,
                "no answer to test.ping yet; asking again (waiting {}s)",
                wait.as_secs()
            );
        }
        wait = (wait * 2).min(PING_WAIT_MAX);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, events.recv()).await {
                Err(_) => break,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) => return Err("the master's event bus closed".into()),
                Ok(Ok(ev)) if pings.answered(&ev) => {
                    ready.first_ping_ms = ms();
                    return Ok(ready);
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// The readiness pings published to one minion, and whether an event answers one of them.
struct Pings<'a> {
    id: &'a str,
    /// `salt/job/JID/ret/ID` of each ping published.
    ret_tags: Vec<String>,
}

impl<'a> Pings<'a> {
    fn new(id: &'a str) -> Self {
        Pings {
            id,
            ret_tags: Vec::new(),
        }
    }

    fn published(&mut self, jid: impl std::fmt::Display) {
        self.ret_tags
            .push(format!("salt/job/{jid}/ret/{}", self.id));
    }

    /// The return of one of our pings, with `return: true`.
    fn answered(&self, ev: &Event) -> bool {
        self.ret_tags.contains(&ev.tag)
            && msgpack::get(&ev.data, "return") == Some(&salt_proto::Value::Boolean(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use salt_proto::Value;

    fn ret(jid: &str, id: &str, v: Value) -> Event {
        Event {
            tag: format!("salt/job/{jid}/ret/{id}"),
            data: Value::Map(vec![(Value::String("return".into()), v)]),
        }
    }

    #[test]
    fn a_late_answer_to_an_earlier_ping_counts() {
        let mut p = Pings::new("web1");
        p.published("20261202000000000001");
        p.published("20261202000000000002");
        assert!(p.answered(&ret("20261202000000000001", "web1", Value::Boolean(true))));
        assert!(p.answered(&ret("20261202000000000002", "web1", Value::Boolean(true))));
    }

    #[test]
    fn other_jobs_minions_and_answers_do_not() {
        let mut p = Pings::new("web1");
        p.published("20261202000000000001");
        assert!(!p.answered(&ret("20261202000000000009", "web1", Value::Boolean(true))));
        assert!(!p.answered(&ret("20261202000000000001", "web10", Value::Boolean(true))));
        assert!(!p.answered(&ret("20261202000000000001", "web1", Value::Boolean(false))));
        assert!(!p.answered(&ret("20261202000000000001", "web1", Value::Nil)));
        let mut ev = ret("20261202000000000001", "web1", Value::Boolean(true));
        ev.tag = "salt/job/20261202000000000001/new".into();
        assert!(!p.answered(&ev));
    }
}
