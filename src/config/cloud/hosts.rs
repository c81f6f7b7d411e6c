//! A provider's hypervisor hosts and a profile's choice among them.
//!
//! salt-cloud maps one provider to one libvirt URI (`url:`). virtseed also takes a list, each
//! entry a URI or a one-key mapping that names it:
//!
//! ```yaml
//! kvm:
//!   driver: libvirt
//!   url:
//!     - qemu+ssh://root@kvm1.example.com/system
//!     - lab: qemu+ssh://root@10.0.0.7:2222/system?keyfile=/etc/salt/kvm_id
//! ```
//!
//! A host is known by its name (the alias given, else the URI's host part) or its URI. A
//! profile's `host:` (salt-cloud's "host to create this vm on") pins one; without it, each
//! clone is placed on the host with the most free memory (see `cloud::hosts`).

use crate::config::yaml;
use yaml_serde::Value;

/// One hypervisor host of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The alias given in `url:`, else the URI's host part (`localhost` for a local URI).
    pub name: String,
    pub uri: String,
}

/// The host part of a libvirt URI: `qemu+ssh://root@kvm1:2222/system` is `kvm1`,
/// `qemu:///system` is `localhost`.
pub fn uri_host(uri: &str) -> String {
    let rest = uri.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        "localhost".into()
    } else {
        host.into()
    }
}

/// `uri` as it may be shown (errors, listings): a password in its user part, which libvirt
/// would not use anyway, masked.
pub fn shown_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}{path}")
        }
        _ => uri.to_string(),
    }
}

fn check_uri(uri: &str) -> Result<(), String> {
    if !uri.contains("://") || uri.chars().any(char::is_control) {
        return Err(format!(
            "{uri:?} is not a libvirt URI (e.g. qemu:///system, qemu+ssh://root@kvm1/system)"
        ));
    }
    Ok(())
}

/// A provider's `url:`: one URI, or a list of URIs and `{name: URI}` mappings.
pub fn parse(v: &Value) -> Result<Vec<Host>, String> {
    let entry = |e: &Value| -> Result<Host, String> {
        if let Some(uri) = yaml::as_text(e) {
            check_uri(&uri)?;
            return Ok(Host {
                name: uri_host(&uri),
                uri,
            });
        }
        match e.as_mapping() {
            Some(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                let (Some(name), Some(uri)) = (yaml::as_text(k), yaml::as_text(v)) else {
                    return Err("a named host is `NAME: URI`".into());
                };
                check_uri(&uri)?;
                Ok(Host { name, uri })
            }
            _ => Err(format!(
                "each host is a URI or `NAME: URI`, found {}",
                yaml::kind(e)
            )),
        }
    };
    let hosts = match v.as_sequence() {
        Some(list) => list.iter().map(entry).collect::<Result<Vec<_>, _>>()?,
        None => vec![entry(v)?],
    };
    if hosts.is_empty() {
        return Err("lists no host".into());
    }
    for (i, h) in hosts.iter().enumerate() {
        if hosts[..i].iter().any(|o| o.uri == h.uri) {
            return Err(format!("names {} twice", h.uri));
        }
    }
    Ok(hosts)
}

/// The hosts a profile may use: all of them, or the one `host:` names (by name or URI).
pub fn pick(hosts: &[Host], want: Option<&str>) -> Result<Vec<Host>, String> {
    let Some(want) = want else {
        return Ok(hosts.to_vec());
    };
    let found: Vec<&Host> = hosts
        .iter()
        .filter(|h| h.name == want || h.uri == want)
        .collect();
    let known = || {
        hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match found.as_slice() {
        [one] => Ok(vec![(*one).clone()]),
        [] => Err(format!(
            "{want:?} names no host of the provider (its hosts: {})",
            known()
        )),
        _ => Err(format!(
            "is ambiguous: several hosts are called {want:?} (name them in the provider's url: `- NAME: URI`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_of_a_uri() {
        assert_eq!(uri_host("qemu:///system"), "localhost");
        assert_eq!(uri_host("qemu+ssh://root@kvm1:2222/system?x=1"), "kvm1");
        assert_eq!(
            uri_host("qemu+ssh://kvm2.example.com/system"),
            "kvm2.example.com"
        );
        assert_eq!(uri_host("qemu+ssh://u@[fd00::1]:22/system"), "fd00::1");
    }

    #[test]
    fn a_password_in_a_uri_is_never_shown() {
        assert_eq!(
            shown_uri("qemu+ssh://salt:hunter2@kvm1:22/system?keyfile=/k"),
            "qemu+ssh://salt:***@kvm1:22/system?keyfile=/k"
        );
        for plain in [
            "qemu:///system",
            "qemu+ssh://root@kvm1/system?socket=/run/libvirt/libvirt-sock",
            "qemu+ssh://[fd00::1]:22/system",
        ] {
            assert_eq!(shown_uri(plain), plain);
        }
    }

    #[test]
    fn one_uri_or_a_list_with_names() {
        let v: Value = yaml_serde::from_str("qemu:///system").unwrap();
        assert_eq!(parse(&v).unwrap()[0].name, "localhost");
        let v: Value = yaml_serde::from_str(
            "[qemu:///system, {lab: 'qemu+ssh://root@10.0.0.7/system'}, 'qemu+ssh://kvm3/system']",
        )
        .unwrap();
        let h = parse(&v).unwrap();
        let names: Vec<&str> = h.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["localhost", "lab", "kvm3"]);
        assert_eq!(
            pick(&h, Some("lab")).unwrap()[0].uri,
            "qemu+ssh://root@10.0.0.7/system"
        );
        assert_eq!(
            pick(&h, Some("qemu+ssh://kvm3/system")).unwrap()[0].name,
            "kvm3"
        );
        assert_eq!(pick(&h, None).unwrap().len(), 3);
        assert!(pick(&h, Some("nope"))
            .unwrap_err()
            .contains("localhost, lab, kvm3"));
        for bad in [
            "[]",
            "[qemu:///system, qemu:///system]",
            "[{a: 1, b: 2}]",
            "not-a-uri",
            "[[x]]",
        ] {
            let v: Value = yaml_serde::from_str(bad).unwrap();
            assert!(parse(&v).is_err(), "{bad}");
        }
        let two: Value =
            yaml_serde::from_str("['qemu+ssh://a@h/system', 'qemu+ssh://b@h/session']").unwrap();
        assert!(pick(&parse(&two).unwrap(), Some("h"))
            .unwrap_err()
            .contains("ambiguous"));
    }
}
