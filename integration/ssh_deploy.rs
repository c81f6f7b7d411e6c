//! `seed: ssh` on a real plain guest (scripts/build-golden-image.sh --plain: sshd, a
//! salt-minion 3007.17 waiting for a key, no cloud-init, no guest unit), through the real
//! `salt-cloud -p` of Salt 3006.30, 3007.17 and 3008.5 (each runs its own `bootstrap` and
//! `deploy_script`) and virtseed's driver: the guide's profile shape without `seed:`
//! (`ssh_username` + `password` make it an SSH deploy), the address a loopback port forwarded
//! to the guest's port 22 (`ssh_forward: true`, shown by `show_instance` and `-F`). The clone
//! answers `test.ping` with the key the master pre-accepted; `created` carries salt-cloud's
//! fields; no key or password is written anywhere. On 3007 also: a wrong password and a
//! failing deploy command each leave nothing (the failure path is the driver's, the same on
//! every line).

mod harness;

use harness::pool::virsh;
use harness::site::{write_cloud, Leftovers};
use harness::{last_json, repo, text, EventLog, Master, Sidecar};
use serde_json::json;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PASSWORD: &str = "plain";
const WRONG: &str = "wrong-password-4f1c9e";

fn plain_image() {
    let out = Command::new(repo().join("scripts/build-golden-image.sh"))
        .arg("--plain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-golden-image.sh --plain: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The guide's profile shape on the plain base (no `seed:`: its deploy keys make it
/// `seed: ssh`), and two that must fail, one with `seed: ssh` written.
fn profiles() -> String {
    let script = repo().join("scripts/deploy-preinstalled-minion.sh");
    format!(
        "plain:\n  provider: kvm\n  base_domain: virtseed-plain\n  ssh_forward: true\n  \
         ssh_username: root\n  password: {PASSWORD}\n  script: {}\n  script_args: -F\n  \
         grains:\n    clones-are-awesome: true\n  minion:\n    master: 10.0.2.2\n  minion_timeout: 300\n\
         plain-badpw:\n  extends: plain\n  password: {WRONG}\n  wait_for_passwd_maxtries: 2\n\
         plain-baddeploy:\n  extends: plain\n  seed: ssh\n  deploy_command: /bin/false\n",
        script.display()
    )
}

fn salt_cloud(m: &Master, profile: &str, name: &str) -> (Output, Duration) {
    let t = Instant::now();
    let out = m.salt_cloud(&["--out", "json", "-y", "-p", profile, name]);
    (out, t.elapsed())
}

/// Nothing of `name` left: no domain, no volume, no key.
fn nothing_left(m: &Master, name: &str) {
    harness::site::nothing_left(m, "virtseed-plain", name);
}

/// `failures`: also the wrong password and the failing deploy command.
fn scenario(version: &str, failures: bool) {
    plain_image();
    let m = Master::start_with(version, "file_recv: True\n");
    write_cloud(&m, &profiles());
    let sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    m.install_modules();
    let events = EventLog::start(&m);
    let tag = &salt_proto::auth::new_nonce()[..6];
    let name = |s: &str| format!("ssh{tag}{s}");
    let _leftovers = Leftovers::new("virtseed-plain", &format!("ssh{tag}"));

    // The guide's way: `salt-cloud -p PROFILE NAME`, then `salt NAME test.ping`.
    let a = name("a");
    let (out, took) = salt_cloud(&m, "plain", &a);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret = last_json(&out);
    eprintln!("salt-cloud -p plain: {took:?}, {}", ret[&a]["timings_ms"]);
    assert_eq!(ret[&a]["minion_up"], true, "{ret}");
    assert_eq!(ret[&a]["seed"], "ssh", "{ret}");
    let (pinged, v) = m.salt_json(&a, &["test.ping"], 60);
    assert!(pinged && v[&a] == true, "{v}");
    let (_, g) = m.salt_json(&a, &["grains.get", "clones-are-awesome"], 60);
    assert_eq!(g[&a], true, "{g}");
    // The key the master accepted is the one deployed to the guest.
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&a)).unwrap();
    let (_, k) = m.salt_json(&a, &["cmd.run", "cat /etc/salt/pki/minion/minion.pub"], 60);
    assert_eq!(k[&a].as_str().unwrap_or_default().trim(), accepted.trim());
    // The guest's private key, for the secrets search, by `cp.push` (file_recv): a
    // `cmd.run cat` would put it in the job cache itself.
    let (pushed, _) = m.salt_json(&a, &["cp.push", "/etc/salt/pki/minion/minion.pem"], 60);
    assert!(pushed);
    let guest_key = std::fs::read_to_string(
        m.dir
            .join("cache/minions")
            .join(&a)
            .join("files/etc/salt/pki/minion/minion.pem"),
    )
    .unwrap_or_default();
    assert!(guest_key.contains("PRIVATE KEY"), "{guest_key}");
    for step in [
        "key_accepted",
        "started",
        "deploying",
        "deploy_script",
        "created",
    ] {
        let tag = format!("salt/cloud/{a}/{step}");
        let n = events.events().iter().filter(|e| e["tag"] == tag).count();
        assert_eq!(n, 1, "{tag} fired once");
    }
    // `created` as Salt's drivers fire it (`filter_event("created", vm_, [name, profile,
    // provider, driver])`).
    let created = events
        .events()
        .into_iter()
        .find(|e| e["tag"] == format!("salt/cloud/{a}/created"))
        .unwrap();
    let d = &created["data"];
    assert_eq!(
        (
            &d["name"],
            &d["profile"],
            &d["provider"],
            &d["driver"],
            &d["event"]
        ),
        (
            &json!(a),
            &json!("plain"),
            &json!("kvm:libvirt"),
            &json!("libvirt"),
            &json!("created instance")
        ),
        "{created}"
    );
    // Where SSH reaches it: the forwarded loopback port, in its record.
    let port = ret[&a]["ssh_port"].as_u64().unwrap();
    let xml = text(&virsh(&["dumpxml", &a]).stdout);
    assert!(
        xml.contains(&format!("hostfwd=tcp:127.0.0.1:{port}-:22")),
        "{xml}"
    );
    let shown = last_json(&m.salt_cloud(&["--out", "json", "-y", "-a", "show_instance", &a]));
    let full = last_json(&m.salt_cloud(&["--out", "json", "-F"]));
    for node in [&shown["kvm"]["libvirt"][&a], &full["kvm"]["libvirt"][&a]] {
        assert_eq!(
            (&node["ssh_host"], &node["ssh_port"]),
            (&json!("127.0.0.1"), &json!(port)),
            "{shown}\n{full}"
        );
    }
    let out = m.salt_cloud(&["--out", "json", "-y", "-d", &a]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    nothing_left(&m, &a);

    // A wrong password, and a deploy command that fails: an error naming the step, and
    // nothing left.
    let failing = [
        ("plain-badpw", name("p"), "SSH login"),
        ("plain-baddeploy", name("d"), "the deploy failed"),
    ];
    for (profile, n, says) in failing.into_iter().filter(|_| failures) {
        let (out, took) = salt_cloud(&m, profile, &n);
        let all = text(&out.stdout) + &text(&out.stderr);
        eprintln!("{profile}: failed in {took:?}");
        assert!(!out.status.success() || all.contains("Error"), "{all}");
        assert!(
            all.contains(says) && all.contains("destroyed with its key"),
            "{all}"
        );
        nothing_left(&m, &n);
    }

    // No secret anywhere: neither the deployed private key nor either password.
    std::thread::sleep(Duration::from_secs(1));
    let written = harness::everything_written(&m, &events, &sidecar);
    let body: String = guest_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(body.len() > 64);
    assert!(
        !written.contains(&body[..64]),
        "the deployed private key was written somewhere"
    );
    for secret in [WRONG, "password: plain", "'password': 'plain'"] {
        assert!(
            !written.contains(secret),
            "{secret:?} was written somewhere"
        );
    }
}

#[test]
fn ssh_deploy_3006() {
    scenario("3006.30", false);
}

/// The full case: success, both failures, the secrets search.
#[test]
fn ssh_deploy_3007() {
    scenario("3007.17", true);
}

#[test]
fn ssh_deploy_3008() {
    scenario("3008.5", false);
}
