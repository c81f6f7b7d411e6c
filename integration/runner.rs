//! `salt-run cloud.*` on real masters (3007.17 with Salt's own cloud runner replaced, 3008.5
//! which has none), served by the sidecar: events for reactors, readiness with a real
//! salt-minion built from the seed, list, actions, destroy, errors.

mod harness;

use harness::pool::Pool;
use harness::site::{master_with_base, play_guest, play_guest_with, wait_exit};
use harness::{last_json, mread, text, virtseed, wait_for, EventLog, Master, Minion, Sidecar};
use std::process::{Command, Stdio};
use std::time::Duration;

fn scenario(version: &str) {
    let (m, p, base) = master_with_base(version, &format!("run{}", &version[..4]), |base| {
        format!("web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  minion_timeout: 120\nquick:\n  extends: web\n  wait_for_minion: false\nnobase:\n  extends: web\n  base_domain: {base}-nope\n")
    });
    let sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    m.install_modules();
    let events = EventLog::start(&m);

    // Without waiting for a minion: the VM is made and returned at once.
    let a = format!("{}a", p.prefix);
    let out = m.salt_run(&["--out", "json", "cloud.profile", "quick", &a]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sidecar.log_text()
    );
    let ret = last_json(&out);
    assert_eq!(ret[&a]["state"], "running", "{ret}");
    assert_eq!(ret[&a]["profile"], "quick");
    assert!(ret[&a]["fingerprint"].as_str().unwrap().contains(':'));
    assert!(
        // The progress message: `NAME  started  0.6 s` (columns).
        text(&out.stdout)
            .lines()
            .any(|l| l.contains(&format!("\"{a} ")) && l.contains(" started ")),
        "no progress shown: {}",
        text(&out.stdout)
    );
    for step in [
        "creating",
        "requesting",
        "seeded",
        "key_accepted",
        "started",
        "created",
    ] {
        let tag = format!("salt/cloud/{a}/{step}");
        wait_for(&tag, Duration::from_secs(10), || {
            events.events().iter().any(|e| e["tag"] == tag.as_str())
        });
    }
    let created = events
        .events()
        .into_iter()
        .find(|e| e["tag"] == format!("salt/cloud/{a}/created"))
        .unwrap();
    for (k, v) in [
        ("name", a.as_str()),
        ("profile", "quick"),
        ("provider", "kvm:libvirt"),
        ("driver", "libvirt"),
    ] {
        assert_eq!(created["data"][k], v, "{created}");
    }
    assert!(created["data"]["_stamp"].is_string());

    // salt-cloud's `create`: provider, names, and profile keys as arguments.
    let c = format!("{}c", p.prefix);
    let out = m.salt_run(&[
        "--out",
        "json",
        "cloud.create",
        "kvm",
        &c,
        &format!("base_domain={base}"),
        "cpus=2",
        "minion={master: 127.0.0.1}",
        "wait_for_minion=False",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(last_json(&out)[&c]["state"], "running");
    assert!(harness::pool::virsh_ok(&["dominfo", &c]).contains("CPU(s):         2"));
    let bd = format!("base_domain={base}");
    let out = m.salt_run(&[
        "--out",
        "json",
        "cloud.create",
        "kvm",
        "c2",
        &bd,
        "cpus=many",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("cpus"), "{}", text(&out.stdout));

    // With readiness, two names in one call: salt-run returns once both new minions answer a
    // real test.ping (each guest's part is played by a salt-minion built from its seed).
    let b = format!("{}b", p.prefix);
    let b2 = format!("{}d", p.prefix);
    let child = Command::new(m.venv.join("bin/salt-run"))
        .arg("-c")
        .arg(&m.dir)
        .args([
            "--out",
            "json",
            "cloud.profile",
            "web",
            &format!("{b},{b2}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let minions = [play_guest(&m, &p, &b), play_guest(&m, &p, &b2)];
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        minions[0].log_text()
    );
    let ret = last_json(&out);
    for n in [&b, &b2] {
        assert_eq!(ret[n.as_str()]["minion_up"], true, "{ret}");
        let t = &ret[n.as_str()]["timings_ms"];
        assert!(
            t["first_ping"].as_u64().unwrap() >= t["started"].as_u64().unwrap(),
            "{t}"
        );
        assert!(
            t["minion_start"].is_u64() && t["first_auth"].is_u64(),
            "{t}"
        );
    }
    // The seed is gone once the minion is up; the minion keeps answering.
    let seed = p.dir.join(format!("{b}-seed.img"));
    wait_for("seed removal", Duration::from_secs(10), || {
        !seed.exists() && !p.dir.join(format!("{b2}-seed.img")).exists()
    });
    let inactive = harness::pool::virsh_ok(&["dumpxml", "--inactive", &b]);
    assert!(
        !inactive.contains(&format!("<source file='{}'", seed.display())),
        "{inactive}\n{}",
        sidecar.log_text()
    );
    let (ok, v) = m.salt_json(&b, &["test.ping"], 30);
    assert!(ok && v[&b] == true, "{v}");

    // A clone whose guest keeps its template's machine-id (a template booted before, with
    // nothing to reset it; played here with b's): refused once it is up, by name, and
    // destroyed with its volumes and key.
    let (_, g) = m.salt_json(&b, &["grains.get", "machine_id"], 30);
    let b_mid = g[&b].as_str().unwrap().to_string();
    assert_eq!(b_mid.len(), 32, "{g}");
    let t = format!("{}t", p.prefix);
    let child = m.salt_run_bg(&["--out", "json", "cloud.profile", "web", &t]);
    let twin = play_guest_with(&m, &p, &t, Some(&b_mid));
    let out = wait_exit(child, Duration::from_secs(180));
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    let err = last_json(&out)[&t]["Error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains(&format!("machine-id {b_mid}, the same as minion {b}"))
            && err.ends_with("the VM was destroyed"),
        "{said}\n{}",
        sidecar.log_text()
    );
    drop(twin);
    assert!(!p.domains().contains(&t), "{:?}", p.domains());
    assert!(p.files().iter().all(|f| !f.contains(&t)), "{:?}", p.files());
    for dir in ["minions", "minions_pre", "minions_denied"] {
        assert!(!m.pki().join(dir).join(&t).exists(), "{dir}/{t}");
    }

    // A base domain that does not exist: a clear error, nothing made.
    let out = m.salt_run(&["--out", "json", "cloud.profile", "nobase", "nb1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("does not exist"),
        "{}",
        text(&out.stdout)
    );
    assert!(!m.pki().join("minions/nb1").exists());

    // Queries in salt-cloud's shapes.
    let out = m.salt_run(&["--out", "json", "cloud.list_nodes"]);
    let ret = last_json(&out);
    for n in [&a, &b] {
        assert_eq!(
            ret["kvm"]["libvirt"][n.as_str()]["state"],
            "running",
            "{ret}"
        );
    }
    assert!(
        ret["kvm"]["libvirt"].get(&base).is_none(),
        "the base is not ours"
    );
    let out = m.salt_run(&["--out", "json", "cloud.action", "show_instance", &a]);
    assert_eq!(last_json(&out)[&a]["name"], a.as_str());
    let out = m.salt_run(&["--out", "json", "cloud.action", "stop", &a]);
    assert_eq!(
        last_json(&out)[&a]["state"],
        "shutoff",
        "{}",
        text(&out.stdout)
    );
    assert_eq!(p.state(&a), "shut off");
    let out = m.salt_run(&["--out", "json", "cloud.action", "start", &a]);
    assert_eq!(last_json(&out)[&a]["state"], "running");
    let out = m.salt_run(&["--out", "json", "cloud.action", "reboot", &a]);
    assert_eq!(last_json(&out)[&a]["state"], "running");
    let out = m.salt_run(&["--out", "json", "cloud.action", "stop", &base]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("not made by virtseed"),
        "{}",
        text(&out.stdout)
    );
    let out = m.salt_run(&["--out", "json", "cloud.list_images"]);
    assert!(last_json(&out)["kvm"]["libvirt"].get(&base).is_some());

    // Errors: non-zero exit and {name: {Error}}.
    let out = m.salt_run(&["--out", "json", "cloud.profile", "web", "../bad"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("instance name"),
        "{}",
        text(&out.stdout)
    );
    let out = m.salt_run(&["--out", "json", "cloud.profile", "nope", "x1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("no profile"),
        "{}",
        text(&out.stdout)
    );

    // Destroy them all: domains, volumes and keys are gone; events for reactors.
    drop(minions);
    let out = m.salt_run(&[
        "--out",
        "json",
        "cloud.destroy",
        &format!("{a},{b},{c},{b2}"),
    ]);
    let destroyed = text(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for n in [&a, &b, &c, &b2] {
        assert!(!m.pki().join("minions").join(n).exists());
        let tag = format!("salt/cloud/{n}/destroyed");
        wait_for(&tag, Duration::from_secs(10), || {
            events.events().iter().any(|e| e["tag"] == tag.as_str())
        });
    }
    assert_eq!(
        p.domains(),
        vec![base],
        "{destroyed}\n{}",
        sidecar.log_text()
    );
    assert_eq!(p.files(), ["base-vda.qcow2"]);
}

#[test]
fn salt_run_cloud_3007() {
    scenario("3007.17");
}

#[test]
fn salt_run_cloud_3008() {
    scenario("3008.5");
}

/// `accept: on_first_auth` accepts the key the VM holds, read from inside it through the
/// QEMU guest agent (integration/e2e.rs shows it on a real guest, against an impostor): a VM
/// with no agent (here, no OS at all) gets no key accepted whoever signs in under its name;
/// a create that waits says why and leaves nothing; a name virtseed did not make is never
/// accepted.
#[test]
fn first_auth_accepts_only_a_key_read_from_the_vm() {
    let m = Master::start("3007.17");
    let p = Pool::new("faa");
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    std::fs::write(
        m.dir.join("cloud.providers"),
        "kvm:\n  driver: libvirt\n  url: qemu:///system\n",
    )
    .unwrap();
    std::fs::write(
        m.dir.join("cloud.profiles"),
        format!("own:\n  provider: kvm\n  base_domain: {base}\n  minion: {{master: 127.0.0.1}}\n  accept: on_first_auth\n  autoaccept_window: 120\nshort:\n  extends: own\n  autoaccept_window: 6\n"),
    )
    .unwrap();
    let sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    m.install_modules();
    let conf = |id: &str| {
        format!(
            "id: {id}\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\n",
            m.port("ret_port"),
            m.port("publish_port")
        )
    };

    let x = format!("{}x", p.prefix);
    let out = virtseed(&m.dir, &["profile", "own", &x]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !m.pki().join("minions").join(&x).exists(),
        "nothing pre-accepted"
    );
    let ud = mread(&p.dir.join(format!("{x}-seed.img")), "user-data");
    assert!(
        !ud.contains("private_key"),
        "the image makes its own key: {ud}"
    );

    // Another host signs in under x first (as anyone who saw the name could): pending, and
    // never accepted, since the VM cannot show the key it holds.
    let impostor = Minion::start(&m, &m.dir.join("own-x"), &conf(&x));
    // And a name virtseed did not make.
    let z = format!("{}z", p.prefix);
    let mz = Minion::start(&m, &m.dir.join("own-z"), &conf(&z));
    wait_for("both pending", Duration::from_secs(60), || {
        m.pki().join("minions_pre").join(&x).exists()
            && m.pki().join("minions_pre").join(&z).exists()
    });
    wait_for(
        "the sidecar to try the VM's agent",
        Duration::from_secs(30),
        || sidecar.log_text().contains("pending key not accepted yet"),
    );
    std::thread::sleep(Duration::from_secs(4));
    for id in [&x, &z] {
        assert!(
            !m.pki().join("minions").join(id).exists(),
            "{id}: a key was accepted that the VM never showed"
        );
    }
    let log = sidecar.log_text();
    assert!(log.contains("no QEMU guest agent answers"), "{log}");
    drop((impostor, mz));

    // A create that waits for the VM: no key it can read in its window, so it fails saying
    // why, and leaves nothing.
    let y = format!("{}y", p.prefix);
    let out = m.salt_run(&["--out", "json", "cloud.profile", "short", &y]);
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("no key of {y} accepted"))
            && said.contains("install qemu-guest-agent"),
        "{said}"
    );
    harness::site::nothing_left(&m, &p.name, &y);

    let out = virtseed(&m.dir, &["destroy", &x]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(!m.pki().join("minions_pre").join(&x).exists());
    assert_eq!(p.files(), ["base-vda.qcow2"]);
}

/// Two sidecars on one master, each serving the provider that names it (`sidecar:`), on
/// Salt 3006; and a real reactor on `salt/cloud/<name>/created`.
#[test]
fn two_sidecars_route_by_provider_and_reactors_fire_3006() {
    let m = Master::start("3006.30");
    std::fs::create_dir_all(m.dir.join("master.d")).unwrap();
    std::fs::create_dir_all(m.dir.join("reactor")).unwrap();
    std::fs::write(
        m.dir.join("master.d/reactor.conf"),
        format!(
            "reactor:\n  - 'salt/cloud/*/created':\n    - {}/reactor/created.sls\n",
            m.dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        m.dir.join("reactor/created.sls"),
        "announce:\n  runner.event.send:\n    - tag: virtseed/test/reacted\n    - data:\n        name: {{ data['name'] }}\n        profile: {{ data['profile'] }}\n",
    )
    .unwrap();
    m.restart();

    let p = Pool::new("two");
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    std::fs::write(
        m.dir.join("cloud.providers"),
        "kvm-a:\n  driver: libvirt\n  url: qemu:///system\n  sidecar: vs-a\nkvm-b:\n  driver: libvirt\n  url: qemu:///system\n  sidecar: vs-b\n",
    )
    .unwrap();
    std::fs::write(
        m.dir.join("cloud.profiles"),
        format!("pa:\n  provider: kvm-a\n  base_domain: {base}\n  minion: {{master: 127.0.0.1}}\n  wait_for_minion: false\npb:\n  extends: pa\n  provider: kvm-b\n"),
    )
    .unwrap();
    let sa = Sidecar::start(&m, "vs-a");
    let sb = Sidecar::start(&m, "vs-b");
    m.install_modules();
    let events = EventLog::start(&m);

    let (x, y) = (format!("{}x", p.prefix), format!("{}y", p.prefix));
    let out = m.salt_run(&["--out", "json", "cloud.profile", "pa", &x]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        sa.log_text()
    );
    let out = m.salt_run(&["--out", "json", "cloud.profile", "pb", &y]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        sb.log_text()
    );
    // One cloud.profile job each (its lines all carry the job's span; count its start).
    assert_eq!(
        sa.log_text()
            .lines()
            .filter(|l| l.contains("job started") && l.contains("fun=cloud.profile"))
            .count(),
        1,
        "{}",
        sa.log_text()
    );
    // One cloud.profile job each (its lines all carry the job's span; count its start).
    assert_eq!(
        sb.log_text()
            .lines()
            .filter(|l| l.contains("job started") && l.contains("fun=cloud.profile"))
            .count(),
        1,
        "{}",
        sb.log_text()
    );
    assert_eq!(last_json(&out)[&y]["provider"], "kvm-b:libvirt");

    // The reactor ran on the created event.
    wait_for("the reactor's event", Duration::from_secs(60), || {
        events.events().iter().any(|e| {
            e["tag"] == "virtseed/test/reacted"
                && e["data"]["name"] == x.as_str()
                && e["data"]["profile"] == "pa"
        })
    });

    // Queries and destroy go to both sidecars; each answers for its own provider.
    let out = m.salt_run(&["--out", "json", "cloud.list_nodes"]);
    let ret = last_json(&out);
    assert_eq!(ret["kvm-a"]["libvirt"][&x]["state"], "running", "{ret}");
    assert_eq!(ret["kvm-b"]["libvirt"][&y]["state"], "running", "{ret}");
    assert!(ret["kvm-a"]["libvirt"].get(&y).is_none(), "{ret}");
    let out = m.salt_run(&["--out", "json", "cloud.destroy", &format!("{x},{y}")]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(p.domains(), vec![base]);
    assert_eq!(p.files(), ["base-vda.qcow2"]);
}
