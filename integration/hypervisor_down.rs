//! One hypervisor down hides nothing (issue #28): salt-cloud's libvirt guide's own provider
//! file, whose first provider (`kvm-via-ssh`) names a host that cannot be reached (a refused
//! port on loopback) and whose second is `qemu:///system`, with a clone on the reachable one.
//! On real masters of each line (3006.30, 3007.17, 3008.5), every front end shows the clone
//! and uses it (`-p`, `-Q/-F/-S`, `-f`, `--list-*`, `-a`, maps, `-d`, `salt-run cloud.*`, the
//! `cloud` states in orchestration), and the unreachable provider as its own error naming
//! the host, with Salt's exit codes. No guest boots: clones do not wait for a minion.

mod harness;

use harness::pool::Pool;
use harness::{last_json, text, Master, Sidecar};
use std::process::Output;
use std::time::{Duration, Instant};

/// The guide's `qemu+ssh://user@kvm.company.com/system?socket=...`, on a port of loopback
/// where nothing listens: ssh is refused at once, no traffic leaves the machine.
const DOWN: &str = "qemu+ssh://virtseed@127.0.0.1:1/system?socket=/var/run/libvirt/libvirt-sock";

/// salt-cloud's libvirt guide's provider file as written (but for the unreachable host), a
/// profile on each provider. No `cloud` file, as in the guide.
fn guide_files(m: &Master, base: &str) {
    std::fs::write(
        m.dir.join("cloud.providers"),
        format!(
            "# Set up a provider with qemu+ssh protocol\nkvm-via-ssh:\n  driver: libvirt\n  url: {DOWN}\n\n\
             # Or connect to a local libvirt instance\nlocal-kvm:\n  driver: libvirt\n  url: qemu:///system\n  \
             # work around flag for XML validation errors while cloning\n  validate_xml: no\n"
        ),
    )
    .unwrap();
    std::fs::write(
        m.dir.join("cloud.profiles"),
        format!(
            "quick:\n  provider: local-kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  wait_for_minion: false\n\
             far:\n  extends: quick\n  provider: kvm-via-ssh\n"
        ),
    )
    .unwrap();
}

/// What a front end printed (stdout and stderr) when it failed an assertion.
fn said(out: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Its JSON answer, the command having exited 0.
fn ok(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", said(out));
    last_json(out)
}

/// The down provider's error in a listing: it names the provider, the host and its URI,
/// and says why (libvirt's words vary: ssh's "Connection refused", or only "Cannot write
/// data: Broken pipe" when ssh exits before libvirt reads its error).
fn names_the_down_host(err: &serde_json::Value, ctx: &str) {
    let e = err
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {ctx}"));
    assert!(
        e.contains("provider kvm-via-ssh")
            && e.contains("host 127.0.0.1")
            && e.contains("qemu+ssh://virtseed@127.0.0.1:1/system")
            && e.contains("is unreachable"),
        "{e}\n{ctx}"
    );
}

/// Salt's CLI `tool` (`salt-cloud`, `salt-run`) with `--out json` (and salt-cloud's `-y`: no
/// prompt). One at a time: on 2 cores, running the read-only ones side by side was slower.
fn cli(m: &Master, tool: &str, args: &[&str]) -> Output {
    let mut all = vec!["--out", "json"];
    if tool == "salt-cloud" {
        all.push("-y");
    }
    all.extend_from_slice(args);
    harness::site::wait_exit(m.tool_bg(tool, &all), Duration::from_secs(120))
}

fn scenario(version: &str) {
    let t0 = Instant::now();
    let m = Master::start(version);
    let p = Pool::new(&format!("hd{}", &version[..4]));
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    guide_files(&m, &base);
    let sidecar = Sidecar::start(&m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    m.install_modules();
    let setup = t0.elapsed();
    let name = |s: &str| format!("{}{s}", p.prefix);
    let (c1, m1, m2, f1) = (name("c1"), name("m1"), name("m2"), name("f1"));

    // `-p` looks for the name on every provider first: the clone is made on the reachable one.
    let ret = ok(&cli(&m, "salt-cloud", &["-p", "quick", &c1]));
    assert_eq!(ret[&c1]["state"], "running", "{ret}");
    assert_eq!(p.state(&c1), "running");

    // Every listing, salt-cloud's and the runner's: the clone, and the down provider as its
    // own error. Exit 0, as salt-cloud's and Salt's runner's with a provider down. The
    // runner's action finds the clone. A VM the down host would hold cannot be found:
    // Salt's "nothing found" (exit 0) from salt-cloud, an error naming the unreachable host
    // (exit 1) from the runner.
    let listings: [(&str, &[&str]); 14] = [
        ("salt-cloud", &["-Q"]),
        ("salt-cloud", &["-F"]),
        ("salt-cloud", &["-S"]),
        ("salt-cloud", &["--list-images", "all"]),
        ("salt-cloud", &["--list-sizes", "all"]),
        ("salt-cloud", &["--list-locations", "all"]),
        ("salt-run", &["cloud.query"]),
        ("salt-run", &["cloud.full_query"]),
        ("salt-run", &["cloud.select_query"]),
        ("salt-run", &["cloud.list_nodes"]),
        ("salt-run", &["cloud.action", "show_instance", &c1]),
        ("salt-cloud", &["-f", "list_nodes", "kvm-via-ssh"]),
        ("salt-cloud", &["-d", &f1]),
        ("salt-run", &["cloud.destroy", &f1]),
    ];
    for (tool, args) in listings {
        let out = &cli(&m, tool, args);
        let ctx = format!("{tool} {args:?}: {}", said(out));
        if args[0] == "-d" {
            assert!(out.status.success(), "{ctx}");
            assert!(
                text(&out.stdout).contains("No machines were found to be destroyed"),
                "{ctx}"
            );
            continue;
        }
        if args[0] == "cloud.destroy" {
            assert!(!out.status.success(), "{ctx}");
            names_the_down_host(&last_json(out)[&f1]["Error"], &ctx);
            continue;
        }
        let v = ok(out);
        let (up, down) = (&v["local-kvm"]["libvirt"], &v["kvm-via-ssh"]["libvirt"]);
        match args[0] {
            "--list-images" => {
                assert_eq!(up[&base]["profiles"][0], "quick", "{ctx}");
                names_the_down_host(&down["Error"], &ctx);
            }
            "--list-sizes" => {
                // No host is asked: both providers say what sizes a clone.
                assert!(up["note"].is_string() && down["note"].is_string(), "{ctx}");
            }
            "--list-locations" => {
                assert!(
                    up["localhost"]["free_memory_mib"].as_u64() > Some(0),
                    "{ctx}"
                );
                names_the_down_host(&down["127.0.0.1"]["Error"], &ctx);
            }
            "cloud.action" => {
                // The runner's action goes to the clone's host alone.
                assert_eq!(v[&c1]["state"], "running", "{ctx}");
                assert_eq!(v[&c1]["host"], "localhost", "{ctx}");
            }
            "-f" => {
                // The down provider's own function: its error, alone.
                assert!(v.get("local-kvm").is_none(), "{ctx}");
                names_the_down_host(&down["Error"], &ctx);
            }
            _ => {
                assert_eq!(up[&c1]["state"], "running", "{ctx}");
                names_the_down_host(&down["Error"], &ctx);
                assert_eq!(down.as_object().map(|d| d.len()), Some(1), "{ctx}");
            }
        }
    }
    let listed = t0.elapsed();

    // An action on the clone works; the lookup says on stderr which provider it could not ask.
    let out = cli(&m, "salt-cloud", &["-a", "stop", &c1]);
    let v = ok(&out);
    assert_eq!(v["local-kvm"]["libvirt"][&c1]["state"], "shutoff", "{v}");
    assert_eq!(p.state(&c1), "shut off");
    assert!(
        text(&out.stderr).contains("provider kvm-via-ssh: host 127.0.0.1"),
        "{}",
        said(&out)
    );

    // A map: the clone is found (not made again), new VMs are made on the reachable
    // provider, the one on the down provider fails alone with an error naming its host.
    // Exit 0, as salt-cloud's for a map with a VM that failed.
    let map = m.dir.join("cloud.map");
    std::fs::write(
        &map,
        format!("quick:\n  - {c1}\n  - {m1}\n  - {m2}\nfar:\n  - {f1}\n"),
    )
    .unwrap();
    let out = cli(&m, "salt-cloud", &["-m", map.to_str().unwrap()]);
    let v = ok(&out);
    assert_eq!(v[&c1]["Message"], "Already running.", "{}", said(&out));
    for n in [&m1, &m2] {
        assert_eq!(v[n.as_str()]["state"], "running", "{}", said(&out));
    }
    names_the_down_host(&v[&f1]["Error"], &said(&out));
    assert!(!p.domains().contains(&f1));
    assert!(!m.pki().join("minions").join(&f1).exists());

    // The cloud states: the clone is present (nothing made), m1 absent (destroyed).
    std::fs::create_dir_all(m.dir.join("srv/salt/orch")).unwrap();
    std::fs::write(
        m.dir.join("srv/salt/orch/down.sls"),
        format!(
            "{c1}:\n  cloud.present:\n    - cloud_provider: local-kvm\n    - base_domain: {base}\n    - minion: {{master: 127.0.0.1}}\n    - wait_for_minion: false\n\
             {m1}:\n  cloud.absent: []\n"
        ),
    )
    .unwrap();
    let out = cli(&m, "salt-run", &["state.orchestrate", "orch.down"]);
    let v = ok(&out);
    let states = v["data"]
        .as_object()
        .and_then(|d| d.values().next())
        .and_then(|s| s.as_object())
        .cloned()
        .unwrap_or_else(|| panic!("{}", said(&out)));
    for s in states.values() {
        assert_eq!(s["result"], true, "{}", said(&out));
        let comment = s["comment"].as_str().unwrap_or_default();
        if comment.contains(c1.as_str()) {
            assert!(comment.contains("Already present"), "{comment}");
        } else {
            assert!(comment.contains("Destroyed"), "{comment}");
        }
    }
    assert!(!p.domains().contains(&m1));
    assert!(!m.pki().join("minions").join(&m1).exists());

    // `-d` and the runner's destroy: VM, volumes and key, while the other host is down.
    let v = ok(&cli(&m, "salt-cloud", &["-d", &m2]));
    assert_eq!(v["local-kvm"]["libvirt"][&m2]["state"], "destroyed", "{v}");
    let v = ok(&cli(&m, "salt-run", &["cloud.destroy", &c1]));
    assert_eq!(v[&c1]["state"], "destroyed", "{v}");
    for n in [&c1, &m2] {
        assert!(!p.domains().contains(n), "{n}");
        assert!(!m.pki().join("minions").join(n).exists(), "{n}");
    }
    assert_eq!(p.domains(), [base.as_str()]);
    assert_eq!(p.files(), ["base-vda.qcow2"]);

    eprintln!(
        "hypervisor_down {version}: {:.1} s (master, pool and sidecar {:.1} s; listings done at {:.1} s)",
        t0.elapsed().as_secs_f64(),
        setup.as_secs_f64(),
        listed.as_secs_f64()
    );
}

#[test]
fn one_hypervisor_down_3006() {
    scenario("3006.30");
}

#[test]
fn one_hypervisor_down_3007() {
    scenario("3007.17");
}

#[test]
fn one_hypervisor_down_3008() {
    scenario("3008.5");
}
