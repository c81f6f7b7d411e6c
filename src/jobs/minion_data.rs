//! `grains.*` and `pillar.*`: the sidecar's grains ([`super::facts`]) and the pillar the
//! master compiled for it, read as Salt's modules read a minion's (`salt/modules/grains.py`,
//! `salt/modules/pillar.py`: `item`, `get` and `raw` take `key:sub:key` paths).

use super::cloud_args as a;
use super::facts::Facts;
use super::Outcome;
use salt_proto::publish::Publication;
use serde_json::{json, Map, Value};

pub const GRAINS: &[&str] = &["grains.items", "grains.item", "grains.get", "grains.ls"];
pub const PILLAR: &[&str] = &[
    "pillar.items",
    "pillar.item",
    "pillar.get",
    "pillar.ls",
    "pillar.raw",
];

pub fn run(p: &Publication, facts: &Facts) -> Outcome {
    let (module, fun) = p.fun.split_once('.').unwrap_or_default();
    let data = match module {
        "grains" => facts.grains().clone(),
        _ => facts.pillar(),
    };
    let delimiter = a::text(p.kwarg("delimiter")).unwrap_or_else(|| ":".into());
    let default = p.kwarg("default").map_or(json!(""), |v| {
        serde_json::from_str(&salt_proto::msgpack::to_json(v)).unwrap_or_default()
    });
    let at = |key: &str| {
        super::subdict::traverse(&data, key, &delimiter)
            .cloned()
            .unwrap_or_else(|| default.clone())
    };
    let ret = match fun {
        "items" => data.clone(),
        "ls" => {
            let mut keys: Vec<&String> = data
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            keys.sort();
            json!(keys)
        }
        "item" => {
            let mut out = Map::new();
            for k in p.args.iter().filter_map(|v| a::text(Some(v))) {
                out.insert(k.clone(), at(&k));
            }
            Value::Object(out)
        }
        "raw" => match a::text(p.args.first().or_else(|| p.kwarg("key"))) {
            Some(k) => at(&k),
            None => data.clone(),
        },
        // get
        _ => match a::text(p.args.first().or_else(|| p.kwarg("key"))) {
            Some(k) => at(&k),
            None => return Outcome::error(format!("{}: a key must be given", p.fun)),
        },
    };
    Outcome::ok(crate::bus::from_json(&ret))
}
