//! Sidecars beside masters on hosts of their own, accepting keys for each other.
//!
//! A clone of a multi-master or failover profile signs in to every master it lists. Where a
//! master's key store is not a file virtseed reaches (`masters:` in its settings), a sidecar
//! beside that master accepts the key for it. The sidecars speak through Salt's own channels
//! and believe only each other's signatures:
//!
//! - Each sidecar signs in as a minion to the masters of its `peers:` (its key accepted there
//!   once, by the operator, as any minion's), and answers their publications (`test.ping`,
//!   the fleet-wide functions) as it does its own master's, without `cloud.*`.
//! - The sidecar that makes a clone sends each peer an offer as an event on the peer's master
//!   (`_minion_event`, tag `virtseed/peer/key_offer/NAME`): the clone's public key, signed
//!   with the sender's minion key, naming sender and receiver, with a sequence number and a
//!   nonce. No private key crosses the network.
//! - The peer reads its master's event bus, and believes an offer only when it is signed by
//!   a sidecar of its own `peers:`, with the key its own master accepted for that sidecar,
//!   addressed to it, and not taken before (each offer's sequence number, the sender's clock
//!   in nanoseconds, is kept on disk for [`SEQ_WINDOW`] behind the newest from that sender;
//!   anything older is refused: a replay, even after a restart, is refused). Salt does not check the `id` of an event
//!   (3008 does not even check the token), so nothing else about the event counts.
//! - It accepts the key as virtseed accepts any (never over another key under the name),
//!   remembers that it did, and answers the same way on the sender's master
//!   (`virtseed/peer/key_ack/NAME`, signed, bound to the offer's nonce). A revoke removes
//!   only a key with that fingerprint that virtseed placed there (accepted at a peer's word,
//!   or minted by that sidecar for a clone it offered): any sidecar may destroy a clone
//!   another made.
//! - An offer a peer did not confirm (its master or sidecar down) leaves the create
//!   finished, saying which master lacks the key (`salt_keys`), and is sent again every
//!   [`RETRY_EVERY`] until confirmed; so is a revoke.

use crate::bus::channel::{Channel, ChannelConfig};
use crate::bus::events::EventBus;
use crate::bus::proof::{self, Signer};
use crate::cloud::{PeerFailure, PeerOutcome, RemoteKeys};
use crate::config::master::MasterOpts;
use crate::config::settings::{PeerSidecar, Settings};
use salt_proto::event::Event;
use salt_proto::keys::{clean_key, pem_finger, PrivateKey, PublicKey};
use salt_proto::msgpack::{self, text};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};

const OFFER: &str = "virtseed/peer/key_offer/";
const ACK: &str = "virtseed/peer/key_ack/";
/// The field of the event's data that carries the signed message.
const FIELD: &str = "virtseed_peer";
/// How long a peer's master may take to take an event.
const SEND_WAIT: Duration = Duration::from_secs(10);
/// How long a peer sidecar may take to confirm an offer.
const ACK_WAIT: Duration = Duration::from_secs(20);
/// How often offers nobody confirmed are sent again.
pub const RETRY_EVERY: Duration = Duration::from_secs(15);

/// Files in the sidecar's own pki dir (`state_dir`).
const SEQ_FILE: &str = "peer_seq.json";
const TAKEN_FILE: &str = "peer_accepted.json";
const SENT_FILE: &str = "peer_keys.json";

struct Link {
    peer: PeerSidecar,
    channel: Arc<Channel>,
    /// The peer master's key, pinned at the first sign-in.
    pinned: PathBuf,
}

/// The master beside this sidecar, as offers from peers need it.
struct Store {
    key_dir: PathBuf,
    cachedir: PathBuf,
    state_dir: PathBuf,
    accept_act: &'static str,
    /// Why keys cannot be written here (3008's `mmap_key`), if so.
    problem: Option<String>,
}

pub struct Peers {
    me: String,
    signer: Signer,
    links: Vec<Link>,
    store: Store,
    events: EventBus,
    waiters: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    seq: AtomicU64,
    rt: tokio::runtime::Handle,
    /// Serializes the state files.
    files: Mutex<()>,
}

impl Peers {
    /// The links to `settings.peers` (none signs in before [`Peers::start`]).
    pub fn new(
        master: &MasterOpts,
        settings: &Settings,
        key: &PrivateKey,
        events: EventBus,
    ) -> anyhow::Result<Arc<Self>> {
        let mut links = Vec::new();
        for peer in &settings.peers {
            let pinned = settings.pki_dir.join(pinned_name(peer));
            let channel = Channel::new(ChannelConfig {
                id: settings.id.clone(),
                key: PrivateKey::from_pem(&key.to_pem())?,
                ret_endpoint: format!("tcp://{}", peer.address()),
                host: peer.master.clone(),
                zmq_filtering: false,
                master_pub_path: pinned.clone(),
                master_finger: peer.master_finger.clone(),
            })?;
            links.push(Link {
                peer: peer.clone(),
                channel: Arc::new(channel),
                pinned,
            });
        }
        Ok(Arc::new(Self {
            me: settings.id.clone(),
            signer: Signer::new(PrivateKey::from_pem(&key.to_pem())?),
            links,
            store: Store {
                key_dir: master.key_dir().to_path_buf(),
                cachedir: master.cachedir.clone(),
                state_dir: settings.pki_dir.clone(),
                accept_act: settings
                    .salt_version
                    .map_or("accept", |v| v.key_act_accept()),
                problem: master.key_store_problem(),
            },
            events,
            waiters: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            rt: tokio::runtime::Handle::current(),
            files: Mutex::new(()),
        }))
    }

    /// Signs in to each peer's master and serves its publications with `serve` (the
    /// sidecar's jobs without `cloud.*`); reads offers and answers from this master's bus;
    /// sends again what nobody confirmed.
    pub fn start(
        self: &Arc<Self>,
        serve: impl Fn(Arc<Channel>) + Send + Sync + 'static,
        bus: broadcast::Receiver<Event>,
    ) {
        for l in &self.links {
            info!(peer = %l.peer.id, master = %l.peer.address(), "signing in to a peer's master (accept this sidecar's key there once: `salt-key -a {}`)", self.me);
            serve(l.channel.clone());
        }
        tokio::spawn(self.clone().listen(bus));
        tokio::spawn(self.clone().retry());
    }

    fn link(&self, id: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.peer.id == id)
    }

    /// How a peer's master is named in key states and errors.
    fn label(peer: &PeerSidecar) -> String {
        format!("{} (peer {})", peer.address(), peer.id)
    }

    fn next_seq(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // Strictly increasing within the process, even within one clock tick.
        let mut cur = self.seq.load(Ordering::SeqCst);
        loop {
            let next = now.max(cur + 1);
            match self
                .seq
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(c) => cur = c,
            }
        }
    }

    /// Sends `data` (signed) as event `tag` on `link`'s master.
    async fn fire(&self, link: &Link, tag: String, body: &Value) -> Result<(), String> {
        let signed = self.signer.signed(body);
        let data = msgpack::map([(FIELD, crate::bus::from_json(&signed))]);
        let load = msgpack::map([
            ("cmd", text("_minion_event")),
            ("tag", text(tag)),
            ("data", data),
        ]);
        let at = link.peer.address();
        match tokio::time::timeout(SEND_WAIT, link.channel.send(load)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("its master at {at}: {e}")),
            Err(_) => Err(format!(
                "its master at {at} did not take the offer within {}s (down, or this sidecar's key `{}` not accepted there)",
                SEND_WAIT.as_secs(),
                self.me
            )),
        }
    }

    /// One offer (`op`: accept or revoke) to one peer, and its answer.
    async fn offer(
        self: Arc<Self>,
        i: usize,
        op: &'static str,
        name: String,
        pem: Option<String>,
        finger: String,
    ) -> Result<String, PeerFailure> {
        let link = &self.links[i];
        let nonce = salt_proto::auth::new_nonce();
        let body = json!({
            "kind": "key_offer", "op": op, "from": self.me, "to": link.peer.id,
            "master": link.peer.address(), "name": name, "pub": pem, "finger": finger,
            "seq": self.next_seq(), "nonce": nonce,
        });
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("lock").insert(nonce.clone(), tx);
        let r = async {
            self.fire(link, format!("{OFFER}{name}"), &body)
                .await
                .map_err(PeerFailure::Unconfirmed)?;
            let ack = tokio::time::timeout(ACK_WAIT, rx).await;
            let ack = ack.ok().and_then(Result::ok).ok_or_else(|| {
                PeerFailure::Unconfirmed(format!(
                    "the sidecar {} did not confirm within {}s (is it running beside that master, with {} in its `peers:`?)",
                    link.peer.id,
                    ACK_WAIT.as_secs(),
                    self.me
                ))
            })?;
            match ack["error"].as_str() {
                Some(e) => Err(PeerFailure::Refused(e.to_string())),
                None => Ok(ack["state"].as_str().unwrap_or_default().to_string()),
            }
        }
        .await;
        self.waiters.lock().expect("lock").remove(&nonce);
        r
    }

    /// `op` to every peer at once; each answer recorded for key states and retries.
    async fn offer_all(
        self: &Arc<Self>,
        to: Vec<usize>,
        op: &'static str,
        name: &str,
        pem: Option<&str>,
        finger: &str,
    ) -> Vec<PeerOutcome> {
        let tasks: Vec<_> = to
            .iter()
            .map(|&i| {
                let me = self.clone();
                let (n, p, f) = (
                    name.to_string(),
                    pem.map(str::to_string),
                    finger.to_string(),
                );
                tokio::spawn(me.offer(i, op, n, p, f))
            })
            .collect();
        let mut out = Vec::new();
        for (i, t) in to.into_iter().zip(tasks) {
            let r = t
                .await
                .unwrap_or_else(|e| Err(PeerFailure::Unconfirmed(format!("internal: {e}"))));
            let peer = &self.links[i].peer;
            self.record(&peer.id, op, name, pem, finger, &r);
            match &r {
                Ok(state) => info!(name, peer = %peer.id, op, state, "a peer confirmed"),
                Err(e) => warn!(name, peer = %peer.id, op, "{e}"),
            }
            out.push(PeerOutcome {
                master: Self::label(peer),
                result: r.map(|_| ()),
            });
        }
        out
    }

    /// What this sidecar sent a peer and what came of it (`peer_keys.json`), by name, then
    /// peer: `{"op", "state", "finger", "pub"}`; a confirmed revoke leaves nothing.
    fn record(
        &self,
        peer: &str,
        op: &str,
        name: &str,
        pem: Option<&str>,
        finger: &str,
        r: &Result<String, PeerFailure>,
    ) {
        let state = match (op, r) {
            ("revoke", Ok(_)) => None,
            (_, Ok(_)) => Some("accepted".to_string()),
            (_, Err(PeerFailure::Refused(e))) => Some(format!("refused: {e}")),
            ("revoke", Err(_)) => Some("revoke unconfirmed".into()),
            (_, Err(_)) => Some("unconfirmed".into()),
        };
        self.update(SENT_FILE, |m| {
            let entry = m.entry(name.to_string()).or_insert_with(|| json!({}));
            match state {
                Some(s) => {
                    entry[peer] = json!({"op": op, "state": s, "finger": finger, "pub": pem})
                }
                None => {
                    if let Some(o) = entry.as_object_mut() {
                        o.remove(peer);
                    }
                }
            }
            if entry.as_object().is_some_and(|o| o.is_empty()) {
                m.remove(name);
            }
        });
    }

    /// Reads, changes and writes one state file (a JSON object) under the files lock.
    fn update<T>(&self, file: &str, f: impl FnOnce(&mut serde_json::Map<String, Value>) -> T) -> T {
        let _g = self.files.lock().expect("lock");
        let path = self.store.state_dir.join(file);
        let mut m = read_object(&path);
        let out = f(&mut m);
        let text = Value::Object(m).to_string();
        if let Err(e) = crate::pki::write_atomic(&path, text.as_bytes(), 0o600) {
            warn!("cannot write {}: {e}", path.display());
        }
        out
    }

    /// Sends again, every [`RETRY_EVERY`], what no peer confirmed.
    async fn retry(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RETRY_EVERY).await;
            for (name, peers) in self.sent() {
                for (peer, r) in peers.as_object().into_iter().flatten() {
                    let Some(i) = self.links.iter().position(|l| &l.peer.id == peer) else {
                        continue;
                    };
                    let (op, pem, finger) = match r["state"].as_str() {
                        Some("unconfirmed") => ("accept", r["pub"].as_str(), r["finger"].as_str()),
                        Some("revoke unconfirmed") => ("revoke", None, r["finger"].as_str()),
                        _ => continue,
                    };
                    let (n, f) = (name.clone(), finger.unwrap_or_default().to_string());
                    let got = self
                        .clone()
                        .offer(i, op, n, pem.map(str::to_string), f.clone())
                        .await;
                    if got.is_ok() {
                        info!(name, peer, op, "sent again, and confirmed");
                    }
                    // Destroyed meanwhile (its record taken back): a key that got there
                    // all the same is taken back in turn.
                    let sent = self.sent();
                    let still = sent
                        .get(&name)
                        .and_then(|p| p.get(peer.as_str()))
                        .is_some_and(|r| r["op"] == op && r["finger"] == f.as_str());
                    if !still {
                        if op == "accept" && got.is_ok() {
                            let later = PeerFailure::Unconfirmed("destroyed meanwhile".into());
                            self.record(peer, "revoke", &name, None, &f, &Err(later));
                        }
                        continue;
                    }
                    self.record(peer, op, &name, pem, &f, &got);
                }
            }
        }
    }

    /// Reads offers to this sidecar and answers to its offers from this master's bus.
    async fn listen(self: Arc<Self>, mut bus: broadcast::Receiver<Event>) {
        loop {
            match bus.recv().await {
                Ok(ev) if ev.tag.starts_with(OFFER) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.on_offer(ev).await });
                }
                Ok(ev) if ev.tag.starts_with(ACK) => {
                    if let Err(e) = self.on_ack(&ev) {
                        warn!(tag = %ev.tag, "ignored a peer's answer: {e}");
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }

    /// The message in event `ev`, if a sidecar of `peers:` signed it with the key this
    /// master accepted for it, for this sidecar, of `kind`, named in the tag after `prefix`.
    fn opened(&self, ev: &Event, kind: &str, prefix: &str) -> Result<Value, String> {
        let signed = msgpack::get(&ev.data, "data")
            .and_then(|d| msgpack::get(d, FIELD))
            .ok_or("no signed message in it")?;
        let signed: Value =
            serde_json::from_str(&msgpack::to_json(signed)).map_err(|e| e.to_string())?;
        let claimed: Value = signed["body"]
            .as_str()
            .and_then(|b| serde_json::from_str(b).ok())
            .ok_or("no body")?;
        let from = claimed["from"].as_str().unwrap_or_default();
        if self.link(from).is_none() {
            return Err(format!(
                "it names {from:?} as its sender, which is not in this sidecar's `peers:`"
            ));
        }
        let path = self.store.key_dir.join("minions").join(from);
        let key = std::fs::read_to_string(&path)
            .ok()
            .and_then(|pem| PublicKey::from_pem(&pem).ok())
            .ok_or_else(|| format!("no key is accepted for {from} in {}", path.display()))?;
        let body = proof::open(&key, &signed).map_err(|e| format!("from {from:?}: {e}"))?;
        if body["kind"] != kind || body["to"] != self.me.as_str() {
            return Err(format!("from {from}: not a {kind} for this sidecar"));
        }
        if ev.tag.strip_prefix(prefix) != body["name"].as_str() {
            return Err(format!("from {from}: the tag and the name differ"));
        }
        Ok(body)
    }

    async fn on_offer(self: Arc<Self>, ev: Event) {
        let body = match self.opened(&ev, "key_offer", OFFER) {
            Ok(b) => b,
            Err(e) => {
                warn!(tag = %ev.tag, "ignored a key offer: {e}");
                return;
            }
        };
        let from = body["from"].as_str().unwrap_or_default().to_string();
        let me = self.clone();
        let b = body.clone();
        let answer = tokio::task::spawn_blocking(move || me.take(&b))
            .await
            .unwrap_or_else(|e| Err(format!("internal: {e}")));
        let answer = match answer {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e) => json!({"error": e}),
        };
        let name = body["name"].as_str().unwrap_or_default();
        let mut ack = json!({
            "kind": "key_ack", "from": self.me, "to": from, "nonce": body["nonce"],
            "name": name, "op": body["op"], "finger": body["finger"],
        });
        if let (Some(a), Some(o)) = (answer.as_object(), ack.as_object_mut()) {
            o.extend(a.clone());
        }
        let link = self.link(&from).expect("opened checks the sender");
        if let Err(e) = self.fire(link, format!("{ACK}{name}"), &ack).await {
            warn!(name, peer = %from, "cannot answer a key offer: {e} (the peer sends it again)");
        }
    }

    /// Carries out a checked offer; the answer's fields, or None for a replay (no answer).
    fn take(&self, body: &Value) -> Result<Option<Value>, String> {
        let from = body["from"].as_str().unwrap_or_default();
        let name = body["name"].as_str().unwrap_or_default();
        let seq = body["seq"].as_u64().ok_or("no sequence number")?;
        let fresh = self.update(SEQ_FILE, |m| {
            let entry = m.entry(from.to_string()).or_insert_with(|| json!({}));
            fresh_seq(entry, seq)
        });
        if !fresh {
            warn!(
                name,
                peer = from,
                seq,
                "ignored a key offer sent before (replayed)"
            );
            return Ok(None);
        }
        if !crate::names::valid_minion_id(name) || name == self.me || self.link(name).is_some() {
            return Err(format!("{name:?} is not a name a peer may accept keys for"));
        }
        if let Some(why) = &self.store.problem {
            return Err(format!("the master beside {}: {why}", self.me));
        }
        let finger = body["finger"].as_str().unwrap_or_default();
        let state = match body["op"].as_str() {
            Some("accept") => self.take_accept(from, name, body["pub"].as_str(), finger)?,
            Some("revoke") => self.take_revoke(from, name, finger)?,
            other => return Err(format!("unknown operation {other:?}")),
        };
        Ok(Some(json!({"state": state})))
    }

    fn take_accept(
        &self,
        from: &str,
        name: &str,
        pem: Option<&str>,
        finger: &str,
    ) -> Result<&'static str, String> {
        let pem = pem.ok_or("an accept without a key")?;
        PublicKey::from_pem(pem).map_err(|e| format!("not a public key: {e}"))?;
        if pem_finger(pem) != finger {
            return Err("the key and its fingerprint differ".into());
        }
        let dir = &self.store.key_dir;
        match crate::pki::pre_accept(dir, name, pem).map_err(|e| e.to_string())? {
            crate::pki::Accepted::Other => {
                return Err(format!(
                    "another key is accepted for {name} on the master beside {}",
                    self.me
                ))
            }
            crate::pki::Accepted::Ours | crate::pki::Accepted::Absent => {}
        }
        // A key pending under the name is not this one (pre_accept drops an identical copy).
        let pre = dir.join("minions_pre").join(name);
        if std::fs::read_to_string(&pre).is_ok_and(|t| clean_key(&t) != clean_key(pem)) {
            let _ = std::fs::remove_file(&pre);
            warn!(
                name,
                "removed a pending key that is not the one a peer offered"
            );
        }
        self.update(TAKEN_FILE, |m| {
            m.insert(name.into(), json!({"from": from, "finger": finger}))
        });
        info!(name, peer = from, "accepted a clone's key a peer offered");
        self.fire_local(json!({"result": true, "act": self.store.accept_act, "id": name}));
        Ok("accepted")
    }

    /// A key is taken back at any peer's word, with its fingerprint, when it is one virtseed
    /// placed here: accepted at a peer's word, or minted by this sidecar for a clone it
    /// offered to its peers (a clone one sidecar made and another destroyed).
    fn take_revoke(&self, from: &str, name: &str, finger: &str) -> Result<&'static str, String> {
        let taken = self.update(TAKEN_FILE, |m| {
            let here = m.get(name).is_some_and(|r| r["finger"] == finger);
            if here {
                m.remove(name);
            }
            here
        });
        let minted = self.update(SENT_FILE, |m| {
            let here = m
                .get(name)
                .and_then(Value::as_object)
                .is_some_and(|o| o.values().any(|r| r["finger"] == finger));
            if here {
                // Destroyed: nothing of it is to be sent again.
                m.remove(name);
            }
            here
        });
        if !taken && !minted {
            return Ok("absent");
        }
        let removed = crate::pki::revoke(&self.store.key_dir, &self.store.cachedir, name, finger)
            .map_err(|e| e.to_string())?;
        if removed {
            info!(name, peer = from, "removed a clone's key at a peer's word");
            self.fire_local(json!({"result": true, "act": "delete", "id": name}));
        }
        Ok("revoked")
    }

    /// `salt/key` on this master's bus, as after any accept or delete.
    fn fire_local(&self, data: Value) {
        let events = self.events.clone();
        self.rt.spawn(async move {
            let _ = events.fire("salt/key", crate::bus::from_json(&data)).await;
        });
    }

    fn on_ack(&self, ev: &Event) -> Result<(), String> {
        let body = self.opened(ev, "key_ack", ACK)?;
        let nonce = body["nonce"].as_str().unwrap_or_default();
        match self.waiters.lock().expect("lock").remove(nonce) {
            Some(tx) => {
                let _ = tx.send(body);
                Ok(())
            }
            None => Err("not an answer to an offer waiting for one".into()),
        }
    }

    /// What was offered to whom, and what came of it ([`SENT_FILE`]).
    fn sent(&self) -> serde_json::Map<String, Value> {
        let _g = self.files.lock().expect("lock");
        read_object(&self.store.state_dir.join(SENT_FILE))
    }

    fn master_key(&self, l: &Link) -> Option<String> {
        std::fs::read_to_string(&l.pinned).ok()
    }
}

/// How far back (in the sender's nanoseconds) an offer may be, behind the newest taken from
/// it: offers sent at once arrive in any order.
const SEQ_WINDOW: u64 = 600_000_000_000;

/// Whether `seq` is an offer not taken before from a sender whose record is `entry`
/// (`{"max", "seen": [within the window]}`), recording it if so. Older than the window: a
/// replay, whatever it is.
fn fresh_seq(entry: &mut Value, seq: u64) -> bool {
    let max = entry["max"].as_u64().unwrap_or(0);
    let mut seen: Vec<u64> = entry["seen"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if seq <= max.saturating_sub(SEQ_WINDOW) || seen.contains(&seq) {
        return false;
    }
    let max = max.max(seq);
    seen.push(seq);
    seen.retain(|s| *s > max.saturating_sub(SEQ_WINDOW));
    *entry = json!({"max": max, "seen": seen});
    true
}

fn read_object(path: &Path) -> serde_json::Map<String, Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

impl RemoteKeys for Arc<Peers> {
    fn count(&self) -> usize {
        self.links.len()
    }

    fn check(&self, master_pub: &str) -> Result<(), String> {
        for l in &self.links {
            match self.master_key(l) {
                None => return Err(format!(
                    "virtseed has not signed in to the master of its peer {} at {} yet: accept this sidecar's key there once (`salt-key -a {}` on that master)",
                    l.peer.id, l.peer.address(), self.me
                )),
                Some(k) if clean_key(&k) != clean_key(master_pub) => return Err(format!(
                    "the master of peer {} at {} has another key than this one: a minion of several masters keeps one master key; give every master the same master.pem/master.pub (Salt's multi-master guide). Masters that sign their keys (`master_sign_pubkey`) are served through `masters:`, not through peers",
                    l.peer.id, l.peer.address()
                )),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn accept(&self, name: &str, pem: &str) -> Vec<PeerOutcome> {
        let finger = pem_finger(pem);
        let all = (0..self.links.len()).collect();
        self.rt
            .block_on(self.offer_all(all, "accept", name, Some(pem), &finger))
    }

    /// To every peer, when virtseed has a record of `name` beyond this master (it offered
    /// the key, or accepted it at a peer's word): a clone of one master has none, and a clone
    /// another sidecar made may have its key on a third master.
    fn revoke(&self, name: &str, finger: &str) -> Vec<PeerOutcome> {
        let offered = self.sent().contains_key(name);
        let taken = self.update(TAKEN_FILE, |m| m.remove(name).is_some());
        if !offered && !taken {
            return vec![];
        }
        let all = (0..self.links.len()).collect();
        self.rt
            .block_on(self.offer_all(all, "revoke", name, None, finger))
    }

    fn states(&self, name: &str) -> Vec<(String, String)> {
        let _g = self.files.lock().expect("lock");
        let peers: Vec<_> = self.links.iter().map(|l| l.peer.clone()).collect();
        recorded_states(&self.store.state_dir, &peers, name)
    }
}

/// Where clone `name`'s key stands on each peer's master, as the sidecar whose own pki dir is
/// `state_dir` last heard (`none`: it offered nothing there, e.g. a clone of one master, or
/// one another sidecar made). For `virtseed doctor`, which runs beside the sidecar.
pub fn recorded_states(
    state_dir: &Path,
    peers: &[PeerSidecar],
    name: &str,
) -> Vec<(String, String)> {
    let sent = read_object(&state_dir.join(SENT_FILE));
    peers
        .iter()
        .map(|p| {
            let state = sent
                .get(name)
                .and_then(|r| r[&p.id]["state"].as_str())
                .unwrap_or("none");
            (Peers::label(p), state.to_string())
        })
        .collect()
}

/// Whether this sidecar signed in to `peer`'s master at least once (its key pinned).
pub fn signed_in_once(state_dir: &Path, peer: &PeerSidecar) -> bool {
    state_dir.join(pinned_name(peer)).exists()
}

fn pinned_name(peer: &PeerSidecar) -> String {
    format!("peer_master_{}.pub", peer.id)
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A sidecar `vs-b` beside a master in a temp dir, whose only peer is `vs-a` (its key,
    /// returned, accepted on that master).
    fn receiver() -> (Arc<Peers>, PrivateKey, PathBuf) {
        let d =
            std::env::temp_dir().join(format!("virtseed-peers-{}", salt_proto::auth::new_nonce()));
        for sub in ["pki/minions", "pki/minions_pre", "cache", "sock", "state"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let at = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("master"),
            format!(
                "pki_dir: {}\ncachedir: {}\nsock_dir: {}\n",
                at("pki"),
                at("cache"),
                at("sock")
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("virtseed"),
            format!(
                "id: vs-b\npki_dir: {}\npeers: [{{id: vs-a, master: 127.0.0.1}}]\n",
                at("state")
            ),
        )
        .unwrap();
        let a = PrivateKey::generate(1024).unwrap();
        std::fs::write(d.join("pki/minions/vs-a"), a.public_key().pem()).unwrap();
        let master = MasterOpts::load(&d).unwrap();
        let settings = Settings::load(&d).unwrap();
        let own = PrivateKey::generate(1024).unwrap();
        let events = EventBus::new(&master.sock_dir, None);
        (Peers::new(&master, &settings, &own, events).unwrap(), a, d)
    }

    fn event(tag: &str, signer: &PrivateKey, body: &Value) -> Event {
        let signed = Signer::new(PrivateKey::from_pem(&signer.to_pem()).unwrap()).signed(body);
        Event {
            tag: tag.into(),
            data: msgpack::map([(
                "data",
                msgpack::map([(FIELD, crate::bus::from_json(&signed))]),
            )]),
        }
    }

    fn offer(op: &str, name: &str, pem: &str, seq: u64) -> Value {
        json!({"kind": "key_offer", "op": op, "from": "vs-a", "to": "vs-b", "name": name,
               "pub": pem, "finger": pem_finger(pem), "seq": seq, "nonce": "n"})
    }

    fn taken(p: &Peers, ev: &Event) -> Result<Option<Value>, String> {
        p.take(&p.opened(ev, "key_offer", OFFER)?)
    }

    #[tokio::test]
    async fn offers_are_believed_only_signed_by_a_peer_for_this_sidecar_and_once() {
        let (p, a, d) = receiver();
        let clone = PrivateKey::generate(1024).unwrap();
        let pem = clone.public_key().pem().to_string();
        let tag = format!("{OFFER}web1");
        let ok = event(&tag, &a, &offer("accept", "web1", &pem, 10));
        assert_eq!(taken(&p, &ok).unwrap().unwrap()["state"], "accepted");
        let placed = std::fs::read_to_string(d.join("pki/minions/web1")).unwrap();
        assert_eq!(placed, pem);
        assert_eq!(
            taken(&p, &ok).unwrap(),
            None,
            "the same offer again is a replay"
        );

        let other = PrivateKey::generate(1024).unwrap();
        let bad = |ev: &Event, says: &str| {
            let e = taken(&p, ev).unwrap_err();
            assert!(e.contains(says), "{e}");
        };
        let web2 = |seq| offer("accept", "web2", &pem, seq);
        bad(&event(&tag, &other, &web2(11)), "does not verify");
        let mut from = web2(12);
        from["from"] = json!("mallory");
        bad(
            &event(&tag, &other, &from),
            "not in this sidecar's `peers:`",
        );
        let mut to = web2(13);
        to["to"] = json!("vs-c");
        bad(&event(&tag, &a, &to), "not a key_offer for this sidecar");
        bad(&event(&tag, &a, &web2(14)), "the tag and the name differ");
        let sidecar = offer("accept", "vs-a", &pem, 15);
        bad(&event(&format!("{OFFER}vs-a"), &a, &sidecar), "not a name");
        // Never over another key, never a key that is not what it says.
        let t3 = format!("{OFFER}web3");
        let theirs = other.public_key().pem().to_string();
        std::fs::write(d.join("pki/minions/web3"), &theirs).unwrap();
        let web3 = offer("accept", "web3", &pem, 16);
        bad(&event(&t3, &a, &web3), "another key is accepted");
        let mut lie = offer("accept", "web4", &pem, 17);
        lie["finger"] = json!(pem_finger(&theirs));
        bad(
            &event(&format!("{OFFER}web4"), &a, &lie),
            "the key and its fingerprint differ",
        );
        assert!(!d.join("pki/minions/web4").exists());

        // Revoke: only a key virtseed placed, with its fingerprint.
        let state = |ev: &Event| taken(&p, ev).unwrap().unwrap()["state"].clone();
        let mut wrong = offer("revoke", "web1", &pem, 20);
        wrong["finger"] = json!(pem_finger(&theirs));
        assert_eq!(state(&event(&tag, &a, &wrong)), "absent");
        assert!(d.join("pki/minions/web1").exists());
        let operators = offer("revoke", "web3", &theirs, 21);
        assert_eq!(state(&event(&t3, &a, &operators)), "absent");
        assert!(
            d.join("pki/minions/web3").exists(),
            "the operator's key stays"
        );
        let revoke = event(&tag, &a, &offer("revoke", "web1", &pem, 22));
        assert_eq!(state(&revoke), "revoked");
        assert!(!d.join("pki/minions/web1").exists());
        // The first offer, replayed after the revoke, brings nothing back.
        assert_eq!(taken(&p, &ok).unwrap(), None);
        assert!(!d.join("pki/minions/web1").exists());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_offer_is_taken_once_in_any_order_and_never_once_old() {
        let mut e = json!({});
        let t = 10 * SEQ_WINDOW;
        assert!(fresh_seq(&mut e, t));
        assert!(!fresh_seq(&mut e, t), "the same offer again");
        // Sent at once, arriving out of order: each taken once.
        assert!(fresh_seq(&mut e, t - 5));
        assert!(fresh_seq(&mut e, t + 7));
        assert!(!fresh_seq(&mut e, t - 5));
        // Older than the window behind the newest: refused, even if never seen.
        assert!(!fresh_seq(&mut e, t + 7 - SEQ_WINDOW));
        assert!(fresh_seq(&mut e, t + 8 - SEQ_WINDOW + 1));
        // The record keeps only the window: a later offer prunes what fell out of it.
        assert!(fresh_seq(&mut e, t + 3 * SEQ_WINDOW));
        assert_eq!(e["seen"].as_array().unwrap().len(), 1);
        assert!(!fresh_seq(&mut e, t + 7), "fell out of the window");
    }
}
