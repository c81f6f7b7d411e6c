//! Real processes for end-to-end tests: a private salt-master per test (scripts/dev-master.sh,
//! venvs from scripts/setup.sh) and the virtseed binary. Everything is stopped and removed on
//! drop, also when a test fails.
#![allow(dead_code)]

pub mod lab;
pub mod pool;
pub mod release;
pub mod remote;
pub mod site;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const VERSIONS: [&str; 3] = ["3006.30", "3007.17", "3008.5"];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    std::env::var_os("VIRTSEED_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/virtseed"))
}

fn random() -> String {
    salt_proto::auth::new_nonce()[..10].to_string()
}

pub struct Master {
    pub dir: PathBuf,
    pub version: String,
    pub venv: PathBuf,
    /// The network namespace the master, its CLIs and the sidecar run in (the lab's), if any.
    pub netns: Option<String>,
    /// The address it listens on (`interface`).
    pub interface: String,
}

/// `program` run inside network namespace `netns` (`ip netns exec`, which execs it: the
/// child's pid is the program's), or as it is without one.
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Master {
    pub fn start(version: &str) -> Master {
        Self::start_with(version, "")
    }

    /// A master with extra options appended to its config (YAML).
    pub fn start_with(version: &str, extra_conf: &str) -> Master {
        Self::start_in(version, extra_conf, None)
    }

    /// A master inside network namespace `netns`, listening on all its addresses (guests on
    /// the namespace's bridges reach it there); its CLIs run there too.
    pub fn start_in(version: &str, extra_conf: &str, netns: Option<&str>) -> Master {
        let interface = if netns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        Self::start_full(version, extra_conf, netns, interface)
    }

    /// A master listening on loopback address `interface` (127.0.0.2, ...: two cluster nodes
    /// on one machine need distinct addresses).
    pub fn start_at(version: &str, extra_conf: &str, interface: &str) -> Master {
        Self::start_full(version, extra_conf, None, interface)
    }

    fn start_full(version: &str, extra_conf: &str, netns: Option<&str>, interface: &str) -> Master {
        let venv = cache().join(format!("salt-{version}"));
        assert!(
            venv.join("bin/salt-master").exists(),
            "no Salt {version} at {}: run SALT_VERSIONS={version} scripts/setup.sh",
            venv.display()
        );
        let dir = std::env::temp_dir().join(format!("virtseed-it-{version}-{}", random()));
        let m = Master {
            dir,
            version: version.into(),
            venv,
            netns: netns.map(str::to_string),
            interface: interface.to_string(),
        };
        m.script_with("start", extra_conf);
        m
    }

    fn script(&self, cmd: &str) {
        self.script_with(cmd, "")
    }

    fn script_with(&self, cmd: &str, extra_conf: &str) {
        let out = self
            .command(repo().join("scripts/dev-master.sh"))
            .args([cmd, self.dir.to_str().unwrap()])
            .env("SALT_VERSION", &self.version)
            .env("MASTER_EXTRA_CONF", extra_conf)
            .env("MASTER_INTERFACE", &self.interface)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dev-master.sh {cmd}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Waits until the master's log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let log = self.dir.join("log/master");
        wait_for(&format!("{needle:?} in {}", log.display()), timeout, || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains(needle))
        });
    }

    /// A port from the master's config (`ret_port`, `publish_port`).
    pub fn port(&self, key: &str) -> u16 {
        std::fs::read_to_string(self.dir.join("master"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in the master's config"))
            .trim()
            .parse()
            .unwrap()
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn restart(&self) {
        self.script("stop");
        self.script("start");
    }

    /// `program` where this master runs (its network namespace, if any).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(self.netns.as_deref(), program)
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        self.command(self.venv.join("bin").join(tool))
            .arg("-c")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn salt(&self, args: &[&str]) -> Output {
        self.tool("salt", args)
    }

    pub fn salt_key(&self, args: &[&str]) -> Output {
        self.tool("salt-key", args)
    }

    pub fn salt_run(&self, args: &[&str]) -> Output {
        self.tool("salt-run", args)
    }

    /// `salt-run ARGS` started, its output piped (`site::wait_exit` collects it).
    pub fn salt_run_bg(&self, args: &[&str]) -> Child {
        self.tool_bg("salt-run", args)
    }

    /// Salt's CLI `tool` (`salt-run`, `salt-cloud`, ...) started, its output piped.
    pub fn tool_bg(&self, tool: &str, args: &[&str]) -> Child {
        self.command(self.venv.join("bin").join(tool))
            .arg("-c")
            .arg(&self.dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn salt_cloud(&self, args: &[&str]) -> Output {
        self.tool("salt-cloud", args)
    }

    /// `virtseed install-runner` with this master's Salt, which must confirm it loads them.
    pub fn install_modules(&self) {
        let py = self.venv.join("bin/python");
        let out = virtseed(
            &self.dir,
            &["install-runner", "--salt-python", py.to_str().unwrap()],
        );
        assert!(
            out.status.success() && text(&out.stdout).contains("loads them"),
            "{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Runs Python in the master's venv with MASTER_DIR set.
    pub fn python(&self, code: &str) -> Command {
        let mut c = self.command(self.venv.join("bin/python"));
        c.arg("-c").arg(code).env("MASTER_DIR", &self.dir);
        c
    }

    /// `salt <id> <fun> [args] --out json` parsed, with the exit status.
    pub fn salt_json(
        &self,
        id: &str,
        fun_and_args: &[&str],
        timeout: u32,
    ) -> (bool, serde_json::Value) {
        let t = timeout.to_string();
        let mut args = vec!["-t", &t, "--out", "json", id];
        args.extend_from_slice(fun_and_args);
        let out = self.salt(&args);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.success(), v)
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki/master")
    }

    /// Where this master keeps minion keys: `pki()`, or a cluster's `cluster_pki_dir`.
    pub fn key_dir(&self) -> PathBuf {
        std::fs::read_to_string(self.dir.join("master"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("cluster_pki_dir: "))
            .map(|d| PathBuf::from(d.trim()))
            .unwrap_or_else(|| self.pki())
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/dev-master.sh"))
            .args(["stop", self.dir.to_str().unwrap()])
            .env("SALT_VERSION", &self.version)
            .output();
        if std::env::var_os("KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Sidecar {
    child: Child,
    pub log: PathBuf,
    pub id: String,
}

impl Sidecar {
    /// Starts `virtseed -c <master dir> run` with its own id and waits until it joined.
    pub fn start(master: &Master, id: &str) -> Sidecar {
        Self::start_with(master, id, &[], "")
    }

    /// The same with extra environment, logging to `virtseed-<id><log_suffix>.log`.
    pub fn start_with(
        master: &Master,
        id: &str,
        env: &[(&str, &str)],
        log_suffix: &str,
    ) -> Sidecar {
        Self::start_settings(master, id, env, log_suffix, "")
    }

    /// The same with `extra` (YAML) appended to its settings.
    pub fn start_settings(
        master: &Master,
        id: &str,
        env: &[(&str, &str)],
        log_suffix: &str,
        extra: &str,
    ) -> Sidecar {
        let settings = format!(
            "id: {id}\npki_dir: {}\nsalt_version: '{}'\n{extra}",
            master.dir.join("pki").join(id).display(),
            master.version
        );
        std::fs::write(master.dir.join("virtseed"), settings).unwrap();
        let log = master
            .dir
            .join(format!("log/virtseed-{id}{log_suffix}.log"));
        let child = master
            .command(env!("CARGO_BIN_EXE_virtseed"))
            .arg("-c")
            .arg(&master.dir)
            .args(["--log", "info,virtseed=debug", "run"])
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = Sidecar {
            child,
            log,
            id: id.into(),
        };
        s.wait_log("joined master", Duration::from_secs(60));
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log otherwise.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "virtseed did not log {needle:?} within {timeout:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads a child's stdout to the end (after it exits).
pub fn stdout_of(mut child: Child) -> String {
    let mut s = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut s);
    }
    let _ = child.wait();
    s
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A real salt-minion process from the master's venv, configured from `conf` (YAML text),
/// with its own pki/cache/sock/log under `dir`. Killed on drop.
pub struct Minion {
    child: Child,
    pub dir: PathBuf,
}

/// `conf` (a minion's YAML) with `grains: machine_id:` set, from `dir`, unless it has one.
fn with_machine_id(conf: &str, dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    use yaml_serde::Value as Y;
    let mut v: Y = yaml_serde::from_str(conf).unwrap_or(Y::Null);
    let Some(map) = v.as_mapping_mut() else {
        return conf.to_string();
    };
    let grains = map
        .entry(Y::from("grains"))
        .or_insert_with(|| Y::Mapping(Default::default()));
    if grains.is_null() {
        *grains = Y::Mapping(Default::default());
    }
    let Some(g) = grains.as_mapping_mut() else {
        return conf.to_string();
    };
    if !g.contains_key("machine_id") {
        let half = |salt: u8| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (dir, salt).hash(&mut h);
            h.finish()
        };
        g.insert(
            Y::from("machine_id"),
            Y::from(format!("{:016x}{:016x}", half(0), half(1))),
        );
    }
    yaml_serde::to_string(&v).unwrap()
}

impl Minion {
    /// A salt-minion under `dir` with `conf`. Every one runs on this host, so each is given a
    /// `machine_id` grain of its own (from its dir) unless `conf` sets one: as distinct
    /// machines are (the sidecar refuses a clone that shares another minion's).
    pub fn start(master: &Master, dir: &Path, conf: &str) -> Minion {
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        let conf = with_machine_id(conf, dir);
        let full = format!(
            "{conf}\npki_dir: {d}/pki\ncachedir: {d}/cache\nsock_dir: {d}/sock\nlog_file: {d}/minion.log\npidfile: {d}/minion.pid\nuser: root\nmultiprocessing: false\nacceptance_wait_time: 2\nlog_level_logfile: info\n",
            d = dir.display()
        );
        std::fs::write(dir.join("minion"), full).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new(master.venv.join("bin/salt-minion"))
            .arg("-c")
            .arg(dir)
            // A group of its own: 3006's salt-minion forks a process manager that outlives
            // its parent; drop kills the whole group.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Minion {
            child,
            dir: dir.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("minion.log")).unwrap_or_default()
    }

    /// An ordinary minion `id` beside the master (under its dir), its key accepted by
    /// `salt-key`, answering `test.ping`.
    pub fn accepted(m: &Master, id: &str) -> Minion {
        let conf = format!(
            "id: {id}\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\n",
            m.port("ret_port"),
            m.port("publish_port")
        );
        let minion = Minion::start(m, &m.dir.join(id), &conf);
        wait_for(
            &format!("{id}'s pending key"),
            Duration::from_secs(60),
            || m.pki().join("minions_pre").join(id).exists(),
        );
        assert!(m.salt_key(&["-y", "-a", id]).status.success());
        wait_for(&format!("{id} answering"), Duration::from_secs(90), || {
            let (ok, v) = m.salt_json(id, &["test.ping"], 5);
            ok && v[id] == true
        });
        minion
    }
}

impl Drop for Minion {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Salt event listener (Salt's own API) writing every event as a JSON line to a file.
pub struct EventLog {
    child: Child,
    pub path: PathBuf,
}

const EVENT_LOGGER: &str = r#"
import json, os, sys, salt.config, salt.utils.event
opts = salt.config.master_config(os.path.join(os.environ["MASTER_DIR"], "master"))
ev = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
ev.subscribe("")
out = open(sys.argv[1], "a")
print("ready", flush=True)
while True:
    e = ev.get_event(wait=300, full=True)
    if e is None:
        continue
    out.write(json.dumps(e, default=repr) + "\n")
    out.flush()
"#;

impl EventLog {
    pub fn start(master: &Master) -> EventLog {
        let path = master.dir.join("log/events.jsonl");
        let mut child = master
            .python(EVENT_LOGGER)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        EventLog { child, path }
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `virtseed -c CONFIG ARGS...` (the binary under test), run to completion.
pub fn virtseed(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtseed"))
        .arg("-c")
        .arg(config)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// A file of a vfat image, read with mtools (as cloud-init's NoCloud reads the cidata volume).
pub fn mread(img: &Path, file: &str) -> String {
    let out = Command::new("mtype")
        .args(["-i", img.to_str().unwrap(), &format!("::{file}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "mtype {file}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The runner's return: the last JSON document salt-run printed (progress comes first).
pub fn last_json(out: &Output) -> serde_json::Value {
    let s = text(&out.stdout);
    let mut starts: Vec<usize> = s.match_indices("\n{").map(|(i, _)| i + 1).collect();
    starts.insert(0, 0);
    for i in starts.into_iter().rev() {
        if let Ok(v) = serde_json::from_str(&s[i..]) {
            return v;
        }
    }
    panic!(
        "no JSON in salt-run output:\n{s}\nstderr:\n{}",
        text(&out.stderr)
    );
}

/// Appends a row to the reliability table when scripts/chaos.sh asks for one
/// (`CHAOS_REPORT`): scenario, what was done, outcome, what was left behind.
pub fn report_row(scenario: &str, done: &str, outcome: &str, left: &str) {
    let Ok(path) = std::env::var("CHAOS_REPORT") else {
        return;
    };
    use std::io::Write;
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(
            f,
            "{}\t{}\t{}\t{}",
            clean(scenario),
            clean(done),
            clean(outcome),
            clean(left)
        );
    }
}

/// (VmRSS, VmHWM) of `pid` in MiB: resident now, and the peak.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| -> f64 {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Every event, the job cache, and the master's, salt-cloud's and the sidecar's logs: where
/// a secret must never be found.
pub fn everything_written(m: &Master, events: &EventLog, sidecar: &Sidecar) -> String {
    let mut all = events.text() + &sidecar.log_text();
    let out = Command::new("grep")
        .args(["-r", "-a", "-h", "-e", ""])
        .arg(m.dir.join("cache/jobs"))
        .arg(m.dir.join("log"))
        .arg("/var/log/salt/cloud")
        .output()
        .unwrap();
    all.push_str(&text(&out.stdout));
    all
}
