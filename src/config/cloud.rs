//! salt-cloud's configuration, read where salt-cloud reads it (relative to the Salt config
//! dir): `cloud`, `cloud.providers`, `cloud.providers.d/*.conf`, `cloud.profiles`,
//! `cloud.profiles.d/*.conf`.
//!
//! A value is looked up as salt-cloud's `get_cloud_config_value` does: the profile (after
//! `extends:`), then its provider, then the main `cloud` file; mappings (`minion`, `grains`)
//! are merged across those levels with the profile winning.

pub mod hosts;
mod resolve;

use super::{yaml, ConfigError};
use resolve::{resolve_profile, Resolved};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

/// Keys salt-cloud's libvirt driver and its SSH deploy step read, which virtseed does not need
/// (it seeds the guest instead of logging in): accepted, and reported as unused.
pub const UNUSED_SALT_CLOUD_KEYS: &[&str] = &[
    "ssh_username",
    "password",
    "ssh_password",
    "ssh_agent",
    "ssh_port",
    "ssh_keyfile",
    "ssh_interface",
    "sudo",
    "sudo_password",
    "deploy",
    "deploy_command",
    "script",
    "script_args",
    "script_env",
    "tmp_dir",
    "file_map",
    "preflight_cmds",
    "known_hosts_file",
    "make_master",
    "inline_script",
    "preseed_minion_keys",
    "force_minion_config",
    "private_key",
    "display_ssh_output",
    "wait_for_ip_timeout",
    "wait_for_ip_interval",
    "wait_for_ip_interval_multiplier",
    "show_deploy_args",
];

/// Keys virtseed reads from a profile.
pub const PROFILE_KEYS: &[&str] = &[
    "provider",
    "extends",
    "base_domain",
    "image",
    "clone_strategy",
    "ip_source",
    "validate_xml",
    "cpus",
    "cpuunits",
    "memory",
    "disk",
    "swap",
    "onboot",
    "desc",
    "nameserver",
    "userdata_file",
    "minion",
    "grains",
    "keysize",
    "seed",
    "accept",
    "autoaccept_window",
    "force",
    "wait_for_minion",
    "minion_timeout",
    "keep_on_timeout",
    "pool",
    "max_parallel",
    "sidecar",
    "host",
    "ssh_forward",
    "warm",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneStrategy {
    /// A qcow2 overlay with the base disk as its backing store.
    Quick,
    /// A full copy of every base disk.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    /// A cloud-init NoCloud vfat image labelled `cidata`.
    CloudInit,
    /// systemd credentials in SMBIOS type 11 OEM strings.
    Smbios,
    /// No seed: salt-cloud's SSH deploy gives the clone its identity (templates with
    /// neither cloud-init nor virtseed's guest unit). virtseed's driver deploys; the sidecar
    /// pre-accepts the public key the driver hands it and clones without a seed.
    Ssh,
}

impl SeedKind {
    pub fn name(self) -> &'static str {
        match self {
            SeedKind::CloudInit => "cloud-init",
            SeedKind::Smbios => "smbios",
            SeedKind::Ssh => "ssh",
        }
    }
}

/// Why a profile has its seed: check-config and the refusals say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFrom {
    /// `seed:` as written (profile, provider or the main `cloud` file).
    Written,
    /// No `seed:`, and salt-cloud's deploy keys: `ssh_username` with this credential
    /// (`password` or `private_key`), so `ssh`, as salt-cloud itself would log in.
    DeployKeys(&'static str),
    /// No `seed:` and no deploy keys: `cloud-init`.
    Default,
}

impl SeedFrom {
    pub fn why(self) -> String {
        match self {
            SeedFrom::Written => "as written".into(),
            SeedFrom::DeployKeys(credential) => format!("from ssh_username + {credential}"),
            SeedFrom::Default => "the default".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptMode {
    /// Write the minted public key to the master's `minions/` before the VM starts.
    Preseed,
    /// The image makes its own key: accept the first one seen for the id, once, in a window.
    OnFirstAuth,
    /// The image makes its own key and virtseed accepts nothing: the key waits in
    /// `minions_pre` for `salt-key -a` or a reactor (salt-cloud's flow without a deploy).
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSource {
    IpLearning,
    QemuAgent,
}

/// A libvirt provider alias.
#[derive(Debug, Clone)]
pub struct Provider {
    pub alias: String,
    pub driver: String,
    /// The first host's URI.
    pub url: Option<String>,
    /// Every host `url:` names (one or several).
    pub hosts: Vec<hosts::Host>,
    /// The sidecar (minion id) that serves this provider; `None`: any.
    pub sidecar: Option<String>,
    pub file: PathBuf,
    pub raw: Mapping,
}

/// A profile with everything resolved, ready to clone from.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub file: PathBuf,
    pub provider: String,
    pub driver: String,
    /// The host a clone goes to: the one `host:` names, the provider's only one, or (with
    /// several) the first, until placement picks one per clone.
    pub url: String,
    /// The hosts a clone may go to (`host:` pins one).
    pub hosts: Vec<hosts::Host>,
    pub base_domain: String,
    pub clone_strategy: CloneStrategy,
    pub ip_source: IpSource,
    pub validate_xml: bool,
    pub cpus: Option<u32>,
    /// The clone's CPU weight (`<cputune><shares>`); `None`: as the base.
    pub cpuunits: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
    /// A swap file of this size made in the guest at first boot.
    pub swap_mib: Option<u64>,
    pub onboot: bool,
    pub desc: Option<String>,
    /// The guest's resolvers (`nameserver: "8.8.8.8 8.8.4.4"`); empty: what DHCP gives.
    pub nameservers: Vec<std::net::IpAddr>,
    /// The user's own cloud-init user-data, merged with virtseed's (cloud-init clones).
    pub userdata: Option<crate::seed::userdata::UserData>,
    pub minion: Mapping,
    pub grains: Mapping,
    pub keysize: usize,
    pub seed: SeedKind,
    pub seed_from: SeedFrom,
    pub accept: AcceptMode,
    pub autoaccept_window_secs: u64,
    pub force: bool,
    pub wait_for_minion: bool,
    pub minion_timeout_secs: u64,
    /// Keep a clone whose minion did not answer within `minion_timeout` (to debug it);
    /// by default it is destroyed, key and all.
    pub keep_on_timeout: bool,
    pub pool: Option<String>,
    pub max_parallel: Option<usize>,
    pub sidecar: Option<String>,
    /// Forward a free port on 127.0.0.1 to the guest's port 22 (QEMU user networking, where
    /// the host cannot reach the guest otherwise), for `seed: ssh`.
    pub ssh_forward: bool,
    /// Restore clones from the base's saved warm state instead of booting them.
    pub warm: bool,
    /// salt-cloud deploy keys present in the profile that virtseed does not use.
    pub unused: Vec<String>,
    /// Keys neither salt-cloud's libvirt driver nor virtseed know (typos?).
    pub unknown: Vec<String>,
    /// The merged profile as written (for check-config; print through `masked`).
    pub raw: Mapping,
}

/// A profile virtseed does not serve (another driver), reported and skipped.
#[derive(Debug, Clone)]
pub struct ForeignProfile {
    pub name: String,
    pub file: PathBuf,
    pub provider: String,
    pub driver: String,
    /// The options of that driver found in the provider and profile (`key=value`, secrets
    /// masked), so the message shows what was understood.
    pub recognised: Vec<String>,
}

impl ForeignProfile {
    /// Why virtseed does not serve this profile, and what it recognised in it.
    pub fn not_served(&self) -> String {
        let mut s = format!(
            "provider {}:{} is not served by virtseed (it serves driver libvirt)",
            self.provider, self.driver
        );
        if !self.recognised.is_empty() {
            s.push_str(&format!(
                "; {} options recognised: {}",
                driver_title(&self.driver),
                self.recognised.join(", ")
            ));
        }
        s
    }
}

fn driver_title(driver: &str) -> String {
    match driver {
        "proxmox" => "Proxmox".into(),
        other => other.into(),
    }
}

/// The options salt-cloud's proxmox driver (and saltext-proxmox) reads, provider and profile.
pub const PROXMOX_KEYS: &[&str] = &[
    "url",
    "user",
    "password",
    "token_name",
    "token_value",
    "verify_ssl",
    "port",
    "technology",
    "host",
    "image",
    "vmid",
    "clone",
    "clone_from",
    "clone_full",
    "clone_format",
    "clone_name",
    "clone_description",
    "desc",
    "cpus",
    "cpuunits",
    "cpulimit",
    "memory",
    "swap",
    "disk",
    "onboot",
    "nameserver",
    "searchdomain",
    "ip_address",
    "gw",
    "net0",
    "use_dns",
    "pool",
    "storage",
    "pubkey",
    "agent_get_ip",
    "ip_configuration",
    "ssh_username",
    "ssh_password",
    "create",
];

/// Everything from salt-cloud's files.
#[derive(Debug, Default)]
pub struct CloudConfig {
    pub providers: BTreeMap<String, Vec<Provider>>,
    pub profiles: BTreeMap<String, Profile>,
    pub foreign: BTreeMap<String, ForeignProfile>,
    /// Problems, each naming the file, the profile and the key. A profile with an error is
    /// not in `profiles`.
    pub errors: Vec<ConfigError>,
    pub files: Vec<PathBuf>,
    /// The main `cloud` file (global defaults).
    pub main: Mapping,
}

/// The files salt-cloud reads for `base` (`cloud.providers`, then `.d/*.conf` sorted).
fn layered_files(dir: &Path, base: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let main = dir.join(base);
    if main.is_file() {
        out.push(main);
    }
    let d = dir.join(format!("{base}.d"));
    if let Ok(rd) = std::fs::read_dir(&d) {
        let mut confs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
            .collect();
        confs.sort();
        out.extend(confs);
    }
    out
}

fn key_err(path: &Path, key: String, expected: String) -> ConfigError {
    ConfigError::Key {
        path: path.to_path_buf(),
        key,
        expected,
    }
}

/// Deep merge of mappings (`over` wins), as salt.utils.dictupdate.update does.
pub fn deep_merge(base: &mut Mapping, over: &Mapping) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Mapping(b)), Value::Mapping(o)) => deep_merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// One driver entry of provider `alias` in `file`.
fn provider_entry(file: &Path, alias: &str, entry: &Value) -> Result<Provider, ConfigError> {
    let Some(m) = entry.as_mapping() else {
        return Err(key_err(
            file,
            alias.to_string(),
            format!(
                "must be a mapping with `driver:`, found {}",
                yaml::kind(entry)
            ),
        ));
    };
    // `provider:` is the old spelling of `driver:`.
    let driver = m
        .get("driver")
        .or_else(|| m.get("provider"))
        .and_then(yaml::as_text);
    let Some(driver) = driver else {
        return Err(key_err(
            file,
            format!("{alias}.driver"),
            "is required (e.g. `driver: libvirt`)".into(),
        ));
    };
    let hosts = match (m.get("url"), driver == "libvirt") {
        (Some(v), true) => hosts::parse(v).map_err(|e| key_err(file, format!("{alias}.url"), e))?,
        (None, true) => {
            return Err(key_err(
                file,
                format!("{alias}.url"),
                "is required for driver libvirt (e.g. `url: qemu:///system`)".into(),
            ))
        }
        (_, false) => vec![],
    };
    let url = match hosts.first() {
        Some(h) => Some(h.uri.clone()),
        None => m.get("url").and_then(yaml::as_text),
    };
    Ok(Provider {
        alias: alias.to_string(),
        driver,
        url,
        hosts,
        sidecar: m.get("sidecar").and_then(yaml::as_text),
        file: file.to_path_buf(),
        raw: m.clone(),
    })
}

impl CloudConfig {
    pub fn load(dir: &Path) -> CloudConfig {
        let mut cfg = CloudConfig::default();
        let main = cfg.load_main(dir);
        for file in layered_files(dir, "cloud.providers") {
            cfg.load_providers(file);
        }
        let written = cfg.load_profiles(dir);
        cfg.main = main.clone();
        for name in written.keys() {
            let (file, _) = &written[name];
            let merged = match resolve_extends(name, &written) {
                Ok(m) => m,
                Err(msg) => {
                    cfg.errors
                        .push(key_err(file, format!("{name}.extends"), msg));
                    continue;
                }
            };
            match resolve_profile(name, file, merged, &cfg.providers, &main) {
                Ok(Resolved::Ours(p)) => {
                    cfg.profiles.insert(name.clone(), *p);
                }
                Ok(Resolved::Foreign(f)) => {
                    cfg.foreign.insert(name.clone(), f);
                }
                Err(e) => cfg.errors.push(e),
            }
        }
        cfg
    }

    /// The main `cloud` file: global defaults for every profile.
    fn load_main(&mut self, dir: &Path) -> Mapping {
        let main_path = dir.join("cloud");
        if !main_path.is_file() {
            return Mapping::new();
        }
        match self.read(&main_path) {
            Some(Value::Mapping(m)) => m,
            _ => Mapping::new(),
        }
    }

    /// One of salt-cloud's files, listed in `files`; one that cannot be read is an error.
    fn read(&mut self, file: &Path) -> Option<Value> {
        self.files.push(file.to_path_buf());
        yaml::load_file(file).map_err(|e| self.errors.push(e)).ok()
    }

    /// The provider aliases of one `cloud.providers` file.
    fn load_providers(&mut self, file: PathBuf) {
        let Some(v) = self.read(&file) else {
            return;
        };
        for (alias, body) in v.as_mapping().into_iter().flatten() {
            let Some(alias) = yaml::as_text(alias) else {
                continue;
            };
            // An alias is one mapping, or a list of mappings (one per driver).
            let entries: Vec<&Value> = match body {
                Value::Sequence(s) => s.iter().collect(),
                other => vec![other],
            };
            for entry in entries {
                match provider_entry(&file, &alias, entry) {
                    Ok(p) => {
                        let list = self.providers.entry(alias.clone()).or_default();
                        list.retain(|q| q.driver != p.driver);
                        list.push(p);
                    }
                    Err(e) => self.errors.push(e),
                }
            }
        }
    }

    /// Profiles as written (`extends:` not yet resolved), by name.
    fn load_profiles(&mut self, dir: &Path) -> BTreeMap<String, (PathBuf, Mapping)> {
        let mut written = BTreeMap::new();
        for file in layered_files(dir, "cloud.profiles") {
            let Some(v) = self.read(&file) else {
                continue;
            };
            for (name, body) in v.as_mapping().into_iter().flatten() {
                let Some(name) = yaml::as_text(name) else {
                    continue;
                };
                match body.as_mapping() {
                    Some(m) => {
                        written.insert(name, (file.clone(), m.clone()));
                    }
                    None => self.errors.push(key_err(
                        &file,
                        name,
                        format!("a profile must be a mapping, found {}", yaml::kind(body)),
                    )),
                }
            }
        }
        written
    }

    /// A profile made of `provider` and profile keys given directly (salt-cloud's
    /// `cloud.create provider names key=value...`), checked like a written one.
    pub fn adhoc(&self, provider: &str, keys: Mapping) -> Result<Profile, String> {
        let mut m = keys;
        m.insert("provider".into(), Value::String(provider.to_string()));
        self.resolve(
            "cloud.create",
            &PathBuf::from("(cloud.create arguments)"),
            m,
        )
    }

    /// One profile's keys, resolved against the providers and the main config.
    fn resolve(&self, name: &str, file: &Path, m: Mapping) -> Result<Profile, String> {
        match resolve_profile(name, file, m, &self.providers, &self.main) {
            Ok(Resolved::Ours(p)) => Ok(*p),
            Ok(Resolved::Foreign(f)) => Err(f.not_served()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The profile `name` with `keys` over its own (a salt-cloud map entry's, or a call's
    /// `vm_overrides`): `minion:` and `grains:` merge, other keys replace.
    pub fn profile_with(&self, name: &str, keys: Mapping) -> Result<Profile, String> {
        let p = self.profile(name)?;
        if keys.is_empty() {
            return Ok(p.clone());
        }
        let mut m = p.raw.clone();
        deep_merge(&mut m, &keys);
        self.resolve(name, &p.file, m)
    }

    /// The profile `name`, or an error saying why it cannot be used.
    pub fn profile(&self, name: &str) -> Result<&Profile, String> {
        if let Some(p) = self.profiles.get(name) {
            return Ok(p);
        }
        if let Some(f) = self.foreign.get(name) {
            return Err(format!(
                "profile {name:?} ({}): {}",
                f.file.display(),
                f.not_served()
            ));
        }
        if let Some(e) = self
            .errors
            .iter()
            .find(|e| e.to_string().contains(&format!("`{name}.")))
        {
            return Err(format!("profile {name:?} has an error: {e}"));
        }
        let known: Vec<&str> = self.profiles.keys().map(|s| s.as_str()).collect();
        Err(format!(
            "no profile {name:?} in cloud.profiles(.d){}",
            if known.is_empty() {
                String::new()
            } else {
                format!(" (known: {})", known.join(", "))
            }
        ))
    }
}

fn resolve_extends(
    name: &str,
    written: &BTreeMap<String, (PathBuf, Mapping)>,
) -> Result<Mapping, String> {
    let mut chain = vec![name.to_string()];
    let mut cur = name.to_string();
    loop {
        let (_, m) = &written[&cur];
        match m.get("extends").and_then(yaml::as_text) {
            None => break,
            Some(parent) => {
                if chain.contains(&parent) {
                    chain.push(parent);
                    return Err(format!("forms a loop: {}", chain.join(" -> ")));
                }
                if !written.contains_key(&parent) {
                    return Err(format!("names {parent:?}, which is not a profile"));
                }
                chain.push(parent.clone());
                cur = parent;
            }
        }
    }
    // Oldest ancestor first, each child merged over it.
    let mut merged = Mapping::new();
    for n in chain.iter().rev() {
        deep_merge(&mut merged, &written[n].1);
    }
    merged.remove("extends");
    Ok(merged)
}

/// Parses a memory size in MiB: a number (MiB, as in proxmox and virt profiles), or a string
/// with a unit (`512M`, `2G`, `2GiB`, `1024 MiB`).
pub fn parse_mib(v: &Value) -> Option<u64> {
    if let Some(n) = yaml::as_i64(v) {
        return u64::try_from(n).ok();
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// True for keys whose values are secrets (passwords, keys, tokens).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "private_key",
        "priv_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A copy of `m` with secret values replaced by `********`, at any depth.
pub fn masked(m: &Mapping) -> Mapping {
    let mut out = Mapping::new();
    for (k, v) in m {
        let secret = yaml::as_text(k).is_some_and(|k| is_secret_key(&k));
        let v = if secret {
            Value::String("********".into())
        } else if let Value::Mapping(inner) = v {
            Value::Mapping(masked(inner))
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    /// The example files of salt-cloud's libvirt documentation, unchanged.
    const DOC_PROVIDERS: &str = "# Set up a provider with qemu+ssh protocol\nkvm-via-ssh:\n  driver: libvirt\n  url: qemu+ssh://user@kvm.company.com/system?socket=/var/run/libvirt/libvirt-sock\n\n# Or connect to a local libvirt instance\nlocal-kvm:\n  driver: libvirt\n  url: qemu:///system\n  # work around flag for XML validation errors for cloned VMs\n  validate_xml: no\n";
    const DOC_PROFILES: &str = "base-centos7-64:\n  provider: local-kvm\n  # the domain to clone\n  base_domain: base-centos7-64\n  # how to obtain the IP address of the cloned instance\n  # ip-learning or qemu-agent\n  ip_source: ip-learning\n  # clone_strategy = [ quick | full ]\n  clone_strategy: quick\n  ssh_username: vagrant\n  # has_ssh_agent: True\n  password: vagrant\n  # if /tmp is mounted noexec do workaround\n  deploy_command: sh /tmp/.saltcloud/deploy.sh\n  # -F makes the bootstrap script overwrite existing config\n  # which make reprovisioning a box work\n  script_args: -F\n  grains:\n    clones-are-awesome: true\n";

    #[test]
    fn salt_cloud_doc_examples_load_unchanged() {
        let d = dir_with(&[
            ("cloud.providers.d/libvirt.conf", DOC_PROVIDERS),
            ("cloud.profiles.d/libvirt.conf", DOC_PROFILES),
        ]);
        let cfg = CloudConfig::load(d.path());
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let p = cfg.profile("base-centos7-64").unwrap();
        assert_eq!(p.url, "qemu:///system");
        assert_eq!(p.base_domain, "base-centos7-64");
        assert_eq!(p.clone_strategy, CloneStrategy::Quick);
        // `validate_xml: no` on the provider reaches the profile.
        assert!(!p.validate_xml);
        // The guide's profile logs in to its template (`ssh_username` + `password`): an SSH
        // deploy, whose keys are all used.
        assert_eq!(
            (p.seed, p.seed_from),
            (SeedKind::Ssh, SeedFrom::DeployKeys("password"))
        );
        assert!(p.unused.is_empty(), "{:?}", p.unused);
        assert!(p.unknown.is_empty());
        assert_eq!(p.grains.get("clones-are-awesome"), Some(&Value::Bool(true)));
        let m = masked(&p.raw);
        assert_eq!(m.get("password").and_then(|v| v.as_str()), Some("********"));
        assert_eq!(
            cfg.providers["kvm-via-ssh"][0].url.as_deref().unwrap(),
            "qemu+ssh://user@kvm.company.com/system?socket=/var/run/libvirt/libvirt-sock"
        );
    }

    #[test]
    fn extends_layers_and_sizing() {
        let d = dir_with(&[
            ("cloud", "minion:\n  master: 10.0.2.2\n  master_port: 4506\n"),
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\n  minion:\n    master_port: 5506\n"),
            (
                "cloud.profiles",
                "base:\n  provider: kvm:libvirt\n  base_domain: test\n  memory: 1G\n  grains: {a: 1, b: 2}\nsmall:\n  extends: base\n  cpus: '2'\n  disk: 20\n  onboot: yes\n  grains: {b: 3}\n  minion: {log_level: debug}\n",
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let p = cfg.profile("small").unwrap();
        assert_eq!(p.base_domain, "test");
        assert_eq!(
            (p.cpus, p.memory_mib, p.disk_gib, p.onboot),
            (Some(2), Some(1024), Some(20), true)
        );
        assert_eq!(yaml::as_i64(&p.grains["a"]), Some(1));
        assert_eq!(yaml::as_i64(&p.grains["b"]), Some(3));
        // minion: global < provider < profile
        assert_eq!(
            p.minion.get("master").and_then(|v| v.as_str()),
            Some("10.0.2.2")
        );
        assert_eq!(yaml::as_i64(&p.minion["master_port"]), Some(5506));
        assert_eq!(
            p.minion.get("log_level").and_then(|v| v.as_str()),
            Some("debug")
        );
    }

    #[test]
    fn foreign_drivers_are_reported_not_served() {
        let d = dir_with(&[
            ("cloud.providers", "pve:\n  driver: proxmox\n  user: root@pam\n  password: x\n  url: pve.example.com\n"),
            ("cloud.profiles", "ct:\n  provider: pve\n  image: local:vztmpl/debian.tar.gz\n"),
        ]);
        let cfg = CloudConfig::load(d.path());
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let e = cfg.profile("ct").unwrap_err();
        assert!(
            e.contains("pve:proxmox") && e.contains("not served by virtseed"),
            "{e}"
        );
        assert!(
            e.contains("Proxmox options recognised: url=pve.example.com, user=root@pam, password=********, image=local:vztmpl/debian.tar.gz"),
            "{e}"
        );
        assert!(!e.contains("=x,") && !e.ends_with("=x"), "{e}");
    }

    /// The options of the guide's profile section, each with its meaning.
    #[test]
    fn the_guides_profile_options() {
        let ud = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ud.path(), "#cloud-config\npackages: [htop]\n").unwrap();
        let d = dir_with(&[
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\n"),
            (
                "cloud.profiles",
                &format!("a:\n  provider: kvm\n  image: t\n  cpuunits: 1000\n  nameserver: 8.8.8.8 2001:4860:4860::8844\n  swap: 256\n  onboot: 1\n  userdata_file: {}\nb:\n  provider: kvm\n  base_domain: t\n  image: t\n  onboot: 0\n  nameserver: [1.1.1.1]\n",
                    ud.path().display()),
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let a = cfg.profile("a").unwrap();
        assert_eq!(a.base_domain, "t");
        assert_eq!(
            (a.cpuunits, a.swap_mib, a.onboot),
            (Some(1000), Some(256), true)
        );
        let ns: Vec<String> = a.nameservers.iter().map(|a| a.to_string()).collect();
        assert_eq!(ns, ["8.8.8.8", "2001:4860:4860::8844"]);
        assert_eq!(a.userdata.as_ref().unwrap().path, ud.path());
        assert!(a.unknown.is_empty(), "{:?}", a.unknown);
        let b = cfg.profile("b").unwrap();
        assert_eq!(
            (b.base_domain.as_str(), b.onboot, b.cpuunits),
            ("t", false, None)
        );
        assert_eq!(b.nameservers.len(), 1);
    }

    /// The error of `cfg` that contains a needle (the test fails without one).
    fn error_with(cfg: &CloudConfig) -> impl Fn(&str) -> String {
        let msgs: Vec<String> = cfg.errors.iter().map(|e| e.to_string()).collect();
        move |needle: &str| {
            msgs.iter()
                .find(|m| m.contains(needle))
                .unwrap_or_else(|| panic!("no error with {needle:?} in {msgs:#?}"))
                .clone()
        }
    }

    #[test]
    fn the_guides_profile_options_checked() {
        let d = dir_with(&[
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\n"),
            (
                "cloud.profiles",
                "a:\n  provider: kvm\n  base_domain: x\n  image: y\nb:\n  provider: kvm\n  image: t\n  cpuunits: 262144\nc:\n  provider: kvm\n  image: t\n  nameserver: 8.8.8.8 dns.google\nd:\n  provider: kvm\n  image: t\n  swap: big\ne:\n  provider: kvm\n  image: t\n  userdata_file: /nonexistent/ud\nf:\n  provider: kvm\n  image: t\n  onboot: 2x\ng:\n  provider: kvm\n  image: t\n  nameserver: ''\n",
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        let find = error_with(&cfg);
        let a = find("`a.base_domain`");
        assert!(a.contains("\"x\"") && a.contains("`image` is \"y\""), "{a}");
        assert!(find("`b.cpuunits`").contains("from 2 to 10000"));
        assert!(find("`c.nameserver`").contains("not \"dns.google\""));
        assert!(find("`d.swap`").contains("whole number"));
        assert!(find("`e.userdata_file`").contains("/nonexistent/ud: cannot read"));
        assert!(find("`f.onboot`").contains("true or false"));
        assert!(find("`g.nameserver`").contains("found none"));
        assert!(cfg.profiles.is_empty());
    }

    #[test]
    fn errors_name_file_profile_and_key() {
        let d = dir_with(&[
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\nnourl:\n  driver: libvirt\n"),
            (
                "cloud.profiles.d/x.conf",
                "a:\n  provider: kvm\n  base_domain: test\n  cpus: many\nb:\n  provider: nope\n  base_domain: t\nc:\n  provider: kvm\nd:\n  extends: d\ne:\n  provider: kvm\n  base_domain: t\n  clone_strategy: linked\nf:\n  provider: kvm\n  base_domain: t\n  memory: lots\ng:\n  provider: kvm\n  base_domain: t\n  onboot: maybe\nh:\n  provider: kvm\n  base_domain: t\n  accept: always\n",
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        let find = error_with(&cfg);
        assert!(find("`nourl.url`").contains("cloud.providers"));
        let a = find("`a.cpus`");
        assert!(
            a.contains("x.conf") && a.contains("whole number") && a.contains("\"many\""),
            "{a}"
        );
        assert!(find("`b.provider`").contains("\"nope\""));
        assert!(find("`c.base_domain`").contains("required"));
        assert!(find("`d.extends`").contains("loop"));
        assert!(find("`e.clone_strategy`").contains("quick or full"));
        assert!(find("`f.memory`").contains("MiB"));
        assert!(find("`g.onboot`").contains("true or false"));
        assert!(find("`h.accept`").contains("preseed, on_first_auth or manual"));
        assert!(cfg.profiles.is_empty());
        assert!(cfg.profile("a").unwrap_err().contains("cpus"));
        assert!(cfg.profile("zzz").unwrap_err().contains("no profile"));
    }

    #[test]
    fn accept_modes() {
        let d = dir_with(&[
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\n"),
            (
                "cloud.profiles",
                "a:\n  provider: kvm\n  base_domain: t\nb:\n  extends: a\n  accept: on_first_auth\nc:\n  extends: a\n  accept: manual\n",
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let mode = |p: &str| cfg.profile(p).unwrap().accept;
        assert_eq!(mode("a"), AcceptMode::Preseed);
        assert_eq!(mode("b"), AcceptMode::OnFirstAuth);
        assert_eq!(mode("c"), AcceptMode::Manual);
    }

    #[test]
    fn ssh_deploy_keys_are_used_only_with_seed_ssh() {
        let d = dir_with(&[
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\n"),
            (
                "cloud.profiles",
                "a:\n  provider: kvm\n  base_domain: t\n  ssh_username: root\n  password: x\n  seed: smbios\nb:\n  extends: a\n  seed: ssh\n",
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        assert_eq!(
            cfg.profile("a").unwrap().unused,
            ["ssh_username", "password"]
        );
        let b = cfg.profile("b").unwrap();
        assert!(b.unused.is_empty() && b.unknown.is_empty(), "{b:?}");
    }

    /// salt-cloud's deploy keys without `seed:` make an SSH deploy (the guide's profile);
    /// anything less, a written `seed:` or `deploy: false` keeps the seed it had.
    #[test]
    fn deploy_keys_without_a_seed_mean_seed_ssh() {
        let d = dir_with(&[
            ("cloud", "ssh_username: admin\n"),
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\nkeyed:\n  driver: libvirt\n  url: test:///default\n  private_key: /etc/salt/kvm_id\n"),
            (
                "cloud.profiles",
                "pw:\n  provider: kvm\n  base_domain: t\n  ssh_username: root\n  password: x\n\
                 key:\n  provider: kvm\n  base_domain: t\n  ssh_username: root\n  private_key: /root/.ssh/id\n\
                 inherited:\n  provider: keyed\n  base_domain: t\n\
                 nouser:\n  provider: kvm\n  base_domain: t\n  password: x\n  ssh_username: ''\n\
                 nocred:\n  provider: kvm\n  base_domain: t\n  deploy_command: sh /tmp/deploy.sh\n\
                 written:\n  extends: pw\n  seed: smbios\n\
                 nodeploy:\n  extends: pw\n  deploy: false\n\
                 contradiction:\n  extends: pw\n  seed: ssh\n  deploy: false\n",
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        let seed = |p: &str| {
            let p = cfg.profile(p).unwrap();
            (p.seed, p.seed_from)
        };
        assert_eq!(
            seed("pw"),
            (SeedKind::Ssh, SeedFrom::DeployKeys("password"))
        );
        assert_eq!(
            seed("key"),
            (SeedKind::Ssh, SeedFrom::DeployKeys("private_key"))
        );
        // Looked up as salt-cloud does: the user from `cloud`, the key from the provider.
        assert_eq!(
            seed("inherited"),
            (SeedKind::Ssh, SeedFrom::DeployKeys("private_key"))
        );
        assert_eq!(seed("nouser"), (SeedKind::CloudInit, SeedFrom::Default));
        assert_eq!(seed("nocred"), (SeedKind::CloudInit, SeedFrom::Default));
        assert_eq!(cfg.profile("nocred").unwrap().unused, ["deploy_command"]);
        assert_eq!(seed("written"), (SeedKind::Smbios, SeedFrom::Written));
        assert_eq!(seed("nodeploy"), (SeedKind::CloudInit, SeedFrom::Default));
        let e = error_with(&cfg)("`contradiction.seed`");
        assert!(e.contains("deploy: false"), "{e}");
        assert_eq!(cfg.errors.len(), 1, "{:?}", cfg.errors);
        assert_eq!(
            SeedFrom::DeployKeys("password").why(),
            "from ssh_username + password"
        );
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let d = dir_with(&[("cloud.profiles", "a:\n  provider: [x\n")]);
        let cfg = CloudConfig::load(d.path());
        let m = cfg.errors[0].to_string();
        assert!(m.contains("cloud.profiles line"), "{m}");
    }

    #[test]
    fn adhoc_profiles_for_cloud_create() {
        let d = dir_with(&[(
            "cloud.providers",
            "kvm:\n  driver: libvirt\n  url: test:///default\n",
        )]);
        let cfg = CloudConfig::load(d.path());
        let mut keys = Mapping::new();
        keys.insert("base_domain".into(), "test".into());
        keys.insert("cpus".into(), "2".into());
        let p = cfg.adhoc("kvm", keys.clone()).unwrap();
        assert_eq!((p.base_domain.as_str(), p.cpus), ("test", Some(2)));
        keys.insert("cpus".into(), "lots".into());
        assert!(cfg.adhoc("kvm", keys).unwrap_err().contains("cpus"));
        assert!(cfg
            .adhoc("nope", Mapping::new())
            .unwrap_err()
            .contains("nope"));
    }

    #[test]
    fn a_vms_own_keys_over_its_profile() {
        let d = dir_with(&[
            ("cloud.providers", "kvm:\n  driver: libvirt\n  url: test:///default\n"),
            (
                "cloud.profiles",
                "web:\n  provider: kvm\n  base_domain: test\n  cpus: 1\n  grains: {a: 1}\n  minion: {master: m}\n",
            ),
        ]);
        let cfg = CloudConfig::load(d.path());
        let keys: Mapping =
            yaml_serde::from_str("cpus: 2\ngrains: {b: 2}\nminion: {master_port: 5506}\n").unwrap();
        let p = cfg.profile_with("web", keys).unwrap();
        assert_eq!(p.cpus, Some(2));
        assert_eq!(p.grains.get("a"), Some(&Value::from(1)));
        assert_eq!(p.grains.get("b"), Some(&Value::from(2)));
        assert_eq!(p.minion.get("master"), Some(&Value::from("m")));
        assert_eq!(p.minion.get("master_port"), Some(&Value::from(5506)));
        // The profile itself is unchanged, and a bad key is an error naming it.
        assert_eq!(cfg.profile("web").unwrap().cpus, Some(1));
        let bad: Mapping = yaml_serde::from_str("cpus: lots\n").unwrap();
        assert!(cfg.profile_with("web", bad).unwrap_err().contains("cpus"));
        assert!(cfg.profile_with("nope", Mapping::new()).is_err());
    }

    #[test]
    fn memory_units() {
        let v = |s: &str| parse_mib(&yaml_serde::from_str::<Value>(s).unwrap());
        assert_eq!(v("512"), Some(512));
        assert_eq!(v("'2G'"), Some(2048));
        assert_eq!(v("'1024 MiB'"), Some(1024));
        assert_eq!(v("'1x'"), None);
        assert_eq!(v("-1"), None);
    }
}
