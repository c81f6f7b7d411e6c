//! The cloud service: profile -> clone pipeline with rollback, destroy, list and actions,
//! shared by the CLI and the sidecar's `cloud.*` jobs.
//!
//! Every step that makes something records it in the request's [`Made`] list before the next
//! step runs; a failure at any step undoes that list in reverse, so a failed create leaves
//! nothing behind.

pub mod names;

use crate::config::cloud::{CloneStrategy, CloudConfig, Profile};
use crate::libvirt::domain_xml::{self, CloneDisk, CloneSpec, DiskSource, Ownership};
use crate::libvirt::{Hypervisor, Instance, LibvirtError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_MAX_PARALLEL: usize = 8;

/// The steps of a create, in order. Tests (and the crash tests) stop a create after any one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Disks,
    Nvram,
    Defined,
    Started,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Disks, Step::Nvram, Step::Defined, Step::Started];

    pub fn name(self) -> &'static str {
        match self {
            Step::Disks => "disks",
            Step::Nvram => "nvram",
            Step::Defined => "defined",
            Step::Started => "started",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    BadName(String),
    #[error("a create for {0:?} is already in progress")]
    Busy(String),
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error("injected failure after step {0}")]
    Injected(&'static str),
    #[error("internal: {0}")]
    Internal(String),
}

/// Something a create made, in the order made; undone in reverse.
#[derive(Debug, Clone, PartialEq)]
pub enum Made {
    Volume(String),
    Domain(String),
}

/// Receives progress of long work (the CLI prints it; the sidecar fires events).
pub trait Progress: Send + Sync {
    fn step(&self, name: &str, step: &str, data: Value);
}

/// Progress that goes nowhere.
pub struct Quiet;
impl Progress for Quiet {
    fn step(&self, _: &str, _: &str, _: Value) {}
}

/// Options of one profile request.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Request id recorded in each clone's metadata (a jid, or a random one).
    pub request: String,
    /// Testing: fail right after this step, as if the next one had failed.
    pub fail_after: Option<Step>,
}

/// What a successful create reports, in salt-cloud's spirit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Created {
    pub name: String,
    pub id: String,
    pub state: String,
    pub profile: String,
    pub provider: String,
    pub driver: String,
    pub base_domain: String,
    pub macs: Vec<String>,
    pub volumes: Vec<String>,
    pub timings_ms: BTreeMap<String, u64>,
}

/// The cloud service.
pub struct Cloud {
    pub config: CloudConfig,
    max_parallel: usize,
    busy: Arc<Mutex<HashSet<String>>>,
    hypervisors: Mutex<HashMap<String, Arc<Hypervisor>>>,
}

/// Holds a name for the duration of a create.
struct NameLock {
    name: String,
    set: Arc<Mutex<HashSet<String>>>,
}

impl Drop for NameLock {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.name);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Cloud {
    pub fn new(config: CloudConfig, max_parallel: usize) -> Arc<Self> {
        Arc::new(Self {
            config,
            max_parallel: max_parallel.max(1),
            busy: Default::default(),
            hypervisors: Default::default(),
        })
    }

    /// A connection to `uri`, opened once and reopened when it died.
    pub fn hypervisor(&self, uri: &str) -> Result<Arc<Hypervisor>, LibvirtError> {
        let mut map = self.hypervisors.lock().expect("hypervisor map");
        if let Some(h) = map.get(uri) {
            if h.is_alive() {
                return Ok(h.clone());
            }
        }
        let h = Arc::new(Hypervisor::open(uri)?);
        map.insert(uri.to_string(), h.clone());
        Ok(h)
    }

    /// The distinct libvirt URIs of all providers.
    pub fn uris(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .config
            .providers
            .values()
            .flatten()
            .filter(|p| p.driver == "libvirt")
            .filter_map(|p| p.url.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn lock_name(&self, name: &str) -> Result<NameLock, CloudError> {
        let mut s = self.busy.lock().expect("busy set");
        if !s.insert(name.to_string()) {
            return Err(CloudError::Busy(name.into()));
        }
        Ok(NameLock {
            name: name.into(),
            set: self.busy.clone(),
        })
    }

    /// Clones one VM per name from `profile`, up to `max_parallel` at once. Names are all
    /// checked before anything is made; each name's result is independent.
    pub async fn profile(
        self: &Arc<Self>,
        profile: &str,
        names: &[String],
        opts: CreateOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<BTreeMap<String, Result<Created, CloudError>>, CloudError> {
        let prof = self
            .config
            .profile(profile)
            .map_err(CloudError::Config)?
            .clone();
        names::check_all(names).map_err(CloudError::BadName)?;
        let limit = prof.max_parallel.unwrap_or(self.max_parallel);
        let sem = Arc::new(tokio::sync::Semaphore::new(limit));
        let mut tasks = Vec::new();
        for name in names {
            let me = self.clone();
            let prof = prof.clone();
            let name = name.clone();
            let opts = opts.clone();
            let progress = progress.clone();
            let sem = sem.clone();
            tasks.push((
                name.clone(),
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.expect("semaphore open");
                    tokio::task::spawn_blocking(move || {
                        me.create_one(&prof, &name, &opts, &*progress)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(CloudError::Internal(format!("clone task failed: {e}")))
                    })
                }),
            ));
        }
        let mut out = BTreeMap::new();
        for (name, t) in tasks {
            let r = t
                .await
                .unwrap_or_else(|e| Err(CloudError::Internal(format!("clone task failed: {e}"))));
            out.insert(name, r);
        }
        Ok(out)
    }

    /// One clone, blocking. On error everything made is undone before returning.
    pub fn create_one(
        &self,
        prof: &Profile,
        name: &str,
        opts: &CreateOptions,
        progress: &dyn Progress,
    ) -> Result<Created, CloudError> {
        let _lock = self.lock_name(name)?;
        let mut made: Vec<Made> = Vec::new();
        let t0 = Instant::now();
        let mut timings = BTreeMap::new();
        let result = self.build(prof, name, opts, progress, &mut made, &mut timings, t0);
        match result {
            Ok(c) => Ok(c),
            Err(e) => {
                let hv = self.hypervisor(&prof.url);
                let leftovers = match hv {
                    Ok(hv) => undo(&hv, &made),
                    Err(e2) => made.iter().map(|m| format!("{m:?}: {e2}")).collect(),
                };
                if leftovers.is_empty() {
                    tracing::warn!(name, error = %e, undone = made.len(), "create failed; rolled back");
                } else {
                    tracing::error!(name, error = %e, ?leftovers, "create failed; rollback left these behind");
                }
                progress.step(name, "failed", json!({"error": e.to_string(), "rolled_back": made.len(), "left_behind": leftovers}));
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        prof: &Profile,
        name: &str,
        opts: &CreateOptions,
        progress: &dyn Progress,
        made: &mut Vec<Made>,
        timings: &mut BTreeMap<String, u64>,
        t0: Instant,
    ) -> Result<Created, CloudError> {
        let checkpoint =
            |step: Step, timings: &mut BTreeMap<String, u64>| -> Result<(), CloudError> {
                timings.insert(step.name().into(), ms(t0.elapsed()));
                progress.step(name, step.name(), json!({"elapsed_ms": ms(t0.elapsed())}));
                if opts.fail_after == Some(step) {
                    return Err(CloudError::Injected(step.name()));
                }
                Ok(())
            };
        let hv = self.hypervisor(&prof.url)?;
        hv.check_free(name)?;
        let base = hv.base(&prof.base_domain)?;

        // Disks: one volume per base disk, named after the clone and the device.
        let mut disks = Vec::new();
        for (i, d) in base.disks.iter().enumerate() {
            let mut capacity = d.capacity;
            if i == 0 {
                if let Some(gib) = prof.disk_gib {
                    let want = gib * 1024 * 1024 * 1024;
                    if want < d.capacity {
                        return Err(LibvirtError::Shrink {
                            want: gib,
                            have: d.capacity,
                        }
                        .into());
                    }
                    capacity = want;
                }
            }
            let pool = prof.pool.clone().unwrap_or_else(|| d.pool.clone());
            let (vol_name, format) = match prof.clone_strategy {
                CloneStrategy::Quick => (format!("{name}-{}.qcow2", d.target), "qcow2".to_string()),
                CloneStrategy::Full => {
                    let ext = if d.format == "qcow2" { "qcow2" } else { "img" };
                    (format!("{name}-{}.{ext}", d.target), d.format.clone())
                }
            };
            let path = match prof.clone_strategy {
                CloneStrategy::Quick => hv.create_overlay(&pool, &vol_name, d, capacity)?,
                CloneStrategy::Full => hv.create_copy(&pool, &vol_name, d, capacity)?,
            };
            made.push(Made::Volume(path.clone()));
            disks.push(CloneDisk {
                target: d.target.clone(),
                source: if d.by_volume {
                    DiskSource::Volume {
                        pool,
                        volume: vol_name,
                    }
                } else {
                    DiskSource::File(path)
                },
                format,
            });
        }
        checkpoint(Step::Disks, timings)?;

        let nvram = match &base.xml.nvram {
            Some(p) => {
                let copied = hv.copy_nvram(p, name)?;
                if let Some(c) = &copied {
                    made.push(Made::Volume(c.clone()));
                }
                // Outside a pool: let libvirt make a fresh one from the loader's template.
                Some(copied.unwrap_or_else(|| nvram_sibling(p, name)))
            }
            None => None,
        };
        checkpoint(Step::Nvram, timings)?;

        let uuid = uuid::Uuid::new_v4().to_string();
        let volumes: Vec<String> = made
            .iter()
            .filter_map(|m| match m {
                Made::Volume(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let spec = CloneSpec {
            name: name.into(),
            uuid: uuid.clone(),
            description: prof
                .desc
                .clone()
                .unwrap_or_else(|| format!("cloned from {} by virtseed", prof.base_domain)),
            disks,
            nvram,
            cpus: prof.cpus,
            memory_mib: prof.memory_mib,
            ownership: Ownership {
                profile: prof.name.clone(),
                provider: prof.provider.clone(),
                base: prof.base_domain.clone(),
                fingerprint: String::new(),
                created: now_secs(),
                request: opts.request.clone(),
                volumes: volumes.clone(),
                files: vec![],
            },
            extra_devices: vec![],
            oem_strings: vec![],
        };
        let (xml, macs) = domain_xml::clone_xml(&base.xml, &spec).map_err(LibvirtError::from)?;
        hv.define(&xml, prof.validate_xml)?;
        made.push(Made::Domain(name.into()));
        if prof.onboot {
            hv.set_autostart(name, true)?;
        }
        checkpoint(Step::Defined, timings)?;

        hv.start(name)?;
        checkpoint(Step::Started, timings)?;

        Ok(Created {
            name: name.into(),
            id: uuid,
            state: "running".into(),
            profile: prof.name.clone(),
            provider: format!("{}:{}", prof.provider, prof.driver),
            driver: prof.driver.clone(),
            base_domain: prof.base_domain.clone(),
            macs,
            volumes,
            timings_ms: timings.clone(),
        })
    }

    /// Finds which provider URI holds `name` among virtseed's domains.
    fn locate(&self, name: &str) -> Result<(Arc<Hypervisor>, Instance), CloudError> {
        let mut found = Vec::new();
        let mut not_ours = None;
        let mut errors = Vec::new();
        for uri in self.uris() {
            let hv = match self.hypervisor(&uri) {
                Ok(h) => h,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            match hv.show(name) {
                Ok(i) => found.push((hv, i)),
                Err(LibvirtError::NoDomain { .. }) => {}
                Err(e @ LibvirtError::NotOurs { .. }) => not_ours = Some(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        match found.len() {
            1 => Ok(found.pop().expect("one")),
            0 => {
                if let Some(e) = not_ours {
                    return Err(e.into());
                }
                let mut msg = format!("no VM named {name:?} made by virtseed on any libvirt provider");
                if !errors.is_empty() {
                    msg.push_str(&format!(" (unreachable: {})", errors.join("; ")));
                }
                Err(CloudError::Config(msg))
            }
            _ => Err(CloudError::Config(format!(
                "{name:?} exists on several providers ({}); destroy it with virsh on the one you mean",
                found.iter().map(|(h, _)| h.uri().to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Destroys one VM virtseed made: stop, undefine, delete its volumes.
    pub fn destroy_one(&self, name: &str, progress: &dyn Progress) -> Result<Value, CloudError> {
        names::check(name).map_err(CloudError::BadName)?;
        let _lock = self.lock_name(name)?;
        let (hv, inst) = self.locate(name)?;
        progress.step(name, "destroying", json!({"name": name}));
        let deleted = hv.destroy(name)?;
        progress.step(name, "destroyed", json!({"name": name}));
        Ok(json!({"name": name, "id": inst.uuid, "volumes_deleted": deleted, "state": "destroyed"}))
    }

    /// Every VM virtseed made, per provider URI.
    pub fn list(&self) -> BTreeMap<String, Result<Vec<Instance>, String>> {
        self.uris()
            .into_iter()
            .map(|uri| {
                let r = self
                    .hypervisor(&uri)
                    .and_then(|h| h.list())
                    .map_err(|e| e.to_string());
                (uri, r)
            })
            .collect()
    }

    /// `start`, `stop`, `reboot` or `show_instance` on one VM virtseed made.
    pub fn action(&self, action: &str, name: &str) -> Result<Value, CloudError> {
        names::check(name).map_err(CloudError::BadName)?;
        let (hv, _) = self.locate(name)?;
        match action {
            "start" => hv.start(name)?,
            "stop" => hv.stop(name)?,
            "reboot" => hv.reboot(name)?,
            "show_instance" => {}
            other => {
                return Err(CloudError::Config(format!(
                    "unknown action {other:?} (start, stop, reboot, show_instance)"
                )))
            }
        }
        Ok(instance_json(&hv.show(name)?))
    }
}

/// Where libvirt would keep a fresh NVRAM for the clone, beside the base's.
fn nvram_sibling(base_nvram: &str, name: &str) -> String {
    let dir = std::path::Path::new(base_nvram)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/var/lib/libvirt/qemu/nvram".into());
    format!("{dir}/{name}_VARS.fd")
}

/// Undoes `made` in reverse; returns what could not be undone.
pub fn undo(hv: &Hypervisor, made: &[Made]) -> Vec<String> {
    let mut left = Vec::new();
    for m in made.iter().rev() {
        let r = match m {
            Made::Domain(name) => hv.undefine(name),
            Made::Volume(path) => hv.delete_volume(path),
        };
        if let Err(e) = r {
            left.push(format!("{m:?}: {e}"));
        }
    }
    left
}

/// An instance in salt-cloud's `list_nodes` shape plus virtseed's record.
pub fn instance_json(i: &Instance) -> Value {
    json!({
        "id": i.uuid,
        "name": i.name,
        "state": i.state,
        "public_ips": i.addresses,
        "private_ips": [],
        "size": format!("{} vCPU, {} MiB", i.vcpus, i.memory_kib / 1024),
        "image": i.ownership.base,
        "profile": i.ownership.profile,
        "provider": i.ownership.provider,
        "macs": i.macs,
        "created": i.ownership.created,
        "fingerprint": i.ownership.fingerprint,
    })
}
