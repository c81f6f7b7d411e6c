//! The cloud service inside the sidecar: the `cloud.*` jobs' shared state, salt-cloud
//! events on the master's bus, readiness, and removing the seed once the minion is up.

use super::journal::JobRef;
use super::ready::{self, Ready};
use super::{Cloud, CloudError, CreateOptions, Progress};
use crate::bus::clear::ClearChannel;
use crate::bus::events::EventBus;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub struct Service {
    pub cloud: Arc<Cloud>,
    pub events: EventBus,
    pub clear: ClearChannel,
}

/// Progress as events: `salt/cloud/<name>/<step>` with salt-cloud's fields. Events are
/// fired in order by one task; [`BusProgress::flush`] waits until all are out (so a job's
/// return never overtakes its last step events).
pub struct BusProgress {
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    pub profile: String,
    pub provider: String,
}

enum Msg {
    Fire(String, Value),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl BusProgress {
    /// Must be called within the runtime.
    pub fn new(events: EventBus, profile: String, provider: String) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                match m {
                    Msg::Fire(tag, data) => {
                        if let Err(e) = events.fire(&tag, crate::bus::from_json(&data)).await {
                            tracing::warn!(%tag, "could not fire: {e}");
                        }
                    }
                    Msg::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self {
            tx,
            profile,
            provider,
        }
    }

    /// Waits until every event so far has been fired.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

impl Progress for BusProgress {
    fn step(&self, name: &str, step: &str, data: Value) {
        // One log line per step, naming the VM (also outside its `vm` span: `creating`).
        tracing::info!(name = %name, step, "clone step");
        let mut d = match data {
            Value::Object(m) => m,
            other => {
                let mut m = serde_json::Map::new();
                m.insert("data".into(), other);
                m
            }
        };
        d.insert("name".into(), json!(name));
        if !self.profile.is_empty() {
            d.insert("profile".into(), json!(self.profile));
            d.insert("provider".into(), json!(self.provider));
            d.insert("driver".into(), json!("libvirt"));
        }
        d.entry("event")
            .or_insert_with(|| json!(format!("{step} instance")));
        self.fire(&format!("salt/cloud/{name}/{step}"), Value::Object(d));
    }

    fn fire(&self, tag: &str, data: Value) {
        let _ = self.tx.send(Msg::Fire(tag.to_string(), data));
    }
}

/// Per-request overrides a caller may pass with `cloud.profile`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub wait_for_minion: Option<bool>,
    pub minion_timeout: Option<u64>,
    /// `seed: ssh`: the public key the driver deploys (validated PEM).
    pub minion_pub: Option<salt_proto::keys::PublicKey>,
}

impl Service {
    /// `cloud.profile`: clones, then (by default) waits for each minion's first ping and
    /// removes its seed. Returns salt-cloud's shape: `{name: {...}}` or `{name: {Error}}`.
    pub async fn profile(
        self: &Arc<Self>,
        profile: &str,
        names: &[String],
        job: JobRef,
        ov: Overrides,
    ) -> Result<BTreeMap<String, Value>, CloudError> {
        let prof = self
            .cloud
            .config
            .profile(profile)
            .map_err(CloudError::Config)?
            .clone();
        self.create(prof, names, job, ov).await
    }

    /// Clones from a resolved profile, then waits for readiness (see [`Service::profile`]).
    pub async fn create(
        self: &Arc<Self>,
        prof: crate::config::cloud::Profile,
        names: &[String],
        job: JobRef,
        ov: Overrides,
    ) -> Result<BTreeMap<String, Value>, CloudError> {
        let request = job.jid.clone();
        super::names::check_all(names).map_err(CloudError::BadName)?;
        let progress = Arc::new(BusProgress::new(
            self.events.clone(),
            prof.name.clone(),
            format!("{}:{}", prof.provider, prof.driver),
        ));
        let t0 = Instant::now();
        // Listen before anything starts, so no auth or start event is missed.
        let mut rxs: BTreeMap<String, tokio::sync::broadcast::Receiver<_>> = names
            .iter()
            .map(|n| (n.clone(), self.events.subscribe()))
            .collect();
        for n in names {
            progress.step(n, "creating", json!({"event": "starting create"}));
            progress.step(n, "requesting", json!({"event": "requesting instance", "kwargs": {"name": n, "base_domain": prof.base_domain}}));
        }
        let created = self
            .cloud
            .create_many(
                prof.clone(),
                names,
                CreateOptions {
                    request: request.clone(),
                    fail_after: None,
                    job: Some(job),
                    minion_pub: ov.minion_pub.clone(),
                },
                progress.clone(),
            )
            .await?;
        let wait = ov.wait_for_minion.unwrap_or(prof.wait_for_minion);
        let timeout = Duration::from_secs(ov.minion_timeout.unwrap_or(prof.minion_timeout_secs));
        let deadline = Instant::now() + timeout;
        let finish = Arc::new(Finish {
            wait,
            deadline,
            t0,
            request: request.clone(),
            keep_on_timeout: prof.keep_on_timeout,
            own: OwnKey::of(&prof),
            manual: (prof.accept == crate::config::cloud::AcceptMode::Manual)
                .then(|| super::autoaccept::guest_pki_dir(&prof.minion)),
            progress: progress.clone(),
        });
        let mut tasks = Vec::new();
        for (name, r) in created {
            let rx = rxs.remove(&name).expect("a receiver per name");
            let span = tracing::info_span!("vm", name = %name);
            let job = self.clone().finish_one(finish.clone(), name, r, rx);
            tasks.push(tokio::spawn(job.instrument(span)));
        }
        let mut out = BTreeMap::new();
        for t in tasks {
            if let Ok((n, v)) = t.await {
                out.insert(n, v);
            }
        }
        progress.flush().await;
        for n in names {
            self.cloud.journal_close(&request, n);
        }
        Ok(out)
    }

    /// One clone made: (by default) waits until its minion proves itself, removes its seed,
    /// and says `created`; or, when it never does, destroys it (unless kept).
    async fn finish_one(
        self: Arc<Self>,
        f: Arc<Finish>,
        name: String,
        r: Result<super::create::Created, CloudError>,
        mut rx: tokio::sync::broadcast::Receiver<salt_proto::event::Event>,
    ) -> (String, Value) {
        let progress = &f.progress;
        let c = match r {
            Ok(c) => c,
            Err(e) => return (name, json!({"Error": e.to_string()})),
        };
        let mut v = serde_json::to_value(&c).unwrap_or_default();
        // `seed: ssh`: the driver deploys, waits for the minion and fires `created`.
        let deployed_later = c.seed == Some("ssh");
        let own = f.own.as_ref().filter(|_| c.seed.is_some());
        if let (Some(o), false) = (own, f.wait) {
            self.pin_later(progress.clone(), &name, o);
        }
        if f.wait && c.seed.is_some() && !deployed_later {
            // `accept: manual` on a base without the guest agent's channel: nothing tells
            // virtseed which key the VM holds, so readiness is a plain test.ping, said so.
            let manual = f.manual.as_deref().filter(|_| c.agent_channel);
            if f.manual.is_some() && !c.agent_channel {
                let why = "a plain test.ping answer (accept: manual on a base without the QEMU guest agent's channel: virtseed cannot read which key the VM holds, so any host accepted under this name would pass)";
                tracing::warn!(name, "readiness is {why}");
                v["readiness"] = json!(format!("unproven: {why}"));
            }
            let ready = async {
                let key = match manual {
                    Some(dir) => Some(
                        super::autoaccept::held_and_accepted(self.clone(), &name, dir, f.deadline)
                            .await?,
                    ),
                    None => {
                        self.proof_key(progress, &name, c.proof_key.clone(), own, f.deadline)
                            .await?
                    }
                };
                ready::wait_minion(&self.clear, &mut rx, &name, key.as_ref(), f.t0, f.deadline)
                    .await
            };
            match ready.await {
                Ok(ready) => {
                    if let Some(why) = self.twin(&name).await {
                        self.refuse(&name, &why, progress, &mut v).await;
                        self.cloud.journal_close(&f.request, &name);
                        return (name, v);
                    }
                    progress.step(
                        &name,
                        "minion_up",
                        json!({"elapsed_ms": ready.first_ping_ms}),
                    );
                    self.remove_seed(&name, &c.volumes, &**progress).await;
                    merge_ready(&mut v, &ready);
                    v["minion_up"] = json!(true);
                }
                Err(e) => {
                    self.not_ready(&name, &e, f.keep_on_timeout, progress, &mut v)
                        .await;
                    self.cloud.journal_close(&f.request, &name);
                    return (name, v);
                }
            }
        }
        // Where it is now, in the return and the `created` event, as salt-cloud's drivers
        // report it (an address not known yet is said so).
        let mut created = json!({"event": "created instance"});
        for (k, a) in self.address_keys(&name).await {
            v[&k] = a.clone();
            created[k] = a;
        }
        let (cloud, n, fp) = (self.cloud.clone(), name.clone(), c.fingerprint.clone());
        if let Ok(Some(k)) =
            tokio::task::spawn_blocking(move || cloud.key_states_beyond_one(&n, &fp)).await
        {
            v["salt_keys"] = k;
        }
        self.cloud.journal_done(&f.request, &name, &v);
        if !deployed_later {
            progress.step(&name, "created", created);
        }
        (name, v)
    }

    /// The key clone `name`'s readiness answer must prove it holds: the one virtseed minted,
    /// or (`accept: on_first_auth`) the one read from inside the VM and accepted, waited for
    /// until `until` at most (see [`super::autoaccept::pin`]).
    async fn proof_key(
        self: &Arc<Self>,
        progress: &Arc<BusProgress>,
        name: &str,
        minted: Option<ready::ProofKey>,
        own: Option<&OwnKey>,
        until: Instant,
    ) -> Result<Option<ready::ProofKey>, String> {
        match (minted, own) {
            (None, Some(o)) => {
                let until = until.min(Instant::now() + o.window);
                let p: Arc<dyn super::Progress> = progress.clone();
                let key =
                    super::autoaccept::pin(self.clone(), p, name, &o.guest_pki, until).await?;
                Ok(Some(key))
            }
            (key, _) => Ok(key),
        }
    }

    /// Accepts the key VM `name` holds in the background (a create that does not wait).
    fn pin_later(self: &Arc<Self>, progress: Arc<BusProgress>, name: &str, own: &OwnKey) {
        let (me, name, dir) = (self.clone(), name.to_string(), own.guest_pki.clone());
        let until = Instant::now() + own.window;
        tokio::spawn(async move {
            if let Err(e) = super::autoaccept::pin(me, progress, &name, &dir, until).await {
                tracing::warn!(name, "{e}");
            }
        });
    }

    /// A clone whose minion never proved itself: destroyed (unless `keep`), the error said.
    async fn not_ready(
        &self,
        name: &str,
        why: &str,
        keep: bool,
        progress: &Arc<BusProgress>,
        v: &mut Value,
    ) {
        v["minion_up"] = json!(false);
        let e = if keep {
            format!("{why}; the VM was kept (keep_on_timeout)")
        } else {
            self.discard(name, progress.clone()).await;
            format!("{why}; the VM was destroyed (set keep_on_timeout: true in the profile to keep it for debugging)")
        };
        progress.step(name, "failed", json!({"error": e}));
        v["Error"] = json!(e);
    }

    /// Why clone `name`, up, is the twin of another minion (the same machine-id), if it is.
    async fn twin(&self, name: &str) -> Option<String> {
        let cloud = self.cloud.clone();
        let n = name.to_string();
        let twin = tokio::task::spawn_blocking(move || cloud.machine_id_twin(&n))
            .await
            .ok()
            .flatten()?;
        let why = super::twins::twin_error(name, &twin.0, &twin.1);
        tracing::error!(name, "{why}");
        Some(why)
    }

    /// A clone that came up wrong (see [`Service::twin`]): destroyed, the error said.
    async fn refuse(&self, name: &str, why: &str, progress: &Arc<BusProgress>, v: &mut Value) {
        v["minion_up"] = json!(true);
        self.discard(name, progress.clone()).await;
        let e = format!("{why}; the VM was destroyed");
        progress.step(name, "failed", json!({"error": e}));
        v["Error"] = json!(e);
    }

    /// `Cloud::address_keys` off the runtime; none when the VM cannot be read.
    async fn address_keys(&self, name: &str) -> serde_json::Map<String, Value> {
        let cloud = self.cloud.clone();
        let n = name.to_string();
        let r = tokio::task::spawn_blocking(move || cloud.address_keys(&n))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        r.unwrap_or_else(|e| {
            tracing::warn!(name, "could not read the clone's addresses: {e}");
            serde_json::Map::new()
        })
    }

    /// Destroys a clone whose minion never answered: VM, volumes and key.
    async fn discard(&self, name: &str, progress: Arc<BusProgress>) {
        let cloud = self.cloud.clone();
        let n = name.to_string();
        let r = tokio::task::spawn_blocking(move || cloud.destroy_one(&n, &*progress))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = r {
            tracing::error!(
                name,
                "could not destroy the clone whose minion never answered: {e}"
            );
        }
    }

    /// Detaches and deletes the seed volume once the minion has its identity.
    async fn remove_seed(&self, name: &str, volumes: &[String], progress: &dyn Progress) {
        let Some(seed) = volumes
            .iter()
            .find(|v| v.ends_with(&format!("/{name}-seed.img")))
            .cloned()
        else {
            return;
        };
        let cloud = self.cloud.clone();
        let n = name.to_string();
        let r = tokio::task::spawn_blocking(move || cloud.remove_seed(&n, &seed)).await;
        match r {
            Ok(Ok(())) => progress.step(name, "seed_removed", json!({})),
            Ok(Err(e)) => tracing::warn!(name, "could not remove the seed: {e}"),
            Err(e) => tracing::warn!(name, "could not remove the seed: {e}"),
        }
    }
}

/// What finishing each clone of one create needs (see [`Service::finish_one`]).
struct Finish {
    wait: bool,
    deadline: Instant,
    t0: Instant,
    request: String,
    keep_on_timeout: bool,
    own: Option<OwnKey>,
    /// `accept: manual`: where the VM keeps the key it makes.
    manual: Option<String>,
    progress: Arc<BusProgress>,
}

/// `accept: on_first_auth`: where the VM keeps its key, and how long virtseed may accept it.
struct OwnKey {
    guest_pki: String,
    window: Duration,
}

impl OwnKey {
    fn of(prof: &crate::config::cloud::Profile) -> Option<Self> {
        (prof.accept == crate::config::cloud::AcceptMode::OnFirstAuth).then(|| OwnKey {
            guest_pki: super::autoaccept::guest_pki_dir(&prof.minion),
            window: Duration::from_secs(prof.autoaccept_window_secs),
        })
    }
}

fn merge_ready(v: &mut Value, r: &Ready) {
    if let Some(t) = v.get_mut("timings_ms").and_then(|t| t.as_object_mut()) {
        if let Some(a) = r.first_auth_ms {
            t.insert("first_auth".into(), json!(a));
        }
        if let Some(s) = r.minion_start_ms {
            t.insert("minion_start".into(), json!(s));
        }
        t.insert("first_ping".into(), json!(r.first_ping_ms));
    }
}
