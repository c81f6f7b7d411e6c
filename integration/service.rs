//! What `systemctl stop virtseed` does (dist/systemd/virtseed.service: `KillSignal=SIGTERM`):
//! the sidecar stops at once, a create in flight stays in its journal, and the next start
//! rolls it back and returns the error to the `salt-run` still waiting.

mod harness;

use harness::site::{site, wait_exit};
use harness::{last_json, text, wait_for, Sidecar};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether `pid` has exited (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn sigterm_leaves_a_create_in_flight_to_the_journal() {
    let s = site("3007.17", "term");
    let name = format!("{}t1", s.p.prefix);
    let sidecar = Sidecar::start_with(
        &s.m,
        "virtseed",
        &[("VIRTSEED_TEST_PAUSE_AFTER", "defined")],
        "-term",
    );
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let run = s.salt_run_bg(&["--out", "json", "cloud.profile", "web", &name]);
    sidecar.wait_log("paused after step defined", Duration::from_secs(60));
    assert_eq!(s.journal().len(), 1, "one create in the journal");

    let pid = sidecar.pid();
    let t = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for(
        "the sidecar to exit on SIGTERM",
        Duration::from_secs(10),
        || exited(pid),
    );
    eprintln!("exited {:?} after SIGTERM", t.elapsed());
    let log = sidecar.log_text();
    assert!(log.contains("stopping"), "{log}");
    // Reaped, as systemd reaps it (a zombie's pid would still own the journal entry).
    drop(sidecar);
    assert_eq!(s.journal().len(), 1, "the create stays journaled");
    assert!(!s.traces(&name).is_empty(), "the half-made clone is there");

    let after = Sidecar::start_with(&s.m, "virtseed", &[], "-term-after");
    after.wait_log(
        "reconcile: an interrupted create was rolled back",
        Duration::from_secs(30),
    );
    let out = wait_exit(run, Duration::from_secs(120));
    assert!(!out.status.success());
    let err = last_json(&out)[&name]["Error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("rolled back"),
        "salt-run got {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(s.traces(&name), Vec::<String>::new());
    assert_eq!(s.journal(), Vec::<String>::new());
}
