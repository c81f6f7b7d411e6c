//! virtseed as Salt operators install and run it: the release wheel into a fresh venv with a
//! real Salt (made here as scripts/setup.sh makes its venvs), then `salt-run cloud.profile`
//! and `salt-cloud -p` through the Salt modules Salt's loader finds by the `salt.loader` entry
//! point, with nothing of virtseed in `extension_modules`, served by the sidecar the wheel
//! installed. Also: readable progress, `--out json`, the release check, and the systemd units.
//!
//! The wheel is scripts/release.sh's (cargo's `dev` profile, in a target dir of its own);
//! BENCHMARKS.md measures the release build `pip install .` does by default.

mod harness;

use harness::site::master_with_base;
use harness::{last_json, repo, text, Master};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SALT: &str = "3007.17";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A fresh venv at `cache/salt-VER` with Salt installed as scripts/setup.sh installs it (its
/// `salt_deps`, then Salt `--no-deps`), then `pip install REPO`.
fn fresh_venv(cache: &Path, version: &str) -> PathBuf {
    let venv = cache.join(format!("salt-{version}"));
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    let script = format!(
        "set -e; source scripts/setup.sh --functions-only; \
         {pip} install -q $(salt_deps {version}); \
         {pip} install -q --no-deps --no-build-isolation salt=={version}",
        pip = venv.join("bin/pip").display()
    );
    run(Command::new("bash")
        .args(["-c", &script])
        .current_dir(repo()));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .arg(wheel(&venv)));
    venv
}

/// The release wheel (scripts/release.sh, built once per test binary from cargo's dev
/// profile): what operators install. `pip install .` builds the same wheel from the same
/// pyproject.toml, natively linked instead of by zig.
fn wheel(_venv: &Path) -> PathBuf {
    harness::release::artifacts().wheel.clone()
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The sidecar as the wheel installed it: `VENV/bin/virtseed -c DIR run`.
struct WheelSidecar {
    child: Child,
    log: PathBuf,
}

impl WheelSidecar {
    fn start(m: &Master) -> WheelSidecar {
        std::fs::write(
            m.dir.join("virtseed"),
            format!(
                "id: virtseed\npki_dir: {}\nsalt_version: '{}'\n",
                m.dir.join("pki/virtseed").display(),
                m.version
            ),
        )
        .unwrap();
        let log = m.dir.join("log/virtseed.log");
        let child = Command::new(m.venv.join("bin/virtseed"))
            .arg("-c")
            .arg(&m.dir)
            .args(["--log", "info,virtseed=debug", "run"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = WheelSidecar { child, log };
        harness::wait_for("the sidecar to join", Duration::from_secs(60), || {
            s.log().contains("serving cloud.* jobs")
        });
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WheelSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where Salt's loader finds the runner, the cloud driver, the outputter and the module.
const WHERE: &str = r#"
import json, os, saltext.virtseed
import salt.config, salt.loader
conf = os.environ["MASTER_DIR"]
opts = salt.config.master_config(os.path.join(conf, "master"))
def origin(loader, fun):
    f = loader[fun]
    return getattr(f, "func", f).__globals__["__file__"]
out = {
    "package": os.path.dirname(saltext.virtseed.__file__),
    "runner": origin(salt.loader.runner(opts, utils=salt.loader.utils(opts)), "cloud.profile"),
    "cloud": origin(salt.loader.clouds(salt.config.cloud_config(os.path.join(conf, "cloud"))), "libvirt.create"),
    "output": origin(salt.loader.outputters(opts), "virtseed_progress"),
    # What reactors call on the master (its own minion functions).
    "module": origin(salt.loader.minion_mods(opts), "virtseed.proven"),
}
print(json.dumps(out))
"#;

fn assert_progress_lines(stdout: &str, name: &str) {
    let line = regex::Regex::new(&format!(r"(?m)^{name}\s+started\s+\d+\.\d s$")).unwrap();
    assert!(
        line.is_match(stdout),
        "no `{name}  started  N.N s` line:\n{stdout}"
    );
    for raw in ["_stamp", "suffix:", "message:"] {
        assert!(
            !stdout.contains(raw),
            "raw event dict ({raw}) printed:\n{stdout}"
        );
    }
}

#[test]
fn pip_install_then_salt_run_and_salt_cloud_through_entry_points() {
    let cache = tempfile::Builder::new()
        .prefix("virtseed-pip-")
        .tempdir()
        .unwrap();
    let venv = fresh_venv(cache.path(), SALT);
    // Master::start (and scripts/dev-master.sh) take Salt from VIRTSEED_CACHE/salt-VER.
    std::env::set_var("VIRTSEED_CACHE", cache.path());

    let version = run(Command::new(venv.join("bin/virtseed")).arg("--version"));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("virtseed {}", env!("CARGO_PKG_VERSION"))
    );

    let (m, p, _base) = master_with_base(SALT, "pip", |base| {
        format!(
            "quick:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  wait_for_minion: false\n\
             slow:\n  extends: quick\n  wait_for_minion: true\n  minion_timeout: 40\n"
        )
    });
    assert_eq!(m.venv, venv);
    std::fs::write(
        m.dir.join("cloud"),
        format!("log_file: {}\n", m.dir.join("log/cloud").display()),
    )
    .unwrap();
    let ext = m.dir.join("extmods");
    assert_eq!(
        files(&ext),
        Vec::<PathBuf>::new(),
        "extension_modules must stay empty"
    );

    // Salt's loader finds all three in the installed package.
    let out = run(&mut m.python(WHERE));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = v["package"].as_str().unwrap();
    assert!(pkg.starts_with(venv.to_str().unwrap()), "{v}");
    for (k, f) in [
        ("runner", "runners/cloud.py"),
        ("cloud", "clouds/libvirt.py"),
        ("output", "output/virtseed_progress.py"),
        ("module", "modules/virtseed.py"),
    ] {
        assert_eq!(v[k].as_str().unwrap(), format!("{pkg}/{f}"), "{v}");
    }

    let sidecar = WheelSidecar::start(&m);
    let n = |s: &str| format!("{}{s}", p.prefix);

    // salt-run, as a person reads it: one line per step.
    let out = m.salt_run(&["cloud.profile", "quick", &n("r1")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_progress_lines(&stdout, &n("r1"));
    eprintln!("salt-run cloud.profile output:\n{stdout}");

    // --out json: every document on stdout is JSON, the last one the return.
    let out = m.salt_run(&["--out", "json", "cloud.profile", "quick", &n("r2")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ret = last_json(&out);
    assert_eq!(ret[n("r2")]["name"], n("r2"), "{ret}");
    assert!(!text(&out.stdout).contains(&format!("\n{}  ", n("r2"))));

    // salt-cloud -p through the entry-point driver: JSON on stdout, steps on stderr.
    let out = m.salt_cloud(&["--out", "json", "-p", "quick", &n("c1")]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ret = last_json(&out);
    assert!(ret.get(n("c1")).is_some(), "{ret}");
    assert_progress_lines(&text(&out.stderr), &n("c1"));

    // A long wait (a guest with no OS never answers): a line now and then, then the error.
    let out = m.salt_run(&["cloud.profile", "slow", &n("w1")]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let waiting = stdout.matches("waiting for the minion").count();
    assert!(waiting >= 1, "no waiting line:\n{stdout}");
    eprintln!("salt-run cloud.profile (slow) output:\n{stdout}");

    // Modules of another release: refused, saying which.
    let client = PathBuf::from(pkg).join("utils/virtseed_client.py");
    let orig = std::fs::read_to_string(&client).unwrap();
    std::fs::write(
        &client,
        orig.replace(
            &format!("VERSION = {:?}", env!("CARGO_PKG_VERSION")),
            "VERSION = \"0.0.1\"",
        ),
    )
    .unwrap();
    let out = m.salt_run(&["--out", "json", "cloud.list_nodes"]);
    std::fs::write(&client, orig).unwrap();
    assert!(!out.status.success());
    let all = text(&out.stdout);
    assert!(
        all.contains("release mismatch") && all.contains("virtseed 0.0.1"),
        "{all}"
    );

    let out = m.salt_run(&[
        "--out",
        "json",
        "cloud.destroy",
        &[n("r1"), n("r2"), n("c1")].join(","),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(files(&ext), Vec::<PathBuf>::new());

    // Its log (stderr to a file): no colour, and the job id and the VM's name on each line
    // about a VM.
    let log = sidecar.log();
    assert!(!log.contains('\x1b'), "ANSI escapes in the log:\n{log}");
    let about: Vec<&str> = log.lines().filter(|l| l.contains(&n("r1"))).collect();
    assert!(!about.is_empty(), "{log}");
    for l in about {
        assert!(
            l.contains("job{jid=") && l.contains(&format!("name={}", n("r1"))),
            "{l}"
        );
    }
    drop(p);
}

/// Salt 3006 and 3008 find the same modules through the entry point (3008 has no `cloud`
/// runner or libvirt driver of its own; 3006 and 3007 do, and the package's win).
#[test]
fn entry_points_found_by_salt_3006_and_3008() {
    for version in ["3006.30", "3008.5"] {
        let cache = tempfile::Builder::new()
            .prefix("virtseed-pip-")
            .tempdir()
            .unwrap();
        let venv = fresh_venv(cache.path(), version);
        let conf = cache.path().join("conf");
        let d = conf.display();
        std::fs::create_dir_all(conf.join("extmods")).unwrap();
        std::fs::write(
            conf.join("master"),
            format!("pki_dir: {d}/pki\ncachedir: {d}/cache\nsock_dir: {d}/sock\nextension_modules: {d}/extmods\nlog_file: {d}/master.log\n"),
        )
        .unwrap();
        std::fs::write(conf.join("cloud"), format!("log_file: {d}/cloud.log\n")).unwrap();
        let out = run(Command::new(venv.join("bin/python"))
            .args(["-c", WHERE])
            .env("MASTER_DIR", &conf));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pkg = v["package"].as_str().unwrap();
        assert!(pkg.starts_with(venv.to_str().unwrap()), "{version}: {v}");
        for (k, f) in [
            ("runner", "runners/cloud.py"),
            ("cloud", "clouds/libvirt.py"),
            ("output", "output/virtseed_progress.py"),
            ("module", "modules/virtseed.py"),
        ] {
            assert_eq!(
                v[k].as_str().unwrap(),
                format!("{pkg}/{f}"),
                "{version}: {v}"
            );
        }
        assert_eq!(files(&conf.join("extmods")), Vec::<PathBuf>::new());
    }
}

/// `systemd-analyze verify` on both units (the template as one instance).
#[test]
fn systemd_units_verify() {
    let d = tempfile::tempdir().unwrap();
    let units = repo().join("dist/systemd");
    std::fs::copy(
        units.join("virtseed.service"),
        d.path().join("virtseed.service"),
    )
    .unwrap();
    std::fs::copy(
        units.join("virtseed@.service"),
        d.path().join("virtseed@web.service"),
    )
    .unwrap();
    for unit in ["virtseed.service", "virtseed@web.service"] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(d.path().join(unit))
            .output()
            .expect("systemd-analyze (apt-get install systemd)");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{unit}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(units.join("virtseed.service")).unwrap();
    for line in [
        "User=salt",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line}");
    }
    assert!(text
        .lines()
        .any(|l| l.starts_with("After=") && l.contains("salt-master.service")));
    assert!(!text.lines().any(|l| l.starts_with("PrivateTmp=")));
}
