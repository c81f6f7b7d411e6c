//! Release artifacts as a Salt operator installs them: scripts/release.sh's wheel and Debian
//! package, put into fresh Debian 11, 12 and 13 roots made by debootstrap (no Rust, no
//! compiler, no -dev package): each installs, says its version, passes `systemd-analyze
//! verify` and runs `virtseed doctor` against a real master; on Debian 12 the installed
//! package alone (its binary as the sidecar, its Salt modules as the master's) makes a clone
//! that answers `salt NAME test.ping`. The binary's floor is what release.sh printed.

mod harness;

use harness::release::{artifacts, debian_root, in_root};
use harness::site::{master_with_base_conf, play_guest, wait_exit};
use harness::{text, wait_for, Master};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const SALT: &str = "3007.17";

fn ok(mut c: Command) -> String {
    let out: Output = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// release.sh's own check, read back: the highest glibc symbol the binary needs is at most
/// the floor the wheel's tag names (2.31), and it loads nothing beyond glibc, libgcc and
/// libvirt's client library.
#[test]
fn the_binary_needs_glibc_2_31_and_libvirt0_only() {
    let a = artifacts();
    let f = &a.floor;
    let glibc = f
        .split("glibc ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    let parts: Vec<u32> = glibc.split('.').map(|x| x.parse().unwrap()).collect();
    assert!(parts <= vec![2, 31], "{f}");
    let loads = f.split("loads: ").nth(1).unwrap();
    for lib in loads.split_whitespace() {
        assert!(
            lib.starts_with("libc.so")
                || lib.starts_with("libm.so")
                || lib.starts_with("libgcc_s")
                || lib.starts_with("ld-linux")
                || lib.starts_with("libvirt.so")
                || lib.starts_with("libvirt-qemu.so")
                || lib.starts_with("libpthread")
                || lib.starts_with("libdl"),
            "{lib}: {f}"
        );
    }
    let name = a.wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        name,
        format!("virtseed-{VERSION}-py3-none-manylinux_2_31_x86_64.whl")
    );
    assert!(a.deb.ends_with(format!("virtseed_{VERSION}_amd64.deb")));
    // The checksums are of these very files.
    ok({
        let mut c = Command::new("sha256sum");
        c.args(["-c", "SHA256SUMS"])
            .current_dir(a.sums.parent().unwrap());
        c
    });
}

/// Copies the artifacts into the root's /tmp; returns the wheel's path inside.
fn put_artifacts(root: &Path) -> String {
    let a = artifacts();
    std::fs::copy(&a.deb, root.join("tmp/virtseed.deb")).unwrap();
    let whl = a.wheel.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(&a.wheel, root.join("tmp").join(&whl)).unwrap();
    format!("/tmp/{whl}")
}

/// Lists entry points on Python 3.9 (bullseye's) and later.
const ENTRY_POINTS: &str = "import importlib.metadata as m; e = m.entry_points(); \
    g = e.select(group='salt.loader') if hasattr(e, 'select') else e.get('salt.loader', []); \
    print(sorted(x.value for x in g))";

/// The package and the wheel in a fresh root of `suite`.
fn install(suite: &str) -> tempfile::TempDir {
    let root = debian_root(suite);
    let r = root.path();
    let whl = put_artifacts(r);

    // Nothing to build with.
    let tools = ok(in_root(
        r,
        &[],
        "for t in cc gcc rustc cargo pkg-config; do command -v $t || true; done; \
         dpkg-query -W -f '${Package}\\n' | grep -- '-dev$' || true",
    ));
    assert_eq!(tools.trim(), "", "{suite} has build tools: {tools}");

    // The Debian package: apt's way (dpkg, dependencies already there), its version, its
    // libraries found, its units verified.
    let out = ok(in_root(
        r,
        &[],
        "dpkg -i /tmp/virtseed.deb >/dev/null; virtseed --version; \
         dpkg-query -W -f '${Version}\\n' virtseed; ldd /usr/bin/virtseed; \
         dpkg-query -W -f '${Description}\\n' virtseed; \
         ls /usr/lib/virtseed/salt/runners /usr/lib/virtseed/salt/clouds \
            /usr/lib/virtseed/salt/modules; \
         cat /etc/salt/virtseed /etc/salt/master.d/virtseed.conf",
    ));
    assert!(
        out.contains(&format!("virtseed {VERSION}\n{VERSION}\n")),
        "{suite}:\n{out}"
    );
    assert!(
        !out.contains("not found"),
        "{suite}: a library is missing:\n{out}"
    );
    // The module reactors call, where the drop-in points the master's module_dirs.
    assert!(
        out.contains("virtseed.py") && out.contains("- /usr/lib/virtseed/salt/modules"),
        "{suite}:\n{out}"
    );
    // systemd's own check of the units, as installed (exit 0, not one warning).
    let verify = ok(in_root(
        r,
        &[],
        "systemd-analyze verify /usr/lib/systemd/system/virtseed.service \
           /usr/lib/systemd/system/virtseed@.service 2>&1",
    ));
    assert_eq!(
        verify.trim(),
        "",
        "{suite}: systemd-analyze verify:\n{verify}"
    );
    assert!(
        out.contains("cloud.py") && out.contains("libvirt.py"),
        "{out}"
    );
    assert!(
        out.contains("answers 'salt NAME test.ping' the moment its"),
        "{suite}: the package's description:\n{out}"
    );
    assert!(
        out.contains("#salt_version:") && out.contains("runner_dirs:"),
        "{out}"
    );

    // The wheel, as pip (or salt-pip, Salt's onedir pip) installs it: no compiler needed,
    // the binary and the Salt extension's entry point.
    let out = ok(in_root(
        r,
        &[],
        &format!(
            "python3 -m venv /opt/salt >/dev/null && /opt/salt/bin/pip install -q --no-index {whl} \
             && /opt/salt/bin/virtseed --version && /opt/salt/bin/python -c \"{ENTRY_POINTS}\""
        ),
    ));
    assert!(
        out.contains(&format!("virtseed {VERSION}\n")) && out.contains("saltext.virtseed"),
        "{suite}:\n{out}"
    );

    root
}

/// `virtseed doctor` from the root against the master (its config dir mounted at its own
/// path, its ports on loopback, libvirt's socket): the master's config read, its request
/// server answering, its pki_dir writable.
fn doctor(suite: &str, r: &Path, m: &Master) {
    let out = in_root(
        r,
        &[&m.dir],
        &format!("virtseed -c {} doctor --out json", m.dir.display()),
    )
    .output()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{suite}: doctor: {e}\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let status = |check: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"].as_str().is_some_and(|x| x.starts_with(check)))
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("{suite}: no {check} check in {v}"))
    };
    for check in ["master reachable", "pki_dir"] {
        assert_eq!(status(check), "ok", "{suite}: {check}: {v}");
    }
}

fn cloud_files(m: &Master) {
    std::fs::write(
        m.dir.join("cloud"),
        format!("log_file: {}\n", m.dir.join("log/cloud").display()),
    )
    .unwrap();
}

#[test]
fn debian_11_bullseye() {
    let root = install("bullseye");
    let m = Master::start(SALT);
    doctor("bullseye", root.path(), &m);
}

#[test]
fn debian_13_trixie() {
    let root = install("trixie");
    let m = Master::start(SALT);
    doctor("trixie", root.path(), &m);
}

/// Debian 12: installed by the package only, a clone answers test.ping. The sidecar is the
/// root's /usr/bin/virtseed, the master reads the root's Salt modules through the package's
/// drop-in (its directories under the root's path): nothing of this checkout is used.
#[test]
fn debian_12_bookworm_clone_answers() {
    let root = install("bookworm");
    let r = root.path();
    let dropin = std::fs::read_to_string(r.join("etc/salt/master.d/virtseed.conf")).unwrap();
    let dropin = dropin.replace(
        "/usr/lib/virtseed",
        &format!("{}/usr/lib/virtseed", r.display()),
    );
    let (m, p, _base) = master_with_base_conf(SALT, &dropin, "deb", |base| {
        format!(
            "quick:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  wait_for_minion: true\n  minion_timeout: 120\n"
        )
    });
    cloud_files(&m);
    doctor("bookworm", r, &m);
    // The package's sidecar, in the root: settings as the package's skeleton documents them.
    std::fs::write(
        m.dir.join("virtseed"),
        format!(
            "id: virtseed\npki_dir: {}\nsalt_version: '{SALT}'\n",
            m.dir.join("pki/virtseed").display()
        ),
    )
    .unwrap();
    let log = m.dir.join("log/virtseed-deb.log");
    let mut sidecar = in_root(
        r,
        &[&m.dir],
        &format!(
            "exec /usr/bin/virtseed -c {} --log info run 2>{}",
            m.dir.display(),
            log.display()
        ),
    )
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    wait_for(
        "the package's sidecar serving",
        Duration::from_secs(60),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("serving cloud.* jobs")),
    );

    // Salt loads the package's runner and driver (not Salt's own, not this checkout's).
    let out = m.salt_run(&["--out", "json", "sys.doc", "cloud.profile"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let name = format!("{}d1", p.prefix);
    let child = m.salt_run_bg(&["--out", "json", "cloud.profile", "quick", &name]);
    let _guest = play_guest(&m, &p, &name);
    let out = wait_exit(child, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "{}\n{}\nsidecar log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (pinged, v) = m.salt_json(&name, &["test.ping"], 30);
    assert!(pinged && v[&name] == true, "{v}");
    let out = m.salt_run(&["--out", "json", "cloud.destroy", &name]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    drop(p);
}
