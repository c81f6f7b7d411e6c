//! A lab network that never leaves the machine, for guests on real networks: a network
//! namespace of its own (loopback and two bridges, no route out), served by a second root
//! libvirtd. The host's libvirtd keeps running untouched: the lab's runs in a private mount
//! namespace too, with its own /run/libvirt (where its sockets are: clients reach it at
//! `qemu:///system?socket=DIR/run/libvirt-sock`), /var/lib/libvirt, /etc/libvirt (the host's
//! *.conf files, no definitions), /var/cache/libvirt (a copy: no QEMU re-probe),
//! /var/log/libvirt, and its own virtlogd. Its QEMU runs as root without relabelling, so it
//! never changes the owner of a file the host's guests use.
//!
//! Inside: (a) the libvirt network `vslab` (NAT, DHCP by libvirt's dnsmasq) on 192.168.150.1,
//! (b) the plain Linux bridge `br-lan` on 192.168.151.1 with a dnsmasq of the lab's own that
//! libvirt does not know (as a LAN's DHCP server). The master and the sidecar listen in the
//! namespace (`Master::start_in`), so guests on either network reach them.
//!
//! Every guest, daemon, bridge and the namespace are removed on drop, also when a test fails;
//! a lab left by a killed test run is removed by the next one.
#![allow(dead_code)]

use super::pool::{virsh_ok_on, virsh_on};
use super::text;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The libvirt network with DHCP, and its gateway (where guests on it reach the master).
pub const NET: &str = "vslab";
pub const NET_GW: &str = "192.168.150.1";
/// The plain bridge (libvirt knows no DHCP on it), and its gateway.
pub const LAN: &str = "br-lan";
pub const LAN_GW: &str = "192.168.151.1";

/// Names of lab network namespaces (a run's leftovers are found by it).
const NS_PREFIX: &str = "vslab-";

/// Runs in the namespace, in a new mount namespace (`unshare --mount`): private libvirt
/// directories over the host's, virtlogd, then libvirtd in the foreground (exec: the lab's
/// child is libvirtd itself). Both run through links named `vslab-*`, so their process names
/// are not the host daemons' (`pkill -x libvirtd` in the chaos tests, `pgrep -x` in
/// setup.sh, must neither stop nor find them).
const START: &str = r#"
set -e
D=$1
mount --make-rprivate /
mkdir -p "$D/run" "$D/lib" "$D/etc/qemu/networks" "$D/etc/storage" "$D/cache" "$D/log/qemu"
cp /etc/libvirt/*.conf "$D/etc/"
cp -a /var/cache/libvirt/. "$D/cache/" 2>/dev/null || true
cat >> "$D/etc/qemu.conf" <<C
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
C
mount --bind "$D/run" /run/libvirt
mount --bind "$D/lib" /var/lib/libvirt
mount --bind "$D/etc" /etc/libvirt
mount --bind "$D/cache" /var/cache/libvirt
mount --bind "$D/log" /var/log/libvirt
ip link set lo up
ln -sf /usr/sbin/virtlogd "$D/vslab-virtlogd"
ln -sf /usr/sbin/libvirtd "$D/vslab-libvirtd"
"$D/vslab-virtlogd" -d -p "$D/virtlogd.pid"
exec "$D/vslab-libvirtd" -p "$D/libvirtd.pid"
"#;

pub struct Lab {
    /// The network namespace's name.
    pub ns: String,
    /// Everything the lab keeps on disk (the daemon's directories, leases, logs, the pool).
    pub dir: PathBuf,
    /// The lab's libvirtd, as seen from the host.
    pub uri: String,
    /// A dir pool for the clones' volumes, in `dir`.
    pub pool: String,
    libvirtd: Child,
    lan_dhcp: Option<Child>,
}

/// One DHCP lease: a MAC, the address leased to it, the client id it asked with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: String,
    pub ip: String,
    pub client_id: String,
}

impl Lab {
    /// A namespace, its libvirtd, the libvirt network, the bridge with its DHCP server and a pool.
    pub fn start() -> Lab {
        sweep_leftovers();
        let r = &salt_proto::auth::new_nonce()[..6];
        let ns = format!("{NS_PREFIX}{r}");
        let dir = std::env::temp_dir().join(format!("virtseed-lab-{r}"));
        std::fs::create_dir_all(&dir).unwrap();
        // Who owns it: a later run removes the lab once this process is gone.
        std::fs::write(dir.join("owner"), std::process::id().to_string()).unwrap();
        run_ok(Command::new("ip").args(["netns", "add", &ns]));
        let libvirtd = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", START, "sh"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.log")).unwrap())
            .spawn()
            .unwrap();
        let uri = format!(
            "qemu:///system?socket={}",
            dir.join("run/libvirt-sock").display()
        );
        let mut lab = Lab {
            ns,
            pool: format!("vslab-pool-{r}"),
            dir,
            uri,
            libvirtd,
            lan_dhcp: None,
        };
        lab.wait_daemon();
        lab.libvirt_network();
        lab.lan_bridge();
        std::fs::create_dir_all(lab.dir.join("pool")).unwrap();
        let target = lab.dir.join("pool");
        lab.virsh_ok(&[
            "pool-create-as",
            &lab.pool,
            "dir",
            "--target",
            target.to_str().unwrap(),
        ]);
        lab
    }

    fn wait_daemon(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(st)) = self.libvirtd.try_wait() {
                panic!(
                    "the lab's libvirtd exited ({st}): {}",
                    std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
                );
            }
            if self.virsh(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the lab's libvirtd did not answer at {} within 60 s",
            self.uri
        );
    }

    fn libvirt_network(&self) {
        let xml = format!(
            "<network><name>{NET}</name><forward mode='nat'/><bridge name='virbr-vs' stp='off'/>\
             <ip address='{NET_GW}' netmask='255.255.255.0'><dhcp>\
             <range start='192.168.150.100' end='192.168.150.199'/></dhcp></ip></network>"
        );
        let f = self.dir.join("net.xml");
        std::fs::write(&f, xml).unwrap();
        self.virsh_ok(&["net-create", f.to_str().unwrap()]);
    }

    fn lan_bridge(&mut self) {
        for args in [
            vec!["link", "add", LAN, "type", "bridge"],
            vec!["addr", "add", &format!("{LAN_GW}/24"), "dev", LAN],
            vec!["link", "set", LAN, "up"],
        ] {
            run_ok(self.exec("ip").args(&args));
        }
        let d = &self.dir;
        let child = self
            .exec("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                &format!("--interface={LAN}"),
                "--dhcp-range=192.168.151.100,192.168.151.199,1h",
                "--log-dhcp",
            ])
            .arg(format!(
                "--dhcp-leasefile={}",
                d.join("lan.leases").display()
            ))
            .arg(format!(
                "--pid-file={}",
                d.join("lan-dnsmasq.pid").display()
            ))
            .arg(format!(
                "--log-facility={}",
                d.join("lan-dnsmasq.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.lan_dhcp = Some(child);
    }

    /// `program` inside the namespace (network only).
    pub fn exec(&self, program: &str) -> Command {
        super::command_in(Some(&self.ns), program)
    }

    /// `program` with the lab daemon's view of the files (its mount namespace, the host's
    /// network): `qemu:///system` there is the lab's libvirtd.
    pub fn with_lab_libvirt(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.libvirtd.id().to_string(), "-m"])
            .arg(program);
        c
    }

    pub fn virsh(&self, args: &[&str]) -> Output {
        virsh_on(&self.uri, args)
    }

    pub fn virsh_ok(&self, args: &[&str]) -> String {
        virsh_ok_on(&self.uri, args)
    }

    /// The golden image (scripts/build-golden-image.sh, cached) defined in the lab's
    /// libvirtd, copied into the lab's pool `golden` (warm states are saved beside a base's
    /// disk: not among the shared image's files), and two shut-off bases over that copy:
    /// `NAME-net` on the libvirt network and `NAME-lan` on the plain bridge. Returns their names.
    pub fn golden_bases(&self, name: &str) -> (String, String) {
        let (net, lan, _) = self.golden_bases_with_user(name, false);
        (net, lan)
    }

    /// `golden_bases`, and with `user` also `NAME-user` on QEMU user networking (the guest
    /// reaches the namespace's loopback at 10.0.2.2), for comparisons.
    pub fn golden_bases_with_user(&self, name: &str, user: bool) -> (String, String, String) {
        self.bases(name, false, user)
    }

    /// `golden_bases` of the plain image (`build-golden-image.sh --plain`: sshd, root's
    /// password `plain`, no seed channel), for `seed: ssh`.
    pub fn plain_bases(&self, name: &str) -> (String, String) {
        let (net, lan, _) = self.bases(name, true, false);
        (net, lan)
    }

    fn bases(&self, name: &str, plain: bool, user: bool) -> (String, String, String) {
        let kind = if plain { "plain" } else { "golden" };
        let mut build = self.with_lab_libvirt(&super::repo().join("scripts/build-golden-image.sh"));
        if plain {
            build.arg("--plain");
        }
        run_ok(&mut build);
        let xml = self.virsh_ok(&["dumpxml", "--inactive", &format!("virtseed-{kind}")]);
        let disk = between(&xml, "<source file='", "'/>");
        let image = Path::new(&disk["<source file='".len()..disk.len() - 3])
            .parent()
            .unwrap()
            .to_path_buf();
        let copy = self.dir.join(kind);
        std::fs::create_dir_all(&copy).unwrap();
        for f in ["disk.qcow2", "vmlinuz", "initrd.img"] {
            std::fs::copy(image.join(f), copy.join(f)).unwrap();
        }
        let pool = format!("{}-{kind}", self.pool);
        self.virsh_ok(&[
            "pool-create-as",
            &pool,
            "dir",
            "--target",
            copy.to_str().unwrap(),
        ]);
        let xml = xml.replace(image.to_str().unwrap(), copy.to_str().unwrap());
        let (net, lan) = (format!("{name}-net"), format!("{name}-lan"));
        for (base, iface) in [
            (
                &net,
                format!("<interface type='network'><source network='{NET}'/>"),
            ),
            (
                &lan,
                format!("<interface type='bridge'><source bridge='{LAN}'/>"),
            ),
        ] {
            let x = rewrite_base(&xml, base, &iface);
            let f = self.dir.join(format!("{base}.xml"));
            std::fs::write(&f, x).unwrap();
            self.virsh_ok(&["define", f.to_str().unwrap()]);
        }
        let usr = format!("{name}-user");
        if user {
            let x = rewrite_base(&xml, &usr, "<interface type='user'>");
            let f = self.dir.join(format!("{usr}.xml"));
            std::fs::write(&f, x).unwrap();
            self.virsh_ok(&["define", f.to_str().unwrap()]);
        }
        (net, lan, usr)
    }

    /// The libvirt network's leases (`virsh net-dhcp-leases`).
    pub fn net_leases(&self) -> Vec<Lease> {
        // Expiry date, time, MAC, protocol, IP/prefix, hostname, client id.
        self.virsh_ok(&["net-dhcp-leases", NET])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 7 && f[3] == "ipv4").then(|| Lease {
                    mac: f[2].to_lowercase(),
                    ip: f[4].split('/').next().unwrap().to_string(),
                    client_id: f[6].to_string(),
                })
            })
            .collect()
    }

    /// The bridge's leases, from its dnsmasq's lease file.
    pub fn lan_leases(&self) -> Vec<Lease> {
        // expiry MAC IP hostname client-id
        std::fs::read_to_string(self.dir.join("lan.leases"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5).then(|| Lease {
                    mac: f[1].to_lowercase(),
                    ip: f[2].to_string(),
                    client_id: f[4].to_string(),
                })
            })
            .collect()
    }

    /// The namespace's neighbours (`ip neigh`): (IPv4 address, MAC) of every resolved entry.
    pub fn neighbours(&self) -> Vec<(String, String)> {
        let out = self
            .exec("ip")
            .args(["-4", "-j", "neigh"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                Some((
                    n["dst"].as_str()?.to_string(),
                    n["lladdr"].as_str()?.to_lowercase(),
                ))
            })
            .collect()
    }

    /// The MACs of domain `name` in the lab's libvirtd.
    pub fn macs(&self, name: &str) -> Vec<String> {
        self.virsh_ok(&["domiflist", name])
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_lowercase))
            .collect()
    }

    pub fn domains(&self) -> Vec<String> {
        self.virsh_ok(&["list", "--all", "--name"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Volumes of the lab's pool.
    pub fn volumes(&self) -> Vec<String> {
        let _ = self.virsh(&["pool-refresh", &self.pool]);
        self.virsh_ok(&["vol-list", &self.pool])
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

/// `xml` (the golden base) as base `name`: no UUID (libvirt makes one), its NIC on `iface`.
fn rewrite_base(xml: &str, name: &str, iface: &str) -> String {
    let mut x = xml.replacen(
        &between(xml, "<name>", "</name>"),
        &format!("<name>{name}</name>"),
        1,
    );
    x = x.replacen(&between(&x, "<uuid>", "</uuid>"), "", 1);
    let start = x
        .find("<interface type='user'>")
        .expect("a user-mode NIC in the golden base");
    let end = start + x[start..].find("</interface>").unwrap();
    let model = "<model type='virtio'/></interface>";
    x.replace_range(
        start..end + "</interface>".len(),
        &format!("{iface}{model}"),
    );
    x
}

fn between(s: &str, open: &str, close: &str) -> String {
    let a = s.find(open).unwrap_or_else(|| panic!("no {open}"));
    let b = a + s[a..].find(close).unwrap() + close.len();
    s[a..b].to_string()
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Guests first (a QEMU outlives its libvirtd), then the networks' dnsmasqs with them.
        for d in self.domains_quiet() {
            let _ = self.virsh(&["destroy", &d]);
        }
        let _ = self.virsh(&["net-destroy", NET]);
        if let Some(mut c) = self.lan_dhcp.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.libvirtd.kill();
        let _ = self.libvirtd.wait();
        remove(&self.ns, &self.dir);
    }
}

impl Lab {
    fn domains_quiet(&self) -> Vec<String> {
        text(&self.virsh(&["list", "--name"]).stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Ends whatever still runs in namespace `ns` (only the lab's own processes can: guests,
/// dnsmasqs, virtlogd, a master), deletes it and the lab's directory.
fn remove(ns: &str, dir: &Path) {
    if let Ok(p) = std::fs::read_to_string(dir.join("virtlogd.pid")) {
        kill(p.trim());
    }
    for _ in 0..50 {
        let out = Command::new("ip").args(["netns", "pids", ns]).output();
        let pids = out.map(|o| text(&o.stdout)).unwrap_or_default();
        if pids.trim().is_empty() {
            break;
        }
        for p in pids.split_whitespace() {
            kill(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip").args(["netns", "delete", ns]).output();
    if std::env::var_os("KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn kill(pid: &str) {
    if pid.chars().all(|c| c.is_ascii_digit()) && !pid.is_empty() {
        let _ = Command::new("kill").args(["-9", pid]).output();
    }
}

/// Labs whose test process is gone (killed before its drop ran): removed.
fn sweep_leftovers() {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for ns in text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
    {
        let dir = std::env::temp_dir().join(format!("virtseed-lab-{}", &ns[NS_PREFIX.len()..]));
        let owner = std::fs::read_to_string(dir.join("owner")).unwrap_or_default();
        let alive =
            !owner.trim().is_empty() && Path::new(&format!("/proc/{}", owner.trim())).exists();
        if !alive {
            remove(ns, &dir);
        }
    }
}
