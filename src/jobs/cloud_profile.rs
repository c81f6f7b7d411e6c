//! `cloud.profile PROFILE NAMES [wait_for_minion=..] [minion_timeout=..] [KEY=VALUE..]`:
//! clone one VM per name, wait for each minion's first ping, return salt-cloud's
//! `{name: {...}}`. Other keyword arguments are profile keys over the profile's own (what a
//! salt-cloud map entry or `vm_overrides` sets for one VM).

use super::cloud_args as a;
use super::Outcome;
use crate::cloud::service::{Overrides, Service};
use salt_proto::publish::Publication;
use std::sync::Arc;

pub const NAME: &str = "cloud.profile";

pub async fn run(p: &Publication, svc: &Arc<Service>) -> Outcome {
    let profile = a::text(
        p.args
            .first()
            .or_else(|| p.kwarg("prof"))
            .or_else(|| p.kwarg("profile")),
    );
    let names = a::names(
        p.args
            .get(1)
            .or_else(|| p.kwarg("instances"))
            .or_else(|| p.kwarg("names")),
    );
    let Some(profile) = profile else {
        return Outcome::error("cloud.profile: a profile (or prof) must be given");
    };
    let minion_pub = match a::minion_pub(p.kwarg("minion_pub")) {
        Ok(k) => k,
        Err(e) => return Outcome::error(format!("cloud.profile: {e}")),
    };
    let ov = Overrides {
        wait_for_minion: a::boolean(p.kwarg("wait_for_minion")),
        minion_timeout: a::number(p.kwarg("minion_timeout")),
        minion_pub,
    };
    let keys = match a::profile_keys(p, &["prof", "profile"]) {
        Ok(k) => k,
        Err(e) => return Outcome::error(format!("cloud.profile: {e}")),
    };
    let prof = match svc.cloud.config.profile_with(&profile, keys) {
        Ok(p) => p,
        Err(e) => return Outcome::error(format!("cloud.profile: {e}")),
    };
    match svc.create(prof, &names, a::job_ref(p), ov).await {
        Ok(map) => a::report(serde_json::Value::Object(map.into_iter().collect())),
        Err(e) => Outcome::error(e.to_string()),
    }
}
