//! Crash safety: the sidecar is killed with SIGKILL at every step of a `salt-run
//! cloud.profile` (after the overlay, the seed upload, define, the key's accept, start, and
//! while waiting for the minion). The next sidecar reconciles from its journal: the waiting
//! salt-run gets a clear error, and no domain, volume, seed, key or journal entry is left.
//! Also: a clone whose minion never answers is destroyed at `minion_timeout`.

mod harness;

use harness::pool::Pool;
use harness::{last_json, text, virtseed, wait_for, Master, Sidecar};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Site {
    m: Master,
    p: Pool,
}

fn site(version: &str, tag: &str) -> Site {
    let m = Master::start(version);
    let p = Pool::new(tag);
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
        format!(
            "web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  minion_timeout: 600\n\
             brief:\n  extends: web\n  minion_timeout: 3\n\
             kept:\n  extends: web\n  minion_timeout: 3\n  keep_on_timeout: true\n"
        ),
    )
    .unwrap();
    let out = virtseed(&m.dir, &["install-runner"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    Site { m, p }
}

impl Site {
    fn journal(&self) -> Vec<String> {
        match std::fs::read_dir(self.m.dir.join("pki/virtseed/journal")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Everything a clone `name` could leave: its domain, volumes, key.
    fn traces(&self, name: &str) -> Vec<String> {
        let mut t: Vec<String> = self
            .p
            .domains()
            .into_iter()
            .filter(|d| d == name)
            .map(|d| format!("domain {d}"))
            .collect();
        t.extend(
            self.p
                .volumes()
                .into_iter()
                .chain(self.p.files())
                .filter(|v| v.starts_with(name))
                .map(|v| format!("volume {v}")),
        );
        for dir in ["minions", "minions_pre", "minions_denied"] {
            if self.m.pki().join(dir).join(name).exists() {
                t.push(format!("key {dir}/{name}"));
            }
        }
        t.sort();
        t.dedup();
        t
    }

    fn salt_run_bg(&self, args: &[&str]) -> std::process::Child {
        Command::new(self.m.venv.join("bin/salt-run"))
            .arg("-c")
            .arg(&self.m.dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn wait_exit(child: std::process::Child, timeout: Duration) -> std::process::Output {
    let t = Instant::now();
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        while t.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(200));
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    let _ = killer.join();
    out
}

/// Kills the sidecar at `step` of a create, restarts it, and checks the outcome.
fn crash_at(s: &Site, step: &str, n: usize) {
    let name = format!("{}c{n}", s.p.prefix);
    let pause = if step == "waiting" { "" } else { step };
    let mut sidecar = Sidecar::start_with(
        &s.m,
        "virtseed",
        &[("VIRTSEED_TEST_PAUSE_AFTER", pause)],
        &format!("-{step}"),
    );
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let run = s.salt_run_bg(&["--out", "json", "cloud.profile", "web", &name]);
    if step == "waiting" {
        wait_for(
            "the clone running and waiting for its minion",
            Duration::from_secs(60),
            || text(&harness::pool::virsh(&["domstate", &name]).stdout).contains("running"),
        );
        std::thread::sleep(Duration::from_millis(500));
    } else {
        sidecar.wait_log(
            &format!("paused after step {step}"),
            Duration::from_secs(60),
        );
    }
    let before = s.traces(&name);
    assert_eq!(s.journal().len(), 1, "one create in the journal");
    sidecar.kill9();
    // What the crash left (shows the test kills at a point where things exist).
    if step != "disks" {
        assert!(
            !before.is_empty(),
            "{step}: nothing was made before the kill"
        );
    }
    if matches!(step, "key_accepted" | "started" | "waiting") {
        assert!(
            before.iter().any(|t| t.starts_with("key minions/")),
            "{step}: {before:?}"
        );
    }

    let sidecar = Sidecar::start_with(&s.m, "virtseed", &[], &format!("-{step}-after"));
    sidecar.wait_log(
        "reconcile: an interrupted create was rolled back",
        Duration::from_secs(30),
    );
    let out = wait_exit(run, Duration::from_secs(120));
    let ret = last_json(&out);
    let err = ret[&name]["Error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("virtseed stopped while creating") && err.contains("rolled back"),
        "{step}: salt-run got {}\n{}\nsidecar log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sidecar.log_text()
    );
    assert!(!out.status.success(), "{step}: salt-run must fail");
    assert_eq!(
        s.traces(&name),
        Vec::<String>::new(),
        "{step}: left behind (before the kill: {before:?})"
    );
    assert_eq!(
        s.journal(),
        Vec::<String>::new(),
        "{step}: journal entries left"
    );
    assert!(!sidecar.log_text().contains("PRIVATE KEY"));
}

#[test]
fn kill9_at_every_step_is_reconciled() {
    let s = site("3008.5", "crash");
    let steps = [
        "disks",
        "nvram",
        "seeded",
        "defined",
        "key_accepted",
        "started",
        "waiting",
    ];
    for (i, step) in steps.iter().enumerate() {
        crash_at(&s, step, i);
    }
    // Nothing of the test is left but the base.
    assert_eq!(s.p.domains(), vec![format!("{}base", s.p.prefix)]);
    assert_eq!(s.p.volumes(), vec!["base-vda.qcow2".to_string()]);
}

#[test]
fn a_minion_that_never_answers_is_destroyed_unless_kept() {
    let s = site("3007.17", "tmo");
    let sidecar = Sidecar::start(&s.m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let gone = format!("{}g", s.p.prefix);
    let out =
        s.m.salt_run(&["--out", "json", "cloud.profile", "brief", &gone]);
    assert!(!out.status.success());
    let err = last_json(&out)[&gone]["Error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("destroyed"), "{}", text(&out.stdout));
    assert!(err.contains("keep_on_timeout"), "{err}");
    assert_eq!(s.traces(&gone), Vec::<String>::new());

    let kept = format!("{}k", s.p.prefix);
    let out =
        s.m.salt_run(&["--out", "json", "cloud.profile", "kept", &kept]);
    assert!(!out.status.success());
    let err = last_json(&out)[&kept]["Error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("was kept"), "{err}");
    assert!(s.p.domains().contains(&kept));
    assert_eq!(s.journal(), Vec::<String>::new());
    let out = s.m.salt_run(&["--out", "json", "cloud.destroy", &kept]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(s.traces(&kept), Vec::<String>::new());
}
