//! `test.arg`: echoes its arguments as `{"args": [...], "kwargs": {...}}`, like Salt's.

use super::Outcome;
use salt_proto::msgpack::{map, text};
use salt_proto::publish::Publication;
use salt_proto::Value;

pub const NAME: &str = "test.arg";

pub fn run(p: &Publication) -> Outcome {
    let kwargs = Value::Map(
        p.kwargs
            .iter()
            .map(|(k, v)| (text(k.clone()), v.clone()))
            .collect(),
    );
    Outcome::ok(map([
        ("args", Value::Array(p.args.clone())),
        ("kwargs", kwargs),
    ]))
}
