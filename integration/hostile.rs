//! Bad bytes from the network: a "master" whose request port answers nonsense (random bytes,
//! wrong msgpack, an error string, a 20 MiB frame) and an event bus that sends garbage. The
//! sidecar says what is wrong, keeps retrying with bounded memory, never panics, and joins
//! the real master once it is back. Also: file modes of every secret it keeps.

mod harness;

use harness::{report_row, rss_mib, text, Master, Sidecar};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A ROUTER on the master's ret port answering every request with the next bad reply, and a
/// unix socket in place of the master's event publisher that sends garbage.
const HOSTILE: &str = r#"
import os, socket, sys, threading, zmq, msgpack
port, sock_dir = int(sys.argv[1]), sys.argv[2]
replies = [
    os.urandom(200),
    msgpack.packb({"enc": "weird", "load": [1, 2, 3]}),
    msgpack.packb("bad load"),
    msgpack.packb({"enc": "pub", "load": {"ret": "full"}}),
    msgpack.packb({"enc": "pub", "load": b"\x00" * 64}),
    b"\x93" * (20 << 20),
    b"",
]
def bus():
    path = os.path.join(sock_dir, "master_event_pub.ipc")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"\x00\x00\x10\x00" + os.urandom(4096))
            c.sendall(b"\xff" * 8192)
        except OSError:
            pass
        c.close()
threading.Thread(target=bus, daemon=True).start()
ctx = zmq.Context()
r = ctx.socket(zmq.ROUTER)
r.bind(f"tcp://127.0.0.1:{port}")
print("ready", flush=True)
n = 0
while True:
    frames = r.recv_multipart()
    r.send_multipart(frames[:-1] + [replies[n % len(replies)]])
    n += 1
"#;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_master_that_answers_nonsense() {
    let m = Master::start("3008.5");
    // The sidecar joins the real master once (its own keys and the pinned master key).
    let first = Sidecar::start(&m, "virtseed");
    drop(first);
    let pki = m.dir.join("pki/virtseed");
    assert_eq!(mode(&pki.join("minion.pem")), 0o400, "private key mode");
    assert_eq!(mode(&m.pki().join("minions/virtseed")) & 0o077 & 0o022, 0);
    assert_eq!(mode(&m.dir.join("cache/.root_key")) & 0o077, 0);

    // The real master goes away; a hostile one takes its ports and sockets.
    m.stop();
    let _ = std::fs::remove_file(m.dir.join("sock/master_event_pub.ipc"));
    let mut hostile: Child = m
        .python(HOSTILE)
        .arg(m.port("ret_port").to_string())
        .arg(m.dir.join("sock"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut l = String::new();
        std::io::BufReader::new(hostile.stdout.as_mut().unwrap())
            .read_line(&mut l)
            .unwrap();
        assert_eq!(l.trim(), "ready");
    }
    // Start a sidecar against it (not waiting for "joined": it must not join).
    let log = m.dir.join("log/virtseed-hostile.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_virtseed"))
        .arg("-c")
        .arg(&m.dir)
        .args(["--log", "info,virtseed=debug", "run"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    while t.elapsed() < Duration::from_secs(60) && read().matches("sign-in failed").count() < 8 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sidecar exited:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text_log = read();
    let failures = text_log.matches("sign-in failed").count();
    assert!(
        failures >= 6,
        "only {failures} sign-in failures:\n{text_log}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the sidecar exited:\n{text_log}"
    );
    assert!(!text_log.contains("panicked"), "{text_log}");
    assert!(
        !text_log.contains("joined master"),
        "joined a nonsense master:\n{text_log}"
    );
    let mut reasons: Vec<&str> = text_log
        .lines()
        .filter_map(|l| l.split_once("sign-in failed, retrying in ").map(|(_, r)| r))
        .filter_map(|r| r.split_once(": ").map(|(_, why)| why))
        .collect();
    reasons.sort();
    reasons.dedup();
    eprintln!("sign-in failures seen:\n  {}", reasons.join("\n  "));
    // Every failure names what was wrong (no bare "error").
    assert!(reasons.iter().all(|r| r.len() > 12), "{reasons:?}");
    let (_, peak) = rss_mib(child.id());
    assert!(peak < 200.0, "memory peaked at {peak:.0} MiB");

    // The real master comes back on the same ports: the sidecar joins it by itself.
    hostile.kill().unwrap();
    hostile.wait().unwrap();
    let _ = std::fs::remove_file(m.dir.join("sock/master_event_pub.ipc"));
    m.restart();
    let t = Instant::now();
    while !read().contains("joined master") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "did not join the real master again:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = m.salt(&["virtseed", "test.ping", "--out", "json", "-t", "20"]);
    assert!(text(&out.stdout).contains("true"), "{}", text(&out.stdout));
    let root_key = std::fs::read_to_string(m.dir.join("cache/.root_key")).unwrap();
    assert!(
        !read().contains(root_key.trim()),
        "the root key reached the log"
    );
    let _ = child.kill();
    let _ = child.wait();
    report_row(
        "a master that answers nonsense",
        "the request port answered random bytes, wrong msgpack, an error string, a 20 MiB frame, nothing; the event bus sent garbage",
        &format!(
            "{failures} sign-in failures logged with the reason, no panic, peak RSS {peak:.0} MiB; joined the real master once it was back"
        ),
        "nothing",
    );
}

#[test]
fn secrets_are_kept_private() {
    // What a clone's identity leaves on the master: the accepted public key (readable is
    // fine), never a private key; the sidecar's own private key is 0400.
    let m = Master::start("3007.17");
    let sidecar = Sidecar::start(&m, "virtseed");
    let pki = m.dir.join("pki/virtseed");
    assert_eq!(mode(&pki.join("minion.pem")), 0o400);
    for e in std::fs::read_dir(m.pki().join("minions"))
        .unwrap()
        .flatten()
    {
        let body = std::fs::read_to_string(e.path()).unwrap();
        assert!(!body.contains("PRIVATE"), "{}", e.path().display());
        assert_eq!(
            mode(&e.path()) & 0o022,
            0,
            "{} writable by others",
            e.path().display()
        );
    }
    let log = sidecar.log_text();
    let own = std::fs::read_to_string(pki.join("minion.pem")).unwrap();
    let body: String = own.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        !log.contains(&body[..40]),
        "the private key reached the log"
    );
}
