//! `cloud.list_images`, `cloud.list_sizes` and `cloud.list_locations` (salt-cloud's
//! `--list-images`, `--list-sizes`, `--list-locations`), per provider alias:
//! `{alias: {"libvirt": {...}}}`.
//!
//! What each means for libvirt: images are the base domains a profile can clone (shut off,
//! not made by virtseed) on the provider's host; locations are the provider's hosts with
//! their free memory; libvirt has no sizes, so sizes are what each profile sets.

use super::cloud_args as a;
use super::Outcome;
use crate::cloud::hosts::unreachable;
use crate::cloud::service::Service;
use crate::config::cloud::hosts::shown_uri;
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
        .filter(|p| p.driver == "libvirt" && !p.hosts.is_empty() && svc.cloud.serves(&p.alias))
        .collect()
}

/// The bases of every host of the provider, each with the hosts that have it; a host that
/// cannot be listed is the listing's `Error` (`cloud_args::note_error`).
fn images(svc: &Service, p: &Provider) -> Value {
    let mut out = Value::Object(Map::new());
    for h in &p.hosts {
        let bases = match svc.cloud.hypervisor(&h.uri).and_then(|hv| hv.bases()) {
            Ok(b) => b,
            Err(e) => {
                let msg = unreachable(&p.alias, h, &e);
                tracing::warn!("{msg}; its bases are left out of the listing");
                a::note_error(&mut out, &msg);
                continue;
            }
        };
        for b in bases {
            let profiles: Vec<&str> = svc
                .cloud
                .config
                .profiles
                .values()
                .filter(|pr| pr.provider == p.alias && pr.base_domain == b.name)
                .map(|pr| pr.name.as_str())
                .collect();
            let e = &mut out[b.name.as_str()];
            if e.is_null() {
                *e = json!({"name": b.name, "vcpus": b.vcpus, "memory_mib": b.memory_mib, "profiles": profiles, "hosts": []});
            }
            if let Some(hosts) = e["hosts"].as_array_mut() {
                hosts.push(json!(h.name));
            }
        }
    }
    out
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

/// Each host of the provider (by its name): free memory, and which of the provider's
/// profiles' bases it has; a host that cannot be reached is listed with its `Error`.
fn locations(svc: &Service, p: &Provider) -> Value {
    let wanted: Vec<&str> = svc
        .cloud
        .config
        .profiles
        .values()
        .filter(|pr| pr.provider == p.alias)
        .map(|pr| pr.base_domain.as_str())
        .collect();
    let mut out = Map::new();
    for h in &p.hosts {
        let r = svc.cloud.hypervisor(&h.uri).and_then(|hv| {
            let info = hv.host_info()?;
            let bases: Vec<String> = hv.bases()?.into_iter().map(|b| b.name).collect();
            let has: Map<String, Value> = wanted
                .iter()
                .map(|b| (b.to_string(), json!(bases.iter().any(|x| x == b))))
                .collect();
            Ok(json!({
                "url": shown_uri(&h.uri),
                "hostname": info.hostname,
                "cpus": info.cpus,
                "memory_mib": info.memory_mib,
                "free_memory_mib": info.free_memory_mib,
                "bases": bases,
                "has_base": has,
            }))
        });
        let entry = r.unwrap_or_else(|e| {
            let msg = unreachable(&p.alias, h, &e);
            tracing::warn!("{msg}");
            json!({"url": shown_uri(&h.uri), "Error": msg})
        });
        out.insert(h.name.clone(), entry);
    }
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
            let v = match fun.as_str() {
                LIST_IMAGES => images(&s, pr),
                LIST_SIZES => sizes(&s, pr),
                _ => locations(&s, pr),
            };
            // salt-cloud's nesting; a host that failed is inside, as `nodes` shows it.
            out.insert(pr.alias.clone(), json!({ "libvirt": v }));
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
