//! `cloud.list_nodes`, `cloud.list_nodes_full`, `cloud.list_nodes_select`, `cloud.query`
//! and `cloud.action`: salt-cloud's query shapes,
//! `{provider_alias: {driver: {name: {...}}}}`, over the VMs virtseed made.

use super::cloud_args as a;
use super::Outcome;
use crate::cloud::hosts::unreachable;
use crate::cloud::{instance_json, service::Service};
use crate::config::cloud::hosts::Host;
use crate::libvirt::{Instance, LibvirtError};
use salt_proto::publish::Publication;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const LIST_NODES: &str = "cloud.list_nodes";
pub const LIST_NODES_FULL: &str = "cloud.list_nodes_full";
pub const LIST_NODES_SELECT: &str = "cloud.list_nodes_select";
pub const QUERY: &str = "cloud.query";
pub const ACTION: &str = "cloud.action";

/// The fields of `list_nodes` (and `list_nodes_select` without `query.selection`).
const BRIEF: [&str; 9] = [
    "id",
    "name",
    "state",
    "public_ips",
    "private_ips",
    "size",
    "image",
    "host",
    "salt_keys",
];

/// Nodes grouped as salt-cloud's `query` does: provider alias, then driver, then name;
/// `provider` names one alias, or is `all`.
fn nodes(svc: &Service, full: bool, provider: &str) -> Value {
    grouped(
        svc.cloud.list(),
        full,
        provider,
        |uri| svc.cloud.host_name(uri),
        |uri| svc.cloud.providers_at(uri, provider),
        |name, finger| svc.cloud.key_states(name, finger),
    )
}

/// What each host listed (by URI) in salt-cloud's shape. A host that could not be listed
/// is an `Error` in the listing of each provider `down_for(uri)` says it belongs to, beside
/// the VMs of that provider's other hosts (`cloud_args::note_error`); every other provider
/// is listed as usual.
fn grouped(
    listed: BTreeMap<String, Result<Vec<Instance>, LibvirtError>>,
    full: bool,
    provider: &str,
    host_name: impl Fn(&str) -> String,
    down_for: impl Fn(&str) -> Vec<(String, Host)>,
    keys: impl Fn(&str, &str) -> Option<Value>,
) -> Value {
    let mut out = Map::new();
    for (uri, r) in listed {
        let list = match r {
            Ok(list) => list,
            Err(e) => {
                for (alias, host) in down_for(&uri) {
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
            v["host"] = json!(host_name(&uri));
            // Where the clone's key stands on each master.
            if let Some(k) = keys(&i.name, &i.ownership.fingerprint) {
                v["salt_keys"] = k;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::Ownership;

    const SYSTEM: &str = "qemu:///system";
    const KVM1: &str = "qemu+ssh://root@kvm1/system";
    const KVM2: &str = "qemu+ssh://root@kvm2:2222/system";

    fn vm(name: &str, provider: &str) -> Instance {
        Instance {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            state: "running".into(),
            ownership: Ownership {
                provider: provider.into(),
                ..Ownership::default()
            },
            addresses: vec![],
            macs: vec![],
            vcpus: 1,
            memory_kib: 1 << 20,
        }
    }

    fn refused(uri: &str) -> LibvirtError {
        LibvirtError::Call {
            uri: uri.into(),
            op: "connect".into(),
            msg: "Cannot recv data: ssh: connect to host: Connection refused".into(),
            code: virt::sys::VIR_ERR_SYSTEM_ERROR as i32,
        }
    }

    /// Providers `local` (qemu:///system), `far` (kvm1) and `two` (qemu:///system and kvm2).
    fn owners(uri: &str) -> Vec<(String, Host)> {
        let host = |name: &str| Host {
            name: name.into(),
            uri: uri.into(),
        };
        match uri {
            SYSTEM => vec![
                ("local".into(), host("localhost")),
                ("two".into(), host("localhost")),
            ],
            KVM1 => vec![("far".into(), host("kvm1"))],
            KVM2 => vec![("two".into(), host("kvm2"))],
            _ => vec![],
        }
    }

    fn listing(down: &[&str], provider: &str) -> Value {
        let mut listed = BTreeMap::new();
        listed.insert(
            SYSTEM.to_string(),
            Ok(vec![vm("web1", "local"), vm("db1", "two")]),
        );
        for uri in [KVM1, KVM2] {
            let r = if down.contains(&uri) {
                Err(refused(uri))
            } else {
                Ok(vec![])
            };
            listed.insert(uri.to_string(), r);
        }
        let owners_of = |uri: &str| {
            owners(uri)
                .into_iter()
                .filter(|(a, _)| provider == "all" || a == provider)
                .collect()
        };
        grouped(
            listed,
            false,
            provider,
            |u| owners(u)[0].1.name.clone(),
            owners_of,
            |name, _| Some(json!({"/etc/salt": format!("state of {name}")})),
        )
    }

    #[test]
    fn a_host_down_is_its_providers_error_and_hides_no_other_vm() {
        let v = listing(&[KVM1, KVM2], "all");
        // The provider whose only host is down: its error alone, naming it.
        let far = v["far"]["libvirt"].as_object().unwrap();
        assert_eq!(far.len(), 1, "{v}");
        let err = far["Error"].as_str().unwrap();
        assert!(
            err.starts_with("provider far: host kvm1 (qemu+ssh://root@kvm1/system) is unreachable"),
            "{err}"
        );
        // A provider with one host of two down: the other host's VMs beside the error.
        assert_eq!(v["two"]["libvirt"]["db1"]["host"], "localhost", "{v}");
        assert!(
            v["two"]["libvirt"]["Error"]
                .as_str()
                .unwrap()
                .contains("host kvm2"),
            "{v}"
        );
        // A provider with no host down: as always, no error.
        assert_eq!(v["local"]["libvirt"]["web1"]["state"], "running", "{v}");
        // Each clone's key state per master, in the brief listing too.
        assert_eq!(
            v["local"]["libvirt"]["web1"]["salt_keys"]["/etc/salt"], "state of web1",
            "{v}"
        );
        assert!(v["local"]["libvirt"].get("Error").is_none(), "{v}");
        assert!(
            v.get("Error").is_none(),
            "no error for the whole listing: {v}"
        );
    }

    #[test]
    fn one_provider_asked_for_gets_only_its_own_errors() {
        let v = listing(&[KVM1, KVM2], "local");
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        assert!(v["local"]["libvirt"].get("Error").is_none(), "{v}");
        let v = listing(&[KVM1], "far");
        assert!(v["far"]["libvirt"]["Error"].is_string(), "{v}");
        assert!(v.get("two").is_none() && v.get("local").is_none(), "{v}");
        // Every host up: nothing but VMs.
        let v = listing(&[], "all");
        assert!(!v.to_string().contains("Error"), "{v}");
        assert!(
            v.get("far").is_none(),
            "no VM and no error: not listed, as Salt does"
        );
    }
}
