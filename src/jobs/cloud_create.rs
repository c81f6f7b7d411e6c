//! `cloud.create PROVIDER NAMES key=value...`: clone with profile keys given as arguments
//! (salt-cloud's `cloud.create`), then as `cloud.profile`.

use super::cloud_args as a;
use super::Outcome;
use crate::cloud::service::{Overrides, Service};
use salt_proto::publish::Publication;
use std::sync::Arc;

pub const NAME: &str = "cloud.create";

pub async fn run(p: &Publication, svc: &Arc<Service>) -> Outcome {
    let provider = a::text(p.args.first().or_else(|| p.kwarg("provider")));
    let names = a::names(
        p.args
            .get(1)
            .or_else(|| p.kwarg("instances"))
            .or_else(|| p.kwarg("names")),
    );
    let Some(provider) = provider else {
        return Outcome::error("cloud.create: a provider must be given");
    };
    let keys = match a::profile_keys(p, &["provider"]) {
        Ok(k) => k,
        Err(e) => return Outcome::error(format!("cloud.create: {e}")),
    };
    let prof = match svc.cloud.config.adhoc(&provider, keys) {
        Ok(p) => p,
        Err(e) => return Outcome::error(format!("cloud.create: {e}")),
    };
    let minion_pub = match a::minion_pub(p.kwarg("minion_pub")) {
        Ok(k) => k,
        Err(e) => return Outcome::error(format!("cloud.create: {e}")),
    };
    let ov = Overrides {
        wait_for_minion: a::boolean(p.kwarg("wait_for_minion")),
        minion_timeout: a::number(p.kwarg("minion_timeout")),
        minion_pub,
    };
    match svc.create(prof, &names, a::job_ref(p), ov).await {
        Ok(map) => a::report(serde_json::Value::Object(map.into_iter().collect())),
        Err(e) => Outcome::error(e.to_string()),
    }
}
