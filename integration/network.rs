//! Clones on real networks, in a lab that never leaves the machine (harness/lab.rs): a
//! network namespace with its own libvirtd, a libvirt network with DHCP and a plain bridge
//! whose DHCP server libvirt does not know. The master and the sidecar run in the namespace;
//! the guests reach the master on their network's gateway address.
//!
//! Cold clones of the golden image, then warm clones restored from one saved state per
//! network, several in one call on each network: each answers `salt NAME test.ping`; the
//! DHCP leases, the namespace's ARP table and the minions' grains show as many distinct
//! addresses and machine-ids as clones; destroy leaves no domain, volume, key, or domain
//! holding a lease. One lab, master and sidecar serve both rounds (one test: they are dropped,
//! guests and namespace included, also when it fails).

mod harness;

use harness::lab::{Lab, Lease, LAN_GW, NET_GW};
use harness::site::wait_exit;
use harness::{last_json, text, EventLog, Master, Sidecar};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Clones per network in a round: 2, or `NETWORK_CLONES` (cold) and `NETWORK_WARM_CLONES`
/// (warm; default `NETWORK_CLONES`). The figures are 5 cold and 3 warm
/// (`NETWORK_CLONES=5 NETWORK_WARM_CLONES=3`, ~20 minutes on 2 TCG cores); 2 keeps CI's run
/// near 8 minutes.
fn clones_per_network(warm: bool) -> usize {
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n: &usize| *n > 0)
    };
    let cold = var("NETWORK_CLONES").unwrap_or(2);
    if warm {
        var("NETWORK_WARM_CLONES").unwrap_or(cold)
    } else {
        cold
    }
}

/// A master in the lab's namespace, with the lab's libvirtd as provider `lab`, `profiles`
/// and virtseed's modules.
fn lab_master(lab: &Lab, profiles: &str) -> Master {
    let m = Master::start_in("3007.17", "", Some(&lab.ns));
    std::fs::write(
        m.dir.join("cloud.providers"),
        format!("lab:\n  driver: libvirt\n  url: {}\n", lab.uri),
    )
    .unwrap();
    std::fs::write(m.dir.join("cloud.profiles"), profiles).unwrap();
    m.install_modules();
    m
}

#[test]
fn clones_get_their_own_identity_and_address_on_both_networks() {
    let t0 = Instant::now();
    let lab = Lab::start();
    let tag = &salt_proto::auth::new_nonce()[..5];
    let (net_base, lan_base) = lab.golden_bases(&format!("g{tag}"));
    let (plain_net, _) = lab.plain_bases(&format!("p{tag}"));
    let m = lab_master(
        &lab,
        &format!(
            "onnet:\n  provider: lab\n  base_domain: {net_base}\n  pool: {pool}\n  seed: smbios\n  \
             minion_timeout: 600\n  minion:\n    master: {NET_GW}\n\
             onlan:\n  extends: onnet\n  base_domain: {lan_base}\n  minion:\n    master: {LAN_GW}\n\
             warmnet:\n  extends: onnet\n  warm: true\n\
             warmlan:\n  extends: onlan\n  warm: true\n\
             quicklan:\n  extends: onlan\n  wait_for_minion: false\n\
             dirtynet:\n  extends: onnet\n  base_domain: {template}\n  seed: cloud-init\n  \
             accept: on_first_auth\n  ip_source: qemu-agent\n\
             sshnet:\n  provider: lab\n  base_domain: {plain_net}\n  pool: {pool}\n  \
             ssh_username: root\n  password: plain\n  script: {script}\n  script_args: -F\n  \
             minion_timeout: 600\n  minion:\n    master: {NET_GW}\n\
             sshdirty:\n  extends: sshnet\n  base_domain: s{tag}\n",
            script = harness::repo()
                .join("scripts/deploy-preinstalled-minion.sh")
                .display(),
            pool = lab.pool,
            template = template_name(&format!("c{tag}")),
        ),
    );
    let _sidecar = Sidecar::start(&m, "virtseed");
    eprintln!("lab, master and sidecar up after {:.1?}", t0.elapsed());

    not_known_yet_is_said_so(&lab, &m, &format!("q{tag}"));
    let template = template_name(&format!("c{tag}"));
    round(
        &lab,
        &m,
        ("onnet", "onlan"),
        &format!("c{tag}"),
        Some(&template),
    );
    dirty_template(&lab, &m, &template, &format!("d{tag}"));
    ssh_deploy_to_the_clones_address(&lab, &m, &format!("s{tag}"));
    dirty_plain_template(&lab, &m, &format!("s{tag}"), &format!("t{tag}"));
    round(&lab, &m, ("warmnet", "warmlan"), &format!("w{tag}"), None);
    eprintln!("test took {:.1?}", t0.elapsed());
}

/// A clone returned as soon as it is started (`wait_for_minion: false`) has no lease, ARP
/// entry or grains yet: its return and `created` event say so, with no address.
fn not_known_yet_is_said_so(lab: &Lab, m: &Master, name: &str) {
    let events = EventLog::start(m);
    let out = m.salt_run(&["--out", "json", "cloud.profile", "quicklan", name]);
    let ret = last_json(&out);
    let tag = format!("salt/cloud/{name}/created");
    harness::wait_for(&tag, Duration::from_secs(10), || {
        events.events().iter().any(|e| e["tag"] == tag)
    });
    let event = events
        .events()
        .into_iter()
        .find(|e| e["tag"] == tag)
        .unwrap();
    for (what, v) in [("return", &ret[name]), ("created event", &event["data"])] {
        assert!(
            v["ip_note"]
                .as_str()
                .unwrap_or_default()
                .starts_with("address not known yet"),
            "{what}: {v}"
        );
        assert_eq!(v["private_ips"], serde_json::json!([]), "{what}: {v}");
        assert_eq!(v["public_ips"], serde_json::json!([]), "{what}: {v}");
    }
    let out = m.salt_run(&["--out", "json", "cloud.destroy", name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(!lab.domains().contains(&name.to_string()));
}

/// The cold round's first clone on the libvirt network: it booted with a minion of its own
/// (a machine-id, a minion id and key, a lease), and it is kept, shut down, as a template
/// made the way users make theirs (`dirty_template`).
fn template_name(cold_tag: &str) -> String {
    format!("{cold_tag}n1")
}

/// Clones of a template that was booted once: `template`, shut down cleanly, then cloned
/// (NoCloud seed; the VMs make their own keys, `accept: on_first_auth`). Each clone is
/// itself: its own machine-id (its UUID), lease and key; the template's key is accepted for
/// none, and its SMBIOS credentials (it was seeded by SMBIOS) reach none. Their addresses
/// come from the guest agent (`ip_source: qemu-agent`).
fn dirty_template(lab: &Lab, m: &Master, template: &str, tag: &str) {
    let t = Instant::now();
    let template_key = std::fs::read_to_string(m.pki().join("minions").join(template)).unwrap();
    // From inside, through its minion: the golden image has no logind, which ACPI shutdown
    // and `shutdown +0` (the guest agent's way) need.
    shut_down(lab, m, template);
    let vms: Vec<String> = (1..=2).map(|i| format!("{tag}n{i}")).collect();
    let events = EventLog::start(m);
    let out = m.salt_run(&["--out", "json", "cloud.profile", "dirtynet", &vms.join(",")]);
    let ret = last_json(&out);
    for n in &vms {
        assert_eq!(ret[n.as_str()]["minion_up"], true, "{n}: {ret}");
    }
    eprintln!(
        "2 clones of the booted template {template} answered after {:.1?}",
        t.elapsed()
    );
    let list = vms.join(",");
    let (grains, macs) = identities(lab, m, &vms);
    let ips = check_network(lab, &vms, &lab.net_leases(), NET_GW, &macs, &grains);
    let template_ip = lab
        .net_leases()
        .into_iter()
        .find(|l| l.mac == lab.macs(template)[0])
        .map(|l| l.ip);
    // Their addresses as the guest agent reports them (`ip_source: qemu-agent`).
    check_addresses_shown(m, &ips, &ret, &events);
    let mut keys = BTreeSet::new();
    for n in &vms {
        assert_ne!(
            ips.get(n),
            template_ip.as_ref(),
            "{n} has the template's address"
        );
        let accepted = std::fs::read_to_string(m.pki().join("minions").join(n)).unwrap();
        assert_ne!(accepted, template_key, "{n}: the template's key accepted");
        let (_, v) = m.salt_json(
            n,
            &[
                "cmd.run",
                "cat /etc/salt/pki/minion/minion.pub; journalctl -o cat -u virtseed-credentials",
            ],
            60,
        );
        let said = v[n.as_str()].as_str().unwrap_or_default();
        assert!(said.starts_with(accepted.trim()), "{n}: holds {said}");
        assert!(
            said.contains("a new clone: removed the template's")
                && said.contains("/etc/salt/pki/minion/minion.pem")
                && said.contains("/etc/salt/minion_id"),
            "{n}: {said}"
        );
        assert!(said.contains("cloud-init, no key"), "{n}: {said}");
        keys.insert(accepted);
    }
    assert_eq!(keys.len(), vms.len(), "keys shared");
    let out = m.salt_run(&[
        "--out",
        "json",
        "cloud.destroy",
        &format!("{list},{template}"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let domains = lab.domains();
    for n in vms.iter().chain([&template.to_string()]) {
        assert!(!domains.contains(n), "{n}: domain left: {domains:?}");
        assert!(!m.pki().join("minions").join(n).exists(), "{n}: key left");
    }
}

/// `seed: ssh` (salt-cloud's guide: `ssh_username` and `password`, no seed) on the libvirt
/// network, no port forwarding: salt-cloud's bootstrap logs in at the clone's own address
/// (its DHCP lease, found by ip_source) and the minion it deploys answers over the bridge.
fn ssh_deploy_to_the_clones_address(lab: &Lab, m: &Master, name: &str) {
    let t = Instant::now();
    let events = EventLog::start(m);
    let out = m.salt_cloud(&["--out", "json", "-y", "-p", "sshnet", name]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret = last_json(&out);
    let v = &ret[name];
    assert_eq!(v["minion_up"], true, "{ret}");
    assert_eq!(v["seed"], "ssh", "{ret}");
    eprintln!(
        "seed: ssh on the libvirt network: answered after {:.1?}",
        t.elapsed()
    );
    let mac = lab.macs(name)[0].clone();
    let lease = lab
        .net_leases()
        .into_iter()
        .find(|l| l.mac == mac)
        .unwrap_or_else(|| panic!("{name}: no lease for {mac}"));
    assert_eq!(v["private_ips"], serde_json::json!([lease.ip]), "{ret}");
    assert!(v.get("ip_note").is_none(), "{ret}");
    assert!(v.get("ssh_port").is_none(), "no forwarded port: {ret}");
    let tag = format!("salt/cloud/{name}/created");
    let created = events
        .events()
        .into_iter()
        .find(|e| e["tag"] == tag)
        .unwrap_or_else(|| panic!("no {tag}: {}", events.text()));
    assert_eq!(
        created["data"]["private_ips"],
        serde_json::json!([lease.ip]),
        "{created}"
    );
    // The master accepted the key salt-cloud deployed, and the minion answers.
    let (pinged, p) = m.salt_json(name, &["test.ping"], 60);
    assert!(pinged && p[name] == true, "{p}");
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(name)).unwrap();
    let (_, k) = m.salt_json(
        name,
        &["cmd.run", "cat /etc/salt/pki/minion/minion.pub"],
        60,
    );
    assert_eq!(k[name].as_str().unwrap_or_default().trim(), accepted.trim());
    let (_, g) = m.salt_json(name, &["grains.get", "ipv4"], 60);
    assert!(
        g[name]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i == lease.ip.as_str())),
        "{g}"
    );
}

/// Shuts down `template` from inside, through its minion (logind or not).
fn shut_down(lab: &Lab, m: &Master, template: &str) {
    let (ok, v) = m.salt_json(template, &["cmd.run_bg", "sleep 1; systemctl poweroff"], 60);
    assert!(ok, "{template}: {v}");
    harness::wait_for(
        &format!("{template} shut down"),
        Duration::from_secs(180),
        || lab.virsh_ok(&["domstate", template]).trim() == "shut off",
    );
}

/// The `seed: ssh` clone (`template`: deployed, its minion accepted, SSH host keys and a
/// machine-id of its own), shut down and cloned twice with `seed: ssh` (two `salt-cloud -p`):
/// the deploy's preflight drops what the template's boot left, so each clone has its own
/// SSH host key, machine-id and minion key; the template's key is accepted for neither.
fn dirty_plain_template(lab: &Lab, m: &Master, template: &str, tag: &str) {
    let t = Instant::now();
    let facts = |n: &str| -> (String, String) {
        let (_, v) = m.salt_json(
            n,
            &[
                "cmd.run",
                "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2; cat /etc/machine-id",
            ],
            60,
        );
        let said = v[n].as_str().unwrap_or_default().to_string();
        let (host_key, machine_id) = said.split_once('\n').unwrap_or_else(|| panic!("{n}: {v}"));
        (host_key.to_string(), machine_id.trim().to_string())
    };
    let template_facts = facts(template);
    let template_key = std::fs::read_to_string(m.pki().join("minions").join(template)).unwrap();
    shut_down(lab, m, template);
    let vms: Vec<String> = (1..=2).map(|i| format!("{tag}n{i}")).collect();
    // Two `salt-cloud -p` at once (`-P` prints "being provisioned in parallel", not results).
    let calls: Vec<_> = vms
        .iter()
        .map(|n| m.tool_bg("salt-cloud", &["--out", "json", "-y", "-p", "sshdirty", n]))
        .collect();
    let mut ret = serde_json::json!({});
    for (call, n) in calls.into_iter().zip(&vms) {
        let out = wait_exit(call, Duration::from_secs(900));
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        ret[n.as_str()] = last_json(&out)[n.as_str()].clone();
    }
    eprintln!(
        "2 seed: ssh clones of the booted plain template answered after {:.1?}",
        t.elapsed()
    );
    let mut seen = vec![template_facts.clone()];
    for n in &vms {
        assert_eq!(ret[n.as_str()]["minion_up"], true, "{n}: {ret}");
        let f = facts(n);
        let uuid = lab.virsh_ok(&["domuuid", n]).trim().replace('-', "");
        assert_eq!(f.1, uuid, "{n}: machine-id is not its own UUID");
        assert!(
            !seen.iter().any(|s| s.0 == f.0 || s.1 == f.1),
            "{n} shares an SSH host key or machine-id: {f:?} in {seen:?}"
        );
        seen.push(f);
        let accepted = std::fs::read_to_string(m.pki().join("minions").join(n)).unwrap();
        assert_ne!(accepted, template_key, "{n}: the template's key accepted");
    }
    let mut args = vec!["--out", "json", "-y", "-d", template];
    args.extend(vms.iter().map(String::as_str));
    let out = m.salt_cloud(&args);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let domains = lab.domains();
    for n in vms.iter().map(String::as_str).chain([template]) {
        assert!(!domains.contains(&n.to_string()), "{n} left");
        assert!(!m.pki().join("minions").join(n).exists(), "{n}: key left");
    }
}

/// `clones_per_network(warm)` clones of each profile (one call per network, both at once), checked,
/// then destroyed, but `keep`.
fn round(lab: &Lab, m: &Master, (on_net, on_lan): (&str, &str), tag: &str, keep: Option<&str>) {
    let names = |net: &str| -> Vec<String> {
        (1..=clones_per_network(on_net.starts_with("warm")))
            .map(|i| format!("{tag}{net}{i}"))
            .collect()
    };
    let (net_vms, lan_vms) = (names("n"), names("l"));
    let events = EventLog::start(m);
    let t = Instant::now();
    let calls: Vec<_> = [(on_net, &net_vms), (on_lan, &lan_vms)]
        .iter()
        .map(|(p, vms)| m.salt_run_bg(&["--out", "json", "cloud.profile", p, &vms.join(",")]))
        .collect();
    let mut created = Value::Null;
    for (call, vms) in calls.into_iter().zip([&net_vms, &lan_vms]) {
        let out = wait_exit(call, Duration::from_secs(900));
        let ret = last_json(&out);
        for n in vms {
            assert_eq!(ret[n.as_str()]["minion_up"], true, "{n}: {ret}");
            created[n.as_str()] = ret[n.as_str()].clone();
        }
    }
    eprintln!(
        "{on_net}/{on_lan}: {} clones answered after {:.1?}",
        2 * clones_per_network(on_net.starts_with("warm")),
        t.elapsed()
    );

    let all: Vec<&String> = net_vms.iter().chain(&lan_vms).collect();
    for n in &all {
        let (ok, v) = m.salt_json(n, &["test.ping"], 60);
        assert!(ok && v[n.as_str()] == true, "{n}: {v}");
    }
    let all_names: Vec<String> = all.iter().map(|n| n.to_string()).collect();
    let (grains, macs) = identities(lab, m, &all_names);
    let mut ips = BTreeMap::new();
    for (vms, leases, gw) in [
        (&net_vms, lab.net_leases(), NET_GW),
        (&lan_vms, lab.lan_leases(), LAN_GW),
    ] {
        ips.extend(check_network(lab, vms, &leases, gw, &macs, &grains));
    }
    check_addresses_shown(m, &ips, &created, &events);
    if on_net.starts_with("warm") {
        for (n, ip) in &ips {
            // The warm guest dropped the warm domain's address for its own lease.
            let (_, j) = m.salt_json(
                n,
                &[
                    "cmd.run",
                    "journalctl -o cat -u virtseed-warm | grep -o 'lease ([^)]*)'",
                ],
                60,
            );
            let said = j[n.as_str()].as_str().unwrap_or_default().to_string();
            let (old, new) = said
                .trim_start_matches("lease (eth0 ")
                .trim_end_matches(')')
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("{n}: {said}"));
            assert_eq!(new, ip, "{n}: {said}");
            assert!(!ips.values().any(|i| i == old), "{n}: {said}");
        }
    }

    let all: Vec<&String> = all
        .into_iter()
        .filter(|n| Some(n.as_str()) != keep)
        .collect();
    let list = all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
    let out = m.salt_run(&["--out", "json", "cloud.destroy", &list]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let domains = lab.domains();
    let volumes = lab.volumes();
    for n in &all {
        assert!(!domains.contains(n), "{n}: domain left: {domains:?}");
        assert!(
            !volumes.iter().any(|v| v.starts_with(n.as_str())),
            "{n}: volume left: {volumes:?}"
        );
        for dir in ["minions", "minions_pre", "minions_rejected"] {
            assert!(
                !m.pki().join(dir).join(n).exists(),
                "{n}: key left in {dir}"
            );
        }
    }
    // The leases stay until they expire; no domain holds one any more.
    let held: BTreeSet<String> = domains.iter().flat_map(|d| lab.macs(d)).collect();
    for (n, mac) in &macs {
        if Some(n.as_str()) == keep {
            continue;
        }
        assert!(!held.contains(mac), "a domain still has {mac}");
    }
}

/// The clones' `machine_id`, `ipv4` and `uuid` grains, and each one's first MAC.
fn identities(lab: &Lab, m: &Master, vms: &[String]) -> (Value, Vec<(String, String)>) {
    let list = vms.join(",");
    let out = m.salt(&[
        "-t",
        "60",
        "--out",
        "json",
        "--static",
        "-L",
        &list,
        "grains.item",
        "machine_id",
        "ipv4",
        "uuid",
    ]);
    let grains: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let macs = vms
        .iter()
        .map(|n| (n.clone(), lab.macs(n)[0].clone()))
        .collect();
    (grains, macs)
}

/// Each clone's own address (`ips`, from its lease), and only it, in salt-cloud's
/// `private_ips`: in its create's return, its `created` event, `salt-cloud -Q` and
/// `show_instance` (on the bridge, libvirt knows it from ARP; then from the minion's grains).
fn check_addresses_shown(
    m: &Master,
    ips: &BTreeMap<String, String>,
    created: &Value,
    events: &EventLog,
) {
    let cloud = |args: &[&str]| {
        let mut all = vec!["--out", "json", "-y"];
        all.extend_from_slice(args);
        let out = m.salt_cloud(&all);
        assert!(
            out.status.success(),
            "salt-cloud {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        last_json(&out)
    };
    let q = cloud(&["-Q"]);
    let events = events.events();
    for (n, ip) in ips {
        let event = events
            .iter()
            .find(|e| e["tag"] == format!("salt/cloud/{n}/created"))
            .unwrap_or_else(|| panic!("no created event for {n}"));
        let shown = cloud(&["-a", "show_instance", n]);
        for (what, v) in [
            ("the create's return", &created[n.as_str()]),
            ("the created event", &event["data"]),
            ("-Q", &q["lab"]["libvirt"][n.as_str()]),
            ("show_instance", &shown["lab"]["libvirt"][n.as_str()]),
        ] {
            assert_eq!(
                v["private_ips"],
                serde_json::json!([ip]),
                "{n}: {what}: {v}"
            );
            assert_eq!(v["public_ips"], serde_json::json!([]), "{n}: {what}: {v}");
            assert!(v.get("ip_note").is_none(), "{n}: {what}: {v}");
        }
    }
}

/// On one network: one lease per clone (by its MAC, asked with its MAC as client id), all
/// distinct; ARP agrees; the grains show the same address and the clone's own machine-id
/// (its UUID).
fn check_network(
    lab: &Lab,
    vms: &[String],
    leases: &[Lease],
    gw: &str,
    macs: &[(String, String)],
    grains: &Value,
) -> BTreeMap<String, String> {
    let prefix = &gw[..gw.rfind('.').unwrap() + 1];
    let mut ips = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let neigh = lab.neighbours();
    for n in vms {
        let mac = &macs.iter().find(|(m, _)| m == n).unwrap().1;
        let mine: Vec<&Lease> = leases.iter().filter(|l| &l.mac == mac).collect();
        assert_eq!(mine.len(), 1, "{n} ({mac}): leases {leases:?}");
        let ip = &mine[0].ip;
        assert!(ip.starts_with(prefix), "{n}: {ip} not on {gw}'s network");
        assert_eq!(
            mine[0].client_id,
            format!("01:{mac}"),
            "{n}: the client id is not its MAC's"
        );
        ips.insert(n.clone(), ip.clone());
        assert!(
            neigh.contains(&(ip.clone(), mac.clone())),
            "{n}: ARP has not {ip} at {mac}: {neigh:?}"
        );
        let g = &grains[n.as_str()];
        let addrs: Vec<&str> = g["ipv4"]
            .as_array()
            .unwrap_or_else(|| panic!("{n}: no ipv4 grain: {grains}"))
            .iter()
            .filter_map(Value::as_str)
            .filter(|a| *a != "127.0.0.1")
            .collect();
        assert_eq!(addrs, [ip.as_str()], "{n}: grains {g}");
        let id = g["machine_id"].as_str().unwrap_or_default().to_string();
        let uuid = g["uuid"].as_str().unwrap_or_default().replace('-', "");
        assert_eq!(id, uuid, "{n}: machine-id is not its own UUID: {g}");
        ids.insert(id);
    }
    let distinct: BTreeSet<&String> = ips.values().collect();
    assert_eq!(distinct.len(), vms.len(), "addresses shared: {leases:?}");
    assert_eq!(ids.len(), vms.len(), "machine-ids shared: {grains}");
    ips
}

/// Time to ping per network, cold and warm, side by side in one run (BENCHMARKS.md, "Real
/// networks"): one clone at a time of the same golden image on QEMU user networking, on the
/// libvirt network and on the plain bridge, each timed as its whole `salt-run cloud.profile`
/// call (to the proven readiness answer). `BENCH_ROUNDS` rounds (default 3); each warm
/// profile's state is made by one untimed clone first. Run by scripts/bench-networks.sh.
#[test]
#[ignore = "a benchmark: scripts/bench-networks.sh"]
fn bench_time_to_ping_per_network() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let lab = Lab::start();
    let tag = &salt_proto::auth::new_nonce()[..5];
    let (net_base, lan_base, user_base) = lab.golden_bases_with_user(&format!("b{tag}"), true);
    let m = lab_master(
        &lab,
        &format!(
            "user:\n  provider: lab\n  base_domain: {user_base}\n  pool: {pool}\n  seed: smbios\n  \
             minion_timeout: 600\n  minion:\n    master: 10.0.2.2\n\
             net:\n  extends: user\n  base_domain: {net_base}\n  minion:\n    master: {NET_GW}\n\
             bridge:\n  extends: user\n  base_domain: {lan_base}\n  minion:\n    master: {LAN_GW}\n\
             user-warm:\n  extends: user\n  warm: true\n\
             net-warm:\n  extends: net\n  warm: true\n\
             bridge-warm:\n  extends: bridge\n  warm: true\n",
            pool = lab.pool
        ),
    );
    let _sidecar = Sidecar::start(&m, "virtseed");
    let networks = ["user", "net", "bridge"];
    let clone = |profile: &str, name: &str| -> Duration {
        let t = Instant::now();
        let out = m.salt_run(&["--out", "json", "cloud.profile", profile, name]);
        let took = t.elapsed();
        let ret = last_json(&out);
        assert_eq!(ret[name]["minion_up"], true, "{profile} {name}: {ret}");
        let out = m.salt_run(&["--out", "json", "cloud.destroy", name]);
        assert!(out.status.success(), "{}", text(&out.stdout));
        took
    };
    for n in networks {
        clone(&format!("{n}-warm"), &format!("x{tag}{n}"));
    }
    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in 0..rounds {
        for flow in ["cold", "warm"] {
            for n in networks {
                let profile = if flow == "cold" {
                    n.to_string()
                } else {
                    format!("{n}-warm")
                };
                let took = clone(&profile, &format!("r{tag}{r}{}{}", &n[..1], &flow[..1]));
                eprintln!("round {r}: {profile}: {took:.1?}");
                times
                    .entry(format!("{flow} {n}"))
                    .or_default()
                    .push(took.as_secs_f64());
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("| flow | network | time to ping (median of {rounds}) | runs | vs user networking |");
    println!("|---|---|---|---|---|");
    for flow in ["cold", "warm"] {
        let user = median(&times[&format!("{flow} user")]);
        for n in networks {
            let v = &times[&format!("{flow} {n}")];
            let runs: Vec<String> = v.iter().map(|t| format!("{t:.1}")).collect();
            println!(
                "| {flow} | {n} | {:.1} s | {} | {:.2}x |",
                median(v),
                runs.join(", "),
                median(v) / user
            );
        }
    }
}
