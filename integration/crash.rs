//! Crash safety: the sidecar is killed with SIGKILL at every step of a `salt-run
//! cloud.profile` (after the overlay, the seed upload, define, the key's accept, start, and
//! while waiting for the minion). The next sidecar reconciles from its journal: the waiting
//! salt-run gets a clear error, and no domain, volume, seed, key or journal entry is left.
//! Also: a clone whose minion never answers is destroyed at `minion_timeout`.

mod harness;

use harness::site::{site, wait_exit, Site};
use harness::{last_json, text, wait_for, Sidecar};
use std::time::Duration;

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
    harness::report_row(
        &format!("kill -9 at `{step}`"),
        &format!(
            "salt-run cloud.profile; sidecar SIGKILLed {}, then restarted (made before the kill: {})",
            if step == "waiting" { "while waiting for the minion" } else { "right after the step" },
            if before.is_empty() { "nothing".to_string() } else { before.join(", ") }
        ),
        "rolled back at restart; salt-run got `virtseed stopped while creating ... rolled back`, exit 1",
        "nothing",
    );
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
    harness::report_row(
        "minion never answers",
        "cloud.profile with minion_timeout: 3 on a guest with no OS",
        "VM, volumes, seed and key destroyed; salt-run got the timeout error, exit 1",
        "nothing",
    );

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
