//! `test.version`: the sidecar's version (a minion returns its Salt version).

use super::Outcome;
use salt_proto::msgpack::text;
use salt_proto::publish::Publication;

pub const NAME: &str = "test.version";

pub fn run(_p: &Publication) -> Outcome {
    Outcome::ok(text(concat!("virtseed ", env!("CARGO_PKG_VERSION"))))
}
