//! `saltutil.find_job jid`: the job's load while it runs, `{}` once it is done. The `salt`
//! CLI sends this to minions that are slow to return, and keeps waiting while they answer.

use super::{Outcome, Running};
use salt_proto::msgpack;
use salt_proto::publish::Publication;

pub const NAME: &str = "saltutil.find_job";

pub fn run(p: &Publication, running: &Running) -> Outcome {
    let jid = p
        .args
        .first()
        .or_else(|| p.kwarg("jid"))
        .and_then(msgpack::str_of);
    match jid {
        Some(jid) => Outcome::ok(
            running
                .get(jid)
                .unwrap_or_else(|| msgpack::map::<String>([])),
        ),
        None => Outcome::error("saltutil.find_job takes a jid"),
    }
}
