//! Jobs: publications addressed to the sidecar, one file per Salt function it answers
//! (as mini-redis has one file per command). Each file parses its own arguments and runs.
//!
//! Every job runs in its own task, so a long clone never delays a `test.ping`.

mod cloud_args;
mod cloud_catalog;
mod cloud_create;
mod cloud_destroy;
mod cloud_profile;
mod cloud_query;
pub mod facts;
mod find_job;
mod fleet;
mod list_functions;
mod minion_data;
mod subdict;
pub mod target;
mod test_arg;
mod test_ping;
mod test_sleep;
mod test_version;

use crate::bus::channel::Channel;
use crate::bus::proof::Signer;
use salt_proto::jid::Jid;
use salt_proto::msgpack::{self, text};
use salt_proto::publish::Publication;
use salt_proto::request::Return;
use salt_proto::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

/// Every function the sidecar answers, for `sys.list_functions`, besides the fleet-wide
/// ones ([`fleet::FUNCTIONS`], [`minion_data::GRAINS`], [`minion_data::PILLAR`]).
pub const FUNCTIONS: &[&str] = &[
    cloud_profile::NAME,
    cloud_create::NAME,
    cloud_destroy::NAME,
    cloud_query::LIST_NODES,
    cloud_query::LIST_NODES_FULL,
    cloud_query::LIST_NODES_SELECT,
    cloud_query::QUERY,
    cloud_catalog::LIST_IMAGES,
    cloud_catalog::LIST_SIZES,
    cloud_catalog::LIST_LOCATIONS,
    cloud_query::ACTION,
    find_job::NAME,
    list_functions::NAME,
    test_arg::NAME,
    test_ping::NAME,
    test_sleep::NAME,
    test_version::NAME,
];

/// What a job returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ret: Value,
    pub success: bool,
    pub retcode: i64,
}

impl Outcome {
    pub fn ok(ret: Value) -> Self {
        Self {
            ret,
            success: true,
            retcode: 0,
        }
    }

    /// A failure as a minion reports it: the message as the return, retcode 1 (EX_GENERIC).
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ret: text(msg.into()),
            success: false,
            retcode: 1,
        }
    }
}

/// Jobs in flight (for `saltutil.find_job`) and recently seen jids (for de-duplication).
#[derive(Default)]
pub struct Running {
    jobs: Mutex<HashMap<Jid, Value>>,
    seen: Mutex<(VecDeque<Jid>, HashSet<Jid>)>,
}

const SEEN_MAX: usize = 4096;

impl Running {
    /// Records `jid`; false if it was seen before (the master may publish twice).
    fn first_sight(&self, jid: &Jid) -> bool {
        let mut g = self.seen.lock().expect("lock");
        let (order, set) = &mut *g;
        if !set.insert(jid.clone()) {
            return false;
        }
        order.push_back(jid.clone());
        if order.len() > SEEN_MAX {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    /// Every job running, as `saltutil.running` lists them.
    pub fn all(&self) -> Vec<Value> {
        self.jobs.lock().expect("lock").values().cloned().collect()
    }

    /// The load of a job still running, as `find_job` reports it.
    pub fn get(&self, jid: &str) -> Option<Value> {
        let jid = Jid::parse(jid).ok()?;
        self.jobs.lock().expect("lock").get(&jid).cloned()
    }
}

/// Runs publications addressed to us and returns their results to the master.
pub struct Dispatcher {
    channel: Arc<Channel>,
    /// Signs the returns virtseed's front ends ask for (see [`crate::bus::proof`]).
    signer: Signer,
    cloud: Option<Arc<crate::cloud::service::Service>>,
    /// Our grains and pillar, and whether the master counts us in a target.
    facts: Arc<facts::Facts>,
    running: Running,
    return_floor: Duration,
    salt_version: Option<salt_proto::version::SaltVersion>,
}

/// Salt 3007's `salt` CLI misses a return that reaches its event socket in the same read as
/// the job's `publish` event (its publish client leaves it buffered until the timeout), so a
/// peer that answers within a few milliseconds makes `salt --out json` wait its whole `-t`.
/// Python minions are never that fast; on 3007 (or an unknown version) we wait this long
/// after the publication before returning.
const SALT_3007_RETURN_FLOOR: Duration = Duration::from_millis(50);

impl Dispatcher {
    pub fn new(
        channel: Arc<Channel>,
        signer: Signer,
        salt_version: Option<salt_proto::version::SaltVersion>,
        cloud: Option<Arc<crate::cloud::service::Service>>,
        facts: Arc<facts::Facts>,
    ) -> Self {
        let return_floor = match salt_version {
            Some(v) if v.major != 3007 => Duration::ZERO,
            _ => SALT_3007_RETURN_FLOOR,
        };
        Self {
            channel,
            signer,
            cloud,
            facts,
            running: Running::default(),
            return_floor,
            salt_version,
        }
    }

    pub async fn serve(self: Arc<Self>, mut rx: mpsc::Receiver<Publication>) {
        while let Some(p) = rx.recv().await {
            self.clone().accept(p);
        }
    }

    fn accept(self: Arc<Self>, p: Publication) {
        if !self.facts.expects(&p) {
            return;
        }
        if !self.running.first_sight(&p.jid) {
            debug!(jid = %p.jid, "duplicate publication ignored");
            return;
        }
        let info = msgpack::map([
            ("fun", text(p.fun.clone())),
            ("arg", p.raw_arg.clone()),
            ("tgt", p.tgt.clone()),
            ("tgt_type", text(p.tgt_type.clone())),
            ("jid", text(p.jid.to_string())),
            ("pid", Value::from(std::process::id())),
            ("ret", text(p.ret.clone())),
            ("user", p.user.clone().map_or(Value::Nil, text)),
        ]);
        self.running
            .jobs
            .lock()
            .expect("lock")
            .insert(p.jid.clone(), info);
        // Every line logged while the job runs carries its jid (and, below it, a VM's name).
        let span = tracing::info_span!("job", jid = %p.jid, fun = %p.fun);
        debug!(parent: &span, fun = %p.fun, "job started");
        let job = async move {
            let started = std::time::Instant::now();
            let outcome = self.call(&p).await;
            if let Some(left) = self.return_floor.checked_sub(started.elapsed()) {
                tokio::time::sleep(left).await;
            }
            self.running.jobs.lock().expect("lock").remove(&p.jid);
            let outcome = for_caller(
                &self.signer,
                self.channel.id(),
                p.jid.as_str(),
                &p.fun,
                p.kwarg(VERSION_KWARG).is_some(),
                outcome,
            );
            let load = Return {
                id: self.channel.id(),
                jid: p.jid.as_str(),
                fun: &p.fun,
                fun_args: p.raw_arg.clone(),
                ret: outcome.ret,
                retcode: outcome.retcode,
                success: outcome.success,
                user: p.user.as_deref(),
            }
            .load();
            match self.channel.send(load).await {
                Ok(_) => {
                    if p.fun != find_job::NAME {
                        info!(jid = %p.jid, fun = %p.fun, ms = started.elapsed().as_millis() as u64, "job returned");
                    }
                }
                Err(e) => warn!(jid = %p.jid, fun = %p.fun, "could not return the job: {e}"),
            }
        };
        tokio::spawn(job.instrument(span));
    }

    async fn call(&self, p: &Publication) -> Outcome {
        match p.fun.as_str() {
            test_ping::NAME => test_ping::run(p),
            test_version::NAME => test_version::run(p, self.salt_version),
            test_arg::NAME => test_arg::run(p),
            test_sleep::NAME => test_sleep::run(p).await,
            find_job::NAME => find_job::run(p, &self.running),
            list_functions::NAME => list_functions::run(p),
            f if minion_data::GRAINS.contains(&f) || minion_data::PILLAR.contains(&f) => {
                minion_data::run(p, &self.facts)
            }
            f if fleet::FUNCTIONS.contains(&f) => {
                fleet::run(p, &self.facts, &self.channel, &self.running).await
            }
            f if f.starts_with("cloud.") && FUNCTIONS.contains(&f) => {
                if let Some(msg) = other_release(p) {
                    return Outcome::error(msg);
                }
                match &self.cloud {
                    None => Outcome::error(format!(
                        "'{f}' is not available: this sidecar has no cloud configuration"
                    )),
                    Some(svc) => match f {
                        cloud_profile::NAME => cloud_profile::run(p, svc).await,
                        cloud_create::NAME => cloud_create::run(p, svc).await,
                        cloud_destroy::NAME => cloud_destroy::run(p, svc).await,
                        cloud_catalog::LIST_IMAGES
                        | cloud_catalog::LIST_SIZES
                        | cloud_catalog::LIST_LOCATIONS => cloud_catalog::run(p, svc).await,
                        _ => cloud_query::run(p, svc).await,
                    },
                }
            }
            other => Outcome::error(format!("'{other}' is not available.")),
        }
    }
}

/// The keyword argument virtseed's Salt modules send their release in (virtseed_client.py).
pub const VERSION_KWARG: &str = "__virtseed_version__";

/// Why a call from virtseed's Salt modules of another release is refused: they and this
/// binary speak one release's arguments. A call without the argument (published by hand,
/// `salt virtseed cloud.list_nodes`) is served.
fn other_release(p: &Publication) -> Option<String> {
    let theirs = msgpack::str_of(p.kwarg(VERSION_KWARG)?)?;
    let ours = env!("CARGO_PKG_VERSION");
    (theirs != ours).then(|| {
        format!(
            "virtseed release mismatch: the Salt modules that sent {} are virtseed {theirs}, this sidecar is virtseed {ours}; install one release of both (`pip install virtseed=={ours}` installs the binary and the modules together, or run `virtseed install-runner` with this binary), then restart the sidecar if you replaced it",
            p.fun
        )
    })
}

/// The outcome as its caller gets it: signed when the caller is one of virtseed's front ends
/// (they send [`VERSION_KWARG`] and believe only a signed answer), as it is otherwise (a job
/// published by hand reads as any minion's).
fn for_caller(
    signer: &Signer,
    id: &str,
    jid: &str,
    fun: &str,
    front_end: bool,
    outcome: Outcome,
) -> Outcome {
    if !front_end {
        return outcome;
    }
    let ret = serde_json::from_str(&msgpack::to_json(&outcome.ret)).unwrap_or_default();
    Outcome {
        ret: crate::bus::from_json(&signer.signed_return(
            id,
            jid,
            fun,
            outcome.success,
            outcome.retcode,
            ret,
        )),
        ..outcome
    }
}

/// Whether a job's arguments (as JSON, the journal keeps them so) hold [`VERSION_KWARG`].
fn from_front_end(fun_args: &serde_json::Value) -> bool {
    fun_args.as_array().is_some_and(|a| {
        a.iter()
            .any(|v| v.get(VERSION_KWARG).is_some() && v.get("__kwarg__").is_some())
    })
}

/// Returns creates that a previous sidecar process left unfinished (see
/// [`crate::cloud::Cloud::reconcile`]) to the jobs that were waiting for them: one return
/// per job, `{name: result}` for the names it held.
pub async fn return_recovered(
    channel: &Channel,
    signer: &Signer,
    recovered: &[crate::cloud::Recovered],
) {
    let mut by_job: std::collections::BTreeMap<
        String,
        (
            &crate::cloud::journal::JobRef,
            serde_json::Map<String, serde_json::Value>,
        ),
    > = Default::default();
    for r in recovered {
        let Some(job) = &r.entry.job else { continue };
        if r.entry.reported {
            continue;
        }
        by_job
            .entry(job.jid.clone())
            .or_insert_with(|| (job, Default::default()))
            .1
            .insert(r.entry.name.clone(), r.result.clone());
    }
    for (jid, (job, ret)) in by_job {
        let outcome = for_caller(
            signer,
            channel.id(),
            &jid,
            &job.fun,
            from_front_end(&job.fun_args),
            cloud_args::report(serde_json::Value::Object(ret)),
        );
        let load = Return {
            id: channel.id(),
            jid: &jid,
            fun: &job.fun,
            fun_args: crate::bus::from_json(&job.fun_args),
            ret: outcome.ret,
            retcode: outcome.retcode,
            success: outcome.success,
            user: job.user.as_deref(),
        }
        .load();
        match channel.send(load).await {
            Ok(_) => info!(%jid, fun = %job.fun, "returned an interrupted job"),
            Err(e) => warn!(%jid, fun = %job.fun, "could not return an interrupted job: {e}"),
        }
    }
}
