//! `virtseed doctor` on a real site (master, pool, base domain, installed modules, sidecar):
//! every check passes on the healthy site, and each broken case it names fails that check,
//! with a fix, and exits non-zero.

mod harness;

use harness::pool::virsh_ok;
use harness::site::site;
use harness::{text, virtseed, Sidecar};
use serde_json::Value;
use std::path::Path;

const SALT: &str = "3007.17";

/// `virtseed -c DIR doctor --out json`: (exit ok, {check: status}, the whole report).
fn doctor(dir: &Path, python: &Path) -> (bool, Value) {
    let out = virtseed(
        dir,
        &[
            "doctor",
            "--out",
            "json",
            "--salt-python",
            python.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    assert_eq!(v["ok"].as_bool(), Some(out.status.success()), "{v}");
    (out.status.success(), v)
}

fn status<'a>(v: &'a Value, check: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no check {check:?} in {v:#}"))["status"]
        .as_str()
        .unwrap()
}

/// Doctor fails, and `check` is the failing one, with a fix.
fn fails(dir: &Path, python: &Path, check: &str) -> Value {
    let (ok, v) = doctor(dir, python);
    assert!(!ok, "doctor passed though {check} is broken: {v:#}");
    assert_eq!(status(&v, check), "fail", "{v:#}");
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap();
    assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
    v
}

fn edit(path: &Path, f: impl FnOnce(&str) -> String) -> String {
    let orig = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(&orig)).unwrap();
    orig
}

#[test]
fn doctor_on_a_healthy_site_and_each_broken_case() {
    let s = site(SALT, "doc");
    let m = &s.m;
    let py = m.venv.join("bin/python");
    let dir = &m.dir;
    let mut sidecar = Sidecar::start(m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", std::time::Duration::from_secs(30));

    let (ok, v) = doctor(dir, &py);
    assert!(ok, "{v:#}");
    for c in [
        "master config",
        "pki_dir",
        "sidecar key",
        "master reachable",
        "provider kvm",
        "profile web",
        "salt cloud runner",
        "salt libvirt cloud driver",
        "sidecar running",
    ] {
        assert_eq!(status(&v, c), "ok", "{c}: {v:#}");
    }
    // The modules are install-runner's copies in extension_modules: doctor says a master
    // sync deletes them.
    let runner = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "salt cloud runner")
        .unwrap();
    assert!(
        runner["detail"]
            .as_str()
            .unwrap()
            .contains("`salt-run saltutil.sync_all` deletes it"),
        "{runner}"
    );
    // How the base's clones get their machine-id (this test base boots from its disk, so a
    // booted template's would reach PID 1 and journald).
    let web = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "profile web")
        .unwrap()
        .to_string();
    assert!(web.contains("boots through a bootloader"), "{web}");
    // check-config says, per profile, what a clone of a booted template does not keep.
    let out = virtseed(dir, &["check-config"]);
    let cc = text(&out.stdout);
    assert!(
        cc.contains(
            "each clone: new UUID, MACs, machine-id, minion id and key; virtseed's guest side"
        ),
        "{cc}"
    );
    // The text form: one line per check.
    let out = virtseed(dir, &["doctor", "--salt-python", py.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("ok    sidecar running"),
        "{}",
        text(&out.stdout)
    );

    // The master's config unreadable.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("master"), "ret_port: not-a-port\n").unwrap();
    fails(bad.path(), &py, "master config");

    // pki_dir not writable (here: its minions/ gone), and so the sidecar's key not accepted.
    let minions = m.pki().join("minions");
    let aside = m.pki().join("minions.aside");
    std::fs::rename(&minions, &aside).unwrap();
    let v = fails(dir, &py, "pki_dir");
    std::fs::rename(&aside, &minions).unwrap();
    assert_eq!(status(&v, "sidecar key"), "fail");

    // The sidecar's key not accepted.
    let key = minions.join("virtseed");
    let held = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    fails(dir, &py, "sidecar key");
    std::fs::write(&key, held).unwrap();

    // A provider whose libvirt does not answer: its profiles are skipped.
    let providers = dir.join("cloud.providers");
    let orig = edit(&providers, |t| {
        t.replace(
            "qemu:///system",
            "qemu+unix:///system?socket=/nonexistent/sock",
        )
    });
    let v = fails(dir, &py, "provider kvm");
    std::fs::write(&providers, orig).unwrap();
    assert_eq!(status(&v, "profile web"), "skip");

    // A profile whose base is missing, then one whose base is running.
    let profiles = dir.join("cloud.profiles");
    let base = format!("{}base", s.p.prefix);
    let orig = edit(&profiles, |t| {
        t.replacen(
            &format!("base_domain: {base}"),
            &format!("base_domain: {base}-gone"),
            1,
        )
    });
    let v = fails(dir, &py, "profile web");
    std::fs::write(&profiles, orig).unwrap();
    assert!(v.to_string().contains(&format!("{base}-gone")), "{v}");
    virsh_ok(&["start", &base]);
    let v = fails(dir, &py, "profile web");
    virsh_ok(&["destroy", &base]);
    assert!(v.to_string().contains("running"), "{v}");

    // accept: on_first_auth on a base without the guest agent's channel: no key could be
    // read from its clones.
    let orig = edit(&profiles, |t| {
        t.replacen(
            "  minion_timeout: 600\n",
            "  minion_timeout: 600\n  accept: on_first_auth\n",
            1,
        )
    });
    let (ok, v) = doctor(dir, &py);
    assert!(ok && status(&v, "profile web") == "ok", "{v:#}");
    let xml = virsh_ok(&["dumpxml", "--inactive", &base]);
    let without: String = xml
        .lines()
        .filter(|l| {
            !l.contains("org.qemu.guest_agent.0")
                && !l.contains("<channel")
                && !l.contains("</channel>")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let f = dir.join("base-no-agent.xml");
    std::fs::write(&f, &without).unwrap();
    virsh_ok(&["define", f.to_str().unwrap()]);
    let v = fails(dir, &py, "profile web");
    std::fs::write(&f, &xml).unwrap();
    virsh_ok(&["define", f.to_str().unwrap()]);
    std::fs::write(&profiles, orig).unwrap();
    assert!(v.to_string().contains("qemu-guest-agent"), "{v}");

    // The Salt modules of another release.
    let client = dir.join("extmods/utils/virtseed_client.py");
    let orig = edit(&client, |t| {
        t.replace(
            &format!("VERSION = {:?}", env!("CARGO_PKG_VERSION")),
            "VERSION = \"0.0.1\"",
        )
    });
    let v = fails(dir, &py, "salt cloud runner");
    std::fs::write(&client, &orig).unwrap();
    assert!(v.to_string().contains("0.0.1"), "{v}");

    // The Salt modules not installed: Salt's own runner and driver answer.
    let runner = dir.join("extmods/runners/cloud.py");
    let driver = dir.join("extmods/clouds/libvirt.py");
    let (r, d) = (
        std::fs::read(&runner).unwrap(),
        std::fs::read(&driver).unwrap(),
    );
    std::fs::remove_file(&runner).unwrap();
    std::fs::remove_file(&driver).unwrap();
    let v = fails(dir, &py, "salt cloud runner");
    assert_eq!(status(&v, "salt libvirt cloud driver"), "fail");
    assert!(v.to_string().contains("not virtseed's"), "{v}");
    std::fs::write(&runner, r).unwrap();
    std::fs::write(&driver, d).unwrap();

    // The runner sends to another sidecar id.
    let master = dir.join("master");
    let orig = edit(&master, |t| format!("{t}virtseed_sidecar: elsewhere\n"));
    let v = fails(dir, &py, "sidecar running");
    std::fs::write(&master, orig).unwrap();
    assert!(v.to_string().contains("elsewhere"), "{v}");

    // The sidecar not running.
    sidecar.kill9();
    fails(dir, &py, "sidecar running");

    // The master down.
    m.stop();
    fails(dir, &py, "master reachable");
}
