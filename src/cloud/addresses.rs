//! A VM's addresses beyond what libvirt sees: those its minion reports in its grains (`ipv4`,
//! `ipv6`), read from the master's minion data cache once the minion has sent them, so
//! `list_nodes` shows real addresses under any networking (bridged, user-mode, no agent);
//! and salt-cloud's split of addresses into `public_ips` and `private_ips`.
//!
//! Where the master keeps grains (with `minion_data_cache`, on by default), msgpack:
//! - 3006, 3007: `cachedir/minions/<id>/data.p`, `{grains: {...}, pillar: {...}}`
//!   (`salt.master.AESFuncs._pillar` storing bank `minions/<id>`, key `data`);
//! - 3008: `cachedir/grains/<id>.p`, the grains themselves (bank `grains`, key `<id>`).

use rmpv::Value;
use std::net::IpAddr;
use std::path::Path;

/// The addresses minion `id` reported in its cached grains, loopback and link-local excluded
/// (the minion lists every interface's `fe80::` address, which reaches it only from its own
/// link and with a zone: not an address to list it by); none when the master has no grains
/// for it (yet).
pub fn from_grains_cache(cachedir: &Path, id: &str) -> Vec<IpAddr> {
    cached_grains(cachedir, id)
        .map(|g| grain_addresses(&g))
        .unwrap_or_default()
}

/// The grains minion `id` last sent the master, from its data cache (either layout above);
/// none when the master has none (yet, or `minion_data_cache: False`).
pub fn cached_grains(cachedir: &Path, id: &str) -> Option<Value> {
    let older = cachedir.join("minions").join(id).join("data.p");
    let newer = cachedir.join("grains").join(format!("{id}.p"));
    read_msgpack(&older)
        .and_then(|v| field(&v, "grains").cloned())
        .or_else(|| read_msgpack(&newer))
}

/// Grain `key` of `grains` as text (Salt's msgpack may carry strings as binary).
pub fn grain_text(grains: &Value, key: &str) -> Option<String> {
    field(grains, key).and_then(text_of)
}

fn read_msgpack(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    rmpv::decode::read_value(&mut &bytes[..]).ok()
}

fn field<'v>(map: &'v Value, key: &str) -> Option<&'v Value> {
    map.as_map()?.iter().find_map(|(k, v)| {
        let name = match k {
            Value::String(s) => s.as_str(),
            Value::Binary(b) => std::str::from_utf8(b).ok(),
            _ => None,
        };
        (name == Some(key)).then_some(v)
    })
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.as_str().map(str::to_string),
        Value::Binary(b) => std::str::from_utf8(b).ok().map(str::to_string),
        _ => None,
    }
}

fn grain_addresses(grains: &Value) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for key in ["ipv4", "ipv6"] {
        for v in field(grains, key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(a) = text_of(v).and_then(|t| t.parse::<IpAddr>().ok()) {
                if !a.is_loopback()
                    && !a.is_unspecified()
                    && !is_link_local(&a)
                    && !out.contains(&a)
                {
                    out.push(a);
                }
            }
        }
    }
    out
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Whether `a` is reachable only within a site: RFC 1918, shared (100.64/10) and link-local
/// IPv4; unique-local (fc00::/7) and link-local (fe80::/10) IPv6. salt-cloud's drivers put
/// these in `private_ips` (`salt.utils.cloud.is_public_ip`).
pub fn is_private(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

/// `addresses` (text, as libvirt and the cache give them) split into public and private;
/// loopback, link-local (the guest agent reports `fe80::` on every interface: it reaches the
/// VM only from its own link, with a zone) and what is not an address are dropped.
pub fn split(addresses: &[String]) -> (Vec<String>, Vec<String>) {
    let mut public = Vec::new();
    let mut private = Vec::new();
    for t in addresses {
        let Ok(a) = t.parse::<IpAddr>() else {
            continue;
        };
        if a.is_loopback() || is_link_local(&a) {
            continue;
        }
        if is_private(&a) {
            private.push(t.clone());
        } else {
            public.push(t.clone());
        }
    }
    (public, private)
}

/// salt-cloud's address keys for a VM known by `addresses`: `public_ips` and `private_ips`;
/// and while a running VM has none, `ip_note` says that its address is not known yet (empty
/// lists alone read as "no network").
pub fn salt_cloud_keys(
    addresses: &[String],
    running: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let (public, private) = split(addresses);
    let mut keys = serde_json::Map::new();
    if running && public.is_empty() && private.is_empty() {
        keys.insert(
            "ip_note".into(),
            "address not known yet: no DHCP lease, ARP entry or guest agent answer for its MACs, and no address reported by its minion"
                .into(),
        );
    }
    keys.insert("public_ips".into(), public.into());
    keys.insert("private_ips".into(), private.into());
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    fn grains() -> Value {
        Value::Map(vec![
            (s("id"), s("web1")),
            (
                s("ipv4"),
                Value::Array(vec![s("127.0.0.1"), s("10.0.2.15"), s("203.0.113.7")]),
            ),
            (
                s("ipv6"),
                Value::Array(vec![
                    s("::1"),
                    s("fe80::5054:ff:fe12:3456"),
                    s("2001:db8::7"),
                ]),
            ),
        ])
    }

    fn write(path: &Path, v: &Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).unwrap();
        std::fs::write(path, buf).unwrap();
    }

    #[test]
    fn reads_either_cache_layout() {
        let d = tempfile::tempdir().unwrap();
        assert!(from_grains_cache(d.path(), "web1").is_empty());
        // 3008: the grains alone.
        write(&d.path().join("grains/web1.p"), &grains());
        let want: Vec<IpAddr> = ["10.0.2.15", "203.0.113.7", "2001:db8::7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(from_grains_cache(d.path(), "web1"), want);
        // 3006/3007: under `grains`, beside the pillar; preferred when both exist.
        let data = Value::Map(vec![
            (
                s("grains"),
                Value::Map(vec![(s("ipv4"), Value::Array(vec![s("192.0.2.1")]))]),
            ),
            (s("pillar"), Value::Map(vec![])),
        ]);
        write(&d.path().join("minions/web1/data.p"), &data);
        assert_eq!(
            from_grains_cache(d.path(), "web1"),
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        std::fs::write(d.path().join("minions/web1/data.p"), b"\xc1junk").unwrap();
        assert_eq!(from_grains_cache(d.path(), "web1").len(), 3);
    }

    #[test]
    fn an_unknown_address_is_said_so_only_while_running() {
        let k = salt_cloud_keys(&[], true);
        assert!(k["ip_note"]
            .as_str()
            .unwrap()
            .starts_with("address not known yet"));
        assert_eq!(k["private_ips"], serde_json::json!([]));
        assert!(!salt_cloud_keys(&[], false).contains_key("ip_note"));
        let k = salt_cloud_keys(&["192.168.150.7".into()], true);
        assert!(!k.contains_key("ip_note"));
        assert_eq!(k["private_ips"], serde_json::json!(["192.168.150.7"]));
        assert_eq!(k["public_ips"], serde_json::json!([]));
    }

    #[test]
    fn public_and_private_as_salt_cloud_splits_them() {
        let all: Vec<String> = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.122.5",
            "100.64.0.1",
            "169.254.1.1",
            "8.8.8.8",
            "::1",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "not-an-ip",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (public, private) = split(&all);
        assert_eq!(public, ["8.8.8.8", "2001:db8::1"]);
        assert_eq!(
            private,
            [
                "10.1.2.3",
                "172.16.0.1",
                "192.168.122.5",
                "100.64.0.1",
                "fd00::1"
            ],
            "link-local (169.254/16, fe80::/10) left out"
        );
    }
}
