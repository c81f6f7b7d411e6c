//! `cloud.list_nodes`, `cloud.list_nodes_full`, `cloud.list_nodes_select`, `cloud.query`
//! and `cloud.action`: salt-cloud's query shapes,
//! `{provider_alias: {driver: {name: {...}}}}`, over the VMs virtseed made.

use super::cloud_args as a;
use super::Outcome;
use crate::cloud::hosts::unreachable;
use crate::cloud::{instance_json, service::Service};
use salt_proto::publish::Publication;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub const LIST_NODES: &str = "cloud.list_nodes";
pub const LIST_NODES_FULL: &str = "cloud.list_nodes_full";
pub const LIST_NODES_SELECT: &str = "cloud.list_nodes_select";
pub const QUERY: &str = "cloud.query";
pub const ACTION: &str = "cloud.action";

/// The fields of `list_nodes` (and `list_nodes_select` without `query.selection`).
const BRIEF: [&str; 8] = [
    "id",
    "name",
    "state",
    "public_ips",
    "private_ips",
    "size",
    "image",
    "host",
];

/// Nodes grouped as salt-cloud's `query` does: provider alias, then driver, then name;
/// `provider` names one alias, or is `all`. A host that cannot be listed is an `Error` in
/// the listing of each provider it belongs to, beside the VMs of its other hosts
/// (`cloud_args::note_error`); every other provider is listed as usual.
fn nodes(svc: &Service, full: bool, provider: &str) -> Value {
    let mut out = Map::new();
    for (uri, r) in svc.cloud.list() {
        let list = match r {
            Ok(list) => list,
            Err(e) => {
                for (alias, host) in svc.cloud.providers_at(&uri, provider) {
                    let msg = unreachable(&alias, &host, &e);
                    tracing::warn!("{msg}; its VMs are left out of the listing");
                    let entry = out.entry(alias).or_insert_with(|| json!({"libvirt": {}}));
                    a::note_error(&mut entry["libvirt"], &msg);
                }
                continue;
            }
        };
        for i in list {
            if provider != "all" && i.ownership.provider != provider {
                continue;
            }
            let alias = i.ownership.provider.clone();
            let entry = out.entry(alias).or_insert_with(|| json!({"libvirt": {}}));
            let mut v = instance_json(&i);
            v["host"] = json!(svc.cloud.host_name(&uri));
            if !full {
                if let Value::Object(m) = &mut v {
                    m.retain(|k, _| BRIEF.contains(&k.as_str()));
                }
            }
            entry["libvirt"][i.name.as_str()] = v;
        }
    }
    Value::Object(out)
}

pub async fn run(p: &Publication, svc: &Arc<Service>) -> Outcome {
    let s = svc.clone();
    let fun = p.fun.clone();
    let query = a::text(p.args.first().or_else(|| p.kwarg("query_type")));
    let provider = a::text(p.kwarg("provider")).unwrap_or_else(|| "all".into());
    let action = (
        a::text(p.args.first().or_else(|| p.kwarg("func"))),
        a::names(p.args.get(1).or_else(|| p.kwarg("instances"))),
    );
    let r = tokio::task::spawn_blocking(move || -> Value {
        match fun.as_str() {
            LIST_NODES | LIST_NODES_SELECT => nodes(&s, false, &provider),
            LIST_NODES_FULL => nodes(&s, true, &provider),
            QUERY => nodes(
                &s,
                query.as_deref().unwrap_or("list_nodes") != "list_nodes",
                "all",
            ),
            _ => {
                let (func, names) = &action;
                let Some(func) = func else {
                    return json!({"Error": "cloud.action: a function (start, stop, reboot, show_instance) must be given"});
                };
                if names.is_empty() {
                    return json!({"Error": "cloud.action: one or more instance names must be given"});
                }
                let mut out = Map::new();
                for n in names {
                    let v = match s.cloud.action(func, n) {
                        Ok(v) => v,
                        Err(e) => json!({"Error": e.to_string()}),
                    };
                    out.insert(n.clone(), v);
                }
                Value::Object(out)
            }
        }
    })
    .await;
    match r {
        Ok(v) => a::report(v),
        Err(e) => Outcome::error(format!("{}: {e}", p.fun)),
    }
}
