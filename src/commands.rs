//! The one-shot commands: profile, destroy, list, check-config.

use anyhow::Result;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use virtseed::bus::events::EventBus;
use virtseed::cloud::{self, Cloud, CreateOptions, MasterCtx, Progress, Step};
use virtseed::config::cloud::{masked, CloudConfig, IpSource, Profile, SeedKind};
use virtseed::config::master::MasterOpts;
use virtseed::config::settings::Settings;

/// The command printed its own failure report; exit non-zero without another message.
#[derive(Debug)]
pub struct Failed;
impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}
impl std::error::Error for Failed {}

/// Progress on stderr, one line per step; events to the master's bus when there is one.
struct Lines {
    bus: Option<(tokio::runtime::Handle, EventBus)>,
}

impl Progress for Lines {
    fn step(&self, name: &str, step: &str, data: Value) {
        match data.get("elapsed_ms") {
            Some(ms) => eprintln!("{name}: {step} ({ms} ms)"),
            None => eprintln!("{name}: {step} {data}"),
        }
    }

    fn fire(&self, tag: &str, data: Value) {
        if let Some((rt, bus)) = &self.bus {
            let data = virtseed::bus::from_json(&data);
            if let Err(e) = rt.block_on(bus.fire(tag, data)) {
                tracing::warn!(tag, error = %e, "could not fire event (is the master running?)");
            }
        }
    }
}

/// The cloud service for `config_dir`: with the master's identity context when `DIR/master`
/// exists (clones get keys and seeds), without it otherwise.
fn load(config_dir: &Path, parallel: Option<usize>) -> Result<(Arc<Cloud>, Lines)> {
    let cfg = CloudConfig::load(config_dir);
    for e in &cfg.errors {
        eprintln!("warning: {e}");
    }
    let (master, bus) = if config_dir.join("master").exists() {
        let opts = MasterOpts::load(config_dir)?;
        let settings = Settings::load(config_dir)?;
        let ctx = MasterCtx::from_opts(&opts, &settings)?;
        let bus = EventBus::new(&opts.sock_dir, settings.salt_version);
        (Some(ctx), Some((tokio::runtime::Handle::current(), bus)))
    } else {
        eprintln!(
            "note: no {}/master: clones get no minion key or seed",
            config_dir.display()
        );
        (None, None)
    };
    Ok((
        Cloud::new(cfg, master, parallel.unwrap_or(cloud::DEFAULT_MAX_PARALLEL)),
        Lines { bus },
    ))
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn profile(
    config_dir: &Path,
    profile: &str,
    names: &[String],
    parallel: Option<usize>,
    fail_after: Option<&str>,
) -> Result<()> {
    let fail_after = match fail_after {
        None => None,
        Some(s) => Some(
            Step::ALL
                .into_iter()
                .find(|st| st.name() == s)
                .ok_or_else(|| anyhow::anyhow!("--fail-after: unknown step {s:?}"))?,
        ),
    };
    let (c, lines) = load(config_dir, parallel)?;
    let request = uuid::Uuid::new_v4().simple().to_string();
    let opts = CreateOptions {
        request: request.clone(),
        fail_after,
        job: None,
        minion_pub: None,
    };
    let results = c.profile(profile, names, opts, Arc::new(lines)).await?;
    for n in names {
        c.journal_close(&request, n);
    }
    report(
        results
            .into_iter()
            .map(|(n, r)| (n, r.map(|c| serde_json::to_value(c).unwrap_or_default()))),
    )
}

/// Prints `{name: result}` (errors as `{Error: ...}`, salt-cloud's shape); fails if any did.
fn report(
    results: impl IntoIterator<Item = (String, Result<Value, cloud::CloudError>)>,
) -> Result<()> {
    let mut out = serde_json::Map::new();
    let mut failed = false;
    for (name, r) in results {
        let v = r.unwrap_or_else(|e| {
            failed = true;
            json!({"Error": e.to_string()})
        });
        out.insert(name, v);
    }
    print(&Value::Object(out));
    if failed {
        return Err(Failed.into());
    }
    Ok(())
}

/// `virtseed warm [--drop] PROFILE...`: each profile's warm state on each of its hosts.
pub async fn warm(config_dir: &Path, profiles: &[String], drop: bool) -> Result<()> {
    let (c, lines) = load(config_dir, None)?;
    let lines = Arc::new(lines);
    let mut results = Vec::new();
    for p in profiles {
        let (c, p, lines) = (c.clone(), p.clone(), lines.clone());
        let r = tokio::task::spawn_blocking(move || c.warm(&p, drop, &*lines)).await?;
        results.push((profiles[results.len()].clone(), r));
    }
    report(results)
}

pub async fn destroy(config_dir: &Path, names: &[String]) -> Result<()> {
    let (c, lines) = load(config_dir, None)?;
    report(c.destroy_many(names, Arc::new(lines)).await)
}

pub fn list(config_dir: &Path) -> Result<()> {
    let cfg = CloudConfig::load(config_dir);
    for e in &cfg.errors {
        eprintln!("warning: {e}");
    }
    // With the master's config, the addresses minions reported in their grains too.
    let master = config_dir
        .join("master")
        .exists()
        .then(|| -> Option<MasterCtx> {
            let opts = MasterOpts::load(config_dir).ok()?;
            let settings = Settings::load(config_dir).ok()?;
            MasterCtx::from_opts(&opts, &settings).ok()
        })
        .flatten();
    let c = Cloud::new(cfg, master, 1);
    if c.uris().is_empty() {
        anyhow::bail!(
            "no libvirt provider in {}/cloud.providers(.d)",
            config_dir.display()
        );
    }
    let mut failed = false;
    println!(
        "{:<24} {:<10} {:<36} {:<16} {:<16} ADDRESSES",
        "NAME", "STATE", "UUID", "PROFILE", "HOST"
    );
    for (uri, r) in c.list() {
        match r {
            Ok(list) => {
                for i in list {
                    println!(
                        "{:<24} {:<10} {:<36} {:<16} {:<16} {}",
                        i.name,
                        i.state,
                        i.uuid,
                        i.ownership.profile,
                        c.host_name(&uri),
                        if i.addresses.is_empty() {
                            "-".to_string()
                        } else {
                            i.addresses.join(",")
                        }
                    );
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("{uri}: {e}");
            }
        }
    }
    if failed {
        return Err(Failed.into());
    }
    Ok(())
}

fn or_base<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "as base".into())
}

/// What of a template that was booted before each clone of `p` does not keep.
fn what_is_reset(p: &Profile) -> &'static str {
    use virtseed::config::cloud::SeedKind as Seed;
    match p.seed {
        Seed::Ssh => "new UUID, MACs and machine-id; before the deploy, virtseed's driver removes over SSH what a booted template left (minion key, id and cache, cloud-init instance state, dhclient leases, SSH host keys older than the boot); the deploy installs its minion key and config (docs/golden-images.md)",
        _ => "new UUID, MACs, machine-id, minion id and key; virtseed's guest side in the image removes what a booted template left (minion key and id, /var/cache/salt/minion, cloud-init instance state, DHCP leases, SSH host keys) at the clone's first boot (docs/golden-images.md)",
    }
}

/// One resolved profile, as check-config shows it: what each key will do.
fn print_profile(name: &str, p: &Profile) {
    println!("  {name} ({})", p.file.display());
    println!("    provider: {}:{} ({})", p.provider, p.driver, p.url);
    println!("    base_domain: {}", p.base_domain);
    println!(
        "    clone_strategy: {:?}, seed: {} ({}), accept: {:?}, ip_source: {}",
        p.clone_strategy,
        p.seed.name(),
        p.seed_from.why(),
        p.accept,
        match p.ip_source {
            IpSource::IpLearning => "ip-learning (DHCP leases, then ARP)",
            IpSource::QemuAgent => "qemu-agent",
        }
    );
    println!("    each clone: {}", what_is_reset(p));
    println!(
        "    cpus: {}, cpuunits: {}, memory: {}, disk: {}, onboot: {}",
        or_base(p.cpus, ""),
        or_base(p.cpuunits, " (cputune shares)"),
        or_base(p.memory_mib, " MiB"),
        or_base(p.disk_gib, " GiB"),
        p.onboot
    );
    println!(
        "    nameserver: {}, swap: {}",
        if p.nameservers.is_empty() {
            "from DHCP".to_string()
        } else {
            p.nameservers
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        },
        p.swap_mib
            .map(|m| format!("{m} MiB swap file at first boot"))
            .unwrap_or_else(|| "none".into())
    );
    if let Some(ud) = &p.userdata {
        if p.seed == SeedKind::Smbios {
            println!(
                "    userdata_file: {}: unused (seed: smbios carries no cloud-init user-data)",
                ud.path.display()
            );
        } else {
            println!(
                "    userdata_file: {} (merged under virtseed's user-data)",
                ud.path.display()
            );
            for c in ud.conflicts(p.swap_mib.is_some()) {
                println!("    userdata_file conflict: {c}");
            }
        }
    }
    if !p.unused.is_empty() {
        println!(
            "    unused (salt-cloud SSH deploy options; virtseed seeds the guest instead): {}",
            p.unused.join(", ")
        );
    }
    if !p.unknown.is_empty() {
        println!(
            "    unknown keys (ignored; typos?): {}",
            p.unknown.join(", ")
        );
    }
    let raw = yaml_serde::to_string(&masked(&p.raw)).unwrap_or_default();
    println!("    as written (secrets masked):");
    for line in raw.lines() {
        println!("      {line}");
    }
}

pub fn check_config(config_dir: &Path) -> Result<()> {
    let cfg = CloudConfig::load(config_dir);
    println!("files read:");
    for f in &cfg.files {
        println!("  {}", f.display());
    }
    println!("providers:");
    for (alias, ps) in &cfg.providers {
        for p in ps {
            println!(
                "  {alias}:{} {}",
                p.driver,
                if p.driver == "libvirt" {
                    p.hosts
                        .iter()
                        .map(|h| format!("{} ({})", h.uri, h.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                } else {
                    "(not served by virtseed)".into()
                }
            );
        }
    }
    println!("profiles:");
    for (name, p) in &cfg.profiles {
        print_profile(name, p);
    }
    for (name, f) in &cfg.foreign {
        println!("  {name} ({}): {}", f.file.display(), f.not_served());
    }
    if cfg.errors.is_empty() {
        println!("no errors");
        Ok(())
    } else {
        eprintln!("errors:");
        for e in &cfg.errors {
            eprintln!("  {e}");
        }
        Err(Failed.into())
    }
}
