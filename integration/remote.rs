//! Remote hypervisors for real: libvirt's `qemu+ssh://` through a real sshd on loopback (a
//! port of its own, key-only), to this machine's libvirtd and, as a second independent host,
//! an unprivileged user's `qemu:///session` daemon. Clones, failures after each step, a cut
//! SSH link mid-create, an unreachable host; placement on two hosts, `host:` pinning, a base
//! on one host only, one name across hosts, destroy across hosts. Warm clones on the remote
//! session daemon: the state made, kept and restored there through libvirt's API only.

mod harness;

use harness::pool::{virsh_ok, virsh_ok_on, Pool};
use harness::remote::{session_user, Sshd, SESSION_USER};
use harness::{text, virtseed, wait_for};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One test at a time: they share the sshd-less machine's libvirtd and the session user.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn names_on(uri: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = virsh_ok_on(uri, &["list", "--all", "--name"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| l.starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn clones_over_qemu_ssh_as_on_a_local_uri() {
    let _g = serial();
    let mut sshd = Sshd::start();
    let p = Pool::new("ssh");
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    let uri = sshd.uri("root", "system");
    let cfg = p.dir.with_extension("etc");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("cloud.providers"),
        format!("kvm-via-ssh:\n  driver: libvirt\n  url: {uri}\n"),
    )
    .unwrap();
    std::fs::write(
        cfg.join("cloud.profiles"),
        format!("small:\n  provider: kvm-via-ssh\n  base_domain: {base}\n  cpus: 2\n  memory: 64\n  disk: 1\n  onboot: 1\n"),
    )
    .unwrap();
    let (a, b) = (format!("{}a", p.prefix), format!("{}b", p.prefix));

    // Made, sized and listed through the SSH link; then destroyed, leaving nothing.
    ok(&virtseed(&cfg, &["profile", "small", &a, &b]));
    for n in [&a, &b] {
        assert_eq!(p.state(n), "running");
        assert!(virsh_ok(&["dominfo", n]).contains("CPU(s):         2"));
        assert!(virsh_ok(&["dominfo", n]).contains("Autostart:      enable"));
    }
    let list = ok(&virtseed(&cfg, &["list"]));
    assert!(list.contains(&a) && list.contains("127.0.0.1"), "{list}");
    ok(&virtseed(&cfg, &["destroy", &a, &b]));
    assert_eq!(p.domains(), [base.as_str()]);
    assert_eq!(p.files(), ["base-vda.qcow2"]);

    // A failure after any step leaves nothing.
    for step in ["disks", "nvram", "defined", "started"] {
        let out = virtseed(&cfg, &["profile", "small", &a, "--fail-after", step]);
        assert!(!out.status.success(), "{step}");
        assert_eq!(p.domains(), [base.as_str()], "{step}");
        assert_eq!(p.files(), ["base-vda.qcow2"], "{step}");
    }

    // The SSH link cut while clones are being made: each is made or fails cleanly, and
    // nothing is left of those that failed.
    let many: Vec<String> = (0..6).map(|i| format!("{}m{i}", p.prefix)).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_virtseed"))
        .arg("-c")
        .arg(&cfg)
        .args(["profile", "small"])
        .args(&many)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("a first clone", Duration::from_secs(60), || {
        p.volumes()
            .iter()
            .any(|v| v.starts_with(&many[0][..many[0].len() - 1]))
    });
    sshd.cut_links();
    let out = child.wait_with_output().unwrap();
    let report = text(&out.stdout) + &text(&out.stderr);
    let made: Vec<String> = p.domains().into_iter().filter(|d| d != &base).collect();
    for d in &made {
        assert_eq!(p.state(d), "running", "{report}");
    }
    assert!(
        report.contains("retrying") || made.len() == many.len(),
        "the cut link was noticed: {report}"
    );
    if !made.is_empty() {
        let mut args = vec!["destroy"];
        args.extend(made.iter().map(String::as_str));
        ok(&virtseed(&cfg, &args));
    }
    assert_eq!(p.domains(), [base.as_str()], "{report}");
    assert_eq!(p.files(), ["base-vda.qcow2"], "{report}");

    // The host unreachable: a clear error naming it, in seconds; nothing made.
    sshd.stop();
    let t = Instant::now();
    let out = virtseed(&cfg, &["profile", "small", &a]);
    let took = t.elapsed();
    assert!(!out.status.success());
    let err = text(&out.stdout) + &text(&out.stderr);
    assert!(
        err.contains("127.0.0.1") && err.contains("unreachable"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
    assert_eq!(p.domains(), [base.as_str()]);
    let t = Instant::now();
    let out = virtseed(&cfg, &["list"]);
    assert!(!out.status.success(), "a host it cannot list is an error");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn two_hosts_placement_pinning_and_one_down() {
    let _g = serial();
    session_user();
    let mut sshd = Sshd::start();
    let session = sshd.uri(SESSION_USER, "session");
    let mut local = Pool::new("two");
    let mut remote = Pool::on(&session, "two", Some(SESSION_USER));
    local.vnc = false;
    remote.vnc = false;
    // The same base on both hosts; another only on the local one.
    let base = format!("{}base", local.prefix);
    let only = format!("{}only", local.prefix);
    let lv = local.base_volume("base.qcow2", "qcow2", 64);
    local.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&lv))]);
    local.base_domain(&only, &[("vda", "qcow2", Pool::file_source(&lv))]);
    let rv = remote.base_volume("base.qcow2", "qcow2", 64);
    remote.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&rv))]);

    let cfg = local.dir.with_extension("etc");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("cloud.providers"),
        format!("kvm:\n  driver: libvirt\n  url:\n    - local: qemu:///system\n    - session: {session}\n"),
    )
    .unwrap();
    // 1 GiB each (never used: no OS runs), so placement counts each clone clearly.
    std::fs::write(
        cfg.join("cloud.profiles"),
        format!(
            "spread:\n  provider: kvm\n  base_domain: {base}\n  memory: 1024\n\
             pinned:\n  extends: spread\n  host: session\n\
             onlylocal:\n  extends: spread\n  base_domain: {only}\n\
             nowhere:\n  extends: spread\n  host: elsewhere\n"
        ),
    )
    .unwrap();
    let px = &local.prefix;
    let n = |s: &str| format!("{px}{s}");
    let (on_local, on_session) = (|| names_on("qemu:///system", px), || names_on(&session, px));

    // Without `host:`, the clones of one call spread by free memory, counting each other.
    ok(&virtseed(
        &cfg,
        &["profile", "spread", &n("a"), &n("b"), &n("c"), &n("d")],
    ));
    let (l, r) = (on_local(), on_session());
    let count = |v: &[String]| v.iter().filter(|d| *d != &base && *d != &only).count();
    assert_eq!((count(&l), count(&r)), (2, 2), "local {l:?}, session {r:?}");
    let list = ok(&virtseed(&cfg, &["list"]));
    assert!(list.contains("session") && list.contains("local"), "{list}");

    // `host:` pins; a base on one host only places there; a name is unique across hosts.
    ok(&virtseed(&cfg, &["profile", "pinned", &n("e")]));
    assert!(on_session().contains(&n("e")));
    ok(&virtseed(&cfg, &["profile", "onlylocal", &n("f"), &n("g")]));
    assert!(on_local().contains(&n("f")) && on_local().contains(&n("g")));
    let out = virtseed(&cfg, &["profile", "onlylocal", &n("e")]);
    let err = text(&out.stdout) + &text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already exists on host session"),
        "{err}"
    );
    let out = virtseed(&cfg, &["check-config"]);
    let err = text(&out.stdout) + &text(&out.stderr);
    assert!(!out.status.success() && err.contains("elsewhere"), "{err}");

    // Destroy finds each VM on whichever host holds it.
    let all: Vec<String> = ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .map(|s| n(s))
        .collect();
    let mut args = vec!["destroy"];
    args.extend(all.iter().map(String::as_str));
    ok(&virtseed(&cfg, &args));
    assert_eq!(on_local(), [base.clone(), only.clone()]);
    assert_eq!(on_session(), [base.as_str()]);
    assert_eq!(remote.files(), ["base.qcow2"]);

    // One host down: the other takes the clones, in seconds; listing still answers.
    sshd.stop();
    let t = Instant::now();
    ok(&virtseed(&cfg, &["profile", "spread", &n("h"), &n("i")]));
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
    assert!(on_local().contains(&n("h")) && on_local().contains(&n("i")));
    let out = virtseed(&cfg, &["list"]);
    assert!(text(&out.stdout).contains(&n("h")), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("session") || text(&out.stderr).contains("127.0.0.1"));
    ok(&virtseed(&cfg, &["destroy", &n("h"), &n("i")]));
    sshd.run();
    assert_eq!(on_local(), [base, only]);
    drop(remote);
}

/// The sidecar on a `qemu+ssh://` provider: a create killed mid-way is rolled back over the
/// link by the next sidecar, and a create waits for its minion's first answer.
#[test]
fn sidecar_over_qemu_ssh_reconciles_and_waits_for_the_minion() {
    use harness::site::{play_guest, wait_exit};
    use harness::{last_json, Master, Sidecar};
    let _g = serial();
    let sshd = Sshd::start();
    let m = Master::start("3007.17");
    let p = Pool::new("sshsc");
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    std::fs::write(
        m.dir.join("cloud.providers"),
        format!(
            "kvm-via-ssh:\n  driver: libvirt\n  url: {}\n",
            sshd.uri("root", "system")
        ),
    )
    .unwrap();
    std::fs::write(
        m.dir.join("cloud.profiles"),
        format!("web:\n  provider: kvm-via-ssh\n  base_domain: {base}\n  minion: {{master: 127.0.0.1}}\n  minion_timeout: 120\n"),
    )
    .unwrap();
    m.install_modules();
    let c1 = format!("{}c1", p.prefix);
    let mut sidecar = Sidecar::start_with(
        &m,
        "virtseed",
        &[("VIRTSEED_TEST_PAUSE_AFTER", "defined")],
        "-paused",
    );
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let run = |args: &[&str]| {
        Command::new(m.venv.join("bin/salt-run"))
            .arg("-c")
            .arg(&m.dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let waiting = run(&["--out", "json", "cloud.profile", "web", &c1]);
    sidecar.wait_log("paused after step defined", Duration::from_secs(60));
    assert!(p.domains().contains(&c1));
    sidecar.kill9();
    let sidecar = Sidecar::start_with(&m, "virtseed", &[], "-after");
    sidecar.wait_log(
        "reconcile: an interrupted create was rolled back",
        Duration::from_secs(30),
    );
    let out = wait_exit(waiting, Duration::from_secs(120));
    assert!(
        text(&out.stdout).contains("rolled back"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(p.domains(), [base.as_str()]);
    assert_eq!(p.files(), ["base-vda.qcow2"]);
    assert!(!m.pki().join("minions").join(&c1).exists());

    // Readiness over the link: salt-run returns once the new minion answers.
    let r1 = format!("{}r1", p.prefix);
    let child = run(&["--out", "json", "cloud.profile", "web", &r1]);
    let _guest = play_guest(&m, &p, &r1);
    let out = wait_exit(child, Duration::from_secs(180));
    let ret = last_json(&out);
    assert_eq!(ret[&r1]["minion_up"], true, "{ret}\n{}", sidecar.log_text());
    let out = m.salt_run(&["--out", "json", "cloud.destroy", &r1]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(p.domains(), [base]);
    assert!(!m.pki().join("minions").join(&r1).exists());
}

#[test]
fn warm_clones_restore_on_a_remote_session_daemon() {
    use harness::site::golden_image;
    use harness::{last_json, Master, Sidecar};
    let _g = serial();
    session_user();
    golden_image(&[]);
    let sshd = Sshd::start();
    let session = sshd.uri(SESSION_USER, "session");
    let p = Pool::on(&session, "rwarm", Some(SESSION_USER));
    // The golden image's files in the session user's pool, its domain defined there (no
    // console log: /var/log/libvirt is not that user's).
    let golden = virsh_ok(&["dumpxml", "--inactive", "virtseed-golden"]);
    let dir = harness::site::golden_dir();
    let files = ["disk.qcow2", "initrd.img", "vmlinuz"];
    for f in files {
        p.copy_in(&dir.join(f), f);
    }
    let base = format!("{}golden", p.prefix);
    let xml: String = golden
        .replace(dir.to_str().unwrap(), p.dir.to_str().unwrap())
        .replace(
            "<name>virtseed-golden</name>",
            &format!("<name>{base}</name>"),
        )
        .lines()
        .filter(|l| !l.contains("<uuid>") && !l.contains("<log "))
        .map(|l| format!("{l}\n"))
        .collect();
    let f = std::env::temp_dir().join(format!("{base}.xml"));
    std::fs::write(&f, xml).unwrap();
    virsh_ok_on(&session, &["define", f.to_str().unwrap()]);
    std::fs::remove_file(&f).ok();

    let m = Master::start("3007.17");
    std::fs::write(
        m.dir.join("cloud.providers"),
        format!("far:\n  driver: libvirt\n  url: {session}\n"),
    )
    .unwrap();
    std::fs::write(
        m.dir.join("cloud.profiles"),
        format!("rwarm:\n  provider: far\n  base_domain: {base}\n  warm: true\n  minion: {{master: 10.0.2.2}}\n  minion_timeout: 300\n"),
    )
    .unwrap();
    m.install_modules();
    let _sidecar = Sidecar::start(&m, "virtseed");
    let name = format!("{}c1", p.prefix);
    let out = m.salt_run(&["--out", "json", "cloud.profile", "rwarm", &name]);
    let ret = last_json(&out);
    assert_eq!(
        ret[&name]["minion_up"],
        true,
        "{ret}\n{}",
        text(&out.stderr)
    );
    assert!(ret[&name]["timings_ms"]["restored"].is_u64(), "{ret}");
    let (pinged, v) = m.salt_json(&name, &["test.ping"], 30);
    assert!(pinged && v[&name] == true, "{v}");
    // The state lives in the remote pool, next to the base's disk.
    let state: Vec<String> = p
        .files()
        .into_iter()
        .filter(|f| f.starts_with(&format!("{base}.warm-")))
        .collect();
    assert_eq!(state.len(), 2, "{state:?}");
    assert!(state.iter().any(|f| f.ends_with(".save")), "{state:?}");

    let out = m.salt_run(&["--out", "json", "cloud.destroy", &name]);
    ok(&out);
    ok(&virtseed(&m.dir, &["warm", "--drop", "rwarm"]));
    assert_eq!(p.domains(), [base.as_str()]);
    assert_eq!(p.files(), files);
    assert!(!m.pki().join("minions").join(&name).exists());
}
