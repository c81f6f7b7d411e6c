//! Faults and load on a running sidecar: libvirtd and the master restarted during a create,
//! 100 clones in one `cloud.profile` call, 1000 concurrent `test.ping` jobs. Each scenario
//! checks that every request got an answer and that nothing is left behind, and adds a row
//! to scripts/chaos.sh's table (RELIABILITY.md).

mod harness;

use harness::site::{site, wait_exit, Site};
use harness::{last_json, report_row, rss_mib, text, wait_for, Master, Sidecar};
use salt_proto::msgpack;
use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use virtseed::bus::clear::ClearChannel;
use virtseed::bus::events::EventBus;
use virtseed::config::master::MasterOpts;

/// Restarting libvirtd must not overlap another scenario of this binary.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn names(s: &Site, tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{}{tag}{i}", s.p.prefix)).collect()
}

/// Destroys `names` through salt-run and checks nothing of them is left.
fn destroy_all(s: &Site, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let out =
        s.m.salt_run(&["--out", "json", "cloud.destroy", &names.join(",")]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for n in names {
        assert_eq!(s.traces(n), Vec::<String>::new(), "{n} left behind");
    }
}

fn left_behind(s: &Site, names: &[String]) -> String {
    let mut all: Vec<String> = names.iter().flat_map(|n| s.traces(n)).collect();
    all.extend(s.journal().into_iter().map(|j| format!("journal {j}")));
    if all.is_empty() {
        "nothing".into()
    } else {
        all.join(", ")
    }
}

/// Restarts the host's libvirtd: the one whose pid is in its pid file (a test's lab daemon
/// in a network namespace of its own is another process, left alone).
fn restart_libvirtd() {
    let pid = std::fs::read_to_string("/run/libvirtd.pid")
        .expect("the host's libvirtd pid file")
        .trim()
        .to_string();
    let _ = Command::new("kill").arg(&pid).status();
    wait_for("libvirtd to stop", Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(Command::new("libvirtd")
        .arg("-d")
        .status()
        .unwrap()
        .success());
    wait_for("libvirtd to answer", Duration::from_secs(30), || {
        harness::pool::virsh(&["list", "--all", "--name"])
            .status
            .success()
    });
}

#[test]
fn libvirtd_restarted_during_a_create() {
    let _g = serial();
    let s = site("3008.5", "lvd");
    let sidecar = Sidecar::start(&s.m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let vms = names(&s, "r", 12);
    let run = s.salt_run_bg(&["--out", "json", "cloud.profile", "quick", &vms.join(",")]);
    // As soon as the first clone runs, libvirtd goes away and comes back.
    wait_for("a first clone running", Duration::from_secs(60), || {
        vms.iter()
            .any(|n| text(&harness::pool::virsh(&["domstate", n]).stdout).contains("running"))
    });
    let t = Instant::now();
    restart_libvirtd();
    let restart_s = t.elapsed().as_secs_f32();
    let out = wait_exit(run, Duration::from_secs(180));
    let ret = last_json(&out);
    let mut made = Vec::new();
    let mut failed = Vec::new();
    for n in &vms {
        let r = &ret[n];
        if r["state"] == "running" {
            made.push(n.clone());
        } else {
            assert!(
                r["Error"].is_string(),
                "{n}: neither made nor an error: {ret}"
            );
            failed.push(n.clone());
        }
    }
    // Failed creates are rolled back now, or by the sidecar's reconcile once libvirtd is
    // back (every 30 s).
    let t = Instant::now();
    while !(s.journal().is_empty() && failed.iter().all(|n| s.traces(n).is_empty())) {
        assert!(
            t.elapsed() < Duration::from_secs(75),
            "failed creates left {} (salt-run said {ret}); sidecar log:\n{}",
            left_behind(&s, &failed),
            sidecar.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The sidecar reconnected by itself: a new create works.
    let after = format!("{}after", s.p.prefix);
    let out2 =
        s.m.salt_run(&["--out", "json", "cloud.profile", "quick", &after]);
    assert_eq!(
        last_json(&out2)[&after]["state"],
        "running",
        "{}\n{}",
        text(&out2.stdout),
        sidecar.log_text()
    );
    made.push(after);
    destroy_all(&s, &made);
    let retried = sidecar
        .log_text()
        .matches("libvirt connection lost")
        .count();
    let all: Vec<String> = vms.iter().cloned().chain(made.iter().cloned()).collect();
    let left = left_behind(&s, &all);
    assert_eq!(left, "nothing");
    report_row(
        "libvirtd restarted during a create",
        &format!(
            "salt-run cloud.profile with 12 names; libvirtd killed and restarted ({restart_s:.1} s) once the first clone ran"
        ),
        &format!(
            "{} created ({retried} of them tried again once libvirtd was back), {} failed with a clear error and were rolled back; the sidecar reconnected by itself (next create OK)",
            made.len() - 1,
            failed.len()
        ),
        &left,
    );
}

#[test]
fn master_restarted_during_a_create() {
    let _g = serial();
    let s = site("3007.17", "mst");
    let sidecar = Sidecar::start(&s.m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let vms = names(&s, "m", 24);
    // Published directly (salt-run itself would lose its master): the return must still
    // reach the job cache of the restarted master.
    let opts = MasterOpts::load(&s.m.dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let jid = rt.block_on(async {
        let clear = ClearChannel::new(&opts.ret_endpoint(), &opts.cachedir, &opts.user);
        clear
            .publish(
                "virtseed",
                "glob",
                "cloud.profile",
                vec![msgpack::text("quick"), msgpack::text(vms.join(","))],
            )
            .await
            .unwrap()
            .jid
    });
    wait_for("the create to start", Duration::from_secs(30), || {
        sidecar.log_text().contains("salt/cloud/") || vms.iter().any(|n| !s.traces(n).is_empty())
    });
    s.m.restart();
    let mut ret = serde_json::Value::Null;
    wait_for(
        "the job's return in the restarted master's job cache",
        Duration::from_secs(90),
        || {
            let out =
                s.m.salt_run(&["--out", "json", "jobs.lookup_jid", jid.as_str()]);
            let v = last_json(&out);
            if v["virtseed"].is_object() {
                ret = v["virtseed"].clone();
                true
            } else {
                false
            }
        },
    );
    for n in &vms {
        assert_eq!(ret[n]["state"], "running", "{n}: {ret}");
    }
    sidecar.wait_log("re-authenticating", Duration::from_secs(30));
    // The return was sent after the restart (the create outlived the old master).
    let log = sidecar.log_text();
    let restarted = log.find("the master restarted").expect("restart noticed");
    let returned = log
        .find(&format!("job returned jid={jid}"))
        .expect("the job's return logged");
    assert!(
        returned > restarted,
        "the create finished before the master stopped:\n{log}"
    );
    // And it answers on the new master.
    let out =
        s.m.salt(&["virtseed", "test.ping", "--out", "json", "-t", "20"]);
    assert!(text(&out.stdout).contains("true"), "{}", text(&out.stdout));
    destroy_all(&s, &vms);
    let left = left_behind(&s, &vms);
    assert_eq!(left, "nothing");
    report_row(
        "master restarted during a create",
        "cloud.profile with 24 names published; the master stopped and started while they were made",
        "all 24 made; the return, sent after the restart, reached the restarted master's job cache; the sidecar re-authenticated by itself",
        &left,
    );
}

#[test]
fn hundred_clones_in_one_call() {
    let _g = serial();
    let s = site("3008.5", "hun");
    let sidecar = Sidecar::start(&s.m, "virtseed");
    sidecar.wait_log("serving cloud.* jobs", Duration::from_secs(10));
    let vms = names(&s, "h", 100);
    let t = Instant::now();
    let out =
        s.m.salt_run(&["--out", "json", "cloud.profile", "quick", &vms.join(",")]);
    let create_s = t.elapsed().as_secs_f32();
    let ret = last_json(&out);
    let running = vms
        .iter()
        .filter(|n| ret[n.as_str()]["state"] == "running")
        .count();
    assert_eq!(running, 100, "{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success());
    let (rss, peak) = rss_mib(sidecar.pid());
    let t = Instant::now();
    destroy_all(&s, &vms);
    let destroy_s = t.elapsed().as_secs_f32();
    let left = left_behind(&s, &vms);
    assert_eq!(left, "nothing");
    assert!(peak < 256.0, "sidecar memory peaked at {peak:.0} MiB");
    report_row(
        "load: 100 clones in one call",
        "salt-run cloud.profile quick with 100 names (domains without an OS), then cloud.destroy of all 100",
        &format!(
            "100/100 running in {create_s:.1} s, all destroyed in {destroy_s:.1} s; sidecar RSS {rss:.0} MiB, peak {peak:.0} MiB"
        ),
        &left,
    );
}

#[test]
fn thousand_concurrent_pings() {
    let _g = serial();
    let m = Master::start("3008.5");
    let sidecar = Sidecar::start(&m, "virtseed");
    let (rss0, _) = rss_mib(sidecar.pid());
    let opts = MasterOpts::load(&m.dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (answered, secs) = rt.block_on(async {
        let bus = EventBus::new(&opts.sock_dir, Some("3008.5".parse().unwrap()));
        let mut events = bus.subscribe();
        tokio::spawn(bus.clone().listen());
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Returns are collected while the jobs are published.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        if let Some(jid) = ev
                            .tag
                            .strip_prefix("salt/job/")
                            .and_then(|r| r.strip_suffix("/ret/virtseed"))
                        {
                            if msgpack::get(&ev.data, "return")
                                == Some(&salt_proto::Value::Boolean(true))
                            {
                                let _ = tx.send(jid.to_string());
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("the test's event listener lagged by {n} events")
                    }
                    Err(_) => return,
                }
            }
        });
        let clear = std::sync::Arc::new(ClearChannel::new(
            &opts.ret_endpoint(),
            &opts.cachedir,
            &opts.user,
        ));
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let c = clear.clone();
            set.spawn(async move {
                c.publish("virtseed", "glob", "test.ping", vec![])
                    .await
                    .map(|p| p.jid.to_string())
            });
        }
        let mut jids = HashSet::new();
        while let Some(r) = set.join_next().await {
            jids.insert(r.unwrap().expect("publish"));
        }
        let mut answered = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while answered.len() < jids.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    if jids.contains(&j) {
                        answered.insert(j);
                    }
                }
                _ => break,
            }
        }
        (answered.len(), t.elapsed().as_secs_f32())
    });
    let (rss, peak) = rss_mib(sidecar.pid());
    assert_eq!(
        answered,
        1000,
        "answered {answered} of 1000; log:\n{}",
        sidecar.log_text()
    );
    assert!(peak < 128.0, "sidecar memory peaked at {peak:.0} MiB");
    // Still answering afterwards.
    let out = m.salt(&["virtseed", "test.ping", "--out", "json", "-t", "20"]);
    assert!(text(&out.stdout).contains("true"));
    report_row(
        "load: 1000 concurrent test.ping",
        "1000 test.ping jobs published at once through the master (root-key clear channel)",
        &format!(
            "1000/1000 answered in {secs:.1} s; sidecar RSS {rss0:.0} MiB before, {rss:.0} MiB after, peak {peak:.0} MiB"
        ),
        "nothing",
    );
}
