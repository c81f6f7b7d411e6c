//! `test.sleep length`: sleeps, then returns True. Proves that a long job does not delay
//! others.

use super::Outcome;
use salt_proto::msgpack;
use salt_proto::publish::Publication;
use salt_proto::Value;
use std::time::Duration;

pub const NAME: &str = "test.sleep";

/// An hour at most: a typo should not park a task for days.
const MAX_SECONDS: f64 = 3600.0;

pub async fn run(p: &Publication) -> Outcome {
    let arg = p.args.first().or_else(|| p.kwarg("length"));
    let secs = match arg {
        Some(Value::Integer(i)) => i.as_f64().unwrap_or(-1.0),
        Some(Value::F64(f)) => *f,
        Some(v) => msgpack::str_of(v)
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1.0),
        None => -1.0,
    };
    if !(0.0..=MAX_SECONDS).contains(&secs) {
        return Outcome::error("test.sleep takes `length`, a number of seconds from 0 to 3600");
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    Outcome::ok(Value::Boolean(true))
}
