//! Every Salt cloud front end through virtseed's `libvirt` cloud driver, on real masters of
//! each line (3006.30, 3007.17, 3008.5): the real `salt-cloud` CLI (`-p`, `-P`, maps, `-Q`,
//! `-F`, `-S`, `-a`, `-d`, `--list-*`), `salt-run cloud.*` in every call form of Salt's own
//! runner, and orchestration with the `cloud` states. salt-cloud's libvirt documentation's
//! provider and profile YAML is used as written, with this site's names and addresses.

mod harness;

use harness::pool::{virsh_ok, Pool};
use harness::site::{play_guest, wait_exit};
use harness::{last_json, mread, text, wait_for, EventLog, Master, Sidecar};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The guide's provider and profile, with this site's base, and its own address for the
/// master (the guide's `master_port: 5506` is another master's: left out). One key added,
/// `seed: cloud-init`: the guide's `ssh_username` + `password` without a seed mean an SSH
/// deploy (`seed: ssh`, integration/ssh_deploy.rs), and this site's guests are played from
/// the cloud-init seed (`play_guest`).
fn guide_files(m: &Master, base: &str) {
    std::fs::write(
        m.dir.join("cloud.providers"),
        "# salt-cloud's libvirt guide\nlocal-kvm:\n  driver: libvirt\n  url: qemu:///system\n  # work around flag for XML validation errors while cloning\n  validate_xml: no\n",
    )
    .unwrap();
    std::fs::write(
        m.dir.join("cloud.profiles"),
        format!(
            "base-itest:\n  # points back at provider configuration e.g. the libvirt daemon to talk to\n  provider: local-kvm\n  base_domain: {base}\n  # ip_source = [ ip-learning | qemu-agent ]\n  ip_source: ip-learning\n  # clone_strategy = [ quick | full ]\n  clone_strategy: quick\n  ssh_username: vagrant\n  # has_ssh_agent: True\n  password: my-very-secret-password\n  # if /tmp is mounted noexec do workaround\n  deploy_command: sh /tmp/.saltcloud/deploy.sh\n  # -F makes the bootstrap script overwrite existing config\n  # which make reprovisioning a box work\n  script_args: -F\n  # not the guide's: its ssh_username + password alone would mean an SSH deploy (seed: ssh)\n  seed: cloud-init\n  grains:\n    sushi: more tasty\n  minion:\n    master: 127.0.0.1\n  minion_timeout: 120\n\
             quick:\n  extends: base-itest\n  wait_for_minion: false\n\
             nobase:\n  extends: base-itest\n  base_domain: {base}-nope\n"
        ),
    )
    .unwrap();
    // No `cloud` file, as in the guide: salt-cloud then takes the master's for its own, and
    // logs to /var/log/salt/cloud.
}

/// `salt-cloud -c DIR --out json -y ARGS`, with its wall time.
fn cloud(m: &Master, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let mut all = vec!["--out", "json", "-y"];
    all.extend_from_slice(args);
    let out = m.salt_cloud(&all);
    (out, t.elapsed())
}

fn ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    last_json(out)
}

fn count(events: &EventLog, tag: &str) -> usize {
    events.events().iter().filter(|e| e["tag"] == tag).count()
}

fn scenario(version: &str) {
    let m = Master::start(version);
    let p = Pool::new(&format!("sc{}", &version[..4]));
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    guide_files(&m, &base);
    let mut sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    m.install_modules();
    let events = EventLog::start(&m);
    let name = |s: &str| format!("{}{s}", p.prefix);

    // The guide's way: `salt-cloud -p PROFILE NAME`, then `salt NAME test.ping`.
    let a = name("a");
    let child = Command::new(m.venv.join("bin/salt-cloud"))
        .arg("-c")
        .arg(&m.dir)
        .args(["--out", "json", "-y", "-p", "base-itest", &a])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guest = play_guest(&m, &p, &a);
    let out = wait_exit(child, Duration::from_secs(180));
    let ret = ok(&out);
    assert_eq!(ret[&a]["minion_up"], true, "{ret}");
    assert_eq!(ret[&a]["profile"], "base-itest", "{ret}");
    let (pinged, v) = m.salt_json(&a, &["test.ping"], 30);
    assert!(pinged && v[&a] == true, "{v}");
    // The key the master accepted is the one the guest was given, not salt-cloud's.
    let accepted = std::fs::read_to_string(m.pki().join("minions").join(&a)).unwrap();
    let seeded = std::fs::read_to_string(guest.dir.join("pki/minion.pub")).unwrap();
    assert_eq!(accepted.trim(), seeded.trim());
    for step in [
        "creating",
        "requesting",
        "key_accepted",
        "started",
        "created",
    ] {
        let tag = format!("salt/cloud/{a}/{step}");
        wait_for(&tag, Duration::from_secs(10), || count(&events, &tag) == 1);
        assert_eq!(count(&events, &tag), 1, "{tag} fired once");
    }
    let guest_key = std::fs::read_to_string(guest.dir.join("pki/minion.pem")).unwrap();
    drop(guest);

    // `-P`: one process per VM, returns at once; both made.
    let (b, c) = (name("b"), name("c"));
    let (out, _) = cloud(&m, &["-P", "-p", "quick", &b, &c]);
    let ret = ok(&out);
    assert!(
        ret[&b].get("Provisioning").is_some(),
        "{ret}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for n in [&b, &c] {
        wait_for(&format!("{n} running"), Duration::from_secs(60), || {
            m.pki().join("minions").join(n).exists()
                && p.domains().contains(n)
                && p.state(n) == "running"
        });
    }

    // Queries: -Q, -F, -S in salt-cloud's shapes.
    let (out, _) = cloud(&m, &["-Q", "-l", "debug"]);
    let q = ok(&out);
    for n in [&a, &b, &c] {
        assert_eq!(
            q["local-kvm"]["libvirt"][n.as_str()]["state"],
            "running",
            "{q}\n{}",
            text(&out.stderr)
        );
    }
    assert!(q["local-kvm"]["libvirt"].get(&base).is_none(), "{q}");
    let f = ok(&cloud(&m, &["-F"]).0);
    assert_eq!(
        f["local-kvm"]["libvirt"][&a]["profile"], "base-itest",
        "{f}"
    );
    assert!(f["local-kvm"]["libvirt"][&a]["macs"].is_array(), "{f}");
    let s = ok(&cloud(&m, &["-S"]).0);
    assert!(s["local-kvm"]["libvirt"].get(&b).is_some(), "{s}");

    // The catalog: images are the usable bases, sizes say what sizes a clone, locations the host.
    let i = ok(&cloud(&m, &["--list-images", "local-kvm"]).0);
    assert_eq!(
        i["local-kvm"]["libvirt"][&base]["profiles"][0], "base-itest",
        "{i}"
    );
    assert!(
        i["local-kvm"]["libvirt"].get(&a).is_none(),
        "a clone is no base: {i}"
    );
    let z = ok(&cloud(&m, &["--list-sizes", "local-kvm"]).0);
    assert!(
        z["local-kvm"]["libvirt"]["note"]
            .as_str()
            .unwrap()
            .contains("no instance sizes"),
        "{z}"
    );
    let l = ok(&cloud(&m, &["--list-locations", "local-kvm"]).0);
    let host = &l["local-kvm"]["libvirt"]["localhost"];
    assert!(host["free_memory_mib"].as_u64().unwrap() > 0, "{l}");
    assert_eq!(host["has_base"][&base], true, "{l}");

    // Actions.
    let r = ok(&cloud(&m, &["-a", "stop", &b]).0);
    assert_eq!(r["local-kvm"]["libvirt"][&b]["state"], "shutoff", "{r}");
    assert_eq!(p.state(&b), "shut off");
    let r = ok(&cloud(&m, &["-a", "start", &b]).0);
    assert_eq!(r["local-kvm"]["libvirt"][&b]["state"], "running", "{r}");
    let r = ok(&cloud(&m, &["-a", "reboot", &b]).0);
    assert_eq!(r["local-kvm"]["libvirt"][&b]["state"], "running", "{r}");
    let r = ok(&cloud(&m, &["-a", "show_instance", &b]).0);
    assert_eq!(r["local-kvm"]["libvirt"][&b]["name"], b.as_str(), "{r}");

    // `-d`: the VM, its volumes and its key, once, without a prompt.
    let d = ok(&cloud(&m, &["-d", &a, &b, &c]).0);
    for n in [&a, &b, &c] {
        assert!(!m.pki().join("minions").join(n).exists(), "{d}");
        assert!(!p.domains().contains(n), "{d}");
        let tag = format!("salt/cloud/{n}/destroyed");
        wait_for(&tag, Duration::from_secs(10), || count(&events, &tag) == 1);
    }
    assert_eq!(p.files(), ["base-vda.qcow2"]);

    // A map, in parallel; a VM's own keys (cpus, grains) reach the sidecar; then `-m -d`.
    let (m1, m2) = (name("m1"), name("m2"));
    let map = m.dir.join("cloud.map");
    std::fs::write(
        &map,
        format!("quick:\n  - {m1}:\n      cpus: 2\n      grains: {{tier: db}}\n  - {m2}\n"),
    )
    .unwrap();
    let map_s = map.to_str().unwrap();
    let ret = ok(&cloud(&m, &["-m", map_s, "-P"]).0);
    assert_eq!(ret[&m1]["state"], "running", "{ret}");
    assert_eq!(ret[&m2]["state"], "running", "{ret}");
    assert!(virsh_ok(&["dominfo", &m1]).contains("CPU(s):         2"));
    let ud = mread(&p.dir.join(format!("{m1}-seed.img")), "user-data");
    assert!(
        ud.contains("tier: db") && ud.contains("sushi: more tasty"),
        "{ud}"
    );
    ok(&cloud(&m, &["-m", map_s, "-d"]).0);
    for n in [&m1, &m2] {
        assert!(!p.domains().contains(n));
        assert!(!m.pki().join("minions").join(n).exists());
    }

    // `salt-run cloud.*` in the call forms of Salt's own runner.
    let run = |args: &[&str]| {
        let mut all = vec!["--out", "json"];
        all.extend_from_slice(args);
        ok(&m.salt_run(&all))
    };
    let (r1, c1) = (name("r1"), name("c1"));
    let ret = run(&["cloud.profile", "prof=quick", &format!("instances=[{r1}]")]);
    assert_eq!(ret[&r1]["state"], "running", "{ret}");
    let ret = run(&[
        "cloud.create",
        "provider=local-kvm",
        &format!("instances={c1}"),
        &format!("base_domain={base}"),
        "minion={master: 127.0.0.1}",
        "wait_for_minion=False",
    ]);
    assert_eq!(ret[&c1]["state"], "running", "{ret}");
    let ret = run(&[
        "cloud.action",
        "func=show_instance",
        &format!("instance={r1}"),
    ]);
    assert_eq!(ret[&r1]["name"], r1.as_str(), "{ret}");
    for q in ["cloud.query", "cloud.full_query", "cloud.select_query"] {
        let ret = run(&[q]);
        assert!(ret["local-kvm"]["libvirt"].get(&c1).is_some(), "{q}: {ret}");
    }
    let ret = run(&["cloud.list_images", "provider=local-kvm"]);
    assert!(ret["local-kvm"]["libvirt"].get(&base).is_some(), "{ret}");
    let ret = run(&["cloud.list_sizes", "provider=local-kvm"]);
    assert!(ret["local-kvm"]["libvirt"].get("note").is_some(), "{ret}");
    let ret = run(&["cloud.list_locations", "provider=local-kvm"]);
    assert!(
        ret["local-kvm"]["libvirt"].get("localhost").is_some(),
        "{ret}"
    );
    let ret = run(&["cloud.map_run", &format!("path={map_s}")]);
    assert!(
        p.domains().contains(&m1) && p.domains().contains(&m2),
        "{ret}"
    );
    let ret = run(&["cloud.destroy", &format!("instances={r1},{c1},{m1},{m2}")]);
    for n in [&r1, &c1, &m1, &m2] {
        assert!(!p.domains().contains(n), "{ret}");
        assert!(!m.pki().join("minions").join(n).exists(), "{ret}");
    }

    // Orchestration with the cloud states; a second run changes nothing.
    let (o1, o2) = (name("o1"), name("o2"));
    std::fs::create_dir_all(m.dir.join("srv/salt/orch")).unwrap();
    std::fs::write(
        m.dir.join("srv/salt/orch/vms.sls"),
        format!(
            "{o1}:\n  cloud.profile:\n    - profile: quick\n\
             {o2}:\n  cloud.present:\n    - cloud_provider: local-kvm\n    - base_domain: {base}\n    - minion: {{master: 127.0.0.1}}\n    - wait_for_minion: false\n"
        ),
    )
    .unwrap();
    std::fs::write(
        m.dir.join("srv/salt/orch/gone.sls"),
        format!("{o1}:\n  cloud.absent: []\n{o2}:\n  cloud.absent: []\n"),
    )
    .unwrap();
    let changes = |sls: &str| -> usize {
        let out = m.salt_run(&["--out", "json", "state.orchestrate", sls]);
        let v = ok(&out);
        let states = v["data"]
            .as_object()
            .and_then(|d| d.values().next())
            .cloned();
        let states = states.unwrap_or_else(|| panic!("{v}"));
        let states = states.as_object().unwrap();
        assert!(states.values().all(|s| s["result"] == true), "{sls}: {v}");
        states
            .values()
            .filter(|s| s["changes"].as_object().is_some_and(|c| !c.is_empty()))
            .count()
    };
    assert_eq!(changes("orch.vms"), 2);
    assert!(p.domains().contains(&o1) && p.domains().contains(&o2));
    assert_eq!(changes("orch.vms"), 0, "a second run changes nothing");
    assert_eq!(changes("orch.gone"), 2);
    assert!(!p.domains().contains(&o1) && !p.domains().contains(&o2));
    assert!(!m.pki().join("minions").join(&o1).exists());
    assert_eq!(changes("orch.gone"), 0);

    // Failures: Salt's error shape, non-zero exit, no domain, no key.
    let x = name("x");
    let (out, _) = cloud(&m, &["-p", "nobase", &x]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("does not exist"), "{all}");
    assert!(!m.pki().join("minions").join(&x).exists());
    assert!(!p.domains().contains(&x));
    let (out, _) = cloud(&m, &["-p", "nope", &x]);
    assert!(!out.status.success() || text(&out.stdout).contains("Error"));

    // Two creates of one name at once: one wins, the other gets a clear error.
    let y = name("y");
    let spawn = || {
        Command::new(m.venv.join("bin/salt-cloud"))
            .arg("-c")
            .arg(&m.dir)
            .args(["--out", "json", "-y", "-p", "quick", &y])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c1, c2) = (spawn(), spawn());
    let outs = [
        wait_exit(c1, Duration::from_secs(120)),
        wait_exit(c2, Duration::from_secs(120)),
    ];
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        outs.iter()
            .map(|o| text(&o.stdout) + &text(&o.stderr))
            .collect::<Vec<_>>()
    );
    let lost = outs.iter().find(|o| !o.status.success()).unwrap();
    let msg = text(&lost.stdout) + &text(&lost.stderr);
    assert!(
        msg.contains("in progress") || msg.contains("already exists"),
        "{msg}"
    );
    assert!(p.domains().contains(&y));
    assert!(
        m.pki().join("minions").join(&y).exists(),
        "the winner's key stays"
    );
    ok(&cloud(&m, &["-d", &y]).0);

    // No secret anywhere: neither the guest's private key nor the profile's password.
    let written = harness::everything_written(&m, &events, &sidecar);
    let body: String = guest_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !written.contains(&body[..64]),
        "the guest's private key was written somewhere"
    );
    assert!(
        !written.contains("my-very-secret-password"),
        "the password was written somewhere"
    );

    // The sidecar not running: a clear error in seconds, naming it; no key left.
    sidecar.kill9();
    let z = name("z");
    let (out, took) = cloud(&m, &["-p", "quick", &z]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains("'virtseed'") && all.contains("virtseed -c"),
        "{all}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!m.pki().join("minions").join(&z).exists());
    assert!(!p.domains().contains(&z));
}

#[test]
fn salt_cloud_3006() {
    scenario("3006.30");
}

#[test]
fn salt_cloud_3007() {
    scenario("3007.17");
}

#[test]
fn salt_cloud_3008() {
    scenario("3008.5");
}
