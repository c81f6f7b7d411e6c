//! One profile resolved: its provider picked, each key looked up where salt-cloud looks
//! (profile, provider, main `cloud` file) and checked, with errors naming the file, the
//! profile and the key.

use super::{
    deep_merge, is_secret_key, key_err, parse_mib, AcceptMode, CloneStrategy, ForeignProfile,
    IpSource, Profile, Provider, SeedFrom, SeedKind, PROFILE_KEYS, PROXMOX_KEYS,
    UNUSED_SALT_CLOUD_KEYS,
};
use crate::config::{yaml, ConfigError};
use crate::seed::userdata::UserData;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use yaml_serde::{Mapping, Value};

// The names each enum key takes; the first is the default.
const CLONE_STRATEGIES: &[(&str, CloneStrategy)] = &[
    ("quick", CloneStrategy::Quick),
    ("full", CloneStrategy::Full),
];
const IP_SOURCES: &[(&str, IpSource)] = &[
    ("ip-learning", IpSource::IpLearning),
    ("qemu-agent", IpSource::QemuAgent),
];
const SEEDS: &[(&str, SeedKind)] = &[
    ("cloud-init", SeedKind::CloudInit),
    ("cloudinit", SeedKind::CloudInit),
    ("nocloud", SeedKind::CloudInit),
    ("smbios", SeedKind::Smbios),
    ("ssh", SeedKind::Ssh),
];
const ACCEPT_MODES: &[(&str, AcceptMode)] = &[
    ("preseed", AcceptMode::Preseed),
    ("on_first_auth", AcceptMode::OnFirstAuth),
    ("manual", AcceptMode::Manual),
];

pub(super) enum Resolved {
    Ours(Box<Profile>),
    Foreign(ForeignProfile),
}

pub(super) fn resolve_profile(
    name: &str,
    file: &Path,
    prof: Mapping,
    providers: &BTreeMap<String, Vec<Provider>>,
    main: &Mapping,
) -> Result<Resolved, ConfigError> {
    let (alias, provider) = pick_provider(name, file, &prof, providers)?;
    if provider.driver != "libvirt" {
        return Ok(Resolved::Foreign(ForeignProfile {
            name: name.to_string(),
            file: file.to_path_buf(),
            provider: alias,
            driver: provider.driver.clone(),
            recognised: recognised(provider, &prof),
        }));
    }
    let keys = Lookup {
        name,
        file,
        prof: &prof,
        provider,
        main,
    };
    // Checked in this order: a profile with several wrong keys reports the first.
    // What to clone, and how.
    let base_domain = keys.base_domain()?;
    let clone_strategy = keys.choice("clone_strategy", CLONE_STRATEGIES, "quick or full")?;
    let ip_source = keys.choice("ip_source", IP_SOURCES, "ip-learning or qemu-agent")?;
    let memory_mib = keys.memory()?;
    // cgroup v1 takes shares from 2 to 262144, v2 weights from 1 to 10000 (libvirt writes
    // `<shares>` to cpu.weight as is): 2 to 10000 works on both.
    let cpuunits = keys.number("cpuunits", 2, 10000)?.map(|n| n as u32);
    let swap_mib = keys.number("swap", 1, 1024 * 1024)?.map(|n| n as u64);
    let nameservers = keys.nameservers()?;
    // The minion's identity, and how its key is accepted.
    let (seed, seed_from) = keys.seed()?;
    let accept = keys.choice("accept", ACCEPT_MODES, "preseed, on_first_auth or manual")?;
    let keysize = keys.keysize()?;
    let minion = keys.mapping("minion")?;
    let grains = keys.mapping("grains")?;
    let userdata = keys.userdata()?;
    // Where it is made, and by which sidecar.
    let pool = keys.text("pool")?;
    let sidecar = keys.sidecar()?;
    let hosts = super::hosts::pick(&provider.hosts, keys.text("host")?.as_deref())
        .map_err(|e| keys.err("host", e))?;
    let (unused, unknown) = unused_and_unknown(&prof, seed);

    Ok(Resolved::Ours(Box::new(Profile {
        name: name.to_string(),
        file: file.to_path_buf(),
        provider: alias,
        driver: provider.driver.clone(),
        url: hosts.first().map(|h| h.uri.clone()).unwrap_or_default(),
        hosts,
        base_domain,
        clone_strategy,
        ip_source,
        validate_xml: keys.boolean("validate_xml", true)?,
        cpus: keys.number("cpus", 1, 4096)?.map(|n| n as u32),
        cpuunits,
        memory_mib,
        disk_gib: keys.number("disk", 1, 65536)?.map(|n| n as u64),
        swap_mib,
        onboot: keys.boolean("onboot", false)?,
        desc: keys.text("desc")?,
        nameservers,
        userdata,
        minion,
        grains,
        keysize,
        seed,
        seed_from,
        accept,
        autoaccept_window_secs: keys.number("autoaccept_window", 1, 86400)?.unwrap_or(600) as u64,
        force: keys.boolean("force", false)?,
        wait_for_minion: keys.boolean("wait_for_minion", true)?,
        minion_timeout_secs: keys.number("minion_timeout", 1, 86400)?.unwrap_or(300) as u64,
        keep_on_timeout: keys.boolean("keep_on_timeout", false)?,
        pool,
        max_parallel: keys.number("max_parallel", 1, 1024)?.map(|n| n as usize),
        sidecar,
        ssh_forward: keys.boolean("ssh_forward", false)?,
        warm: keys.boolean("warm", false)?,
        unused,
        unknown,
        raw: prof,
    })))
}

/// The provider a profile's `provider:` names (`alias` or `alias:driver`), with its alias.
fn pick_provider<'p>(
    name: &str,
    file: &Path,
    prof: &Mapping,
    providers: &'p BTreeMap<String, Vec<Provider>>,
) -> Result<(String, &'p Provider), ConfigError> {
    let err = |expected: String| key_err(file, format!("{name}.provider"), expected);
    let provider_ref = prof
        .get("provider")
        .and_then(yaml::as_text)
        .ok_or_else(|| err("is required: the provider alias (`alias` or `alias:driver`)".into()))?;
    let (alias, want_driver) = match provider_ref.split_once(':') {
        Some((a, d)) => (a.to_string(), Some(d.to_string())),
        None => (provider_ref.clone(), None),
    };
    let candidates = providers.get(&alias).ok_or_else(|| {
        err(format!(
            "names {alias:?}, which is not in cloud.providers(.d) (known: {})",
            providers.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let provider = match &want_driver {
        Some(d) => candidates
            .iter()
            .find(|p| &p.driver == d)
            .ok_or_else(|| err(format!("alias {alias:?} has no driver {d:?}")))?,
        None => {
            if candidates.len() > 1 {
                return Err(err(format!(
                    "alias {alias:?} has several drivers; write `{alias}:<driver>`"
                )));
            }
            &candidates[0]
        }
    };
    Ok((alias, provider))
}

/// The options of a foreign provider's driver found in it and the profile, as `key=value`
/// (secrets masked), for the "not served" message. Only Proxmox's are known.
fn recognised(provider: &Provider, prof: &Mapping) -> Vec<String> {
    if provider.driver != "proxmox" {
        return Vec::new();
    }
    let mut all = provider.raw.clone();
    all.remove("driver");
    deep_merge(&mut all, prof);
    PROXMOX_KEYS
        .iter()
        .filter_map(|k| {
            let v = all.get(*k)?;
            let shown = if is_secret_key(k) {
                "********".to_string()
            } else {
                yaml::as_text(v).unwrap_or_else(|| yaml::kind(v).to_string())
            };
            Some(format!("{k}={shown}"))
        })
        .collect()
}

/// The profile's keys that salt-cloud's deploy step reads and virtseed does not (unused),
/// and those no one knows (typos?).
/// salt-cloud's SSH deploy keys are unused unless the clone is deployed over SSH
/// (`seed: ssh`: Salt's own bootstrap, run by virtseed's driver, reads them).
fn unused_and_unknown(prof: &Mapping, seed: SeedKind) -> (Vec<String>, Vec<String>) {
    let mut unused = Vec::new();
    let mut unknown = Vec::new();
    for k in prof.keys().filter_map(yaml::as_text) {
        if UNUSED_SALT_CLOUD_KEYS.contains(&k.as_str()) {
            if seed != SeedKind::Ssh {
                unused.push(k);
            }
        } else if !PROFILE_KEYS.contains(&k.as_str()) {
            unknown.push(k);
        }
    }
    (unused, unknown)
}

/// A profile's keys, looked up as salt-cloud does (profile, then provider, then the main
/// `cloud` file; mappings merged) and checked, each error naming the file, profile and key.
struct Lookup<'a> {
    name: &'a str,
    file: &'a Path,
    prof: &'a Mapping,
    provider: &'a Provider,
    main: &'a Mapping,
}

impl Lookup<'_> {
    fn err(&self, key: &str, expected: String) -> ConfigError {
        key_err(self.file, format!("{}.{key}", self.name), expected)
    }

    fn value(&self, key: &str) -> Option<Value> {
        let levels = [
            self.main.get(key),
            self.provider.raw.get(key),
            self.prof.get(key),
        ];
        if levels.iter().flatten().any(|v| v.is_mapping()) {
            let mut out = Mapping::new();
            for v in levels.iter().flatten() {
                if let Value::Mapping(m) = v {
                    deep_merge(&mut out, m);
                }
            }
            return Some(Value::Mapping(out));
        }
        levels.iter().rev().flatten().next().map(|v| (*v).clone())
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.value(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => yaml::as_bool(&v).ok_or_else(|| {
                self.err(
                    key,
                    format!("must be true or false (yes/no/on/off), not {}", show(&v)),
                )
            }),
        }
    }

    fn number(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        match self.value(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match yaml::as_i64(&v) {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.err(
                    key,
                    format!(
                        "must be a whole number from {min} to {max}, not {}",
                        show(&v)
                    ),
                )),
            },
        }
    }

    fn text(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.value(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => yaml::as_text(&v)
                .map(Some)
                .ok_or_else(|| self.err(key, format!("must be a string, not {}", yaml::kind(&v)))),
        }
    }

    fn mapping(&self, key: &str) -> Result<Mapping, ConfigError> {
        match self.value(key) {
            None | Some(Value::Null) => Ok(Mapping::new()),
            Some(Value::Mapping(m)) => Ok(m),
            Some(v) => Err(self.err(key, format!("must be a mapping, not {}", yaml::kind(&v)))),
        }
    }

    /// One of `choices` by its name; the first one when the key is absent.
    fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.text(key)? {
            None => Ok(choices[0].1),
            Some(o) => choices
                .iter()
                .find(|(n, _)| *n == o)
                .map(|(_, v)| *v)
                .ok_or_else(|| self.err(key, format!("must be {expected}, not {o:?}"))),
        }
    }

    /// `seed` as written; without it `ssh` when the profile carries salt-cloud's deploy keys
    /// (`ssh_username` with `password` or `private_key`: the guide's profile, whose template
    /// salt-cloud logs in to) and does not turn the deploy off (`deploy: false`); else
    /// `cloud-init`. virtseed's driver applies the same rule (`_deploys_by_ssh`).
    fn seed(&self) -> Result<(SeedKind, SeedFrom), ConfigError> {
        let deploy_off = self
            .value("deploy")
            .is_some_and(|v| yaml::as_bool(&v) == Some(false));
        if self.text("seed")?.is_some() {
            let seed = self.choice("seed", SEEDS, "cloud-init, smbios or ssh")?;
            if seed == SeedKind::Ssh && deploy_off {
                return Err(self.err(
                    "seed",
                    "is ssh, a deploy over SSH, but `deploy: false` turns salt-cloud's deploy off: remove one of them".into(),
                ));
            }
            return Ok((seed, SeedFrom::Written));
        }
        let given = |key: &str| self.text(key).ok().flatten().is_some_and(|s| !s.is_empty());
        let credential = ["password", "private_key"].into_iter().find(|k| given(k));
        match credential {
            Some(c) if given("ssh_username") && !deploy_off => {
                Ok((SeedKind::Ssh, SeedFrom::DeployKeys(c)))
            }
            _ => Ok((SEEDS[0].1, SeedFrom::Default)),
        }
    }

    /// `memory`: MiB, or a size with a unit.
    fn memory(&self) -> Result<Option<u64>, ConfigError> {
        let Some(v) = self.value("memory").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        match parse_mib(&v) {
            Some(n) if (16..=16 * 1024 * 1024).contains(&n) => Ok(Some(n)),
            _ => Err(self.err(
                "memory",
                format!(
                    "must be a size in MiB of at least 16 (e.g. 2048 or '2G'), not {}",
                    show(&v)
                ),
            )),
        }
    }

    /// `base_domain`, or its synonym `image` (the guide's name, from Proxmox); both may be
    /// given only when they agree.
    fn base_domain(&self) -> Result<String, ConfigError> {
        let base = self.text("base_domain")?.filter(|s| !s.is_empty());
        let image = self.text("image")?.filter(|s| !s.is_empty());
        match (base, image) {
            (Some(b), Some(i)) if b != i => Err(self.err(
                "base_domain",
                format!(
                    "is {b:?} but `image` is {i:?}: `image` is another name for `base_domain`; \
                     keep one, or give both the same domain"
                ),
            )),
            (Some(b), _) | (None, Some(b)) => Ok(b),
            (None, None) => Err(self.err(
                "base_domain",
                "(or its synonym `image`) is required: the name of the shut-off libvirt domain to clone"
                    .into(),
            )),
        }
    }

    /// `nameserver`: IPv4/IPv6 addresses separated by spaces (or commas, or a list).
    fn nameservers(&self) -> Result<Vec<IpAddr>, ConfigError> {
        let words: Vec<String> = match self.value("nameserver") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Sequence(s)) => s
                .iter()
                .map(|v| yaml::as_text(v).unwrap_or_default())
                .collect(),
            Some(v) => yaml::as_text(&v)
                .unwrap_or_default()
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect(),
        };
        let bad = |what: String| {
            self.err(
                "nameserver",
                format!("must be IPv4 or IPv6 addresses separated by spaces (e.g. \"8.8.8.8 8.8.4.4\"), {what}"),
            )
        };
        if words.is_empty() {
            return Err(bad("found none".into()));
        }
        words
            .iter()
            .map(|w| w.parse().map_err(|_| bad(format!("not {w:?}"))))
            .collect()
    }

    /// `userdata_file`: read and checked now, so check-config reports a bad file.
    fn userdata(&self) -> Result<Option<UserData>, ConfigError> {
        let Some(path) = self.text("userdata_file")?.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        UserData::load(Path::new(&path))
            .map(Some)
            .map_err(|e| self.err("userdata_file", format!("{}: {}", e.path, e.msg)))
    }

    fn keysize(&self) -> Result<usize, ConfigError> {
        let keysize = self.number("keysize", 2048, 8192)?.unwrap_or(2048);
        if keysize % 1024 != 0 {
            return Err(self.err(
                "keysize",
                format!("must be a multiple of 1024 (2048, 3072, 4096), not {keysize}"),
            ));
        }
        Ok(keysize as usize)
    }

    fn sidecar(&self) -> Result<Option<String>, ConfigError> {
        let sidecar = self.text("sidecar")?;
        if let Some(s) = &sidecar {
            if !crate::names::valid_minion_id(s) {
                return Err(self.err(
                    "sidecar",
                    format!("must be the sidecar's minion id, not {s:?}"),
                ));
            }
        }
        Ok(sidecar)
    }
}

fn show(v: &Value) -> String {
    match yaml::as_text(v) {
        Some(t) => format!("{t:?}"),
        None => yaml::kind(v).to_string(),
    }
}
