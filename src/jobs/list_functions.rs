//! `sys.list_functions`: the functions the sidecar answers.

use super::{Outcome, FUNCTIONS};
use salt_proto::msgpack::text;
use salt_proto::publish::Publication;
use salt_proto::Value;

pub const NAME: &str = "sys.list_functions";

pub fn run(_p: &Publication) -> Outcome {
    let mut names: Vec<&str> = FUNCTIONS.to_vec();
    names.sort_unstable();
    Outcome::ok(Value::Array(names.into_iter().map(text).collect()))
}
