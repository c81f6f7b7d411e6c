//! Argument helpers shared by the `cloud.*` jobs (salt-cloud's runner forms).

use salt_proto::msgpack;
use salt_proto::publish::Publication;
use salt_proto::Value;

/// Instance names: a list, or a comma-separated string.
pub fn names(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| msgpack::str_of(x).map(str::to_string))
            .collect(),
        Some(v) => msgpack::str_of(v)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![],
    }
}

pub fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(msgpack::str_of).map(str::to_string)
}

pub fn boolean(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Boolean(b) => Some(*b),
        Value::Integer(i) => i.as_i64().map(|i| i != 0),
        other => match msgpack::str_of(other)?.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        },
    }
}

pub fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Integer(i) => i.as_u64(),
        other => msgpack::str_of(other)?.parse().ok(),
    }
}

/// Keyword arguments of `cloud.profile` and `cloud.create` that are not profile keys.
const CALL_ARGS: &[&str] = &[
    "instances",
    "names",
    "wait_for_minion",
    "minion_timeout",
    "minion_pub",
];

/// A job's keyword arguments as profile keys (`cpus=2`, `grains={...}`), leaving out the
/// call's own arguments ([`CALL_ARGS`] and `skip`) and Salt's (`__pub_*`).
pub fn profile_keys(p: &Publication, skip: &[&str]) -> Result<yaml_serde::Mapping, String> {
    let mut keys = yaml_serde::Mapping::new();
    for (k, v) in &p.kwargs {
        if skip.contains(&k.as_str()) || CALL_ARGS.contains(&k.as_str()) || k.starts_with("__") {
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_str(&msgpack::to_json(v)).unwrap_or_default();
        let y = yaml_serde::to_value(json).map_err(|e| format!("argument {k}: {e}"))?;
        keys.insert(yaml_serde::Value::String(k.clone()), y);
    }
    Ok(keys)
}

/// Adds `msg` to a provider's listing (`{name: {...}}`, the `driver` level of salt-cloud's
/// `{alias: {driver: {...}}}`) as its `Error`, beside what its other hosts hold: salt-cloud
/// builds that shape itself from each provider's answer, so a provider's failure can only
/// be shown there, and `salt-cloud -Q` and `salt-run cloud.query` show the same. An entry
/// is a map, the `Error` a string; several failed hosts' messages are joined.
pub fn note_error(listing: &mut serde_json::Value, msg: &str) {
    let joined = match listing.get("Error").and_then(|e| e.as_str()) {
        Some(earlier) => format!("{earlier}; {msg}"),
        None => msg.to_string(),
    };
    listing["Error"] = serde_json::Value::String(joined);
}

/// A JSON value as a Salt return value.
pub fn ret(v: &serde_json::Value) -> Value {
    crate::bus::from_json(v)
}

/// A `{name: {...}}` report as a job outcome: failed when the report or any entry holds an
/// `Error` (salt-cloud's shape), so `salt-run` exits non-zero.
pub fn report(v: serde_json::Value) -> super::Outcome {
    // A report-wide `Error` is a list of messages; a VM may itself be named "Error".
    let failed = v.get("Error").is_some_and(|e| !e.is_object())
        || v.as_object()
            .is_some_and(|m| m.values().any(|x| x.get("Error").is_some()));
    super::Outcome {
        ret: ret(&v),
        success: !failed,
        retcode: i64::from(failed),
    }
}

/// The job a create answers, for the create journal (a restarted sidecar returns it).
pub fn job_ref(p: &Publication) -> crate::cloud::journal::JobRef {
    crate::cloud::journal::JobRef {
        jid: p.jid.to_string(),
        fun: p.fun.clone(),
        fun_args: serde_json::from_str(&salt_proto::msgpack::to_json(&p.raw_arg))
            .unwrap_or_default(),
        user: p.user.clone(),
    }
}

/// `minion_pub=PEM` (`seed: ssh`): an RSA public key, checked here. Only a public key is
/// ever taken: a job's arguments reach the job cache.
pub fn minion_pub(v: Option<&Value>) -> Result<Option<salt_proto::keys::PublicKey>, String> {
    let Some(v) = v else { return Ok(None) };
    let pem = v.as_str().ok_or("minion_pub must be a public key in PEM")?;
    if pem.contains("PRIVATE KEY") {
        return Err("minion_pub must be a public key; a private key is never sent".into());
    }
    salt_proto::keys::PublicKey::from_pem(pem)
        .map(Some)
        .map_err(|e| format!("minion_pub: {e}"))
}
