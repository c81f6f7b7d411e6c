//! `virtseed run`: join the master's bus and serve jobs until stopped.

use crate::bus::channel::{Channel, ChannelConfig};
use crate::bus::events::EventBus;
use crate::config::{master::MasterOpts, settings::Settings};
use crate::jobs::Dispatcher;
use crate::pki;
use anyhow::Context;
use salt_proto::event::Event;
use salt_proto::keys::PrivateKey;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{error, info, warn};

pub async fn run(config_dir: &Path) -> anyhow::Result<()> {
    let master = MasterOpts::load(config_dir)?;
    let settings = Settings::load(config_dir)?;
    if master.transport != "zeromq" {
        anyhow::bail!(
            "{}: transport `{}` is not supported; virtseed speaks Salt's default zeromq transport",
            config_dir.join("master").display(),
            master.transport
        );
    }
    let key = own_key(&master, &settings).await?;
    let signer = crate::bus::proof::Signer::new(PrivateKey::from_pem(&key.to_pem())?);
    let events = EventBus::new(&master.sock_dir, settings.salt_version).signed_by(signer.clone());
    // The sidecars beside other masters (`peers:`), before the bus is read: their offers
    // are read from its first event on.
    let peers = match settings.peers.is_empty() {
        true => None,
        false => Some(crate::peers::Peers::new(
            &master,
            &settings,
            &key,
            events.clone(),
        )?),
    };
    let peer_bus = events.subscribe();
    let channel = join(&master, &settings, key).await?;
    // Publications first: jobs reach the sidecar from its first moment on the bus, and
    // wait in the queue for the dispatcher (announcing below signs an event, which takes a
    // while in a debug build on a loaded machine).
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(channel.clone().publications(tx));

    tokio::spawn(events.clone().listen());
    announce(&events, &settings.id, &master).await;
    tokio::spawn(follow_key_rotation(events.subscribe(), channel.clone()));
    tokio::spawn(follow_master_restarts(
        events.connections(),
        channel.clone(),
    ));

    let remote = peers
        .clone()
        .map(|p| Arc::new(p) as Arc<dyn crate::cloud::RemoteKeys>);
    let cloud = cloud_service(config_dir, &master, &settings, &events, remote);
    if let Some(svc) = &cloud {
        let progress = Arc::new(crate::cloud::service::BusProgress::new(
            events.clone(),
            String::new(),
            String::new(),
        ));
        tokio::spawn(crate::cloud::autoaccept::watch(
            svc.clone(),
            progress,
            events.subscribe(),
        ));
    }
    if let Some(svc) = &cloud {
        tokio::spawn(reconcile(svc.clone(), channel.clone(), signer.clone()));
    }
    let facts = Arc::new(crate::jobs::facts::Facts::new(
        &settings.id,
        &master,
        settings.salt_version,
        cloud.as_ref().map(|s| &*s.cloud),
    ));
    // Publications wait in the queue meanwhile (at most a few seconds).
    facts.clone().report_at_start(channel.clone()).await;
    if let Some(p) = &peers {
        // A minion of each peer's master too: it answers their publications as any minion
        // there does (`salt '*' test.ping`), and serves `cloud.*` called through them (their
        // front ends listing this sidecar when their own is down); progress events go to
        // this master's bus, the answer to theirs.
        let (signer, facts, version) = (signer.clone(), facts.clone(), settings.salt_version);
        let cloud = cloud.clone();
        p.start(
            move |ch| {
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(ch.clone().publications(tx));
                tokio::spawn(facts.clone().report_at_start(ch.clone()));
                let d = Dispatcher::new(ch, signer.clone(), version, cloud.clone(), facts.clone());
                tokio::spawn(Arc::new(d).serve(rx));
            },
            peer_bus,
        );
    }
    let dispatcher = Arc::new(Dispatcher::new(
        channel.clone(),
        signer,
        settings.salt_version,
        cloud,
        facts,
    ));
    tokio::spawn(dispatcher.serve(rx));

    shutdown_signal().await;
    info!("stopping");
    Ok(())
}

/// The sidecar's own minion key (made on first run), pre-accepted so that the first sign-in
/// is accepted at once (we run as the master's user, beside it).
async fn own_key(master: &MasterOpts, settings: &Settings) -> anyhow::Result<PrivateKey> {
    let id = &settings.id;
    let dir = settings.pki_dir.clone();
    let key = tokio::task::spawn_blocking(move || pki::load_or_create_keypair(&dir, 2048))
        .await?
        .context("the sidecar's own key")?;
    if let Some(why) = master.key_store_problem() {
        error!("{why}; accept the sidecar's own key with `salt-key -y -a {id}` (virtseed keeps retrying); cloud.* jobs stay off");
        return Ok(key);
    }
    match pki::pre_accept(master.key_dir(), id, key.public_key().pem()) {
        Ok(pki::Accepted::Ours) => {}
        Ok(pki::Accepted::Other) => error!(
            "another key is accepted for `{id}` in {}; remove it with `salt-key -d {id}` (virtseed keeps retrying)",
            master.key_dir().display()
        ),
        Ok(pki::Accepted::Absent) => {}
        Err(e) => warn!("cannot pre-accept our key ({e}); accept it with `salt-key -y -a {id}` (virtseed keeps retrying)"),
    }
    Ok(key)
}

/// Signs in to the master as a minion.
async fn join(
    master: &MasterOpts,
    settings: &Settings,
    key: PrivateKey,
) -> anyhow::Result<Arc<Channel>> {
    let id = &settings.id;
    let channel = Arc::new(Channel::new(ChannelConfig {
        id: id.clone(),
        key,
        ret_endpoint: master.ret_endpoint(),
        host: master.host.clone(),
        zmq_filtering: master.zmq_filtering,
        master_pub_path: settings.pki_dir.join("minion_master.pub"),
        master_finger: settings.master_finger.clone(),
    })?);
    let session = channel.session().await;
    info!(
        "joined master {}:{} as {id} (publications on port {}, master key {})",
        master.host,
        master.ret_port,
        session.publish_port,
        session.master.fingerprint()
    );
    Ok(channel)
}

/// Fires `virtseed/sidecar/<id>/start` on the master's event bus.
async fn announce(events: &EventBus, id: &str, master: &MasterOpts) {
    let start = salt_proto::msgpack::map([
        ("id", salt_proto::msgpack::text(id.to_string())),
        (
            "version",
            salt_proto::msgpack::text(env!("CARGO_PKG_VERSION")),
        ),
        ("master", salt_proto::msgpack::text(master.ret_endpoint())),
    ]);
    if let Err(e) = events
        .fire(&format!("virtseed/sidecar/{id}/start"), start)
        .await
    {
        warn!(
            "cannot fire on the master's event bus in {}: {e}",
            master.sock_dir.display()
        );
    }
}

/// The master rotates its AES key on key deletion (`rotate_aes_key`): follow it at once
/// rather than at the next failed publication. Any minion can fire a `key` event too, so a
/// flood of them signs in again at most once per [`RENEW_AT_MOST_EVERY`] (a real rotation
/// missed that way is caught at the next publication that does not decrypt).
async fn follow_key_rotation(mut rx_events: broadcast::Receiver<Event>, ch: Arc<Channel>) {
    let mut last: Option<std::time::Instant> = None;
    loop {
        match rx_events.recv().await {
            Ok(ev) if ev.tag == "key" => {
                if last.is_some_and(|t| t.elapsed() < RENEW_AT_MOST_EVERY) {
                    continue;
                }
                last = Some(std::time::Instant::now());
                let current = ch.session().await.generation;
                info!("the master rotated its AES key; re-authenticating");
                ch.renew(Some(current)).await;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

const RENEW_AT_MOST_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The event bus socket closes when the master stops and comes back when it starts: the
/// earliest sign of a restart, before any publication fails.
async fn follow_master_restarts(mut connections: watch::Receiver<u64>, ch: Arc<Channel>) {
    let mut seen = *connections.borrow_and_update();
    while connections.changed().await.is_ok() {
        let now = *connections.borrow_and_update();
        if seen > 0 && now > seen {
            info!("the master's event bus came back: the master restarted; re-authenticating");
            ch.master_restarted().await;
            info!("rejoined master {}", ch.ret_endpoint());
        }
        seen = now;
    }
}

/// How often the create journal is checked for creates a dead process left (a `virtseed
/// profile` killed meanwhile, or a rollback that failed and is retried).
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Finishes the creates an earlier process left unfinished (at start, then periodically),
/// returns them to the jobs that waited, and says what it did.
async fn reconcile(
    svc: Arc<crate::cloud::service::Service>,
    channel: Arc<Channel>,
    signer: crate::bus::proof::Signer,
) {
    let progress = Arc::new(crate::cloud::service::BusProgress::new(
        svc.events.clone(),
        String::new(),
        String::new(),
    ));
    loop {
        let cloud = svc.cloud.clone();
        let p = progress.clone();
        let recovered = match tokio::task::spawn_blocking(move || cloud.reconcile(&*p)).await {
            Ok(r) => r,
            Err(e) => {
                error!("reconcile failed: {e}");
                Vec::new()
            }
        };
        for r in &recovered {
            match r.outcome() {
                "kept" => {
                    info!(name = %r.entry.name, "reconcile: an interrupted create had finished; kept")
                }
                "rolled_back" => {
                    warn!(name = %r.entry.name, step = %r.entry.step, undone = r.entry.intents.len(), "reconcile: an interrupted create was rolled back")
                }
                _ => {
                    error!(name = %r.entry.name, step = %r.entry.step, left = ?r.left_behind, "reconcile: rolling back an interrupted create failed; retrying in {}s", RECONCILE_EVERY.as_secs())
                }
            }
            let data = serde_json::json!({
                "name": r.entry.name,
                "request": r.entry.request,
                "step": r.entry.step,
                "outcome": r.outcome(),
                "left_behind": r.left_behind,
            });
            use crate::cloud::Progress;
            progress.fire(&format!("virtseed/reconcile/{}", r.entry.name), data);
        }
        crate::jobs::return_recovered(&channel, &signer, &recovered).await;
        progress.flush().await;
        tokio::time::sleep(RECONCILE_EVERY).await;
    }
}

/// The `cloud.*` service: salt-cloud's providers and profiles in `config_dir`, identity from
/// the master. Without a libvirt provider the sidecar still answers everything else.
fn cloud_service(
    config_dir: &Path,
    master: &crate::config::master::MasterOpts,
    settings: &crate::config::settings::Settings,
    events: &EventBus,
    remote: Option<Arc<dyn crate::cloud::RemoteKeys>>,
) -> Option<Arc<crate::cloud::service::Service>> {
    let cfg = crate::config::cloud::CloudConfig::load(config_dir);
    for e in &cfg.errors {
        warn!("cloud configuration: {e}");
    }
    if cfg.profiles.is_empty() {
        info!(
            "no libvirt profiles in {}/cloud.profiles(.d): cloud.* jobs are off",
            config_dir.display()
        );
        return None;
    }
    let ctx = match crate::cloud::MasterCtx::from_opts(master, settings) {
        Ok(c) => crate::cloud::MasterCtx { remote, ..c },
        Err(e) => {
            warn!("cloud.* jobs are off: {e}");
            return None;
        }
    };
    info!(profiles = cfg.profiles.len(), "serving cloud.* jobs");
    let cloud = crate::cloud::Cloud::serving(
        cfg,
        Some(ctx),
        crate::cloud::DEFAULT_MAX_PARALLEL,
        &settings.id,
    );
    Some(Arc::new(crate::cloud::service::Service {
        cloud,
        events: events.clone(),
        clear: crate::bus::clear::ClearChannel::new(
            &master.ret_endpoint(),
            &master.cachedir,
            &master.user,
        ),
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
