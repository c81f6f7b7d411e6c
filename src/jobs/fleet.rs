//! What operators run against `'*'` after every change, answered for a process that has no
//! Salt modules to sync and no states to apply: successful where that is the truth, so a
//! fleet-wide run stays green (docs/operating.md, "The sidecar among the minions").
//!
//! - `saltutil.sync_*`: nothing synced (`[]`; `sync_all` the same per module type).
//! - `saltutil.refresh_pillar` / `refresh_grains`: reports its grains to the master again and
//!   takes the pillar it compiles (true once it has); `refresh_modules`: nothing to reload.
//! - `saltutil.running`: the jobs it is running, as a minion lists them (`salt-run
//!   jobs.active`).
//! - `state.apply` / `highstate` / `sls`: one state that says no states are applied here,
//!   result true (Salt's `check_result`, which orchestration's `salt.state` uses, fails an
//!   empty return); `state.running`: none.

use super::{facts::Facts, Outcome, Running};
use crate::bus::channel::Channel;
use salt_proto::msgpack::{self, text};
use salt_proto::publish::Publication;
use salt_proto::Value;

/// `saltutil.sync_all`'s module types on a minion with a remote file client.
const SYNC_TYPES: &[&str] = &[
    "clouds",
    "beacons",
    "modules",
    "states",
    "sdb",
    "grains",
    "renderers",
    "returners",
    "output",
    "utils",
    "log_handlers",
    "executors",
    "proxymodules",
    "engines",
    "thorium",
    "serializers",
    "matchers",
];

pub const FUNCTIONS: &[&str] = &[
    "saltutil.sync_all",
    "saltutil.sync_beacons",
    "saltutil.sync_clouds",
    "saltutil.sync_engines",
    "saltutil.sync_executors",
    "saltutil.sync_grains",
    "saltutil.sync_log_handlers",
    "saltutil.sync_matchers",
    "saltutil.sync_modules",
    "saltutil.sync_output",
    "saltutil.sync_proxymodules",
    "saltutil.sync_renderers",
    "saltutil.sync_returners",
    "saltutil.sync_sdb",
    "saltutil.sync_serializers",
    "saltutil.sync_states",
    "saltutil.sync_thorium",
    "saltutil.sync_utils",
    "saltutil.refresh_pillar",
    "saltutil.refresh_grains",
    "saltutil.refresh_modules",
    "saltutil.running",
    "state.apply",
    "state.highstate",
    "state.sls",
    "state.running",
];

pub async fn run(p: &Publication, facts: &Facts, channel: &Channel, running: &Running) -> Outcome {
    let id = channel.id();
    match p.fun.as_str() {
        "saltutil.sync_all" => Outcome::ok(msgpack::map(
            SYNC_TYPES.iter().map(|t| (*t, Value::Array(Vec::new()))),
        )),
        "saltutil.refresh_pillar" | "saltutil.refresh_grains" => {
            match facts.report(channel).await {
                Ok(()) => Outcome::ok(Value::Boolean(true)),
                Err(e) => Outcome::error(format!(
                    "{}: the master did not answer `_pillar`: {e}",
                    p.fun
                )),
            }
        }
        "saltutil.refresh_modules" => Outcome::ok(Value::Boolean(true)),
        "saltutil.running" => Outcome::ok(Value::Array(running.all())),
        "state.running" => Outcome::ok(Value::Array(Vec::new())),
        "state.apply" | "state.highstate" | "state.sls" => Outcome::ok(nothing_applied(id)),
        // saltutil.sync_<type>
        _ => Outcome::ok(Value::Array(Vec::new())),
    }
}

/// One state entry, as the `highstate` outputter and `check_result` read them.
fn nothing_applied(id: &str) -> Value {
    let now = chrono_like_now();
    msgpack::map([(
        format!("virtseed_|-{id}_|-{id}_|-no_states"),
        msgpack::map([
            ("__id__", text(id)),
            ("name", text(id)),
            ("result", Value::Boolean(true)),
            ("changes", msgpack::map::<&str>([])),
            (
                "comment",
                text(format!(
                    "{id} is virtseed's sidecar, not a host to configure: it applies no states"
                )),
            ),
            ("__run_num__", Value::from(0)),
            ("start_time", text(now)),
            ("duration", Value::F64(0.0)),
        ]),
    )])
}

/// `HH:MM:SS.ffffff`, as Salt's state `start_time` (UTC here).
fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}
