//! The cloud service: profile -> clone pipeline with rollback, destroy, list and actions,
//! shared by the CLI and the sidecar's `cloud.*` jobs.
//!
//! Every step that makes something first records its [`journal::Intent`] (in memory and in
//! the create journal), then makes it; a failure at any step undoes the intents in reverse
//! (skipping what never came to exist), so a failed create leaves nothing behind. A process
//! killed mid-create leaves the journal, which [`Cloud::reconcile`] finishes at next start.

pub mod autoaccept;
pub mod journal;
pub mod names;
pub mod ready;
pub mod service;

use crate::config::cloud::{AcceptMode, CloneStrategy, CloudConfig, Profile, SeedKind};
use crate::libvirt::dom::Element;
use crate::libvirt::domain_xml::{self, CloneDisk, CloneSpec, DiskSource, Ownership};
use crate::libvirt::{Hypervisor, Instance, LibvirtError};
use journal::{Intent, JobRef, Journal};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_MAX_PARALLEL: usize = 8;

/// How long a create that lost its libvirt connection waits for libvirtd to come back.
pub const RETRY_WAIT: Duration = Duration::from_secs(30);

/// The steps of a create, in order. Tests (and the crash tests) stop a create after any one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Disks,
    Nvram,
    Seeded,
    Defined,
    KeyAccepted,
    Started,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Disks,
        Step::Nvram,
        Step::Seeded,
        Step::Defined,
        Step::KeyAccepted,
        Step::Started,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Disks => "disks",
            Step::Nvram => "nvram",
            Step::Seeded => "seeded",
            Step::Defined => "defined",
            Step::KeyAccepted => "key_accepted",
            Step::Started => "started",
        }
    }
}

/// What the clone pipeline needs of the Salt master beside it.
#[derive(Clone)]
pub struct MasterCtx {
    pub pki_dir: std::path::PathBuf,
    pub cachedir: std::path::PathBuf,
    /// The master's public key (`pki_dir/master.pub`): the only master a clone trusts.
    pub master_pub: String,
    pub ret_port: u16,
    pub publish_port: u16,
    /// `salt/key` event `act` for an accept: "accept" before 3008, "accepted" from 3008.
    pub accept_act: &'static str,
    /// virtseed's own state (`accept: on_first_auth` records the first key seen per id).
    pub state_dir: std::path::PathBuf,
}

impl MasterCtx {
    pub fn from_opts(
        m: &crate::config::master::MasterOpts,
        settings: &crate::config::settings::Settings,
    ) -> Result<Self, CloudError> {
        let version = settings.salt_version;
        let path = m.pki_dir.join("master.pub");
        let master_pub = std::fs::read_to_string(&path).map_err(|e| {
            CloudError::Config(format!(
                "cannot read the master's public key {}: {e} (has the master run once? does virtseed run as the master's user?)",
                path.display()
            ))
        })?;
        Ok(Self {
            pki_dir: m.pki_dir.clone(),
            cachedir: m.cachedir.clone(),
            master_pub,
            ret_port: m.ret_port,
            publish_port: m.publish_port,
            accept_act: version.map_or("accept", |v| v.key_act_accept()),
            state_dir: settings.pki_dir.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    BadName(String),
    #[error("a create or destroy of {0:?} is already in progress")]
    Busy(String),
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error("minion id {0:?} already has an accepted key on the master (another machine?); remove it with `salt-key -d {0}` or set `force: true` in the profile")]
    KeyTaken(String),
    #[error("injected failure after step {0}")]
    Injected(&'static str),
    #[error("internal: {0}")]
    Internal(String),
}

/// Receives progress of long work (the CLI prints it; the sidecar fires events).
pub trait Progress: Send + Sync {
    fn step(&self, name: &str, step: &str, data: Value);
    /// Fires an event on the master's bus (`salt/key` after a pre-accept or revoke).
    fn fire(&self, _tag: &str, _data: Value) {}
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
    /// The Salt job this create answers (recorded in the journal for a late return).
    pub job: Option<JobRef>,
}

/// Testing the crash recovery: a create stops dead after this step (named as in
/// [`Step::name`]) and waits to be killed.
pub const PAUSE_ENV: &str = "VIRTSEED_TEST_PAUSE_AFTER";

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
    /// The minion key's fingerprint (`salt-key -f` form), empty without identity.
    pub fingerprint: String,
    pub seed: Option<&'static str>,
    pub timings_ms: BTreeMap<String, u64>,
}

/// The cloud service.
pub struct Cloud {
    pub config: CloudConfig,
    /// The sidecar this service runs in: it serves only providers that name it or none.
    served_by: Option<String>,
    pub master: Option<MasterCtx>,
    /// Started on first use (or at once in a sidecar): `list`, `destroy` and engine-only use
    /// never mint keys.
    keys: std::sync::OnceLock<Arc<crate::pki::KeyPool>>,
    max_parallel: usize,
    busy: Arc<Mutex<HashSet<String>>>,
    hypervisors: Mutex<HashMap<String, Arc<Hypervisor>>>,
    /// Creates in flight, for crash recovery (with a master: in its state dir).
    pub journal: Option<Journal>,
    pause_after: Option<String>,
}

/// Holds a name for the duration of a create.
struct NameLock {
    name: String,
    set: Arc<Mutex<HashSet<String>>>,
    /// Held with an exclusive flock: the CLI and the sidecar (or two CLIs) on one host.
    _file: Option<std::fs::File>,
}

/// An exclusive lock on `name` across virtseed processes on this host: a flock on
/// `$TMPDIR/virtseed-locks/NAME.lock` (names are checked: they are safe file names). The files
/// stay (removing a lock file races with its next user). `Ok(None)`: no lock file could be
/// opened; the in-process lock still holds.
fn lock_across_processes(name: &str) -> Result<Option<std::fs::File>, CloudError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join("virtseed-locks");
    if std::fs::create_dir(&dir).is_ok() {
        // Shared by every user virtseed runs as (root's CLI, the master's user's sidecar).
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    let path = dir.join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .or_else(|_| std::fs::File::open(&path));
    let Ok(file) = file else {
        tracing::warn!(name, path = %path.display(), "cannot open the name's lock file; locking in this process only");
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(CloudError::Busy(name.into())),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(
                name,
                "cannot lock {}: {e}; locking in this process only",
                path.display()
            );
            Ok(None)
        }
    }
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
    /// The service. Without a master (`None`) clones get no identity: their key is not
    /// minted or accepted and no seed is made (used by engine-only tests).
    pub fn new(config: CloudConfig, master: Option<MasterCtx>, max_parallel: usize) -> Arc<Self> {
        Arc::new(Self::with(config, master, max_parallel, None))
    }

    /// The same service in a sidecar `id`: it serves only providers that name it (or none),
    /// and keeps keys minted ahead for the clones to come.
    pub fn serving(
        config: CloudConfig,
        master: Option<MasterCtx>,
        max_parallel: usize,
        id: &str,
    ) -> Arc<Self> {
        let c = Self::with(config, master, max_parallel, Some(id.to_string()));
        if c.master.is_some() {
            c.key_pool();
        }
        Arc::new(c)
    }

    fn with(
        config: CloudConfig,
        master: Option<MasterCtx>,
        max_parallel: usize,
        served_by: Option<String>,
    ) -> Self {
        let journal = master.as_ref().map(|m| Journal::new(&m.state_dir));
        Self {
            config,
            served_by,
            master,
            keys: std::sync::OnceLock::new(),
            max_parallel: max_parallel.max(1),
            busy: Default::default(),
            hypervisors: Default::default(),
            journal,
            pause_after: std::env::var(PAUSE_ENV).ok(),
        }
    }

    fn key_pool(&self) -> &crate::pki::KeyPool {
        self.keys
            .get_or_init(|| crate::pki::KeyPool::start(2048, 4))
    }

    /// Whether this service serves provider `alias`.
    pub fn serves(&self, alias: &str) -> bool {
        let Some(me) = &self.served_by else {
            return true;
        };
        self.config.providers.get(alias).is_some_and(|ps| {
            ps.iter()
                .any(|p| p.sidecar.as_deref().is_none_or(|s| s == me))
        })
    }

    /// Refuses a profile another sidecar serves.
    pub fn check_served(&self, prof: &Profile) -> Result<(), CloudError> {
        match (&self.served_by, &prof.sidecar) {
            (Some(me), Some(want)) if me != want => Err(CloudError::Config(format!(
                "profile {:?} is served by sidecar {want:?}, not {me:?}",
                prof.name
            ))),
            _ => Ok(()),
        }
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
            .filter(|p| p.driver == "libvirt" && self.serves(&p.alias))
            .filter_map(|p| p.url.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn lock_name(&self, name: &str) -> Result<NameLock, CloudError> {
        {
            let mut s = self.busy.lock().expect("busy set");
            if !s.insert(name.to_string()) {
                return Err(CloudError::Busy(name.into()));
            }
        }
        let mut lock = NameLock {
            name: name.into(),
            set: self.busy.clone(),
            _file: None,
        };
        // On error, dropping `lock` frees the name in this process again.
        lock._file = lock_across_processes(name)?;
        Ok(lock)
    }

    fn journal_step(&self, request: &str, name: &str, step: &str) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.update(request, name, |en| en.step = step.into()) {
                tracing::warn!(name, "create journal: {e}");
            }
        }
    }

    /// Records what the create is about to make; nothing is made unless it is recorded.
    fn journal_intend(&self, request: &str, name: &str, i: Intent) -> Result<(), CloudError> {
        match &self.journal {
            Some(j) => j
                .update(request, name, |en| en.intents.push(i))
                .map_err(|e| {
                    CloudError::Internal(format!(
                        "cannot write the create journal in {}: {e}",
                        j.dir().display()
                    ))
                }),
            None => Ok(()),
        }
    }

    /// Takes back the intent of a make step that found its thing already there: it made
    /// nothing, and the rollback must not delete what existed before.
    fn journal_withdraw(&self, request: &str, name: &str, i: &Intent) {
        if let Some(j) = &self.journal {
            let r = j.update(request, name, |en| {
                if let Some(pos) = en.intents.iter().rposition(|x| x == i) {
                    en.intents.remove(pos);
                }
            });
            if let Err(e) = r {
                tracing::warn!(name, "create journal: {e}");
            }
        }
    }

    /// Records the final result of a create whose minion answered (kept by a reconcile).
    pub fn journal_done(&self, request: &str, name: &str, result: &Value) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.update(request, name, |en| {
                en.step = "done".into();
                en.done = Some(result.clone());
            }) {
                tracing::warn!(name, "create journal: {e}");
            }
        }
    }

    /// The create of `name` in `request` is over: made and answered, or undone.
    pub fn journal_close(&self, request: &str, name: &str) {
        if let Some(j) = &self.journal {
            j.remove_owned(request, name, &journal::Owner::me());
        }
    }

    /// Finishes the creates a previous virtseed process left in its journal: a name that
    /// had answered its first ping is kept with its recorded result; anything else is
    /// undone (what never came to exist is skipped). Blocking.
    pub fn reconcile(&self, progress: &dyn Progress) -> Vec<Recovered> {
        let Some(j) = &self.journal else {
            return Vec::new();
        };
        let (entries, errors) = j.interrupted();
        for e in errors {
            tracing::error!("create journal: unreadable entry {e}; remove it once checked");
        }
        let mut out = Vec::new();
        for en in entries {
            if let Some(done) = &en.done {
                j.remove(&en.request, &en.name);
                out.push(Recovered {
                    result: done.clone(),
                    left_behind: vec![],
                    entry: en,
                });
                continue;
            }
            let hv = self.hypervisor(&en.uri);
            let left = undo_intents(hv.as_deref(), self.master.as_ref(), &en.intents, progress);
            let undone: Vec<String> = en.intents.iter().map(describe_intent).collect();
            let result = if left.is_empty() {
                j.remove(&en.request, &en.name);
                json!({"Error": format!(
                    "virtseed stopped while creating {} (after step {}); the create was rolled back: {}",
                    en.name,
                    en.step,
                    if undone.is_empty() { "nothing had been made".to_string() } else { undone.join(", ") }
                )})
            } else {
                let _ = j.update(&en.request, &en.name, |e| e.reported = true);
                json!({"Error": format!(
                    "virtseed stopped while creating {} (after step {}); rolling it back failed for: {} (retried while the sidecar runs)",
                    en.name,
                    en.step,
                    left.join("; ")
                )})
            };
            out.push(Recovered {
                result,
                left_behind: left,
                entry: en,
            });
        }
        out
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
        self.create_many(prof, names, opts, progress).await
    }

    /// Clones one VM per name from a resolved profile (a named one, or `cloud.create`'s).
    pub async fn create_many(
        self: &Arc<Self>,
        prof: Profile,
        names: &[String],
        opts: CreateOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<BTreeMap<String, Result<Created, CloudError>>, CloudError> {
        names::check_all(names).map_err(CloudError::BadName)?;
        self.check_served(&prof)?;
        let limit = prof.max_parallel.unwrap_or(self.max_parallel);
        let me = self.clone();
        Ok(per_name(names, limit, "clone", move |name| {
            me.create_one(&prof, name, &opts, &*progress)
        })
        .await)
    }

    /// One clone, blocking. On error everything made is undone before returning. A create
    /// that failed because libvirtd went away, and was fully undone, is tried once more when
    /// libvirtd is back (within [`RETRY_WAIT`]).
    pub fn create_one(
        &self,
        prof: &Profile,
        name: &str,
        opts: &CreateOptions,
        progress: &dyn Progress,
    ) -> Result<Created, CloudError> {
        let _lock = self.lock_name(name)?;
        let failed = match self.attempt(prof, name, opts, progress) {
            Ok(c) => return Ok(c),
            Err(f) => f,
        };
        let failed = match failed.error {
            CloudError::Libvirt(e) if e.is_connection_lost() && failed.left.is_empty() => {
                tracing::warn!(name, "libvirt connection lost ({e}); trying again");
                progress.step(name, "retrying", json!({"error": e.to_string()}));
                match self.attempt(prof, name, opts, progress) {
                    Ok(c) => return Ok(c),
                    Err(f) => f,
                }
            }
            error => Failed { error, ..failed },
        };
        progress.step(
            name,
            "failed",
            json!({"error": failed.error.to_string(), "rolled_back": failed.undone, "left_behind": failed.left}),
        );
        Err(failed.error)
    }

    /// Waits until `uri` answers again; false after `limit`.
    fn wait_hypervisor(&self, uri: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.hypervisor(uri).is_ok_and(|h| h.is_alive()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }

    /// One try at a clone; on error, everything it made is undone (or left to the reconcile).
    fn attempt(
        &self,
        prof: &Profile,
        name: &str,
        opts: &CreateOptions,
        progress: &dyn Progress,
    ) -> Result<Created, Failed> {
        // Everything this create is about to make, recorded before it is made (and journaled):
        // what a rollback undoes, whatever step failed.
        let intents = std::cell::RefCell::new(Vec::new());
        let t0 = Instant::now();
        let mut timings = BTreeMap::new();
        if let Some(j) = &self.journal {
            j.write(&journal::Entry {
                name: name.into(),
                request: opts.request.clone(),
                job: opts.job.clone(),
                profile: prof.name.clone(),
                uri: prof.url.clone(),
                owner: journal::Owner::me(),
                step: "begun".into(),
                intents: vec![],
                done: None,
                reported: false,
            })
            .map_err(|e| Failed {
                error: CloudError::Internal(format!(
                    "cannot write the create journal in {}: {e}",
                    j.dir().display()
                )),
                undone: 0,
                left: vec![],
            })?;
        }
        let result = self.build(prof, name, opts, progress, &intents, &mut timings, t0);
        match result {
            Ok(c) => Ok(c),
            Err(e) => {
                if matches!(&e, CloudError::Libvirt(le) if le.is_connection_lost()) {
                    // Undo on the libvirtd that comes back, rather than fail to undo now.
                    self.wait_hypervisor(&prof.url, RETRY_WAIT);
                }
                let hv = self.hypervisor(&prof.url);
                let leftovers = undo_intents(
                    hv.as_deref(),
                    self.master.as_ref(),
                    &intents.borrow(),
                    progress,
                );
                if leftovers.is_empty() {
                    self.journal_close(&opts.request, name);
                    tracing::warn!(name, error = %e, undone = intents.borrow().len(), "create failed; rolled back");
                } else {
                    // Left to the next reconcile (which retries the whole undo): this
                    // process no longer owns the entry, and its error is returned now.
                    if let Some(j) = &self.journal {
                        let _ = j.update(&opts.request, name, |en| {
                            en.owner = journal::Owner { pid: 0, start: 0 };
                            en.reported = true;
                        });
                    }
                    tracing::error!(name, error = %e, ?leftovers, "create failed; rollback left these behind (retried at the next reconcile)");
                }
                Err(Failed {
                    error: e,
                    undone: intents.borrow().len(),
                    left: leftovers,
                })
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
        intents: &std::cell::RefCell<Vec<Intent>>,
        timings: &mut BTreeMap<String, u64>,
        t0: Instant,
    ) -> Result<Created, CloudError> {
        let checkpoint =
            |step: Step, timings: &mut BTreeMap<String, u64>| -> Result<(), CloudError> {
                timings.insert(step.name().into(), ms(t0.elapsed()));
                self.journal_step(&opts.request, name, step.name());
                progress.step(name, step.name(), json!({"elapsed_ms": ms(t0.elapsed())}));
                if self.pause_after.as_deref() == Some(step.name()) {
                    tracing::warn!(name, "paused after step {} ({PAUSE_ENV})", step.name());
                    loop {
                        std::thread::park();
                    }
                }
                if opts.fail_after == Some(step) {
                    return Err(CloudError::Injected(step.name()));
                }
                Ok(())
            };
        let intend = |i: Intent| -> Result<(), CloudError> {
            self.journal_intend(&opts.request, name, i.clone())?;
            intents.borrow_mut().push(i);
            Ok(())
        };
        // The last intent's step found its volume or file already there: it made nothing.
        let withdraw = || {
            if let Some(i) = intents.borrow_mut().pop() {
                self.journal_withdraw(&opts.request, name, &i);
            }
        };
        // Paths of the volumes made, for the ownership record (what destroy deletes).
        let mut volumes: Vec<String> = Vec::new();
        if self.master.is_some() && prof.minion.get("master").is_none() {
            return Err(CloudError::Config(format!(
                "profile {:?} ({}): `minion: {{master: ADDRESS}}` is required: the address the guest reaches this master at (10.0.2.2 under QEMU user networking)",
                prof.name,
                prof.file.display()
            )));
        }
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
            intend(Intent::Volume {
                pool: pool.clone(),
                name: vol_name.clone(),
            })?;
            let made = match prof.clone_strategy {
                CloneStrategy::Quick => hv.create_overlay(&pool, &vol_name, d, capacity),
                CloneStrategy::Full => hv.create_copy(&pool, &vol_name, d, capacity),
            };
            let path = unless_existed(made, &withdraw)?;
            volumes.push(path.clone());
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

        let mut files = Vec::new();
        let nvram = match &base.xml.nvram {
            Some(p) => match self.copy_nvram_volume(&hv, p, name, &intend, &withdraw)? {
                // In a pool: copied through libvirt.
                Some(c) => {
                    volumes.push(c.clone());
                    Some(c)
                }
                // A local file beside the base's (libvirt's nvram dir): copied here.
                None if hv.is_local() && std::path::Path::new(p).is_file() => {
                    let dest = nvram_sibling(p, name);
                    intend(Intent::File { path: dest.clone() })?;
                    let copy = || -> std::io::Result<()> {
                        let mut src = std::fs::File::open(p)?;
                        let mut out = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&dest)?;
                        std::io::copy(&mut src, &mut out)?;
                        out.sync_all()
                    };
                    copy().map_err(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            withdraw();
                        }
                        CloudError::Internal(format!("copying the NVRAM {p} to {dest}: {e}"))
                    })?;
                    files.push(dest.clone());
                    Some(dest)
                }
                // Elsewhere: libvirt makes a fresh one from the loader's template.
                None => Some(nvram_sibling(p, name)),
            },
            None => None,
        };
        checkpoint(Step::Nvram, timings)?;

        let uuid = uuid::Uuid::new_v4().to_string();
        // Identity: a fresh keypair, and the seed that carries it into the guest.
        let mut extra_devices = Vec::new();
        let mut oem_strings = Vec::new();
        let mut identity_key = None;
        if let Some(mc) = &self.master {
            let key = match prof.accept {
                AcceptMode::Preseed => Some(
                    self.key_pool()
                        .take(prof.keysize)
                        .map_err(|e| CloudError::Internal(format!("minting a key: {e}")))?,
                ),
                AcceptMode::OnFirstAuth | AcceptMode::Manual => None,
            };
            let ident = identity(prof, name, &uuid, mc, key.as_ref())?;
            match prof.seed {
                SeedKind::CloudInit => {
                    let img = ident
                        .nocloud_image()
                        .map_err(|e| CloudError::Internal(e.to_string()))?;
                    let pool = prof
                        .pool
                        .clone()
                        .unwrap_or_else(|| base.disks[0].pool.clone());
                    let seed_vol = format!("{name}-seed.img");
                    intend(Intent::Volume {
                        pool: pool.clone(),
                        name: seed_vol.clone(),
                    })?;
                    let made = hv.upload_volume(&pool, &seed_vol, "raw", &img);
                    let path = unless_existed(made, &withdraw)?;
                    volumes.push(path.clone());
                    extra_devices.push(
                        Element::new("disk")
                            .with_attr("type", "file")
                            .with_attr("device", "disk")
                            .with_child(
                                Element::new("driver")
                                    .with_attr("name", "qemu")
                                    .with_attr("type", "raw"),
                            )
                            .with_child(Element::new("source").with_attr("file", &path))
                            .with_child(
                                Element::new("target")
                                    .with_attr("dev", &free_virtio_target(&base))
                                    .with_attr("bus", "virtio"),
                            )
                            .with_child(Element::new("readonly"))
                            .with_child(Element::new("serial").with_text("virtseed-seed")),
                    );
                }
                SeedKind::Smbios => {
                    oem_strings = ident
                        .smbios_strings()
                        .map_err(|e| CloudError::Internal(e.to_string()))?
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                }
            }
            identity_key = key;
        }
        checkpoint(Step::Seeded, timings)?;
        let fingerprint = identity_key
            .as_ref()
            .map(|k| k.public_key().fingerprint())
            .unwrap_or_default();
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
                fingerprint: fingerprint.clone(),
                created: now_secs(),
                request: opts.request.clone(),
                volumes: volumes.clone(),
                files,
                accept: match prof.accept {
                    AcceptMode::Preseed => "preseed".into(),
                    AcceptMode::OnFirstAuth => "on_first_auth".into(),
                    AcceptMode::Manual => "manual".into(),
                },
                window: prof.autoaccept_window_secs,
            },
            extra_devices,
            oem_strings,
        };
        let (xml, macs) = domain_xml::clone_xml(&base.xml, &spec).map_err(LibvirtError::from)?;
        intend(Intent::Domain {
            name: name.into(),
            uuid: uuid.clone(),
        })?;
        hv.define(&xml, prof.validate_xml)?;
        if prof.onboot {
            hv.set_autostart(name, true)?;
        }
        checkpoint(Step::Defined, timings)?;

        // Pre-accept, before the guest can ask: the master already trusts exactly this key.
        if let (Some(mc), Some(key)) = (&self.master, &identity_key) {
            let pem = key.public_key().pem();
            intend(Intent::Key {
                id: name.into(),
                finger: fingerprint.clone(),
            })?;
            match crate::pki::pre_accept(&mc.pki_dir, name, pem)
                .map_err(|e| CloudError::Internal(e.to_string()))?
            {
                crate::pki::Accepted::Ours | crate::pki::Accepted::Absent => {}
                crate::pki::Accepted::Other if prof.force => {
                    crate::pki::force_accept(&mc.pki_dir, name, pem)
                        .map_err(|e| CloudError::Internal(e.to_string()))?;
                }
                crate::pki::Accepted::Other => {
                    return Err(CloudError::KeyTaken(name.into()));
                }
            }
            progress.fire(
                "salt/key",
                json!({"result": true, "act": mc.accept_act, "id": name}),
            );
        }
        checkpoint(Step::KeyAccepted, timings)?;

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
            fingerprint,
            seed: self.master.as_ref().map(|_| match prof.seed {
                SeedKind::CloudInit => "cloud-init",
                SeedKind::Smbios => "smbios",
            }),
            timings_ms: timings.clone(),
        })
    }

    /// The base's NVRAM copied as a volume of its pool (journaled first), if it is one.
    fn copy_nvram_volume(
        &self,
        hv: &Hypervisor,
        base_nvram: &str,
        name: &str,
        intend: &dyn Fn(Intent) -> Result<(), CloudError>,
        withdraw: &dyn Fn(),
    ) -> Result<Option<String>, CloudError> {
        let Some(pool) = hv.nvram_pool(base_nvram) else {
            return Ok(hv.copy_nvram(base_nvram, name)?);
        };
        intend(Intent::Volume {
            pool,
            name: Hypervisor::nvram_volume_name(name),
        })?;
        Ok(unless_existed(hv.copy_nvram(base_nvram, name), withdraw)?)
    }

    /// Finds which provider URI holds `name` among virtseed's domains.
    pub fn locate(&self, name: &str) -> Result<(Arc<Hypervisor>, Instance), CloudError> {
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
                Ok(i) if self.serves(&i.ownership.provider) => found.push((hv, i)),
                Ok(_) => {}
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

    /// Destroys several VMs side by side (up to `max_parallel`: stopping a domain takes
    /// libvirt over a second); each name's result is independent.
    pub async fn destroy_many(
        self: &Arc<Self>,
        names: &[String],
        progress: Arc<dyn Progress>,
    ) -> BTreeMap<String, Result<Value, CloudError>> {
        let me = self.clone();
        per_name(names, self.max_parallel, "destroy", move |name| {
            me.destroy_one(name, &*progress)
        })
        .await
    }

    /// Destroys one VM virtseed made: stop, undefine, delete its volumes.
    pub fn destroy_one(&self, name: &str, progress: &dyn Progress) -> Result<Value, CloudError> {
        names::check(name).map_err(CloudError::BadName)?;
        let _lock = self.lock_name(name)?;
        let (hv, inst) = self.locate(name)?;
        progress.step(name, "destroying", json!({"name": name}));
        let deleted = hv.destroy(name)?;
        let mut key_removed = false;
        if let Some(mc) = &self.master {
            // manual: whatever key the VM made for its id, accepted or not, as salt-cloud
            // does. Otherwise the key virtseed minted, or (on_first_auth) the first key it saw
            // and accepted.
            key_removed = if inst.ownership.accept == "manual" {
                crate::pki::revoke_any(&mc.pki_dir, &mc.cachedir, name)
            } else {
                let finger = match inst.ownership.fingerprint.as_str() {
                    "" => autoaccept::first_seen(&mc.state_dir, name).unwrap_or_default(),
                    f => f.to_string(),
                };
                match finger.as_str() {
                    "" => Ok(false),
                    f => crate::pki::revoke(&mc.pki_dir, &mc.cachedir, name, f),
                }
            }
            .map_err(|e| CloudError::Internal(e.to_string()))?;
            autoaccept::forget(&mc.state_dir, name);
            if key_removed {
                progress.fire(
                    "salt/key",
                    json!({"result": true, "act": "delete", "id": name}),
                );
            }
        }
        progress.step(name, "destroyed", json!({"name": name}));
        Ok(
            json!({"name": name, "id": inst.uuid, "volumes_deleted": deleted, "key_removed": key_removed, "state": "destroyed"}),
        )
    }

    /// Detaches and deletes a clone's seed volume (its minion has its identity).
    pub fn remove_seed(&self, name: &str, seed_path: &str) -> Result<(), CloudError> {
        let (hv, _) = self.locate(name)?;
        hv.remove_disk(name, seed_path)?;
        Ok(())
    }

    /// Every VM virtseed made, per provider URI.
    pub fn list(&self) -> BTreeMap<String, Result<Vec<Instance>, String>> {
        self.uris()
            .into_iter()
            .map(|uri| {
                let r = self
                    .hypervisor(&uri)
                    .and_then(|h| h.list())
                    .map(|l| {
                        l.into_iter()
                            .filter(|i| self.serves(&i.ownership.provider))
                            .collect()
                    })
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

/// The identity of clone `name`: minion config from the profile's `minion:` (id forced to
/// the name; master ports defaulting to the master's), grains with virtseed's own.
fn identity(
    prof: &Profile,
    name: &str,
    uuid: &str,
    mc: &MasterCtx,
    key: Option<&salt_proto::keys::PrivateKey>,
) -> Result<crate::seed::Identity, CloudError> {
    use yaml_serde::Value as Y;
    let mut conf = prof.minion.clone();
    conf.insert("id".into(), Y::String(name.into()));
    if conf.get("master_port").is_none() {
        conf.insert("master_port".into(), Y::Number(mc.ret_port.into()));
    }
    if conf.get("publish_port").is_none() {
        conf.insert("publish_port".into(), Y::Number(mc.publish_port.into()));
    }
    let mut grains = prof.grains.clone();
    let mut ours = yaml_serde::Mapping::new();
    ours.insert("profile".into(), Y::String(prof.name.clone()));
    ours.insert(
        "provider".into(),
        Y::String(format!("{}:{}", prof.provider, prof.driver)),
    );
    ours.insert("base".into(), Y::String(prof.base_domain.clone()));
    grains.insert("virtseed".into(), Y::Mapping(ours));
    Ok(crate::seed::Identity {
        id: name.into(),
        instance_id: uuid.into(),
        private_pem: key.map(|k| k.to_pem()),
        public_pem: key.map(|k| k.public_key().pem().to_string()),
        master_pub: mc.master_pub.clone(),
        minion_conf: conf,
        grains,
    })
}

/// Where libvirt would keep a fresh NVRAM for the clone, beside the base's.
fn nvram_sibling(base_nvram: &str, name: &str) -> String {
    let dir = std::path::Path::new(base_nvram)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/var/lib/libvirt/qemu/nvram".into());
    format!("{dir}/{name}_VARS.fd")
}

/// A make step that found its volume already there made nothing: `withdraw` takes its intent
/// back, so the rollback leaves that volume alone.
fn unless_existed<T>(r: Result<T, LibvirtError>, withdraw: &dyn Fn()) -> Result<T, LibvirtError> {
    if matches!(r, Err(LibvirtError::VolumeExists { .. })) {
        withdraw();
    }
    r
}

/// Runs blocking `f` for every name, at most `limit` at once; each name's result apart.
async fn per_name<T: Send + 'static>(
    names: &[String],
    limit: usize,
    what: &'static str,
    f: impl Fn(&str) -> Result<T, CloudError> + Send + Sync + 'static,
) -> BTreeMap<String, Result<T, CloudError>> {
    let failed = move |e: tokio::task::JoinError| {
        Err(CloudError::Internal(format!("{what} task failed: {e}")))
    };
    let f = Arc::new(f);
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut tasks = Vec::new();
    for name in names {
        let (f, sem, n) = (f.clone(), sem.clone(), name.clone());
        tasks.push((
            name.clone(),
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                tokio::task::spawn_blocking(move || f(&n))
                    .await
                    .unwrap_or_else(failed)
            }),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, t) in tasks {
        out.insert(name, t.await.unwrap_or_else(failed));
    }
    out
}

impl Recovered {
    /// `kept` (its minion had answered), `rolled_back`, or `left_behind` (retried later).
    pub fn outcome(&self) -> &'static str {
        if self.entry.done.is_some() {
            "kept"
        } else if self.left_behind.is_empty() {
            "rolled_back"
        } else {
            "left_behind"
        }
    }
}

/// A create that failed, after its rollback.
struct Failed {
    error: CloudError,
    /// How many things were rolled back (or tried).
    undone: usize,
    /// What the rollback could not undo (left to the reconcile).
    left: Vec<String>,
}

/// One interrupted create, as a reconcile left it.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub entry: journal::Entry,
    /// The create's outcome in `cloud.profile`'s shape (`{...}` or `{"Error": ...}`).
    pub result: Value,
    /// What could not be undone yet (the entry stays for the next reconcile).
    pub left_behind: Vec<String>,
}

fn describe_intent(i: &Intent) -> String {
    match i {
        Intent::Volume { pool, name } => format!("volume {name} (pool {pool})"),
        Intent::File { path } => format!("file {path}"),
        Intent::Domain { name, .. } => format!("domain {name}"),
        Intent::Key { id, .. } => format!("accepted key of {id}"),
    }
}

/// Undoes intents in reverse, skipping what does not exist (or is not ours); returns what
/// could not be undone. Keys and files are undone even when libvirt is unreachable.
fn undo_intents(
    hv: Result<&Hypervisor, &LibvirtError>,
    master: Option<&MasterCtx>,
    intents: &[Intent],
    progress: &dyn Progress,
) -> Vec<String> {
    let mut left = Vec::new();
    for i in intents.iter().rev() {
        let r = match i {
            Intent::Domain { name, uuid } => hv
                .map_err(|e| e.to_string())
                .and_then(|hv| hv.undefine_uuid(name, uuid).map_err(|e| e.to_string()))
                .map(|_| ()),
            Intent::Volume { pool, name } => hv.map_err(|e| e.to_string()).and_then(|hv| {
                hv.delete_volume_named(pool, name)
                    .map_err(|e| e.to_string())
            }),
            Intent::File { path } => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            },
            Intent::Key { id, finger } => match master {
                Some(mc) => revoke_key(mc, id, finger, progress),
                None => Ok(()),
            },
        };
        if let Err(e) = r {
            left.push(format!("{}: {e}", describe_intent(i)));
        }
    }
    left
}

/// Removes our accepted key for `id` and the master's cache for it, and says so on the bus.
fn revoke_key(
    mc: &MasterCtx,
    id: &str,
    finger: &str,
    progress: &dyn Progress,
) -> Result<(), String> {
    let removed =
        crate::pki::revoke(&mc.pki_dir, &mc.cachedir, id, finger).map_err(|e| e.to_string())?;
    if removed {
        progress.fire(
            "salt/key",
            json!({"result": true, "act": "delete", "id": id}),
        );
    }
    Ok(())
}

/// The first free `vdX` device name after the domain's own virtio disks.
fn free_virtio_target(base: &crate::libvirt::Base) -> String {
    let used: Vec<String> = base.xml.disks.iter().map(|d| d.target.clone()).collect();
    ('b'..='z')
        .map(|c| format!("vd{c}"))
        .find(|t| !used.contains(t))
        .unwrap_or_else(|| "vdz".into())
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
