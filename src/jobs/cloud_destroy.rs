//! `cloud.destroy NAMES`: destroy VMs virtseed made, with their volumes, seeds and keys.

use super::cloud_args as a;
use super::Outcome;
use crate::cloud::service::{BusProgress, Service};
use salt_proto::publish::Publication;
use serde_json::json;
use std::sync::Arc;

pub const NAME: &str = "cloud.destroy";

pub async fn run(p: &Publication, svc: &Arc<Service>) -> Outcome {
    let names = a::names(
        p.args
            .first()
            .or_else(|| p.kwarg("instances"))
            .or_else(|| p.kwarg("names")),
    );
    if names.is_empty() {
        return Outcome::error("cloud.destroy: one or more instance names must be given");
    }
    let progress = Arc::new(BusProgress::new(
        svc.events.clone(),
        String::new(),
        String::new(),
    ));
    let res = svc.cloud.destroy_many(&names, progress.clone()).await;
    progress.flush().await;
    let map = res
        .into_iter()
        .map(|(n, r)| (n, r.unwrap_or_else(|e| json!({"Error": e.to_string()}))))
        .collect::<serde_json::Map<_, _>>();
    a::report(serde_json::Value::Object(map))
}
