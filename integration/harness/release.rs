//! scripts/release.sh's artifacts, built once per test binary (cargo's dev profile, in
//! target/release-artifacts: the second binary that asks finds cargo's work done), and fresh
//! Debian roots made by debootstrap to install them into.

use super::{cache, repo, text};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Artifacts {
    pub wheel: PathBuf,
    pub deb: PathBuf,
    pub sums: PathBuf,
    /// What release.sh printed about the binary: `binary: glibc 2.28 (floor 2.31); libvirt
    /// 1.2.14; loads: ...`.
    pub floor: String,
}

pub fn artifacts() -> &'static Artifacts {
    static A: std::sync::OnceLock<Artifacts> = std::sync::OnceLock::new();
    A.get_or_init(|| {
        let out_dir = repo().join("target/release-artifacts/dist");
        let out = Command::new("bash")
            .arg(repo().join("scripts/release.sh"))
            .env("PROFILE", "dev")
            .env("OUT", &out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/release.sh: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        let floor = stdout
            .lines()
            .find(|l| l.starts_with("binary: "))
            .unwrap_or_else(|| panic!("no floor line in:\n{stdout}"))
            .to_string();
        let find = |ext: &str| {
            std::fs::read_dir(&out_dir)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().ends_with(ext))
                .unwrap_or_else(|| panic!("no *{ext} in {}", out_dir.display()))
        };
        Artifacts {
            wheel: find(".whl"),
            deb: find(".deb"),
            sums: out_dir.join("SHA256SUMS"),
            floor,
        }
    })
}

/// A fresh root of Debian `suite` (bullseye, bookworm, trixie): minbase with Python, its
/// venv module, libvirt's client library and systemd, as a host that runs a Salt master
/// from PyPI has; no compiler, no Rust, no -dev package. debootstrap runs once per suite
/// (VIRTSEED_CACHE/roots); each call gets its own copy.
pub fn debian_root(suite: &str) -> tempfile::TempDir {
    let pristine = cache().join("roots").join(suite);
    if !pristine.join("etc/debian_version").exists() {
        let _ = std::fs::remove_dir_all(&pristine);
        std::fs::create_dir_all(pristine.parent().unwrap()).unwrap();
        let mirror = std::env::var("VIRTSEED_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let out = Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=python3,python3-venv,libvirt0,systemd",
                suite,
            ])
            .arg(&pristine)
            .arg(&mirror)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "debootstrap {suite}: {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("virtseed-root-{suite}-"))
        .tempdir_in(cache().join("roots"))
        .unwrap();
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", pristine.display()))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

/// `sh -c script` chrooted into `root`, in a mount namespace of its own with /proc, /dev, /sys,
/// the host's libvirt sockets and `binds` (host paths, mounted at the same path inside):
/// everything mounted goes away with the process.
pub fn in_root(root: &Path, binds: &[&Path], script: &str) -> Command {
    let mut mounts = String::from(
        "set -e; mount -t proc proc \"$R/proc\"; mount --rbind /dev \"$R/dev\"; \
         mount --rbind /sys \"$R/sys\"; \
         mkdir -p \"$R/run/libvirt\"; mount --bind /run/libvirt \"$R/run/libvirt\"; ",
    );
    for b in binds {
        mounts.push_str(&format!(
            "mkdir -p \"$R{p}\"; mount --bind '{p}' \"$R{p}\"; ",
            p = b.display()
        ));
    }
    mounts.push_str("exec chroot \"$R\" /bin/sh -c \"$SCRIPT\"");
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &mounts])
        .env("R", root)
        .env("SCRIPT", script)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env_remove("VIRTUAL_ENV");
    c
}
