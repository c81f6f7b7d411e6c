//! The cloud service: profile -> clone pipeline with rollback, destroy, list and actions,
//! shared by the CLI and the sidecar's `cloud.*` jobs.
//!
//! The create pipeline is in [`create`], one file per step. Every step that makes something
//! first records its [`journal::Intent`] (in memory and in the create journal), then makes
//! it; a failure at any step undoes the intents in reverse (skipping what never came to
//! exist), so a failed create leaves nothing behind. A process killed mid-create leaves the
//! journal, which [`Cloud::reconcile`] finishes at next start.

pub mod addresses;
pub mod autoaccept;
pub mod create;
pub mod hosts;
pub mod journal;
pub mod names;
pub mod ready;
pub mod service;
pub mod twins;
pub mod warm;

pub use create::{CreateOptions, Created, Step, PAUSE_ENV, RETRY_WAIT};

use crate::config::cloud::{CloudConfig, Profile};
use crate::libvirt::{Hypervisor, Instance, LibvirtError};
use create::runner::undo_in_reverse;
use create::undo::{describe, Undoer};
use journal::Journal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

pub const DEFAULT_MAX_PARALLEL: usize = 8;

/// What the clone pipeline needs of the Salt master beside it.
#[derive(Clone)]
pub struct MasterCtx {
    /// The master's config dir: how the key states name it.
    pub config_dir: std::path::PathBuf,
    /// Where the master keeps minion keys (`pki_dir`, or a cluster's `cluster_pki_dir`).
    pub pki_dir: std::path::PathBuf,
    pub cachedir: std::path::PathBuf,
    /// The master's public key (`pki_dir/master.pub`, a cluster's `cluster.pub`): the only
    /// master a clone trusts.
    pub master_pub: String,
    pub ret_port: u16,
    pub publish_port: u16,
    /// The master publishes with topics (`zmq_filtering`): clones subscribe to theirs only.
    pub zmq_filtering: bool,
    /// `salt/key` event `act` for an accept: "accept" before 3008, "accepted" from 3008.
    pub accept_act: &'static str,
    /// virtseed's own state (`accept: on_first_auth` records the first key seen per id).
    pub state_dir: std::path::PathBuf,
    /// The other masters of a multi-master or failover list (settings `masters:`).
    pub peers: Vec<PeerMaster>,
    /// The key the master signs its own with (`master_sign_pubkey`): clones get it and
    /// verify every master's key by it.
    pub sign_pub: Option<String>,
    /// Masters on hosts of their own, whose sidecars accept keys for this one
    /// (settings `peers:`, `crate::peers`).
    pub remote: Option<Arc<dyn RemoteKeys>>,
}

/// Key stores reached through the sidecars beside other masters (`crate::peers`): blocking
/// calls, made from the create's and destroy's worker threads.
pub trait RemoteKeys: Send + Sync {
    /// How many masters they are.
    fn count(&self) -> usize;
    /// Whether a clone can trust them all with `master_pub`, this master's key.
    fn check(&self, master_pub: &str) -> Result<(), String>;
    /// Offers `pem` for `name` to each; what each said.
    fn accept(&self, name: &str, pem: &str) -> Vec<PeerOutcome>;
    /// Takes back the key with fingerprint `finger` of `name` from each.
    fn revoke(&self, name: &str, finger: &str) -> Vec<PeerOutcome>;
    /// Where `name`'s key stands on each, as last confirmed: `(master, state)`.
    fn states(&self, name: &str) -> Vec<(String, String)>;
}

/// One master's answer through its sidecar.
#[derive(Debug)]
pub struct PeerOutcome {
    pub master: String,
    pub result: Result<(), PeerFailure>,
}

#[derive(Debug, Clone)]
pub enum PeerFailure {
    /// The peer said no (another key under the name, a key store it cannot write).
    Refused(String),
    /// No answer (the master or its sidecar down): sent again until confirmed.
    Unconfirmed(String),
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerFailure::Refused(e) => write!(f, "refused: {e}"),
            PeerFailure::Unconfirmed(e) => write!(f, "unconfirmed: {e}"),
        }
    }
}

/// Another master a clone signs in to (multi-master, failover), whose key store virtseed
/// reaches as files (on this host, or a shared filesystem): never over the network.
#[derive(Clone, Debug)]
pub struct PeerMaster {
    pub config_dir: std::path::PathBuf,
    pub key_dir: std::path::PathBuf,
    pub cachedir: std::path::PathBuf,
    /// The key its minions trust (`master.pub`, a cluster's `cluster.pub`).
    pub trusted_pub: String,
    pub publish_port: u16,
    /// Its signing key's public half, when it signs its key (`master_sign_pubkey`).
    pub sign_pub: Option<String>,
}

impl MasterCtx {
    /// How many masters `minion: master:` lists: a list, or one.
    pub fn listed_masters(minion: &yaml_serde::Mapping) -> usize {
        match minion.get("master") {
            Some(yaml_serde::Value::Sequence(l)) => l.len(),
            Some(_) => 1,
            None => 0,
        }
    }

    /// The masters a clone of a profile with `minion` signs in to beyond this one: none for
    /// one master; for a list, every master in settings `masters:`, when there are enough
    /// and all of them present one key (a minion caches one master key for all its masters,
    /// salt/crypt.py `AsyncAuth.mpub`). Errors say what to set.
    pub fn peers_for(
        &self,
        profile: &str,
        minion: &yaml_serde::Mapping,
    ) -> Result<&[PeerMaster], CloudError> {
        let listed = Self::listed_masters(minion);
        if listed <= 1 {
            return Ok(&[]);
        }
        let remote = self.remote.as_ref().map_or(0, |r| r.count());
        if listed > 1 + self.peers.len() + remote {
            return Err(CloudError::Config(format!(
                "profile {profile:?}: `minion: master:` lists {listed} masters, and virtseed accepts keys on {} (this one, the {} in `masters:` of its settings and the {remote} of its `peers:`): a clone would stay pending on the others; add their config dirs to `masters:` (this host or a shared filesystem) or their sidecars to `peers:`, or list only those masters",
                1 + self.peers.len() + remote,
                self.peers.len()
            )));
        }
        if let Some(r) = &self.remote {
            r.check(&self.master_pub)
                .map_err(|e| CloudError::Config(format!("profile {profile:?}: {e}")))?;
        }
        let clean = salt_proto::keys::clean_key;
        let signed_by = |s: &Option<String>| s.as_deref().map(clean);
        for p in &self.peers {
            // A minion verifies every master's signature or none (salt/crypt.py
            // `check_auth_deps`): a master that signs where another does not fails one side.
            if self.sign_pub.is_some() != p.sign_pub.is_some() {
                let other = format!("the master in {}", p.config_dir.display());
                let (signs, not) = if self.sign_pub.is_some() {
                    ("this master".to_string(), other)
                } else {
                    (other, "this one".to_string())
                };
                return Err(CloudError::Config(format!(
                    "profile {profile:?}: {signs} signs its public key (`master_sign_pubkey: True`) and {not} does not: a minion verifies every master's signature or none, and fails sign-in with the other; set `master_sign_pubkey` alike on every master"
                )));
            }
            if clean(&p.trusted_pub) == clean(&self.master_pub) {
                continue;
            }
            match (signed_by(&self.sign_pub), signed_by(&p.sign_pub)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(_), Some(_)) => {
                    return Err(CloudError::Config(format!(
                        "profile {profile:?}: the master in {} signs its key with another signing key than this one: a minion trusts one `master_sign.pub`; give every master the same signing key pair (Salt's multimaster PKI guide)",
                        p.config_dir.display()
                    )))
                }
                _ => {
                    return Err(CloudError::Config(format!(
                        "profile {profile:?}: the master in {} has another key than this one: a minion of several masters keeps one master key and refuses a master with another (\"The master key has changed\"); give every master the same master.pem/master.pub (Salt's multi-master guide), or let every master sign its key with one signing key pair (`master_sign_pubkey: True`, Salt's multimaster PKI guide): virtseed then seeds the clones with `master_sign.pub`",
                        p.config_dir.display()
                    )))
                }
            }
        }
        Ok(&self.peers)
    }
}

impl MasterCtx {
    pub fn from_opts(
        m: &crate::config::master::MasterOpts,
        settings: &crate::config::settings::Settings,
    ) -> Result<Self, CloudError> {
        let version = settings.salt_version;
        if let Some(why) = m.key_store_problem() {
            return Err(CloudError::Config(why));
        }
        let path = m.trusted_key_path();
        let master_pub = std::fs::read_to_string(&path).map_err(|e| {
            CloudError::Config(format!(
                "cannot read the master's public key {}: {e} (has the master run once? does virtseed run as the master's user?)",
                path.display()
            ))
        })?;
        let sign_pub = read_sign_pub(m)?;
        Ok(Self {
            sign_pub,
            config_dir: m.config_dir.clone(),
            pki_dir: m.key_dir().to_path_buf(),
            cachedir: m.cachedir.clone(),
            master_pub,
            ret_port: m.ret_port,
            publish_port: m.publish_port,
            zmq_filtering: m.zmq_filtering,
            accept_act: version.map_or("accept", |v| v.key_act_accept()),
            state_dir: settings.pki_dir.clone(),
            peers: settings
                .masters
                .iter()
                .map(|dir| PeerMaster::load(dir))
                .collect::<Result<_, _>>()?,
            remote: None,
        })
    }
}

/// The master's signing key's public half, when it signs its key (`master_sign_pubkey`).
fn read_sign_pub(m: &crate::config::master::MasterOpts) -> Result<Option<String>, CloudError> {
    let Some(path) = m.sign_pub_path() else {
        return Ok(None);
    };
    std::fs::read_to_string(&path).map(Some).map_err(|e| {
        CloudError::Config(format!(
            "the master in {} signs its key (`master_sign_pubkey: True`), and its signing key {} cannot be read: {e} (has the master run once with it? does virtseed run as the master's user?)",
            m.config_dir.display(),
            path.display()
        ))
    })
}

impl PeerMaster {
    fn load(dir: &std::path::Path) -> Result<Self, CloudError> {
        let m = crate::config::master::MasterOpts::load(dir)
            .map_err(|e| CloudError::Config(format!("`masters:` {}: {e}", dir.display())))?;
        if let Some(why) = m.key_store_problem() {
            return Err(CloudError::Config(format!(
                "`masters:` {}: {why}",
                dir.display()
            )));
        }
        let path = m.trusted_key_path();
        let trusted_pub = std::fs::read_to_string(&path).map_err(|e| {
            CloudError::Config(format!(
                "`masters:` {}: cannot read its key {}: {e}",
                dir.display(),
                path.display()
            ))
        })?;
        let sign_pub = read_sign_pub(&m)?;
        Ok(Self {
            sign_pub,
            config_dir: dir.to_path_buf(),
            key_dir: m.key_dir().to_path_buf(),
            cachedir: m.cachedir.clone(),
            trusted_pub,
            publish_port: m.publish_port,
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
    /// A remote host a create needs is unreachable (`hosts::unreachable` says which).
    #[error("{0}")]
    HostDown(String),
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
    hypervisors: hosts::Connections,
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
    let (path, file) = lock_file(name);
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

/// The lock file `$TMPDIR/virtseed-locks/NAME.lock`, opened (made if need be, in a directory
/// every user virtseed runs as can write to), not yet locked.
pub(crate) fn lock_file(name: &str) -> (std::path::PathBuf, std::io::Result<std::fs::File>) {
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
    (path, file)
}

impl Drop for NameLock {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.name);
        }
    }
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
        self.hypervisors.get(uri)
    }

    /// The distinct libvirt URIs of all providers' hosts.
    pub fn uris(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .config
            .providers
            .values()
            .flatten()
            .filter(|p| p.driver == "libvirt" && self.serves(&p.alias))
            .flat_map(|p| p.hosts.iter().map(|h| h.uri.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The name a provider gives the host at `uri` (its alias in `url:`, else its host part).
    pub fn host_name(&self, uri: &str) -> String {
        self.config
            .providers
            .values()
            .flatten()
            .flat_map(|p| &p.hosts)
            .find(|h| h.uri == uri)
            .map_or_else(
                || crate::config::cloud::hosts::uri_host(uri),
                |h| h.name.clone(),
            )
    }

    /// `f` on every host at once (a host that does not answer holds up no other), by URI.
    pub fn on_each_host<T: Send>(&self, f: impl Fn(&str) -> T + Sync) -> BTreeMap<String, T> {
        let uris = self.uris();
        std::thread::scope(|s| {
            let tasks: Vec<_> = uris.iter().map(|u| (u.clone(), s.spawn(|| f(u)))).collect();
            tasks
                .into_iter()
                .filter_map(|(u, t)| t.join().ok().map(|r| (u, r)))
                .collect()
        })
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
            let undoer = Undoer {
                hv: hv.as_deref(),
                master: self.master.as_ref(),
                progress,
            };
            let left = undo_in_reverse(&en.intents, &undoer);
            let undone: Vec<String> = en.intents.iter().map(describe).collect();
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

    /// Finds which provider URI holds `name` among virtseed's domains.
    pub fn locate(&self, name: &str) -> Result<(Arc<Hypervisor>, Instance), CloudError> {
        let mut found = Vec::new();
        let mut not_ours = None;
        let mut errors = Vec::new();
        let shown = self.on_each_host(|uri| {
            let hv = self.hypervisor(uri)?;
            let shown = hv.show(name);
            Ok::<_, LibvirtError>((hv, shown))
        });
        for (uri, r) in shown {
            let (hv, shown) = match r {
                Ok(x) => x,
                Err(e) => {
                    // Named by the providers whose host it is (their VMs there cannot be
                    // looked at); the VM is still found on any other host.
                    errors.extend(
                        self.providers_at(&uri, "all")
                            .iter()
                            .map(|(alias, h)| hosts::unreachable(alias, h, &e)),
                    );
                    continue;
                }
            };
            match shown {
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
                    msg.push_str(&format!(" ({})", errors.join("; ")));
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
        let mut peer_keys = None;
        if let Some(mc) = &self.master {
            // manual: whatever key the VM made for its id, accepted or not, as salt-cloud
            // does. Otherwise the key virtseed minted, or (on_first_auth) the key it read from
            // the VM and accepted, and any key pending under the name.
            key_removed = if inst.ownership.accept == "manual" {
                crate::pki::revoke_any(&mc.pki_dir, &mc.cachedir, name)
            } else {
                let finger = match inst.ownership.fingerprint.as_str() {
                    "" => autoaccept::first_seen(&mc.state_dir, name).unwrap_or_default(),
                    f => f.to_string(),
                };
                let pending = inst.ownership.accept == "on_first_auth"
                    && crate::pki::drop_pending(&mc.pki_dir, name)
                        .map_err(|e| CloudError::Internal(e.to_string()))?;
                match finger.as_str() {
                    "" => Ok(pending),
                    f => {
                        crate::pki::revoke(&mc.pki_dir, &mc.cachedir, name, f).map(|r| r || pending)
                    }
                }
            }
            .map_err(|e| CloudError::Internal(e.to_string()))?;
            // The same key on the other masters of a multi-master list (only while it is
            // the one virtseed accepted there: the fingerprint decides).
            if inst.ownership.accept != "manual" && !inst.ownership.fingerprint.is_empty() {
                for p in &mc.peers {
                    crate::pki::revoke(&p.key_dir, &p.cachedir, name, &inst.ownership.fingerprint)
                        .map_err(|e| {
                            CloudError::Internal(format!("{}: {e}", p.config_dir.display()))
                        })?;
                }
            }
            if let (Some(remote), false) = (&mc.remote, inst.ownership.fingerprint.is_empty()) {
                let told: serde_json::Map<String, Value> = remote
                    .revoke(name, &inst.ownership.fingerprint)
                    .into_iter()
                    .map(|o| {
                        let said = o
                            .result
                            .map_or_else(|e| e.to_string(), |()| "revoked".into());
                        (o.master, json!(said))
                    })
                    .collect();
                if !told.is_empty() {
                    peer_keys = Some(Value::Object(told));
                }
            }
            autoaccept::forget(&mc.state_dir, name);
            if key_removed {
                progress.fire(
                    "salt/key",
                    json!({"result": true, "act": "delete", "id": name}),
                );
            }
        }
        progress.step(name, "destroyed", json!({"name": name}));
        let mut v = json!({"name": name, "id": inst.uuid, "volumes_deleted": deleted, "key_removed": key_removed, "state": "destroyed"});
        if let Some(p) = peer_keys {
            // Each peer's master: `revoked`, or why not yet (offered again until confirmed).
            v["peer_keys"] = p;
        }
        Ok(v)
    }

    /// Detaches and deletes a clone's seed volume (its minion has its identity).
    /// File `path` inside VM `name`, read through its QEMU guest agent.
    pub fn guest_file(
        &self,
        name: &str,
        path: &str,
    ) -> Result<Result<zeroize::Zeroizing<Vec<u8>>, crate::libvirt::agent::AgentError>, CloudError>
    {
        let (hv, _) = self.locate(name)?;
        Ok(hv.guest_file(name, path)?)
    }

    pub fn remove_seed(&self, name: &str, seed_path: &str) -> Result<(), CloudError> {
        let (hv, _) = self.locate(name)?;
        hv.remove_disk(name, seed_path)?;
        Ok(())
    }

    /// Every VM virtseed made, per provider URI; a host that could not be listed is its
    /// own error (the others are listed all the same).
    pub fn list(&self) -> BTreeMap<String, Result<Vec<Instance>, LibvirtError>> {
        self.on_each_host(|uri| {
            self.hypervisor(uri).and_then(|h| h.list()).map(|l| {
                l.into_iter()
                    .filter(|i| self.serves(&i.ownership.provider))
                    .map(|i| self.with_minion_addresses(i))
                    .collect()
            })
        })
    }

    /// `i` with the addresses its minion reported in its grains, after libvirt's.
    fn with_minion_addresses(&self, mut i: Instance) -> Instance {
        if let Some(mc) = &self.master {
            for a in addresses::from_grains_cache(&mc.cachedir, &i.name) {
                let a = a.to_string();
                if !i.addresses.contains(&a) {
                    i.addresses.push(a);
                }
            }
        }
        i
    }

    /// Another accepted minion that reported the machine-id clone `name` reported (see
    /// [`twins::machine_id_twin`]): `(machine-id, its id)`.
    pub fn machine_id_twin(&self, name: &str) -> Option<(String, String)> {
        let mc = self.master.as_ref()?;
        twins::machine_id_twin(&mc.cachedir, &mc.pki_dir, name)
    }

    /// VM `name`'s addresses as known now (libvirt's `ip_source`, then its minion's
    /// grains), in salt-cloud's keys (`addresses::salt_cloud_keys`).
    pub fn address_keys(&self, name: &str) -> Result<serde_json::Map<String, Value>, CloudError> {
        let (_, i) = self.locate(name)?;
        let i = self.with_minion_addresses(i);
        Ok(addresses::salt_cloud_keys(
            &i.addresses,
            i.state == "running",
        ))
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
        let i = self.with_minion_addresses(hv.show(name)?);
        let mut v = instance_json(&i);
        v["host"] = json!(self.host_name(hv.uri()));
        if let Some(keys) = self.key_states(name, &i.ownership.fingerprint) {
            v["salt_keys"] = keys;
        }
        Ok(v)
    }

    /// [`Cloud::key_states`] where virtseed accepts keys on more masters than this one (a
    /// create's return says where its key stands on each).
    pub fn key_states_beyond_one(&self, name: &str, fingerprint: &str) -> Option<Value> {
        let mc = self.master.as_ref()?;
        (!mc.peers.is_empty() || mc.remote.is_some())
            .then(|| self.key_states(name, fingerprint))
            .flatten()
    }

    /// Where VM `name`'s minion key stands on each master virtseed accepts keys on (this
    /// one, then those in `masters:`), by config dir: `pki::key_state`, checked against the
    /// key virtseed accepted for it (`fingerprint`, or the first key of `on_first_auth`).
    /// None without a master (the engine alone).
    pub fn key_states(&self, name: &str, fingerprint: &str) -> Option<Value> {
        let mc = self.master.as_ref()?;
        let recorded = (!fingerprint.is_empty())
            .then(|| fingerprint.to_string())
            .or_else(|| autoaccept::first_seen(&mc.state_dir, name));
        let finger = recorded.as_deref();
        let mut out = serde_json::Map::new();
        out.insert(
            mc.config_dir.display().to_string(),
            json!(crate::pki::key_state(&mc.pki_dir, name, finger)),
        );
        for p in &mc.peers {
            out.insert(
                p.config_dir.display().to_string(),
                json!(crate::pki::key_state(&p.key_dir, name, finger)),
            );
        }
        for (master, state) in mc.remote.iter().flat_map(|r| r.states(name)) {
            out.insert(master, json!(state));
        }
        Some(Value::Object(out))
    }
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
        // The VM's name on every line logged about it, under the job's span.
        let span = tracing::info_span!("vm", name = %name);
        let inner = span.clone();
        tasks.push((
            name.clone(),
            tokio::spawn(
                async move {
                    let _permit = sem.acquire_owned().await.expect("semaphore open");
                    tokio::task::spawn_blocking(move || inner.in_scope(|| f(&n)))
                        .await
                        .unwrap_or_else(failed)
                }
                .instrument(span),
            ),
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

/// One interrupted create, as a reconcile left it.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub entry: journal::Entry,
    /// The create's outcome in `cloud.profile`'s shape (`{...}` or `{"Error": ...}`).
    pub result: Value,
    /// What could not be undone yet (the entry stays for the next reconcile).
    pub left_behind: Vec<String>,
}

/// An instance in salt-cloud's `list_nodes` shape plus virtseed's record; with
/// `ssh_forward`, where SSH reaches it (`ssh_host`/`ssh_port`, as salt-cloud's deploy keys
/// name them).
pub fn instance_json(i: &Instance) -> Value {
    let mut v = json!({
        "id": i.uuid,
        "name": i.name,
        "state": i.state,
        "size": format!("{} vCPU, {} MiB", i.vcpus, i.memory_kib / 1024),
        "image": i.ownership.base,
        "profile": i.ownership.profile,
        "provider": i.ownership.provider,
        "macs": i.macs,
        "created": i.ownership.created,
        "fingerprint": i.ownership.fingerprint,
    });
    for (k, a) in addresses::salt_cloud_keys(&i.addresses, i.state == "running") {
        v[k] = a;
    }
    if let Some(port) = i.ownership.ssh_port {
        v["ssh_host"] = json!("127.0.0.1");
        v["ssh_port"] = json!(port);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::Ownership;

    fn instance(ssh_port: Option<u16>) -> Instance {
        Instance {
            name: "web1".into(),
            uuid: "u".into(),
            state: "running".into(),
            ownership: Ownership {
                profile: "plain".into(),
                ssh_port,
                ..Ownership::default()
            },
            addresses: vec![],
            macs: vec![],
            vcpus: 1,
            memory_kib: 1 << 20,
        }
    }

    #[test]
    fn several_masters_need_each_known_and_one_key() {
        let key = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let peer = |pub_: &str| PeerMaster {
            config_dir: "/etc/salt-m2".into(),
            key_dir: "/etc/salt-m2/pki".into(),
            cachedir: "/var/cache/m2".into(),
            trusted_pub: pub_.into(),
            publish_port: 4505,
            sign_pub: None,
        };
        let mut mc = MasterCtx {
            config_dir: "/etc/salt".into(),
            pki_dir: "/p".into(),
            cachedir: "/c".into(),
            master_pub: key.into(),
            ret_port: 4506,
            publish_port: 4505,
            zmq_filtering: false,
            accept_act: "accept",
            state_dir: "/s".into(),
            peers: vec![],
            sign_pub: None,
            remote: None,
        };
        let minion = |m: &str| -> yaml_serde::Mapping {
            yaml_serde::from_str(&format!("master: {m}\n")).unwrap()
        };
        assert_eq!(MasterCtx::listed_masters(&minion("m1")), 1);
        assert_eq!(MasterCtx::listed_masters(&minion("[m1, m2]")), 2);
        // One master: no peers needed, whatever the settings.
        assert!(mc.peers_for("p", &minion("m1")).unwrap().is_empty());
        let e = mc
            .peers_for("p", &minion("[m1, m2]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lists 2 masters") && e.contains("`masters:`"),
            "{e}"
        );
        mc.peers = vec![peer(&key.replace('\n', "\r\n"))];
        assert_eq!(mc.peers_for("p", &minion("[m1, m2]")).unwrap().len(), 1);
        mc.peers = vec![peer(
            "-----BEGIN PUBLIC KEY-----\nBBBB\n-----END PUBLIC KEY-----\n",
        )];
        let e = mc
            .peers_for("p", &minion("[m1, m2]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another key") && e.contains("master_sign_pubkey"),
            "{e}"
        );
        // Masters with keys of their own, signed by one signing key: served.
        let sign = "-----BEGIN PUBLIC KEY-----\nSSSS\n-----END PUBLIC KEY-----\n";
        mc.sign_pub = Some(sign.into());
        mc.peers[0].sign_pub = Some(sign.replace('\n', "\r\n"));
        assert_eq!(mc.peers_for("p", &minion("[m1, m2]")).unwrap().len(), 1);
        // Signed by another signing key: refused.
        mc.peers[0].sign_pub = Some(key.into());
        let e = mc
            .peers_for("p", &minion("[m1, m2]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("another signing key"), "{e}");
        // One signs, the other does not (even with one key): refused, both ways.
        mc.peers[0].sign_pub = None;
        mc.peers[0].trusted_pub = key.into();
        let e = mc
            .peers_for("p", &minion("[m1, m2]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("this master signs") && e.contains("m2 does not"),
            "{e}"
        );
        mc.sign_pub = None;
        mc.peers[0].sign_pub = Some(sign.into());
        let e = mc
            .peers_for("p", &minion("[m1, m2]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m2 signs") && e.contains("this one does not"),
            "{e}"
        );
    }

    #[test]
    fn a_forwarded_ssh_port_is_shown_where_salt_cloud_looks_for_it() {
        let v = instance_json(&instance(Some(40022)));
        assert_eq!(
            (&v["ssh_host"], &v["ssh_port"]),
            (&json!("127.0.0.1"), &json!(40022))
        );
        let v = instance_json(&instance(None));
        assert!(
            v.get("ssh_host").is_none() && v.get("ssh_port").is_none(),
            "{v}"
        );
    }
}
