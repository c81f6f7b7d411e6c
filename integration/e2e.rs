//! The whole path on real guests (TCG here): the golden image (scripts/build-golden-image.sh,
//! cached), `salt-run cloud.profile` through the sidecar for both seed channels (cloud-init
//! and SMBIOS credentials), `salt <name> test.ping` True, the guest unit having installed the
//! identity from that channel, cloud-init run to the end on the cloud-init clone, and destroy
//! leaving nothing.

mod harness;

use harness::site::{
    accept_once, golden_files, golden_image, reaching, sidecar_with_peers, write_cloud, Leftovers,
};
use harness::{last_json, text, Master, Sidecar};
use std::process::Command;
use std::time::Duration;

/// The SMBIOS clone is also a clone of two masters that share nothing (hot multi-master,
/// one key pair, ports of their own), each with a sidecar beside it (`peers:`): its key is
/// accepted on the second master by that master's sidecar, and it answers from both.
#[test]
fn real_guests_answer_test_ping_for_both_seed_channels() {
    golden_image(&[]);
    let m = Master::start("3007.17");
    let m2 = Master::start("3007.17");
    m2.stop();
    for f in ["master.pem", "master.pub"] {
        std::fs::copy(m.pki().join(f), m2.pki().join(f)).unwrap();
    }
    m2.restart();
    let (p1, p2) = (m.port("ret_port"), m2.port("ret_port"));
    write_cloud(
        &m,
        &format!("golden:\n  provider: kvm\n  base_domain: virtseed-golden\n  minion:\n    master: 10.0.2.2\n  minion_timeout: 400\ngolden-smbios:\n  extends: golden\n  seed: smbios\n  minion:\n    master: ['10.0.2.2:{p1}', '10.0.2.2:{p2}']\n"),
    );
    let _sidecar = sidecar_with_peers(&m, "virtseed", &[("virtseed-2", &m2)]);
    let _sidecar2 = sidecar_with_peers(&m2, "virtseed-2", &[("virtseed", &m)]);
    accept_once(&m2, "virtseed");
    accept_once(&m, "virtseed-2");
    m.install_modules();
    reaching(&m2, "virtseed");
    let tag = &salt_proto::auth::new_nonce()[..6];
    let (a, b) = (format!("e2e{tag}c"), format!("e2e{tag}s"));
    let _leftovers = Leftovers::new("virtseed-golden", &format!("e2e{tag}"));
    let before = golden_files();

    for (profile, name, channel) in [
        ("golden", &a, "cloud-init"),
        ("golden-smbios", &b, "smbios"),
    ] {
        let out = m.salt_run(&["--out", "json", "cloud.profile", profile, name]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{profile}: {stdout}\n{}",
            text(&out.stderr)
        );
        let ret = last_json(&out);
        assert_eq!(ret[name.as_str()]["minion_up"], true, "{ret}");
        eprintln!("{profile}: timings {}", ret[name.as_str()]["timings_ms"]);
        let (ok, v) = m.salt_json(name, &["test.ping"], 60);
        assert!(ok && v[name.as_str()] == true, "{v}");
        let (_, g) = m.salt_json(name, &["grains.get", "virtseed:profile"], 60);
        assert_eq!(g[name.as_str()], profile, "{g}");
        assert!(!m.pki().join("minions_pre").join(name).exists());
        // The guest unit installed the identity, from this channel, with virtseed's key.
        let (_, j) = m.salt_json(
            name,
            &["cmd.run", "journalctl -b -o cat -u virtseed-credentials"],
            60,
        );
        let said = j[name.as_str()].as_str().unwrap_or_default().to_string();
        assert!(
            said.contains(&format!("identity of {name} ({channel}, its key)")),
            "{said}"
        );
    }
    // The SMBIOS clone, accepted on the second master by its sidecar, answers there too.
    assert!(m2.pki().join("minions").join(&b).exists());
    harness::wait_for(
        "the clone through the second master",
        Duration::from_secs(120),
        || {
            let (ok, v) = m2.salt_json(&b, &["test.ping"], 10);
            ok && v[b.as_str()] == true
        },
    );
    // The cloud-init clone's cloud-init still runs to the end, from the unit's copy of the seed
    // (the volume is detached after the first ping), and the copy is gone afterwards.
    let (_, st) = m.salt_json(
        &a,
        &[
            "cmd.run",
            "cloud-init status --wait --long; ls -A /var/lib/cloud/seed/",
        ],
        240,
    );
    let st = st[a.as_str()].as_str().unwrap_or_default().to_string();
    assert!(
        st.contains("status: done") && st.contains("seed=/var/lib/cloud/seed/nocloud"),
        "{st}"
    );
    assert_ne!(
        st.lines().last(),
        Some("nocloud"),
        "the seed copy is left: {st}"
    );

    let out = m.salt_run(&["--out", "json", "cloud.destroy", &format!("{a},{b}")]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    for n in [&a, &b] {
        assert!(!m.pki().join("minions").join(n).exists());
        assert!(!m2.pki().join("minions").join(n).exists());
        let st = Command::new("virsh")
            .args(["-c", "qemu:///system", "domstate", n])
            .output()
            .unwrap();
        assert!(!st.status.success(), "{n} still defined");
    }
    std::thread::sleep(Duration::from_millis(200));
    // Only this test's clones: the other test here runs at the same time, on the same pool.
    let left: Vec<String> = golden_files()
        .into_iter()
        .filter(|f| !before.contains(f) && (f.contains(&a) || f.contains(&b)))
        .collect();
    assert!(left.is_empty(), "destroy left files behind: {left:?}");
}

/// `accept: on_first_auth` on a real guest: the image makes its own key, and another host
/// signs in under the new name first (as any minion that saw the publication could). The key
/// accepted is the one the VM holds, read from inside it through the QEMU guest agent; the
/// impostor's is removed and reported; readiness waits for the VM to prove it holds its key.
#[test]
fn on_first_auth_accepts_the_key_the_vm_holds_not_an_impostors() {
    golden_image(&[]);
    let m = Master::start("3007.17");
    write_cloud(
        &m,
        "own:\n  provider: kvm\n  base_domain: virtseed-golden\n  minion:\n    master: 10.0.2.2\n  seed: smbios\n  accept: on_first_auth\n  minion_timeout: 500\n",
    );
    let _sidecar = Sidecar::start(&m, "virtseed");
    m.install_modules();
    let events = harness::EventLog::start(&m);
    let name = format!("own{}", &salt_proto::auth::new_nonce()[..6]);
    let _leftovers = Leftovers::new("virtseed-golden", &name);
    let before = golden_files();

    let child = m.salt_run_bg(&["--out", "json", "cloud.profile", "own", &name]);
    let conf = format!(
        "id: {name}\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\n",
        m.port("ret_port"),
        m.port("publish_port")
    );
    let impostor = harness::Minion::start(&m, &m.dir.join("impostor"), &conf);
    harness::wait_for(
        "the impostor's pending key",
        Duration::from_secs(120),
        || m.pki().join("minions_pre").join(&name).exists(),
    );
    let out = harness::site::wait_exit(child, Duration::from_secs(900));
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret = last_json(&out);
    assert_eq!(ret[name.as_str()]["minion_up"], true, "{ret}");

    let clean = |p: &str| salt_proto::keys::clean_key(p);
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&name)).unwrap();
    let theirs = std::fs::read_to_string(m.dir.join("impostor/pki/minion.pub")).unwrap();
    assert_ne!(
        clean(&accepted),
        clean(&theirs),
        "the impostor's key was accepted"
    );
    drop(impostor);
    let (ok, v) = m.salt_json(
        &name,
        &["cmd.run", "cat /etc/salt/pki/minion/minion.pub"],
        120,
    );
    assert!(ok, "{v}");
    assert_eq!(
        clean(v[name.as_str()].as_str().unwrap_or_default()),
        clean(&accepted)
    );
    assert!(
        events
            .events()
            .iter()
            .any(|e| e["tag"] == "virtseed/key/denied" && e["data"]["id"] == name.as_str()),
        "the impostor was not reported"
    );

    let out = m.salt_run(&["--out", "json", "cloud.destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    for dir in ["minions", "minions_pre"] {
        assert!(!m.pki().join(dir).join(&name).exists(), "key left in {dir}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<String> = golden_files()
        .into_iter()
        .filter(|f| !before.contains(f) && f.contains(&name))
        .collect();
    assert!(left.is_empty(), "destroy left files behind: {left:?}");
}

/// `accept: manual` on a real guest: the operator accepts keys. A careless operator accepts
/// an impostor's key pending under the new name (it signed in first): the impostor answers
/// `test.ping`, and the create does not take that for the clone; once the impostor's key is
/// gone and the VM's own is accepted, the VM proves it holds that key (read from inside it
/// through the guest agent) and the create returns.
#[test]
fn manual_readiness_waits_for_the_key_the_vm_holds() {
    golden_image(&[]);
    let m = Master::start("3007.17");
    write_cloud(
        &m,
        "man:\n  provider: kvm\n  base_domain: virtseed-golden\n  minion:\n    master: 10.0.2.2\n    rejected_retry: True\n    acceptance_wait_time: 2\n  seed: smbios\n  accept: manual\n  minion_timeout: 600\n",
    );
    let _sidecar = Sidecar::start(&m, "virtseed");
    m.install_modules();
    let name = format!("man{}", &salt_proto::auth::new_nonce()[..6]);
    let _leftovers = Leftovers::new("virtseed-golden", &name);
    let before = golden_files();

    let mut child = m.salt_run_bg(&["--out", "json", "cloud.profile", "man", &name]);
    let conf = format!(
        "id: {name}\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\n",
        m.port("ret_port"),
        m.port("publish_port")
    );
    let impostor = harness::Minion::start(&m, &m.dir.join("impostor"), &conf);
    harness::wait_for(
        "the impostor's pending key",
        Duration::from_secs(120),
        || m.pki().join("minions_pre").join(&name).exists(),
    );
    let clean = |p: &str| salt_proto::keys::clean_key(p);
    let pending = std::fs::read_to_string(m.pki().join("minions_pre").join(&name)).unwrap();
    let theirs = std::fs::read_to_string(m.dir.join("impostor/pki/minion.pub"));
    assert_eq!(
        clean(&pending),
        clean(&theirs.unwrap_or_default()),
        "the impostor signed in first"
    );
    assert!(m.salt_key(&["-y", "-a", &name]).status.success());
    harness::wait_for("the impostor answering", Duration::from_secs(120), || {
        let (ok, v) = m.salt_json(&name, &["test.ping"], 5);
        ok && v[name.as_str()] == true
    });
    // A plain test.ping readiness would have returned by now.
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the create took the impostor for the clone: {}",
        harness::stdout_of(child)
    );
    drop(impostor);
    assert!(m.salt_key(&["-y", "-d", &name]).status.success());
    // The VM's own key, pending once the impostor's is gone: the operator accepts it.
    harness::wait_for("the VM's pending key", Duration::from_secs(300), || {
        m.pki().join("minions_pre").join(&name).exists()
    });
    assert!(m.salt_key(&["-y", "-a", &name]).status.success());
    let out = harness::site::wait_exit(child, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret = last_json(&out);
    assert_eq!(ret[name.as_str()]["minion_up"], true, "{ret}");
    assert!(ret[name.as_str()].get("readiness").is_none(), "{ret}");
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&name)).unwrap();
    let (ok, v) = m.salt_json(
        &name,
        &["cmd.run", "cat /etc/salt/pki/minion/minion.pub"],
        120,
    );
    assert!(ok, "{v}");
    assert_eq!(
        clean(v[name.as_str()].as_str().unwrap_or_default()),
        clean(&accepted)
    );

    // (Salt's record of the VM's key denied while the impostor held the name may stay in
    // minions_denied: destroy keeps Salt's denials, as `revoke_any` says.)
    let out = m.salt_run(&["--out", "json", "cloud.destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    for dir in ["minions", "minions_pre"] {
        assert!(!m.pki().join(dir).join(&name).exists(), "key left in {dir}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<String> = golden_files()
        .into_iter()
        .filter(|f| !before.contains(f) && f.contains(&name))
        .collect();
    assert!(left.is_empty(), "destroy left files behind: {left:?}");
}
