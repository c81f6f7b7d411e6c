//! `sys.list_functions`: the functions the sidecar answers.

use super::{fleet, minion_data, Outcome, FUNCTIONS};
use salt_proto::msgpack::text;
use salt_proto::publish::Publication;
use salt_proto::Value;

pub const NAME: &str = "sys.list_functions";

pub fn run(_p: &Publication) -> Outcome {
    let mut names: Vec<&str> = [
        FUNCTIONS,
        fleet::FUNCTIONS,
        minion_data::GRAINS,
        minion_data::PILLAR,
    ]
    .concat();
    names.sort_unstable();
    Outcome::ok(Value::Array(names.into_iter().map(text).collect()))
}
