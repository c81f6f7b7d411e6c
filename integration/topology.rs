//! Salt past one master: real masters on this machine, each on a loopback address of its
//! own, config dirs of their own.
//!
//! A master cluster (3007+: `cluster_id`, `cluster_peers`, one shared `cluster_pki_dir`) of two
//! nodes: the sidecar, beside node A, joins by itself (its key in the cluster's key store); a
//! clone made through node B's `salt-run` gets its key accepted in the cluster's store and is
//! seeded with `cluster.pub` (the key every node signs in with); the clone (a salt-minion
//! playing the guest from its seed) answers `test.ping` through either node; destroy takes
//! the key out of the cluster's store. Hot multi-master and failover: two masters sharing one
//! key pair (Salt's guide), the second in the sidecar's `masters:`; a clone listing both is
//! accepted on both, also while one is down, answers from each, fails over, and destroy
//! removes it from both. A syndic: the sidecar beside the syndic node's master; clones made
//! there or through the master of masters' own front ends answer from the top. And a 3008
//! key store virtseed cannot write (`keys.cache_driver: mmap_key`) is refused by name, before
//! anything is made.

mod harness;

use harness::pool::Pool;
use harness::site::{
    accept_once, play_guest, reaching, sidecar_with_peers, wait_exit, write_cloud,
};
use harness::{last_json, text, virtseed, wait_for, Master, Sidecar};
use std::path::Path;
use std::time::Duration;

/// A pool with a shut-off base domain over a small qcow2 disk; the base's name.
fn base_of(p: &Pool) -> String {
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    base
}

/// `salt-run cloud.profile PROFILE NAME` through `front`, the guest played from its seed
/// once its key is in `keys`'s store; the create must succeed with the minion up.
fn made_by_played_guest(
    front: &Master,
    keys: &Master,
    p: &Pool,
    profile: &str,
    name: &str,
) -> harness::Minion {
    let child = front.salt_run_bg(&["--out", "json", "cloud.profile", profile, name]);
    let guest = play_guest(keys, p, name);
    let out = wait_exit(child, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        guest.log_text()
    );
    assert_eq!(
        last_json(&out)[name]["minion_up"],
        true,
        "{}",
        text(&out.stdout)
    );
    guest
}

/// The golden image's profile (a real guest, TCG), signing in to the master on 127.0.0.1 at
/// `ports` (ret, publish), which guests reach as 10.0.2.2.
fn golden_profile((ret, publish): (u16, u16)) -> String {
    format!(
        "golden:\n  provider: kvm\n  base_domain: virtseed-golden\n  minion_timeout: 400\n  \
         minion:\n    master: 10.0.2.2\n    master_port: {ret}\n    publish_port: {publish}\n"
    )
}

/// A real guest made through `front`'s `salt-run cloud.profile golden`, its key accepted on
/// `keys`: it answers `test.ping` through each of `through`; destroyed, its key gone.
fn real_guest(front: &Master, keys: &Master, through: &[&Master]) {
    harness::site::golden_image(&[]);
    let name = format!("top{}", &salt_proto::auth::new_nonce()[..6]);
    let _leftovers = harness::site::Leftovers::new("virtseed-golden", &name);
    let out = front.salt_run(&["--out", "json", "cloud.profile", "golden", &name]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        last_json(&out)[name.as_str()]["minion_up"],
        true,
        "{}",
        text(&out.stdout)
    );
    assert!(accepted_on(keys, &name));
    for m in through {
        wait_for("the real guest's answer", Duration::from_secs(120), || {
            pings(m, &name)
        });
    }
    let out = front.salt_run(&["--out", "json", "cloud.destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(!accepted_on(keys, &name));
}

/// Node `me` of cluster `id` whose other node is `peer`, sharing `shared/pki`.
fn node_conf(id: &str, me: &str, peer: &str, shared: &Path) -> String {
    format!(
        "id: {me}\ncluster_id: {id}\ncluster_peers:\n  - {peer}\ncluster_pki_dir: {}\n",
        shared.join("pki").display()
    )
}

fn cluster(version: &str, (a_ip, b_ip): (&str, &str)) {
    let tag = format!("cl{}", &version[..4]);
    let p = Pool::new(&tag);
    let shared = p.dir.join("cluster");
    std::fs::create_dir_all(shared.join("pki")).unwrap();
    let cid = format!("vs{}", &salt_proto::auth::new_nonce()[..6]);
    // A first: the cluster's key pair is made once, in the shared directory.
    let a = Master::start_at(version, &node_conf(&cid, a_ip, b_ip, &shared), a_ip);
    // 3008 sends a joining node the cluster's key pair, and the joiner unlinks and rewrites
    // `cluster.pem`/`cluster.pub` even in a shared `cluster_pki_dir`: a process of node A
    // that loads its keys in that gap makes a new cluster key of its own and signs every
    // sign-in with it (Salt 3008.5's race; CI hit it on a loaded machine: "signature did not
    // verify" for 60 s). So node B joins only once node A is whole (it founds the group
    // after `cluster_join_timeout`), and the cluster's key is read once B has rewritten it.
    let founded = version >= "3008";
    if founded {
        a.wait_log("as founding voter", Duration::from_secs(120));
    }
    let b = Master::start_at(version, &node_conf(&cid, b_ip, a_ip, &shared), b_ip);
    if founded {
        b.wait_log("from join-reply", Duration::from_secs(120));
    }
    assert_eq!(a.key_dir(), shared.join("pki"));
    let cluster_pub = std::fs::read_to_string(shared.join("pki/cluster.pub")).unwrap();

    let base = base_of(&p);
    // The clone signs in to node a, on node a's ports (here each node has its own; a sidecar
    // seeds its own master's ports where the profile names none).
    let mut profiles = format!(
        "web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: {a_ip}\n    master_port: {}\n    publish_port: {}\n  minion_timeout: 240\n",
        a.port("ret_port"),
        a.port("publish_port")
    );
    // Node a on 127.0.0.1: a real guest reaches it (as 10.0.2.2).
    let real = a_ip == "127.0.0.1";
    if real {
        profiles.push_str(&golden_profile((
            a.port("ret_port"),
            a.port("publish_port"),
        )));
    }
    for m in [&a, &b] {
        write_cloud(m, &profiles);
        m.install_modules();
    }
    // The sidecar's key goes where the cluster reads keys; it joins without salt-key.
    let sidecar = Sidecar::start(&a, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(60));
    assert!(shared.join("pki/minions/virtseed").exists());
    assert!(!a.pki().join("minions/virtseed").exists());
    // A 3008 cluster forms its Raft group for a few seconds after both nodes start, and a
    // job node b publishes meanwhile never reaches node a's publisher: wait until b's jobs
    // reach the sidecar (Salt's part, seen on an idle machine; under load it is formed by
    // the time the create starts).
    reaching(&b, "virtseed");

    let name = format!("{}a", p.prefix);
    let guest = made_by_played_guest(&b, &a, &p, "web", &name);
    // Accepted in the cluster's store (not a node's own pki_dir), seeded with cluster.pub.
    assert!(shared.join("pki/minions").join(&name).exists());
    for m in [&a, &b] {
        assert!(!m.pki().join("minions").join(&name).exists());
    }
    assert_eq!(
        std::fs::read_to_string(guest.dir.join("pki/minion_master.pub")).unwrap(),
        cluster_pub,
        "the clone trusts the cluster's key"
    );
    for m in [&a, &b] {
        let (ok, v) = m.salt_json(&name, &["test.ping"], 60);
        assert!(ok && v[name.as_str()] == true, "{}: {v}", m.interface);
        let out = m.salt_key(&["--out", "json", "-L"]);
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert!(
            keys["minions"]
                .as_array()
                .is_some_and(|l| l.iter().any(|k| k == name.as_str())),
            "{}: {keys}",
            m.interface
        );
    }
    drop(guest);
    let out = b.salt_run(&["--out", "json", "cloud.destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(!shared.join("pki/minions").join(&name).exists());
    assert!(!p.domains().contains(&name));
    if real {
        // Made through node b, signing in to node a: it answers through both.
        real_guest(&b, &a, &[&a, &b]);
    }

    sidecar_per_node(&a, &b, sidecar, &p, &shared);
}

/// A sidecar beside each node of the cluster, any of which serves: each node's front ends
/// list its own first (`virtseed_sidecar: [...]`). One name asked of both nodes at once is
/// made once; with node a's sidecar down, node a's front ends reach node b's.
fn sidecar_per_node(a: &Master, b: &Master, sidecar_a: Sidecar, p: &Pool, shared: &Path) {
    let sidecar_b = Sidecar::start(b, "virtseed-b");
    sidecar_b.wait_log("serving cloud.* jobs", Duration::from_secs(60));
    assert!(shared.join("pki/minions/virtseed-b").exists());
    for (m, order) in [(a, "[virtseed, virtseed-b]"), (b, "[virtseed-b, virtseed]")] {
        let conf = m.dir.join("master");
        let t = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{t}\nvirtseed_sidecar: {order}\n")).unwrap();
    }
    reaching(a, "virtseed-b");

    // Each front end reaches its own node's sidecar; one VM is made, the other call fails
    // by name and leaves nothing of its own.
    let twice = format!("{}t", p.prefix);
    let ca = a.salt_run_bg(&["--out", "json", "cloud.profile", "web", &twice]);
    let cb = b.salt_run_bg(&["--out", "json", "cloud.profile", "web", &twice]);
    let guest = play_guest(a, p, &twice);
    let (oa, ob) = (
        wait_exit(ca, Duration::from_secs(300)),
        wait_exit(cb, Duration::from_secs(300)),
    );
    let said = format!(
        "node a: {}\nnode b: {}\nsidecar a:\n{}\nsidecar b:\n{}",
        text(&oa.stdout),
        text(&ob.stdout),
        sidecar_a.log_text(),
        sidecar_b.log_text()
    );
    assert_eq!(
        [&oa, &ob].iter().filter(|o| o.status.success()).count(),
        1,
        "{said}"
    );
    let lost = if oa.status.success() { &ob } else { &oa };
    // Told by name: the sidecars on this host share a lock per name; on hosts of their own
    // libvirt's volume, the domain's name and the key store's link take one writer.
    let lost = last_json(lost)[twice.as_str()]["Error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        lost == format!("a create or destroy of \"{twice}\" is already in progress")
            || (lost.contains(&twice) && lost.contains("exists")),
        "{said}"
    );
    for log in [sidecar_a.log_text(), sidecar_b.log_text()] {
        assert!(log.contains(&twice), "each sidecar served one call: {said}");
    }
    assert_eq!(
        p.domains().iter().filter(|d| **d == twice).count(),
        1,
        "{said}"
    );
    let (ok, v) = b.salt_json(&twice, &["test.ping"], 60);
    assert!(ok && v[twice.as_str()] == true, "{v}");
    drop(guest);

    // Node a's sidecar down: node a's front ends reach node b's, which makes and destroys.
    drop(sidecar_a);
    let other = format!("{}o", p.prefix);
    let guest = made_by_played_guest(a, a, p, "web", &other);
    assert!(sidecar_b.log_text().contains(&other));
    drop(guest);
    let out = a.salt_run(&[
        "--out",
        "json",
        "cloud.destroy",
        &format!("{twice},{other}"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    for n in [&twice, &other] {
        assert!(!shared.join("pki/minions").join(n).exists());
        assert!(!p.domains().contains(n));
    }
}

#[test]
fn cluster_of_two_3007() {
    cluster("3007.17", ("127.0.0.2", "127.0.0.3"));
}

#[test]
fn cluster_of_two_3008() {
    // Node a where a real guest reaches it (guests reach 127.0.0.1 as 10.0.2.2).
    cluster("3008.5", ("127.0.0.1", "127.0.0.5"));
}

/// 3008's `keys.cache_driver: mmap_key` keeps keys in an index a file never enters: refused
/// by name by the sidecar (cloud.* off), `virtseed profile` and `doctor`, nothing made.
#[test]
fn a_key_store_virtseed_cannot_write_is_refused_by_name() {
    let m = Master::start_with("3008.5", "keys.cache_driver: mmap_key\n");
    let p = Pool::new("mmk");
    let base = base_of(&p);
    write_cloud(
        &m,
        &format!(
            "web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n"
        ),
    );
    let name = format!("{}a", p.prefix);
    let out = virtseed(&m.dir, &["profile", "web", &name]);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains("`keys.cache_driver: mmap_key`"), "{said}");
    assert!(!p.domains().contains(&name));
    assert_eq!(p.files(), ["base-vda.qcow2"], "nothing made");
    let out = virtseed(&m.dir, &["doctor"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("keys.cache_driver"), "{said}");
    // The sidecar cannot place its own key either: it says so, and the operator accepts it
    // with salt-key (through the master's own store); then it joins, with cloud.* off.
    let accept = {
        let dir = m.dir.clone();
        let salt_key = m.venv.join("bin/salt-key");
        std::thread::spawn(move || {
            for _ in 0..60 {
                let out = std::process::Command::new(&salt_key)
                    .arg("-c")
                    .arg(&dir)
                    .args(["-y", "-a", "virtseed", "--out", "json"])
                    .output()
                    .unwrap();
                if text(&out.stdout).contains("Key for minion virtseed accepted") {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let sidecar = Sidecar::start(&m, "virtseed");
    accept.join().unwrap();
    sidecar.wait_log("cloud.* jobs are off", Duration::from_secs(60));
    let log = sidecar.log_text();
    assert!(log.contains("keys.cache_driver: mmap_key"), "{log}");
    assert!(log.contains("`salt-key -y -a virtseed`"), "{log}");
}

/// A second master, on loopback address `ip` with `a`'s ports (two hosts, as in production:
/// failover's liveness check and a syndic's subscription expect the same ports), `conf`
/// and then `more(itself)` in its config, and `copied` files of `a`'s `pki_dir` in its own.
fn second_master(
    a: &Master,
    ip: &str,
    conf: &str,
    copied: &[&str],
    more: impl FnOnce(&Master) -> String,
) -> Master {
    let b = Master::start_at(&a.version, conf, ip);
    b.stop();
    let ported: String = std::fs::read_to_string(b.dir.join("master"))
        .unwrap()
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((k @ ("ret_port" | "publish_port"), _)) => format!("{k}: {}\n", a.port(k)),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(b.dir.join("master"), format!("{ported}{}", more(&b))).unwrap();
    for f in copied {
        std::fs::copy(a.pki().join(f), b.pki().join(f)).unwrap();
    }
    b.restart();
    b
}

/// Whether `name` is in `salt-key -L`'s accepted list on `m`.
fn accepted_on(m: &Master, name: &str) -> bool {
    let out = m.salt_key(&["--out", "json", "-L"]);
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    keys["minions"]
        .as_array()
        .is_some_and(|l| l.iter().any(|k| k == name))
}

fn pings(m: &Master, name: &str) -> bool {
    let (ok, v) = m.salt_json(name, &["test.ping"], 20);
    ok && v[name] == true
}

#[test]
fn multi_master_and_failover_3007() {
    let version = "3007.17";
    let p = Pool::new("mm");
    // Two hosts, as in production: addresses of their own, the same ports (failover's
    // liveness check looks for a connection to the publish port).
    let (ia, ib) = ("127.0.0.6", "127.0.0.7");
    let a = Master::start_at(version, "", ia);
    // Salt's multi-master guide: every master has the first one's key pair.
    let b = second_master(&a, ib, "", &["master.pem", "master.pub"], |_| String::new());
    let base = base_of(&p);
    write_cloud(
        &a,
        &format!(
            "hot:\n  provider: kvm\n  base_domain: {base}\n  minion_timeout: 240\n  minion:\n    \
             master: [{ia}, {ib}]\n\
             failover:\n  extends: hot\n  minion:\n    master_type: failover\n    \
             master_alive_interval: 2\n    master_tries: -1\n\
             three:\n  extends: hot\n  minion:\n    master: [{ia}, {ib}, m3]\n"
        ),
    );
    a.install_modules();
    let sidecar = Sidecar::start_settings(
        &a,
        "virtseed",
        &[],
        "",
        &format!("masters: ['{}']\n", b.dir.display()),
    );
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(60));

    // Hot: accepted on both, answers from both.
    let hot = format!("{}h", p.prefix);
    let g1 = made_by_played_guest(&a, &a, &p, "hot", &hot);
    for m in [&a, &b] {
        assert!(accepted_on(m, &hot), "{}", m.dir.display());
    }
    harness::wait_for(
        "an answer through each master",
        Duration::from_secs(90),
        || pings(&a, &hot) && pings(&b, &hot),
    );

    // The second master down while a clone is made: its key is accepted there all the same,
    // and once it is back the clone answers through it.
    b.stop();
    let down = format!("{}d", p.prefix);
    let g2 = made_by_played_guest(&a, &a, &p, "hot", &down);
    b.restart();
    assert!(accepted_on(&b, &down));
    harness::wait_for(
        "the clone through the master that was down",
        Duration::from_secs(120),
        || pings(&b, &down),
    );

    // Failover: the first master stops; the clone answers through the second.
    let fo = format!("{}f", p.prefix);
    let g3 = made_by_played_guest(&a, &a, &p, "failover", &fo);
    a.stop();
    harness::wait_for(
        "the failover to the second master",
        Duration::from_secs(180),
        || pings(&b, &fo),
    );
    a.restart();

    // More masters listed than virtseed accepts keys on: refused, nothing made.
    let out = a.salt_run(&[
        "--out",
        "json",
        "cloud.profile",
        "three",
        &format!("{}t", p.prefix),
    ]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("lists 3 masters"), "{said}");
    assert!(!p.domains().contains(&format!("{}t", p.prefix)));

    drop((g1, g2, g3));
    harness::wait_for(
        "the sidecar back on the first master",
        Duration::from_secs(120),
        || {
            let out = a.salt_run(&[
                "--out",
                "json",
                "cloud.destroy",
                &format!("{hot},{down},{fo}"),
            ]);
            out.status.success() && !text(&out.stdout).contains("error")
        },
    );
    for n in [&hot, &down, &fo] {
        for m in [&a, &b] {
            assert!(
                !m.pki().join("minions").join(n).exists(),
                "{n} left on {}",
                m.dir.display()
            );
        }
        assert!(!p.domains().contains(n));
    }
}

/// `key_cache: sched`: the master targets from a key list it refreshes on its own schedule;
/// a create returns only when `salt NAME test.ping` matches the new key (the readiness
/// check is itself a job published to the clone's name).
#[test]
fn key_cache_sched_3007() {
    let m = Master::start_with("3007.17", "key_cache: sched\n");
    let p = Pool::new("kcs");
    let base = base_of(&p);
    write_cloud(
        &m,
        &format!("web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  minion_timeout: 240\n"),
    );
    m.install_modules();
    let _sidecar = Sidecar::start(&m, "virtseed");
    let name = format!("{}a", p.prefix);
    let guest = made_by_played_guest(&m, &m, &p, "web", &name);
    // At once, no retry: the name matches now.
    let (ok, v) = m.salt_json(&name, &["test.ping"], 30);
    assert!(ok && v[name.as_str()] == true, "{v}");
    drop(guest);
    let out = m.salt_run(&["--out", "json", "cloud.destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A `salt-syndic` beside `node`'s master, a minion (id `id`) of the master of masters whose
/// address `node`'s config names in `syndic_master`. Killed on drop.
struct Syndic(std::process::Child);

impl Syndic {
    fn start(node: &Master, id: &str) -> Syndic {
        let d = node.dir.display();
        // The syndic reads the node's master config and this minion config; `sock_dir` is
        // the master's (the syndic listens to its event bus for returns).
        std::fs::write(
            node.dir.join("minion"),
            format!(
                "id: {id}\npki_dir: {d}/pki/syndic\nsock_dir: {d}/sock\nlog_level_logfile: info\n"
            ),
        )
        .unwrap();
        let child = node
            .command(node.venv.join("bin/salt-syndic"))
            .arg("-c")
            .arg(&node.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Syndic(child)
    }
}

impl Drop for Syndic {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A syndic: the sidecar runs beside the syndic node's master, where the clones sign in and
/// their keys are accepted; the master of masters reaches them through the syndic. A clone
/// made on the syndic node answers from the top; the top's own front ends serve creates and
/// destroys through the syndic once they hold a copy of the sidecar's key (a clear error
/// before, nothing made).
#[test]
fn syndic_under_a_master_of_masters_3007() {
    let version = "3007.17";
    let p = Pool::new("syn");
    // Two hosts as in production: addresses of their own, the same ports; the node where a
    // real guest reaches it (guests reach 127.0.0.1 as 10.0.2.2).
    let (top_ip, node_ip) = ("127.0.0.8", "127.0.0.1");
    let top = Master::start_at(version, "order_masters: True\n", top_ip);
    let node = second_master(&top, node_ip, "", &[], |node| {
        let d = node.dir.display();
        format!(
            "syndic_master: {top_ip}\nsyndic_master_port: {}\nsyndic_log_file: {d}/log/syndic\n\
             syndic_pidfile: {d}/run/syndic.pid\n",
            top.port("ret_port")
        )
    });
    let syndic_id = format!("{}syndic", p.prefix);
    let _syndic = Syndic::start(&node, &syndic_id);
    wait_for(
        "the syndic's key at the top",
        Duration::from_secs(60),
        || top.pki().join("minions_pre").join(&syndic_id).exists(),
    );
    assert!(top.salt_key(&["-y", "-a", &syndic_id]).status.success());

    let base = base_of(&p);
    let profiles = format!(
        "web:\n  provider: kvm\n  base_domain: {base}\n  minion_timeout: 240\n  minion:\n    master: {node_ip}\n{}",
        golden_profile((node.port("ret_port"), node.port("publish_port")))
    );
    for m in [&top, &node] {
        write_cloud(m, &profiles);
        m.install_modules();
    }
    let sidecar = Sidecar::start(&node, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(60));
    // doctor on the node says what the top needs.
    let syndic = doctor_check(&node, "syndic");
    assert_eq!(syndic["status"], "ok", "{syndic}");
    assert!(
        syndic["detail"]
            .as_str()
            .is_some_and(|d| d.contains(top_ip) && d.contains("virtseed_sidecars/virtseed")),
        "{syndic}"
    );

    // Made on the syndic node: accepted there (the top holds no key), answers from the top.
    let first = format!("{}a", p.prefix);
    let g1 = made_by_played_guest(&node, &node, &p, "web", &first);
    assert!(!top.pki().join("minions").join(&first).exists());
    wait_for(
        "the clone answering from the top",
        Duration::from_secs(120),
        || pings(&top, &first),
    );
    // And a real guest made on the node answers from the top.
    real_guest(&node, &node, &[&top]);

    // The top's front ends: without a key to check the sidecar's answers with, a clear
    // error naming where its copy goes, at once, and nothing made.
    let second = format!("{}b", p.prefix);
    let out = top.salt_run(&["--out", "json", "cloud.profile", "web", &second]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("virtseed_sidecars/virtseed"), "{said}");
    assert!(!p.domains().contains(&second));
    assert!(!node.pki().join("minions").join(&second).exists());
    // With the copy: the create runs through the syndic, its answer checked at the top.
    let copy = top.pki().join("virtseed_sidecars/virtseed");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(node.pki().join("minions/virtseed"), &copy).unwrap();
    let g2 = made_by_played_guest(&top, &node, &p, "web", &second);
    assert!(node.pki().join("minions").join(&second).exists());
    wait_for(
        "the second clone from the top",
        Duration::from_secs(120),
        || pings(&top, &second),
    );
    let out = top.salt_run(&["--out", "json", "cloud.query"]);
    let listed = text(&out.stdout);
    assert!(
        out.status.success() && listed.contains(&first) && listed.contains(&second),
        "{listed}"
    );

    drop((g1, g2));
    let out = top.salt_run(&[
        "--out",
        "json",
        "cloud.destroy",
        &format!("{first},{second}"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    for n in [&first, &second] {
        assert!(!node.pki().join("minions").join(n).exists(), "{n}");
        assert!(!p.domains().contains(n), "{n}");
    }
}

/// Hot multi-master with a key pair of its own on each master, the masters signing their keys
/// with one signing key pair (`master_sign_pubkey`, Salt's multimaster PKI guide): the clone
/// is seeded with `master_sign.pub` and verifies each master's key by it; it is accepted on
/// both and answers through each.
#[test]
fn signed_master_keys_3007() {
    let version = "3007.17";
    let p = Pool::new("sig");
    let (ia, ib) = ("127.0.0.10", "127.0.0.11");
    let a = Master::start_at(version, "master_sign_pubkey: True\n", ia);
    // One signing key pair; each master keeps its own key.
    let signs = "master_sign_pubkey: True\n";
    let b = second_master(
        &a,
        ib,
        signs,
        &["master_sign.pem", "master_sign.pub"],
        |_| String::new(),
    );
    let key = |m: &Master, f: &str| std::fs::read_to_string(m.pki().join(f)).unwrap();
    assert_ne!(key(&a, "master.pub"), key(&b, "master.pub"));
    let base = base_of(&p);
    write_cloud(
        &a,
        &format!(
            "hot:\n  provider: kvm\n  base_domain: {base}\n  minion_timeout: 240\n  minion:\n    \
             master: [{ia}, {ib}]\n"
        ),
    );
    a.install_modules();
    let sidecar = Sidecar::start_settings(
        &a,
        "virtseed",
        &[],
        "",
        &format!("masters: ['{}']\n", b.dir.display()),
    );
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(60));

    let name = format!("{}h", p.prefix);
    let guest = made_by_played_guest(&a, &a, &p, "hot", &name);
    assert_eq!(
        std::fs::read_to_string(guest.dir.join("pki/master_sign.pub")).unwrap(),
        key(&a, "master_sign.pub")
    );
    let conf: serde_json::Value =
        yaml_serde::from_str(&std::fs::read_to_string(guest.dir.join("minion")).unwrap()).unwrap();
    assert_eq!(conf["verify_master_pubkey_sign"], true, "{conf}");
    for m in [&a, &b] {
        assert!(accepted_on(m, &name), "{}", m.dir.display());
    }
    wait_for(
        "an answer through each master",
        Duration::from_secs(120),
        || pings(&a, &name) && pings(&b, &name),
    );
    assert!(
        guest
            .log_text()
            .contains("signed and verified master pubkey"),
        "{}",
        guest.log_text()
    );
    // `cloud.query` says where the clone's key stands on each master.
    let keys_in_query = || {
        let out = a.salt_run(&["--out", "json", "cloud.query"]);
        assert!(out.status.success(), "{}", text(&out.stdout));
        find_vm(&last_json(&out), &name)["salt_keys"].clone()
    };
    let (da, db) = (a.dir.display().to_string(), b.dir.display().to_string());
    // And `virtseed doctor`, which fails while a clone lacks its key on a master.
    let clone_keys = || doctor_check(&a, "clone keys");
    let keys = keys_in_query();
    assert_eq!(keys[&da], "accepted", "{keys}");
    assert_eq!(keys[&db], "accepted", "{keys}");
    assert_eq!(clone_keys()["status"], "ok", "{}", clone_keys());
    assert!(b.salt_key(&["-y", "-d", &name]).status.success());
    let check = clone_keys();
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("{name} on {db}: none"))),
        "{check}"
    );
    let keys = keys_in_query();
    assert_eq!(
        (&keys[&da], &keys[&db]),
        (&"accepted".into(), &"none".into()),
        "{keys}"
    );
    drop(guest);
    let out = a.salt_run(&["--out", "json", "cloud.destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    for m in [&a, &b] {
        assert!(!m.pki().join("minions").join(&name).exists());
    }
    assert!(!p.domains().contains(&name));
}

/// VM `name`'s entry in a salt-cloud shaped listing (`{provider: {driver: {name: ..}}}`).
/// Check `check` of `virtseed doctor` beside `m`.
fn doctor_check(m: &Master, check: &str) -> serde_json::Value {
    let out = virtseed(&m.dir, &["doctor", "--out", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == check).cloned())
        .unwrap_or_else(|| panic!("no {check}: {}", text(&out.stdout)))
}

fn find_vm(listing: &serde_json::Value, name: &str) -> serde_json::Value {
    listing
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .flat_map(|d| d.as_object().into_iter().flat_map(|o| o.values()))
        .find_map(|vms| vms.get(name).cloned())
        .unwrap_or_else(|| panic!("no {name} in {listing}"))
}

/// What a minion of `m` (mallory, accepted there) can fire on its bus: `salt-call
/// event.fire_master DATA TAG` (`_minion_event`, its tag/data form).
fn fire_as_minion(m: &Master, mallory: &harness::Minion, tag: &str, data: &serde_json::Value) {
    let out = m
        .command(m.venv.join("bin/salt-call"))
        .arg("-c")
        .arg(&mallory.dir)
        .args(["--out", "json", "event.fire_master", &data.to_string(), tag])
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out.stdout).contains("true"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Hot multi-master with masters on hosts of their own (no file of one reachable from the
/// other): a sidecar beside each, each a minion of the other's master (`peers:`), accepting
/// keys for each other over the bus, each master's front ends listing its own first. A clone
/// made through either sidecar is accepted on both and answers from each; an offer mallory
/// (a minion of master b) makes up, or replays, moves nothing; with b's sidecar down, b's
/// front ends reach a's over b's bus, and the create finishes saying b lacks the key, which
/// b gets once its sidecar is back; destroy takes the keys back on both.
#[test]
fn peers_on_hosts_of_their_own_3008() {
    peers_on_hosts("3008.5", ("127.0.0.12", "127.0.0.13"));
}

fn peers_on_hosts(version: &str, (ia, ib): (&str, &str)) {
    let p = Pool::new(&format!("pr{}", &version[3..4]));
    let a = Master::start_at(version, "", ia);
    let b = second_master(&a, ib, "", &["master.pem", "master.pub"], |_| String::new());
    let base = base_of(&p);
    for (m, order) in [
        (&a, "[virtseed, virtseed-b]"),
        (&b, "[virtseed-b, virtseed]"),
    ] {
        write_cloud(
            m,
            &format!(
                "hot:\n  provider: kvm\n  base_domain: {base}\n  minion_timeout: 240\n  minion:\n    \
                 master: [{ia}, {ib}]\n"
            ),
        );
        m.install_modules();
        let conf = m.dir.join("master");
        let t = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{t}\nvirtseed_sidecar: {order}\n")).unwrap();
    }
    let sa = sidecar_with_peers(&a, "virtseed", &[("virtseed-b", &b)]);
    let mut sb = sidecar_with_peers(&b, "virtseed-b", &[("virtseed", &a)]);
    // Before the operator's step, doctor says what it is.
    let check = doctor_check(&a, "peers");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["fix"]
            .as_str()
            .is_some_and(|f| f.contains("`salt-key -a virtseed-b` here")),
        "{check}"
    );
    accept_once(&b, "virtseed");
    accept_once(&a, "virtseed-b");
    for s in [&sa, &sb] {
        s.wait_log("serving cloud.* jobs", Duration::from_secs(60));
    }
    // Each sidecar a minion of the other's master, answering there as any minion does.
    reaching(&b, "virtseed");
    reaching(&a, "virtseed-b");

    let events = harness::EventLog::start(&b);
    let on_a = format!("{ia}:{} (peer virtseed)", a.port("ret_port"));
    let on_b = format!("{ib}:{} (peer virtseed-b)", a.port("ret_port"));
    let hot = format!("{}h", p.prefix);
    let g1 = made_by_played_guest(&a, &a, &p, "hot", &hot);
    let back = format!("{}b", p.prefix);
    let g2 = made_by_played_guest(&b, &b, &p, "hot", &back);
    assert!(sa.log_text().contains(&back) && sb.log_text().contains(&back));
    for n in [&hot, &back] {
        for m in [&a, &b] {
            assert!(accepted_on(m, n), "{n} on {}", m.dir.display());
        }
        harness::wait_for(
            "an answer through each master",
            Duration::from_secs(90),
            || pings(&a, n) && pings(&b, n),
        );
    }
    for (s, log) in [
        (&sb, "accepted a clone's key a peer offered"),
        (&sa, "accepted a clone's key a peer offered"),
    ] {
        assert!(s.log_text().contains(log), "{}", s.log_text());
    }
    assert_eq!(doctor_check(&a, "peers")["status"], "ok");
    // Each sidecar says where each clone's key stands, per master.
    for (m, n, there) in [(&a, &hot, &on_b), (&b, &back, &on_a)] {
        let out = m.salt_run(&["--out", "json", "cloud.query"]);
        let vm = find_vm(&last_json(&out), n);
        assert_eq!(vm["salt_keys"][there.as_str()], "accepted", "{vm}");
    }
    let offer = events
        .events()
        .into_iter()
        .find(|e| e["tag"] == format!("virtseed/peer/key_offer/{hot}"))
        .expect("the offer on b's bus");
    forgeries_move_nothing(&b, &sb);

    // b's sidecar down: b's front ends reach a's over b's bus; the create finishes, saying
    // b lacks the key; once b's sidecar is back, a's sends it again and b accepts it.
    drop(sb);
    let down = format!("{}d", p.prefix);
    let child = b.salt_run_bg(&["--out", "json", "cloud.profile", "hot", &down]);
    let g3 = play_guest(&a, &p, &down);
    let out = wait_exit(child, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let keys = &last_json(&out)[down.as_str()]["salt_keys"];
    assert_eq!(keys[&on_b], "unconfirmed", "{}", text(&out.stdout));
    assert_eq!(keys[a.dir.to_str().unwrap()], "accepted", "{keys}");
    assert!(!accepted_on(&b, &down));
    let check = doctor_check(&a, "clone keys");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("{down} on {on_b}: unconfirmed"))),
        "{check}"
    );
    sb = sidecar_with_peers(&b, "virtseed-b", &[("virtseed", &a)]);
    harness::wait_for("the key offered again", Duration::from_secs(90), || {
        accepted_on(&b, &down)
    });
    harness::wait_for("the clone through b", Duration::from_secs(120), || {
        pings(&b, &down)
    });

    // Destroy takes the keys back on both; mallory replaying the first offer (a's own
    // signature) then brings nothing back.
    drop((g1, g2, g3));
    let all = format!("{hot},{back},{down}");
    let out = a.salt_run(&["--out", "json", "cloud.destroy", &all]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let said = last_json(&out);
    for n in [&hot, &back, &down] {
        assert!(!accepted_on(&a, n) && !accepted_on(&b, n), "{n}: {said}");
        assert!(!p.domains().contains(n));
    }
    assert_eq!(said[hot.as_str()]["peer_keys"][&on_b], "revoked", "{said}");
    let mallory = harness::Minion::start(
        &b,
        &b.dir.join("mallory"),
        &format!(
            "id: mallory\nmaster: {ib}\nmaster_port: {}\n",
            b.port("ret_port")
        ),
    );
    fire_as_minion(
        &b,
        &mallory,
        &format!("virtseed/peer/key_offer/{hot}"),
        &offer["data"]["data"],
    );
    sb.wait_log("ignored a key offer sent before", Duration::from_secs(30));
    assert!(!accepted_on(&b, &hot));
    drop(sa);
}

/// Mallory, a minion of `m`: an offer signed with its own key in the name of a's sidecar,
/// and one in its own name, accept nothing (sidecar `s`, beside `m`, says why).
fn forgeries_move_nothing(m: &Master, s: &Sidecar) {
    let mdir = m.dir.join("mallory");
    let mallory = harness::Minion::start(
        m,
        &mdir,
        &format!(
            "id: mallory\nmaster: {}\nmaster_port: {}\n",
            m.interface,
            m.port("ret_port")
        ),
    );
    accept_once(m, "mallory");
    let mkey = salt_proto::keys::PrivateKey::from_pem(
        &std::fs::read_to_string(mdir.join("pki/minion.pem")).unwrap(),
    )
    .unwrap();
    let mpub = mkey.public_key().pem().to_string();
    let signer = virtseed::bus::proof::Signer::new(mkey);
    for (from, n) in [("virtseed", "evil1"), ("mallory", "evil2")] {
        let body = serde_json::json!({
            "kind": "key_offer", "op": "accept", "from": from, "to": "virtseed-b",
            "master": "", "name": n, "pub": mpub,
            "finger": salt_proto::keys::pem_finger(&mpub), "seq": u64::MAX / 2, "nonce": "n",
        });
        fire_as_minion(
            m,
            &mallory,
            &format!("virtseed/peer/key_offer/{n}"),
            &serde_json::json!({"virtseed_peer": signer.signed(&body)}),
        );
    }
    s.wait_log("a signature that does not verify", Duration::from_secs(30));
    s.wait_log(
        "which is not in this sidecar's `peers:`",
        Duration::from_secs(30),
    );
    for n in ["evil1", "evil2"] {
        assert!(!m.pki().join("minions").join(n).exists());
    }
}
