//! A private libvirt dir pool on qemu:///system in a temp dir, with base domains made from
//! real qcow2/raw volumes (qemu-img) that boot no OS (they sit in the BIOS: enough to run).
//! Everything with the pool's prefix is removed on drop, also when a test fails.
#![allow(dead_code)]

use super::text;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const URI: &str = "qemu:///system";

pub fn virsh(args: &[&str]) -> std::process::Output {
    virsh_on(URI, args)
}

pub fn virsh_ok(args: &[&str]) -> String {
    virsh_ok_on(URI, args)
}

pub fn virsh_on(uri: &str, args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("virsh")
}

pub fn virsh_ok_on(uri: &str, args: &[&str]) -> String {
    let out = virsh_on(uri, args);
    assert!(
        out.status.success(),
        "virsh -c {uri} {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub struct Pool {
    pub name: String,
    pub dir: PathBuf,
    /// Prefix of every domain and volume name a test makes here.
    pub prefix: String,
    /// The libvirt daemon it is on (as seen from this host).
    pub uri: String,
    /// The user whose daemon it is (its files are that user's), root's when `None`.
    owner: Option<String>,
    /// Base domains get a VNC display (two daemons on one machine each pick "free" VNC
    /// ports without knowing of the other's: tests with two turn it off).
    pub vnc: bool,
}

impl Pool {
    pub fn new(tag: &str) -> Pool {
        Self::on(URI, tag, None)
    }

    /// A pool on the daemon at `uri`; with `owner`, in that user's home and owned by it (an
    /// unprivileged user's `qemu:///session`).
    pub fn on(uri: &str, tag: &str, owner: Option<&str>) -> Pool {
        let r = &salt_proto::auth::new_nonce()[..6];
        let name = format!("vsit-{tag}-{r}");
        let dir = match owner {
            Some(u) => PathBuf::from(format!("/home/{u}")).join(&name),
            None => std::env::temp_dir().join(&name),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let p = Pool {
            prefix: format!("{tag}{r}"),
            name,
            dir,
            uri: uri.into(),
            owner: owner.map(str::to_string),
            vnc: true,
        };
        p.chown();
        virsh_ok_on(
            uri,
            &[
                "pool-create-as",
                &p.name,
                "dir",
                "--target",
                p.dir.to_str().unwrap(),
            ],
        );
        p
    }

    fn chown(&self) {
        if let Some(u) = &self.owner {
            let ok = Command::new("chown")
                .args(["-R", &format!("{u}:{u}")])
                .arg(&self.dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    fn virsh(&self, args: &[&str]) -> std::process::Output {
        virsh_on(&self.uri, args)
    }

    fn virsh_ok(&self, args: &[&str]) -> String {
        virsh_ok_on(&self.uri, args)
    }

    /// A base volume made by qemu-img (`qcow2` or `raw`), `mib` MiB, known to the pool.
    pub fn base_volume(&self, vol: &str, format: &str, mib: u64) -> PathBuf {
        let path = self.dir.join(vol);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            format,
            path.to_str().unwrap(),
            &format!("{mib}M"),
        ]);
        self.chown();
        self.virsh_ok(&["pool-refresh", &self.name]);
        path
    }

    /// Defines a shut-off base domain (TCG, small, user networking, two NICs) over `disks`
    /// given as (target, format, source-xml).
    pub fn base_domain(&self, name: &str, disks: &[(&str, &str, String)]) {
        let mut devs = String::new();
        for (target, format, source) in disks {
            let kind = if source.contains("pool=") {
                "volume"
            } else {
                "file"
            };
            devs.push_str(&format!(
                "<disk type='{kind}' device='disk'><driver name='qemu' type='{format}'/>{source}<target dev='{target}' bus='virtio'/></disk>"
            ));
        }
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
             <features><tcg><tb-cache unit='MiB'>8</tb-cache></tcg></features>\
             <cpu mode='custom'><model>qemu64</model></cpu>\
             <devices>{devs}\
             <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>\
             <interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/></interface>\
             <interface type='user'><mac address='52:54:00:00:00:02'/><model type='virtio'/></interface>\
             <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
             {vnc}</devices></domain>",
            vnc = if self.vnc {
                "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
            } else {
                ""
            }
        );
        let f = self.dir.join(format!("{name}.xml"));
        std::fs::write(&f, xml).unwrap();
        self.virsh_ok(&["define", f.to_str().unwrap()]);
        std::fs::remove_file(f).ok();
    }

    /// A copy of `src` in the pool, as `name`, owned by the pool's user, known to the pool.
    pub fn copy_in(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.dir.join(name);
        std::fs::copy(src, &dst).unwrap();
        self.chown();
        self.virsh_ok(&["pool-refresh", &self.name]);
        dst
    }

    pub fn file_source(path: &Path) -> String {
        format!("<source file='{}'/>", path.display())
    }

    /// A config dir with a libvirt provider `kvm` and the given profiles text.
    pub fn config_dir(&self, profiles: &str) -> PathBuf {
        let d = self.dir.with_extension("etc");
        std::fs::create_dir_all(d.join("cloud.profiles.d")).unwrap();
        std::fs::write(
            d.join("cloud.providers"),
            format!("kvm:\n  driver: libvirt\n  url: {}\n", self.uri),
        )
        .unwrap();
        std::fs::write(d.join("cloud.profiles.d/test.conf"), profiles).unwrap();
        d
    }

    pub fn domains(&self) -> Vec<String> {
        self.virsh_ok(&["list", "--all", "--name"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| l.starts_with(&self.prefix))
            .collect()
    }

    pub fn volumes(&self) -> Vec<String> {
        // A refresh is refused while the pool has a volume being made: try again shortly.
        for _ in 0..50 {
            if self.virsh(&["pool-refresh", &self.name]).status.success() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut v: Vec<String> = self
            .virsh_ok(&["vol-list", &self.name])
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// Files in the pool's directory (what is really on disk).
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    pub fn dumpxml(&self, dom: &str) -> String {
        self.virsh_ok(&["dumpxml", dom])
    }

    pub fn state(&self, dom: &str) -> String {
        self.virsh_ok(&["domstate", dom]).trim().to_string()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for d in self.domains() {
            let _ = self.virsh(&["destroy", &d]);
            let _ = self.virsh(&["undefine", "--nvram", &d]);
        }
        let _ = self.virsh(&["pool-destroy", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.dir.with_extension("etc"));
    }
}
