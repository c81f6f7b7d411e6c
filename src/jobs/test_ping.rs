//! `test.ping`: True.

use super::Outcome;
use salt_proto::publish::Publication;
use salt_proto::Value;

pub const NAME: &str = "test.ping";

pub fn run(_p: &Publication) -> Outcome {
    Outcome::ok(Value::Boolean(true))
}
