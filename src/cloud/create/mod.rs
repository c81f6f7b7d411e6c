//! The create pipeline: profile -> one clone per name, as a list of steps.
//!
//! Each step is a file here: a small type holding what it needs, its `make`, the
//! [`Intent`](journal::Intent) it records before making anything, and the `undo` of that
//! intent, side by side ([`disks`], [`nvram`], [`seed`], [`define`], [`key`], [`start`]; the
//! make and undo of a volume, shared by three of them, in [`volume`]). The [`runner`] walks
//! them in the order `Plan::walk` lists: it journals, fires the checkpoint events, times
//! them, injects the testing failures, and on any failure undoes what was made, in reverse.
//! [`undo`] maps each journaled intent to its step's undo, for the rollback and for
//! [`Cloud::reconcile`] (which reads intents back from an older process's journal).
//!
//! A new way to make a clone is a new step file and one more line in `Plan::walk`.

pub mod define;
pub mod disks;
pub mod image;
pub mod key;
pub mod nvram;
pub mod restore;
pub mod runner;
pub mod seed;
pub mod start;
pub mod undo;
pub mod volume;

use super::journal::{self, JobRef};
use super::{names, per_name, Cloud, CloudError, MasterCtx, Progress};
use crate::config::cloud::{AcceptMode, Profile, SeedKind};
use crate::libvirt::dom::Element;
use crate::libvirt::domain_xml::CloneDisk;
use crate::libvirt::{Base, Hypervisor};
use crate::pki::KeyPool;
use runner::{Failed, Run};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// A warm clone's own copy of its state's image (in place of `started`, with the next).
    ImageCopied,
    /// A warm clone restored from that copy and given its identity.
    Restored,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Disks,
        Step::Nvram,
        Step::Seeded,
        Step::Defined,
        Step::KeyAccepted,
        Step::Started,
        Step::ImageCopied,
        Step::Restored,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Disks => "disks",
            Step::Nvram => "nvram",
            Step::Seeded => "seeded",
            Step::Defined => "defined",
            Step::KeyAccepted => "key_accepted",
            Step::Started => "started",
            Step::ImageCopied => "image_copied",
            Step::Restored => "restored",
        }
    }
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
    /// `seed: ssh`: the public key to pre-accept, minted by the caller (virtseed's salt-cloud
    /// driver), which deploys its private half over SSH. Only the public half is ever here.
    pub minion_pub: Option<salt_proto::keys::PublicKey>,
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
    /// `ssh_forward`: the loopback port forwarded to the guest's port 22.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    pub timings_ms: BTreeMap<String, u64>,
    /// The minted key, which the clone's readiness answer must prove it holds. Never
    /// serialized.
    #[serde(skip)]
    pub proof_key: Option<crate::cloud::ready::ProofKey>,
    /// Whether the clone has the QEMU guest agent's channel (its base's): through it,
    /// readiness reads the key a VM made itself (`accept: manual`).
    #[serde(skip)]
    pub agent_channel: bool,
}

/// What the steps of one create have made so far, for the steps after them.
#[derive(Default)]
pub struct Made {
    /// The clone's disks, for its XML.
    pub disks: Vec<CloneDisk>,
    /// Paths of the volumes made, for the ownership record (what destroy deletes).
    pub volumes: Vec<String>,
    /// Local files made (an NVRAM copy), for the ownership record.
    pub files: Vec<String>,
    /// The clone's NVRAM path, when the base has one.
    pub nvram: Option<String>,
    /// The minted minion key (`accept: preseed`).
    pub key: Option<salt_proto::keys::PrivateKey>,
    /// The caller's public key to pre-accept (`seed: ssh`).
    pub given_pub: Option<salt_proto::keys::PublicKey>,
    /// `ssh_forward`: the loopback port forwarded to the guest's port 22.
    pub ssh_port: Option<u16>,
    /// Devices added to the clone's XML (the seed's disk).
    pub extra_devices: Vec<Element>,
    /// SMBIOS OEM strings for the clone's XML (`seed: smbios`).
    pub oem_strings: Vec<String>,
    /// The clone's MAC addresses, as defined.
    pub macs: Vec<String>,
    /// The clone's domain XML, as defined (a warm clone's saved image gets it).
    pub domain_xml: Option<String>,
    /// A warm clone's copy of its state's image: pool, volume, path.
    pub image_copy: Option<(String, String, String)>,
    /// The identity files (warm clones: sent over the channel once restored).
    pub identity_files: Vec<(&'static str, zeroize::Zeroizing<String>)>,
}

impl Made {
    /// The minted key's fingerprint (`salt-key -f` form), empty without one.
    pub fn fingerprint(&self) -> String {
        self.public_key()
            .map(|k| k.fingerprint())
            .unwrap_or_default()
    }

    /// The public key to pre-accept: the minted key's, or the one given (`seed: ssh`).
    pub fn public_key(&self) -> Option<&salt_proto::keys::PublicKey> {
        self.key
            .as_ref()
            .map(|k| k.public_key())
            .or(self.given_pub.as_ref())
    }
}

/// The VM a create is making: its name, where (hypervisor), from what (base) and how
/// (profile). What most steps need.
#[derive(Clone, Copy)]
pub struct Vm<'a> {
    pub name: &'a str,
    pub hv: &'a Hypervisor,
    pub base: &'a Base,
    pub prof: &'a Profile,
}

/// What one create works from, settled before its first step.
struct Plan<'a> {
    prof: &'a Profile,
    name: &'a str,
    request: &'a str,
    hv: Arc<Hypervisor>,
    base: Base,
    uuid: String,
    master: Option<&'a MasterCtx>,
    /// Where minted keys come from, when this create mints one (`accept: preseed`).
    keys: Option<&'a KeyPool>,
    /// The caller's public key (`seed: ssh`).
    given_pub: Option<&'a salt_proto::keys::PublicKey>,
    /// The warm state a warm clone is restored from (`base` is then the state's).
    warm: Option<Arc<super::warm::WarmState>>,
    progress: &'a dyn Progress,
}

impl Plan<'_> {
    /// The pipeline: every step of a create, in order.
    fn walk(&self, run: &mut Run<'_>, made: &mut Made) -> Result<(), CloudError> {
        let vm = Vm {
            name: self.name,
            hv: &self.hv,
            base: &self.base,
            prof: self.prof,
        };
        let uuid = self.uuid.as_str();
        let (disks, nvram) = (disks::Disks { vm }, nvram::Nvram { vm });
        let seed = seed::Seed {
            vm,
            uuid,
            master: self.master,
            keys: self.keys,
            given_pub: self.given_pub,
        };
        let define = define::Define {
            vm,
            uuid,
            request: self.request,
            warm: self.warm.as_ref().map(|w| w.id.as_str()),
        };
        let key = key::Key {
            master: self.master,
            profile: self.prof,
            name: self.name,
            force: self.prof.force,
            progress: self.progress,
        };
        let start = start::Start { vm };
        // A warm clone is restored from its own copy of the state's image, not started.
        let warm = self
            .warm
            .as_deref()
            .map(|state| (image::Image { vm, state }, restore::Restore { vm, uuid }));
        let mut steps: Vec<&dyn runner::Action<Made>> = vec![&disks, &nvram, &seed, &define, &key];
        match &warm {
            Some((image, restore)) => {
                steps.push(image);
                steps.push(restore);
            }
            None => steps.push(&start),
        }
        run.walk(&steps, made)
    }

    fn created(self, made: Made, timings: &BTreeMap<String, u64>) -> Created {
        let prof = self.prof;
        Created {
            name: self.name.into(),
            id: self.uuid,
            state: "running".into(),
            profile: prof.name.clone(),
            provider: format!("{}:{}", prof.provider, prof.driver),
            driver: prof.driver.clone(),
            base_domain: prof.base_domain.clone(),
            fingerprint: made.fingerprint(),
            macs: made.macs,
            volumes: made.volumes,
            seed: self.master.map(|_| prof.seed.name()),
            ssh_port: made.ssh_port,
            timings_ms: timings.clone(),
            proof_key: made
                .key
                .as_ref()
                .map(|k| crate::cloud::ready::ProofKey::new(k.to_pem())),
            agent_channel: self.base.xml.has_agent_channel(),
        }
    }
}

impl Cloud {
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
        // Several hosts: each clone's host is picked now, for the whole call at once.
        let placed = if prof.hosts.len() > 1 {
            let (me, p, n) = (self.clone(), prof.clone(), names.to_vec());
            tokio::task::spawn_blocking(move || me.place_clones(&p, &n))
                .await
                .map_err(|e| CloudError::Internal(format!("placement failed: {e}")))?
        } else {
            Default::default()
        };
        let me = self.clone();
        Ok(
            per_name(names, limit, "clone", move |name| match placed.get(name) {
                None => me.create_one(&prof, name, &opts, &*progress),
                Some(Ok(uri)) => {
                    let mut on_host = prof.clone();
                    on_host.url = uri.clone();
                    me.create_one(&on_host, name, &opts, &*progress)
                }
                Some(Err(e)) => {
                    progress.step(name, "failed", json!({"error": e}));
                    Err(CloudError::Config(e.clone()))
                }
            })
            .await,
        )
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
        let entry = journal::Entry {
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
        };
        let pause_after = self.pause_after.as_deref();
        let mut run = Run::begin(
            self.journal.as_ref(),
            entry,
            progress,
            opts.fail_after,
            pause_after,
        )?;
        let made = self.plan(prof, name, opts, progress).and_then(|plan| {
            let mut made = Made::default();
            plan.walk(&mut run, &mut made)?;
            Ok(plan.created(made, run.timings()))
        });
        made.map_err(|e| {
            if matches!(&e, CloudError::Libvirt(le) if le.is_connection_lost()) {
                // Undo on the libvirtd that comes back, rather than fail to undo now.
                self.wait_hypervisor(&prof.url, RETRY_WAIT);
            }
            let hv = self.hypervisor(&prof.url);
            let undoer = undo::Undoer {
                hv: hv.as_deref(),
                master: self.master.as_ref(),
                progress,
            };
            run.roll_back(e, &undoer)
        })
    }

    /// Checks what a create of `name` needs before it makes anything.
    fn plan<'a>(
        &'a self,
        prof: &'a Profile,
        name: &'a str,
        opts: &'a CreateOptions,
        progress: &'a dyn Progress,
    ) -> Result<Plan<'a>, CloudError> {
        if self.master.is_some() && prof.minion.get("master").is_none() {
            return Err(CloudError::Config(format!(
                "profile {:?} ({}): `minion: {{master: ADDRESS}}` is required: the address the guest reaches this master at (10.0.2.2 under QEMU user networking)",
                prof.name,
                prof.file.display()
            )));
        }
        // A remote host that cannot be reached fails the create at once (nothing is made
        // yet); a local libvirtd that is restarting is waited for, as a lost connection is.
        let hv = self.hypervisor(&prof.url).map_err(|e| {
            if prof.url.contains(":///") {
                CloudError::Libvirt(e)
            } else {
                let host = prof.hosts.iter().find(|h| h.uri == prof.url).cloned();
                let host = host.unwrap_or_else(|| crate::config::cloud::hosts::Host {
                    name: self.host_name(&prof.url),
                    uri: prof.url.clone(),
                });
                CloudError::HostDown(super::hosts::unreachable(&prof.provider, &host, &e))
            }
        })?;
        check_given_key(prof, self.master.is_some(), opts.minion_pub.is_some())?;
        if let Some(mc) = &self.master {
            if !mc.peers_for(&prof.name, &prof.minion)?.is_empty()
                && prof.accept != AcceptMode::Preseed
            {
                return Err(CloudError::Config(format!(
                    "profile {:?}: several masters in `minion: master:` need `accept: preseed` (the default): virtseed accepts the key it minted on each of them",
                    prof.name
                )));
            }
        }
        hv.check_free(name)?;
        let (base, warm) = if prof.warm {
            if self.master.is_none() {
                return Err(CloudError::Config(format!(
                    "profile {:?}: `warm: true` needs the master (a warm clone's identity is sent when it is restored)",
                    prof.name
                )));
            }
            let state = super::warm::state(&hv, prof, progress, &[name.to_string()])?;
            (state.base.clone(), Some(state))
        } else {
            (hv.base(&prof.base_domain)?, None)
        };
        let mints = self.master.is_some()
            && prof.accept == AcceptMode::Preseed
            && prof.seed != SeedKind::Ssh;
        Ok(Plan {
            prof,
            name,
            request: &opts.request,
            hv,
            base,
            uuid: uuid::Uuid::new_v4().to_string(),
            master: self.master.as_ref(),
            keys: mints.then(|| self.key_pool()),
            given_pub: opts.minion_pub.as_ref(),
            warm,
            progress,
        })
    }
}

/// `seed: ssh` needs the public key of the pair its deployer (virtseed's salt-cloud driver)
/// sends over SSH; no other seed takes one.
fn check_given_key(prof: &Profile, master: bool, given: bool) -> Result<(), CloudError> {
    let ssh = prof.seed == SeedKind::Ssh;
    if ssh && master && !given {
        return Err(CloudError::Config(format!(
            "profile {:?} ({}) has `seed: ssh` ({}): its clones get their identity by salt-cloud's SSH deploy, which only virtseed's salt-cloud driver runs: use `salt-cloud -p {} NAME` (not `virtseed profile` or `salt-run cloud.profile`), or give the profile `seed: cloud-init` or `smbios` if its template takes a seed",
            prof.name,
            prof.file.display(),
            prof.seed_from.why(),
            prof.name
        )));
    }
    if given && !ssh {
        return Err(CloudError::Config(format!(
            "minion_pub is only taken for `seed: ssh`; profile {:?} seeds its own key",
            prof.name
        )));
    }
    if given && prof.accept != AcceptMode::Preseed {
        return Err(CloudError::Config(format!(
            "profile {:?}: `seed: ssh` pre-accepts the deployed key: `accept: preseed` (the default) is required",
            prof.name
        )));
    }
    Ok(())
}
