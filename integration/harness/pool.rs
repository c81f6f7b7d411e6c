//! A private libvirt dir pool on qemu:///system in a temp dir, with base domains made from
//! real qcow2/raw volumes (qemu-img) that boot no OS (they sit in the BIOS: enough to run).
//! Everything with the pool's prefix is removed on drop, also when a test fails.
#![allow(dead_code)]

use super::text;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const URI: &str = "qemu:///system";

pub fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .expect("virsh")
}

pub fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(
        out.status.success(),
        "virsh {args:?}: {}{}",
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
}

impl Pool {
    pub fn new(tag: &str) -> Pool {
        let r = &salt_proto::auth::new_nonce()[..6];
        let name = format!("vsit-{tag}-{r}");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        virsh_ok(&[
            "pool-create-as",
            &name,
            "dir",
            "--target",
            dir.to_str().unwrap(),
        ]);
        Pool {
            prefix: format!("{tag}{r}"),
            name,
            dir,
        }
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
        virsh_ok(&["pool-refresh", &self.name]);
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
             <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\
             </devices></domain>"
        );
        let f = self.dir.join(format!("{name}.xml"));
        std::fs::write(&f, xml).unwrap();
        virsh_ok(&["define", f.to_str().unwrap()]);
        std::fs::remove_file(f).ok();
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
            format!("kvm:\n  driver: libvirt\n  url: {URI}\n"),
        )
        .unwrap();
        std::fs::write(d.join("cloud.profiles.d/test.conf"), profiles).unwrap();
        d
    }

    pub fn domains(&self) -> Vec<String> {
        virsh_ok(&["list", "--all", "--name"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| l.starts_with(&self.prefix))
            .collect()
    }

    pub fn volumes(&self) -> Vec<String> {
        // A refresh is refused while the pool has a volume being made: try again shortly.
        for _ in 0..50 {
            if virsh(&["pool-refresh", &self.name]).status.success() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut v: Vec<String> = virsh_ok(&["vol-list", &self.name])
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
        virsh_ok(&["dumpxml", dom])
    }

    pub fn state(&self, dom: &str) -> String {
        virsh_ok(&["domstate", dom]).trim().to_string()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for d in self.domains() {
            let _ = virsh(&["destroy", &d]);
            let _ = virsh(&["undefine", "--nvram", &d]);
        }
        let _ = virsh(&["pool-destroy", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.dir.with_extension("etc"));
    }
}
