//! `test.version`: the Salt release the sidecar speaks (the master's, from `salt_version`),
//! then virtseed's own: `3007.17 (virtseed 0.1.0)`. `salt-run manage.versions` reads the
//! first and counts the sidecar up to date with its master; without `salt_version` it is
//! `virtseed 0.1.0` alone (and manage.versions takes virtseed's version for Salt's).

use super::Outcome;
use salt_proto::msgpack::text;
use salt_proto::publish::Publication;
use salt_proto::version::SaltVersion;

pub const NAME: &str = "test.version";

pub fn run(_p: &Publication, salt: Option<SaltVersion>) -> Outcome {
    let ours = concat!("virtseed ", env!("CARGO_PKG_VERSION"));
    Outcome::ok(text(match salt {
        Some(v) => format!("{v} ({ours})"),
        None => ours.to_string(),
    }))
}
