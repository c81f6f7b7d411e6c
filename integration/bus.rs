//! The sidecar on a real master's bus (3006.30, 3007.17, 3008.5): it answers `salt` through the
//! real CLI, fires and hears events, follows key rotation and master restarts, and runs jobs
//! concurrently.

mod harness;

use harness::{Master, Sidecar};
use salt_proto::msgpack;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use virtseed::bus::clear::ClearChannel;
use virtseed::bus::events::EventBus;
use virtseed::config::master::MasterOpts;

/// A real Salt event subscriber (Salt's own API), printing matching events as JSON lines.
const SUBSCRIBER: &str = r#"
import json, os, sys, salt.config, salt.utils.event
opts = salt.config.master_config(os.path.join(os.environ["MASTER_DIR"], "master"))
ev = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
ev.subscribe("")
print("ready", flush=True)
while True:
    e = ev.get_event(wait=120, full=True)
    if e is None:
        break
    if e["tag"].startswith("virtseed/"):
        print(json.dumps(e, default=repr), flush=True)
"#;

fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_matching(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let t = Instant::now();
    while let Some(left) = timeout.checked_sub(t.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {timeout:?}");
}

fn scenario(version: &str) {
    let master = Master::start(version);
    let mut sub = master
        .python(SUBSCRIBER)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sub_lines = lines(&mut sub);
    next_matching(&sub_lines, "ready", Duration::from_secs(60));

    let sidecar = Sidecar::start(&master, "virtseed");

    // An event fired by the sidecar reaches a real Salt subscriber.
    let ev = next_matching(
        &sub_lines,
        "virtseed/sidecar/virtseed/start",
        Duration::from_secs(30),
    );
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(ev["data"]["id"], "virtseed", "{ev}");
    assert!(ev["data"]["_stamp"].is_string(), "{ev}");
    let _ = sub.kill();

    // test.ping through the real CLI.
    let (ok, v) = master.salt_json("virtseed", &["test.ping"], 30);
    assert!(ok, "test.ping failed: {v}");
    assert_eq!(v, serde_json::json!({"virtseed": true}));

    // sys.list_functions lists what it serves.
    let (_, v) = master.salt_json("virtseed", &["sys.list_functions"], 30);
    let funs: Vec<&str> = v["virtseed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    for f in ["test.ping", "saltutil.find_job", "sys.list_functions"] {
        assert!(funs.contains(&f), "{f} missing from {funs:?}");
    }

    // An unknown function fails as it does on a minion.
    let (ok, v) = master.salt_json("virtseed", &["nosuch.thing"], 30);
    assert!(!ok, "an unknown function must fail the CLI");
    assert_eq!(v["virtseed"], "'nosuch.thing' is not available.");

    // Keyword arguments arrive as kwargs.
    let (_, v) = master.salt_json("virtseed", &["test.arg", "a", "k=v"], 30);
    assert_eq!(
        v["virtseed"],
        serde_json::json!({"args": ["a"], "kwargs": {"k": "v"}})
    );

    // The library's clients on the same master: publish with the root key, hear the return on
    // the event bus (fired by the master's worker), and call the wheel.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opts = MasterOpts::load(&master.dir).unwrap();
        let bus = EventBus::new(&opts.sock_dir, Some(version.parse().unwrap()));
        let mut events = bus.subscribe();
        tokio::spawn(bus.clone().listen());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let clear = ClearChannel::new(&opts.ret_endpoint(), &opts.cachedir, &opts.user);
        let p = clear
            .publish("virtseed", "glob", "test.ping", vec![])
            .await
            .unwrap();
        assert_eq!(p.minions, vec!["virtseed".to_string()]);
        let tag = format!("salt/job/{}/ret/virtseed", p.jid);
        let ret = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let ev = events.recv().await.unwrap();
                if ev.tag == tag {
                    return ev;
                }
            }
        })
        .await
        .expect("the job's return event");
        assert_eq!(
            msgpack::get(&ret.data, "return"),
            Some(&salt_proto::Value::Boolean(true))
        );

        let keys = clear.wheel("key.list_all", vec![]).await.unwrap();
        let accepted = msgpack::get(&keys, "minions").unwrap();
        assert!(
            msgpack::to_json(accepted).contains("\"virtseed\""),
            "{}",
            msgpack::to_json(&keys)
        );

        // An event fired by the library reaches the bus and comes back to its own listener.
        bus.fire(
            "virtseed/test/echo",
            msgpack::map([("n", salt_proto::Value::from(7))]),
        )
        .await
        .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let ev = events.recv().await.unwrap();
                if ev.tag == "virtseed/test/echo" {
                    return ev;
                }
            }
        })
        .await
        .expect("our own event back");
        assert_eq!(
            msgpack::get(&echo.data, "n"),
            Some(&salt_proto::Value::from(7))
        );
    });

    // A 20 s job does not delay a concurrent ping.
    let sleeper = std::process::Command::new(master.venv.join("bin/salt"))
        .args([
            "-c",
            harness::path_str(&master.dir),
            "-t",
            "90",
            "--out",
            "json",
            "virtseed",
            "test.sleep",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sidecar.wait_log("job started fun=test.sleep", Duration::from_secs(30));
    let t = Instant::now();
    let (ok, v) = master.salt_json("virtseed", &["test.ping"], 30);
    let ping = t.elapsed();
    assert!(ok && v["virtseed"] == true, "ping during sleep: {v}");
    assert!(
        ping < Duration::from_secs(10),
        "ping took {ping:?} while test.sleep ran"
    );
    let slept: serde_json::Value = serde_json::from_str(&harness::stdout_of(sleeper)).unwrap();
    assert_eq!(slept, serde_json::json!({"virtseed": true}));

    // Key deletion rotates the master's AES key; the sidecar follows the `key` event.
    std::fs::write(master.pki().join("minions/doomed"), "not a key").unwrap();
    let out = master.salt_key(&["-y", "-d", "doomed"]);
    assert!(out.status.success(), "{}", harness::text(&out.stderr));
    sidecar.wait_log("rotated its AES key", Duration::from_secs(30));
    let (ok, v) = master.salt_json("virtseed", &["test.ping"], 30);
    assert!(ok, "ping after rotation: {v}");

    // The master restarts under a running sidecar: pings answer again within 15 s.
    master.restart();
    let t = Instant::now();
    loop {
        let (ok, v) = master.salt_json("virtseed", &["test.ping"], 5);
        if ok && v["virtseed"] == true {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no answer 15 s after the master restarted; log:\n{}",
            sidecar.log_text()
        );
    }
    println!(
        "{version}: answered {:.1}s after the master restart",
        t.elapsed().as_secs_f32()
    );
    harness::report_row(
        &format!("master restarted while idle ({version})"),
        "salt-master stopped and started under a running sidecar",
        &format!(
            "the sidecar re-authenticated by itself; `salt virtseed test.ping` answered {:.1} s after the restart",
            t.elapsed().as_secs_f32()
        ),
        "nothing",
    );
    let log = sidecar.log_text();
    assert!(
        !log.contains("BEGIN RSA PRIVATE KEY"),
        "a private key reached the log"
    );
}

#[test]
fn bus_salt_3006() {
    scenario("3006.30");
}

#[test]
fn bus_salt_3007() {
    scenario("3007.17");
}

#[test]
fn bus_salt_3008() {
    scenario("3008.5");
}

/// Salt's publisher (3006.30, 3008.5) and 3008's request server set ZMTP heartbeats
/// (`zmq_heartbeat_ivl`, 10 s by default). Here they fire every 200 ms and drop a silent peer
/// after 800 ms: the sidecar must answer each PING, keep one subscription, and answer every
/// ping, including after idle pauses longer than the heartbeat timeout.
fn heartbeats(version: &str) {
    let master = Master::start_with(
        version,
        "zmq_heartbeat_ivl: 200\nzmq_heartbeat_timeout: 800",
    );
    let sidecar = Sidecar::start(&master, "vs-heartbeat");
    sidecar.wait_log("subscribed to publications", Duration::from_secs(30));
    let publish_port = master.port("publish_port");
    // The subscription's TCP connection: it must be the same one at the end (a publisher that
    // gets no PONG drops the peer, and the crate would reconnect behind our back).
    let first = tcp_local_ports(sidecar.pid(), publish_port);
    assert_eq!(first.len(), 1, "one connection to the publisher: {first:?}");
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        let out = master.salt(&["vs-heartbeat", "test.ping", "--out", "json", "-t", "15"]);
        let text = harness::text(&out.stdout);
        assert!(
            text.contains("\"vs-heartbeat\": true"),
            "round {round}: {text}{}\nsidecar log:\n{}",
            harness::text(&out.stderr),
            sidecar.log_text()
        );
    }
    assert_eq!(tcp_local_ports(sidecar.pid(), publish_port), first);
    let log = sidecar.log_text();
    assert!(!log.contains("Unknown command"), "sidecar log:\n{log}");
    assert!(!log.contains("resubscribing"), "sidecar log:\n{log}");
    assert_eq!(
        log.matches("subscribed to publications").count(),
        1,
        "the subscription was dropped and made again:\n{log}"
    );
}

#[test]
fn heartbeats_salt_3006() {
    heartbeats("3006.30");
}

#[test]
fn heartbeats_salt_3008() {
    heartbeats("3008.5");
}

/// Local ports of `pid`'s established TCP connections to 127.0.0.1:`port` (from /proc).
fn tcp_local_ports(pid: u32, port: u16) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote = format!("0100007F:{port:04X}");
            (f.len() > 9 && f[2] == remote && f[3] == "01" && inodes.iter().any(|i| i == f[9]))
                .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect();
    ports.sort();
    ports
}
