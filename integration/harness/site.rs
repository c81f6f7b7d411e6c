//! A test site: a private master, a dir pool on qemu:///system with a base domain, the
//! salt-cloud files that use them, and what a clone could leave behind.

use super::pool::Pool;
use super::Master;
use std::process::Command;
use std::time::{Duration, Instant};

/// A master with a pool, a shut-off base domain, salt-cloud providers and profiles, and
/// virtseed's runner installed.
pub struct Site {
    pub m: Master,
    pub p: Pool,
}

/// Writes salt-cloud's files into the master's config dir: a `kvm` provider on
/// qemu:///system and the given profiles.
pub fn write_cloud(m: &Master, profiles: &str) {
    std::fs::write(
        m.dir.join("cloud.providers"),
        "kvm:\n  driver: libvirt\n  url: qemu:///system\n",
    )
    .unwrap();
    std::fs::write(m.dir.join("cloud.profiles"), profiles).unwrap();
}

/// A master, a pool with a shut-off base domain over a 64 MiB qcow2 disk, and salt-cloud's
/// files with the profiles `profiles(base name)` writes. Returns the base's name too.
pub fn master_with_base(
    version: &str,
    tag: &str,
    profiles: impl FnOnce(&str) -> String,
) -> (Master, Pool, String) {
    master_with_base_conf(version, "", tag, profiles)
}

/// [`master_with_base`], the master's config with `extra_conf` (YAML) appended.
pub fn master_with_base_conf(
    version: &str,
    extra_conf: &str,
    tag: &str,
    profiles: impl FnOnce(&str) -> String,
) -> (Master, Pool, String) {
    let m = Master::start_with(version, extra_conf);
    let p = Pool::new(tag);
    let vda = p.base_volume("base-vda.qcow2", "qcow2", 64);
    let base = format!("{}base", p.prefix);
    p.base_domain(&base, &[("vda", "qcow2", Pool::file_source(&vda))]);
    write_cloud(&m, &profiles(&base));
    (m, p, base)
}

pub fn site(version: &str, tag: &str) -> Site {
    let (m, p, _) = master_with_base(version, tag, |base| {
        format!(
            "web:\n  provider: kvm\n  base_domain: {base}\n  minion:\n    master: 127.0.0.1\n  minion_timeout: 600\n\
             brief:\n  extends: web\n  minion_timeout: 3\n\
             kept:\n  extends: web\n  minion_timeout: 3\n  keep_on_timeout: true\n\
             quick:\n  extends: web\n  wait_for_minion: false\n"
        )
    });
    m.install_modules();
    Site { m, p }
}

impl Site {
    /// Entries of the sidecar `virtseed`'s create journal.
    pub fn journal(&self) -> Vec<String> {
        match std::fs::read_dir(self.m.dir.join("pki/virtseed/journal")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Everything a clone `name` could leave: its domain, volumes, key.
    pub fn traces(&self, name: &str) -> Vec<String> {
        let mut t: Vec<String> = self
            .p
            .domains()
            .into_iter()
            .filter(|d| d == name)
            .map(|d| format!("domain {d}"))
            .collect();
        t.extend(
            self.p
                .volumes()
                .into_iter()
                .chain(self.p.files())
                .filter(|v| {
                    v.starts_with(&format!("{name}-")) || v.starts_with(&format!("{name}_"))
                })
                .map(|v| format!("volume {v}")),
        );
        for dir in ["minions", "minions_pre", "minions_denied"] {
            if self.m.pki().join(dir).join(name).exists() {
                t.push(format!("key {dir}/{name}"));
            }
        }
        t.sort();
        t.dedup();
        t
    }

    pub fn salt_run_bg(&self, args: &[&str]) -> std::process::Child {
        self.m.salt_run_bg(args)
    }
}

/// Plays the guest of clone `name` (cloud-init seed): a real salt-minion with the identity
/// read from its seed volume, once the volume and its pre-accepted key are there.
pub fn play_guest(m: &Master, p: &Pool, name: &str) -> super::Minion {
    play_guest_with(m, p, name, None)
}

/// [`play_guest`], its `machine_id` grain set (the guest of a template whose machine-id
/// every clone keeps), or one of its own when `None`.
pub fn play_guest_with(
    m: &Master,
    p: &Pool,
    name: &str,
    machine_id: Option<&str>,
) -> super::Minion {
    use yaml_serde::Value as Y;
    let seed = p.dir.join(format!("{name}-seed.img"));
    super::wait_for("the seed volume", Duration::from_secs(60), || {
        seed.exists() && m.key_dir().join("minions").join(name).exists()
    });
    let ud: Y = yaml_serde::from_str(&super::mread(&seed, "user-data")).unwrap();
    let sm = &ud["salt_minion"];
    let mdir = m.dir.join(format!("guest-{name}"));
    std::fs::create_dir_all(mdir.join("pki")).unwrap();
    let put = |f: &str, v: &Y| std::fs::write(mdir.join(f), v.as_str().unwrap()).unwrap();
    put("pki/minion.pem", &sm["private_key"]);
    put("pki/minion.pub", &sm["public_key"]);
    // The master's key, and the masters' signing key where they sign theirs.
    for f in ud["write_files"].as_sequence().into_iter().flatten() {
        if let Some(file) = f["path"]
            .as_str()
            .and_then(|p| p.strip_prefix("/etc/salt/pki/minion/"))
        {
            put(&format!("pki/{file}"), &f["content"]);
        }
    }
    let mut conf = sm["conf"].clone();
    if let (Some(id), Some(c)) = (machine_id, conf.as_mapping_mut()) {
        let g = c
            .entry(Y::from("grains"))
            .or_insert_with(|| Y::Mapping(Default::default()));
        if let Some(g) = g.as_mapping_mut() {
            g.insert(Y::from("machine_id"), Y::from(id));
        }
    }
    super::Minion::start(m, &mdir, &yaml_serde::to_string(&conf).unwrap())
}

/// Waits for `child` to exit (killed after `timeout`) and returns its output.
pub fn wait_exit(child: std::process::Child, timeout: Duration) -> std::process::Output {
    let t = Instant::now();
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        while t.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(200));
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    let _ = killer.join();
    out
}

/// The golden image (scripts/build-golden-image.sh, cached; `--plain` for the plain one),
/// built or checked, its base domain defined.
pub fn golden_image(args: &[&str]) {
    let out = std::process::Command::new(super::repo().join("scripts/build-golden-image.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-golden-image.sh {args:?}: {}{}",
        super::text(&out.stdout),
        super::text(&out.stderr)
    );
}

/// Every file of the golden images' pools (what a test must leave as it found it).
pub fn golden_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/var/lib/virtseed/golden")
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.path().display().to_string())
        .collect();
    v.sort();
    v
}

/// The directory of the golden base's disk (the image `virtseed-golden` is defined over).
pub fn golden_dir() -> std::path::PathBuf {
    let xml = super::pool::virsh_ok(&["dumpxml", "--inactive", "virtseed-golden"]);
    let disk = xml
        .split("<source file='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("virtseed-golden has a file disk");
    std::path::Path::new(disk).parent().unwrap().to_path_buf()
}

/// Nothing of `name` left: no domain, no volume in `pool`, no key on the master.
pub fn nothing_left(m: &super::Master, pool: &str, name: &str) {
    use super::pool::virsh;
    assert!(
        !virsh(&["domstate", name]).status.success(),
        "{name}: domain left"
    );
    let vols = super::text(&virsh(&["vol-list", pool]).stdout);
    assert!(!vols.contains(name), "{name}: volume left: {vols}");
    for dir in ["minions", "minions_pre", "minions_rejected"] {
        assert!(
            !m.pki().join(dir).join(name).exists(),
            "{name}: key left in {dir}"
        );
    }
}

/// On the way out, pass or fail: every domain named `PREFIX*` and its volumes in `pool` (a
/// failed assertion skips the test's own destroy; a test sharing an image's pool leaves
/// nothing for the next run).
pub struct Leftovers {
    pool: String,
    prefix: String,
}

impl Leftovers {
    pub fn new(pool: &str, prefix: &str) -> Leftovers {
        Leftovers {
            pool: pool.into(),
            prefix: prefix.into(),
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        use super::pool::virsh;
        let list = super::text(&virsh(&["list", "--all", "--name"]).stdout);
        for d in list
            .lines()
            .map(str::trim)
            .filter(|d| d.starts_with(&self.prefix))
        {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", "--nvram", d]);
        }
        let vols = super::text(&virsh(&["vol-list", &self.pool]).stdout);
        for v in vols
            .split_whitespace()
            .filter(|v| v.starts_with(&self.prefix))
        {
            let _ = virsh(&["vol-delete", "--pool", &self.pool, v]);
        }
    }
}

/// Sidecar `id` beside `m`, whose `peers:` are the sidecars `(id, master)` beside other masters.
pub fn sidecar_with_peers(m: &Master, id: &str, peers: &[(&str, &Master)]) -> super::Sidecar {
    let list: String = peers
        .iter()
        .map(|(pid, pm)| {
            format!(
                "  - {{id: {pid}, master: {}, ret_port: {}}}\n",
                pm.interface,
                pm.port("ret_port")
            )
        })
        .collect();
    super::Sidecar::start_settings(m, id, &[], "", &format!("peers:\n{list}"))
}

/// The operator's one step per peer: `id`'s key, pending on `m`, accepted there.
pub fn accept_once(m: &Master, id: &str) {
    super::wait_for(
        &format!("{id}'s key pending on {}", m.interface),
        Duration::from_secs(60),
        || m.pki().join("minions_pre").join(id).exists(),
    );
    assert!(m.salt_key(&["-y", "-a", id]).status.success());
}

/// Waits until `m`'s publications reach sidecar `id` (it answers `test.ping` through `m`).
pub fn reaching(m: &Master, id: &str) {
    super::wait_for(
        &format!("{}'s publications reaching {id}", m.interface),
        Duration::from_secs(120),
        || {
            let (ok, v) = m.salt_json(id, &["test.ping"], 5);
            ok && v[id] == true
        },
    );
}
