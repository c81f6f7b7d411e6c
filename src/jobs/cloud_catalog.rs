//! `cloud.list_images`, `cloud.list_sizes` and `cloud.list_locations` (salt-cloud's
//! `--list-images`, `--list-sizes`, `--list-locations`), per provider alias:
//! `{alias: {"libvirt": {...}}}`.
//!
//! What each means for libvirt: images are the base domains a profile can clone (shut off,
//! not made by virtseed) on the provider's host; locations are the provider's hosts with
//! their free memory; libvirt has no sizes, so sizes are what each profile sets.

use super::cloud_args as a;
use super::Outcome;
use crate::cloud::service::Service;
use crate::config::cloud::Provider;
use salt_proto::publish::Publication;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub const LIST_IMAGES: &str = "cloud.list_images";
pub const LIST_SIZES: &str = "cloud.list_sizes";
pub const LIST_LOCATIONS: &str = "cloud.list_locations";

const NO_SIZES: &str = "libvirt has no instance sizes: a clone has its base's vCPUs, memory and disk unless its profile sets cpus, memory (MiB, or '2G') and disk (GiB, grows the first disk)";

/// The libvirt providers this sidecar serves, `provider` naming one alias or `all`.
fn providers<'a>(svc: &'a Service, provider: &str) -> Vec<&'a Provider> {
    svc.cloud
        .config
        .providers
        .iter()
        .filter(|(alias, _)| provider == "all" || provider == alias.as_str())
        .flat_map(|(_, ps)| ps)
        .filter(|p| p.driver == "libvirt" && p.url.is_some() && svc.cloud.serves(&p.alias))
        .collect()
}

fn images(svc: &Service, p: &Provider, url: &str) -> Value {
    let bases = match svc.cloud.hypervisor(url).and_then(|h| h.bases()) {
        Ok(b) => b,
        Err(e) => return json!({"Error": e.to_string()}),
    };
    let mut out = Map::new();
    for b in bases {
        let profiles: Vec<&str> = svc
            .cloud
            .config
            .profiles
            .values()
            .filter(|pr| pr.provider == p.alias && pr.base_domain == b.name)
            .map(|pr| pr.name.as_str())
            .collect();
        out.insert(
            b.name.clone(),
            json!({"name": b.name, "vcpus": b.vcpus, "memory_mib": b.memory_mib, "profiles": profiles}),
        );
    }
    Value::Object(out)
}

fn sizes(svc: &Service, p: &Provider) -> Value {
    let mut out = Map::new();
    out.insert("note".into(), json!(NO_SIZES));
    for pr in svc.cloud.config.profiles.values() {
        if pr.provider == p.alias {
            out.insert(
                pr.name.clone(),
                json!({"cpus": pr.cpus, "memory_mib": pr.memory_mib, "disk_gib": pr.disk_gib, "base_domain": pr.base_domain}),
            );
        }
    }
    Value::Object(out)
}

fn locations(svc: &Service, url: &str) -> Value {
    let r = svc.cloud.hypervisor(url).and_then(|h| {
        let info = h.host_info()?;
        let bases: Vec<String> = h.bases()?.into_iter().map(|b| b.name).collect();
        Ok(json!({
            "url": url,
            "hostname": info.hostname,
            "cpus": info.cpus,
            "memory_mib": info.memory_mib,
            "free_memory_mib": info.free_memory_mib,
            "bases": bases,
        }))
    });
    let mut out = Map::new();
    out.insert(
        url.to_string(),
        r.unwrap_or_else(|e| json!({"Error": e.to_string()})),
    );
    Value::Object(out)
}

pub async fn run(p: &Publication, svc: &Arc<Service>) -> Outcome {
    let s = svc.clone();
    let fun = p.fun.clone();
    let provider =
        a::text(p.args.first().or_else(|| p.kwarg("provider"))).unwrap_or_else(|| "all".into());
    let r = tokio::task::spawn_blocking(move || -> Value {
        let mut out = Map::new();
        for pr in providers(&s, &provider) {
            let url = pr.url.as_deref().unwrap_or_default();
            let v = match fun.as_str() {
                LIST_IMAGES => images(&s, pr, url),
                LIST_SIZES => sizes(&s, pr),
                _ => locations(&s, url),
            };
            // A failed query is the alias's `Error` (the job fails); else salt-cloud's nesting.
            let entry = if v.get("Error").is_some() { v } else { json!({ "libvirt": v }) };
            out.insert(pr.alias.clone(), entry);
        }
        if out.is_empty() {
            return json!({"Error": format!("no libvirt provider {provider:?} served by this sidecar")});
        }
        Value::Object(out)
    })
    .await;
    match r {
        Ok(v) => a::report(v),
        Err(e) => Outcome::error(format!("{}: {e}", p.fun)),
    }
}
