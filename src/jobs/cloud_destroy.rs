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
    let cloud = svc.cloud.clone();
    let pr = progress.clone();
    let res = tokio::task::spawn_blocking(move || {
        names
            .iter()
            .map(|n| {
                let v = match cloud.destroy_one(n, &*pr) {
                    Ok(v) => v,
                    Err(e) => json!({"Error": e.to_string()}),
                };
                (n.clone(), v)
            })
            .collect::<serde_json::Map<_, _>>()
    })
    .await;
    progress.flush().await;
    match res {
        Ok(map) => a::report(serde_json::Value::Object(map)),
        Err(e) => Outcome::error(format!("cloud.destroy: {e}")),
    }
}
