//! The minion channel: authenticate as a minion (protocol v3), send aes requests with the
//! session key, and receive publications with the shared key.
//!
//! Re-authentication happens when a request is refused (`bad load`), when a publication fails
//! its HMAC (the master restarted or rotated its key), and on the master's `key` rotation
//! event. It is single-flight: concurrent callers wait for one sign-in.

use super::transport::{ReqPool, SubTransport, ZmqSub};
use super::BusError;
use salt_proto::auth::{new_nonce, AuthReply, SignIn};
use salt_proto::crypticle::{Crypticle, SerialGuard};
use salt_proto::keys::{EncAlgo, PrivateKey, PublicKey, SigAlgo};
use salt_proto::publish::{topic_for, Opener, Publication, BROADCAST};
use salt_proto::request::AesPeer;
use salt_proto::{Error as ProtoError, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex, RwLock};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the channel is told at start.
pub struct ChannelConfig {
    pub id: String,
    pub key: PrivateKey,
    pub ret_endpoint: String,
    /// Host of the publish port (the port comes from the auth reply).
    pub host: String,
    pub zmq_filtering: bool,
    /// Where the trusted master key is pinned: `<own pki_dir>/minion_master.pub`.
    pub master_pub_path: PathBuf,
    /// If set, the master key's `pem_finger` must equal this.
    pub master_finger: Option<String>,
}

/// Keys of one authenticated session.
pub struct Session {
    pub aes: Crypticle,
    pub session: Crypticle,
    pub master: PublicKey,
    pub publish_port: u16,
    /// Increases with every sign-in, so stale failures do not trigger a second one.
    pub generation: u64,
}

pub struct Channel {
    cfg: ChannelConfig,
    tok: Vec<u8>,
    /// The secret the master must echo back (`AsyncAuth.token`), fixed per process.
    token: Zeroizing<Vec<u8>>,
    req: ReqPool,
    session: RwLock<Option<Arc<Session>>>,
    signing_in: Mutex<u64>,
    /// Bumped when the master restarted, so the publication loop resubscribes at once
    /// instead of waiting out the SUB socket's own reconnect backoff.
    restarts: watch::Sender<u64>,
}

impl Channel {
    pub fn new(cfg: ChannelConfig) -> Result<Self, BusError> {
        let tok = cfg.key.x931_sign(b"salt")?;
        let token = Zeroizing::new(
            salt_proto::crypticle::generate_key_string()
                .as_bytes()
                .to_vec(),
        );
        Ok(Self {
            req: ReqPool::new(&cfg.ret_endpoint),
            cfg,
            tok,
            token,
            session: RwLock::new(None),
            signing_in: Mutex::new(0),
            restarts: watch::channel(0).0,
        })
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub fn ret_endpoint(&self) -> &str {
        self.req.endpoint()
    }

    pub fn request_pool(&self) -> &ReqPool {
        &self.req
    }

    fn pinned_master(&self) -> Result<Option<PublicKey>, BusError> {
        match std::fs::read_to_string(&self.cfg.master_pub_path) {
            Ok(text) => Ok(Some(PublicKey::from_pem(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BusError::Io {
                path: self.cfg.master_pub_path.clone(),
                source,
            }),
        }
    }

    /// One sign-in attempt.
    async fn sign_in(&self, generation: u64) -> Result<Session, BusError> {
        let pinned = self.pinned_master()?;
        let nonce = new_nonce();
        let si = SignIn {
            id: &self.cfg.id,
            key: &self.cfg.key,
            nonce: &nonce,
            enc_algo: EncAlgo::OaepSha1,
            sig_algo: SigAlgo::Pkcs1v15Sha1,
            master: pinned.as_ref(),
            token: pinned.as_ref().map(|_| &self.token[..]),
        };
        let reply = self.req.request(si.request(None)?, AUTH_TIMEOUT).await?;
        let id = &self.cfg.id;
        let accepted = match si.decode_reply(&reply) {
            Ok(AuthReply::Accepted(a)) => a,
            Ok(AuthReply::Pending) => {
                return Err(BusError::Auth(format!(
                    "the master holds our key for `{id}` as pending; accept it with `salt-key -y -a {id}`"
                )))
            }
            Ok(AuthReply::Rejected) => {
                return Err(BusError::Auth(format!(
                    "the master rejected `{id}`: another key is accepted under that id, or ours is \
                     rejected (`salt-key -L`; remove the stale one with `salt-key -d {id}`)"
                )))
            }
            Ok(AuthReply::Full) => return Err(BusError::Auth("the master is full (max_minions)".into())),
            Err(ProtoError::MasterKeyChanged) => {
                return Err(BusError::Auth(format!(
                    "the master's key differs from the one pinned in {}; if the master was \
                     rekeyed on purpose, delete that file",
                    self.cfg.master_pub_path.display()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        if pinned.is_none() {
            if let Some(want) = &self.cfg.master_finger {
                let got = accepted.master.fingerprint();
                if !got.eq_ignore_ascii_case(want.trim()) {
                    return Err(BusError::Auth(format!(
                        "master key fingerprint {got} is not the configured master_finger {want}"
                    )));
                }
            }
            crate::pki::write_atomic(
                &self.cfg.master_pub_path,
                accepted.master.pem().as_bytes(),
                0o644,
            )
            .map_err(|e| BusError::Auth(e.to_string()))?;
            info!(path = %self.cfg.master_pub_path.display(), finger = %accepted.master.fingerprint(), "pinned the master's key");
        }
        let session_key = accepted.session.as_ref().ok_or_else(|| {
            BusError::Auth(
                "the master sent no session key: Salt older than 3006.12 is not supported".into(),
            )
        })?;
        Ok(Session {
            aes: Crypticle::from_key_string(accepted.aes.as_bytes())?,
            session: Crypticle::from_key_string(session_key.as_bytes())?,
            master: accepted.master.clone(),
            publish_port: accepted.publish_port.unwrap_or(4505),
            generation,
        })
    }

    /// The current session, signing in (and retrying with backoff) if there is none.
    pub async fn session(&self) -> Arc<Session> {
        if let Some(s) = self.session.read().await.clone() {
            return s;
        }
        self.renew(None).await
    }

    /// Signs in again unless someone already did since `stale` was current.
    pub async fn renew(&self, stale: Option<u64>) -> Arc<Session> {
        let mut gen = self.signing_in.lock().await;
        if let Some(s) = self.session.read().await.clone() {
            if stale.is_none_or(|g| s.generation != g) {
                return s;
            }
        }
        *gen += 1;
        let mut delay = Duration::from_millis(250);
        loop {
            match self.sign_in(*gen).await {
                Ok(s) => {
                    let s = Arc::new(s);
                    if stale.is_some() {
                        info!(master = %self.req.endpoint(), id = %self.cfg.id, "re-authenticated with the master");
                    }
                    *self.session.write().await = Some(s.clone());
                    return s;
                }
                Err(e) => {
                    warn!(master = %self.req.endpoint(), "sign-in failed, retrying in {:.1}s: {e}", delay.as_secs_f32());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    /// The master restarted (its event bus went away and came back): drop stale sockets,
    /// sign in for its new keys, and resubscribe to publications.
    pub async fn master_restarted(&self) {
        self.req.clear().await;
        let current = self.session.read().await.as_ref().map(|s| s.generation);
        // Resubscribe first: the publisher drops what is published while nobody listens, and
        // signing in can take a second while the master starts its workers. A publication
        // under the new key that arrives meanwhile fails its HMAC, waits for this sign-in
        // and is decoded again.
        self.restarts.send_modify(|n| *n += 1);
        self.renew(current).await;
    }

    /// Sends an aes request and returns the master's answer. A refused request (the master
    /// forgot our session, or restarted) is retried once after signing in again.
    pub async fn send(&self, load: Value) -> Result<Value, BusError> {
        self.send_opened(load, true, |peer, reply, nonce, _| {
            peer.decode_reply(reply, nonce).map_err(BusError::from)
        })
        .await
    }

    /// Asks the master for our pillar with `grains` (`_pillar`, as a minion does at start and
    /// on `saltutil.refresh_pillar`); with `minion_data_cache` the master keeps both, so its
    /// grain and pillar targeting see them. The answer is encrypted to our key and signed by
    /// the master. One attempt, no new sign-in on failure: a master cluster answers without
    /// a key while its Raft log catches up (`cluster_retry`, 3008), and the caller retries.
    pub async fn pillar(&self, grains: Value) -> Result<Value, BusError> {
        let load = salt_proto::request::pillar_load(&self.cfg.id, grains);
        self.send_opened(load, false, |peer, reply, nonce, session| {
            let v = peer.decode_reply(reply, nonce)?;
            salt_proto::request::open_private(
                &v,
                "pillar",
                &self.cfg.key,
                &session.master,
                peer.enc_algo,
                peer.sig_algo,
                nonce,
            )
            .map_err(BusError::from)
        })
        .await
    }

    async fn send_opened(
        &self,
        load: Value,
        sign_in_again: bool,
        open: impl Fn(&AesPeer, &[u8], &str, &Session) -> Result<Value, BusError>,
    ) -> Result<Value, BusError> {
        let mut session = self.session().await;
        for attempt in 0..2 {
            let peer = AesPeer {
                id: &self.cfg.id,
                tok: &self.tok,
                session: &session.session,
                enc_algo: EncAlgo::OaepSha1,
                sig_algo: SigAlgo::Pkcs1v15Sha1,
            };
            let nonce = new_nonce();
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let result = match self
                .req
                .request(peer.request(load.clone(), &nonce, ts), REQUEST_TIMEOUT)
                .await
            {
                Ok(reply) => open(&peer, &reply, &nonce, &session),
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && sign_in_again => {
                    debug!("request failed ({e}); signing in again and retrying");
                    session = self.renew(Some(session.generation)).await;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Receives publications forever and sends each decoded one to `tx`.
    pub async fn publications(self: Arc<Self>, tx: mpsc::Sender<Publication>) {
        let topics = if self.cfg.zmq_filtering {
            vec![BROADCAST.to_string(), topic_for(&self.cfg.id)]
        } else {
            vec![String::new()]
        };
        let mut serials = SerialGuard::default();
        let mut restarts = self.restarts.subscribe();
        loop {
            restarts.mark_unchanged();
            let mut session = self.session().await;
            serials.reset();
            let endpoint = format!("tcp://{}:{}", self.cfg.host, session.publish_port);
            let mut sub = match ZmqSub::connect(&endpoint, &topics).await {
                Ok(s) => s,
                Err(e) => {
                    warn!("{e}; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            debug!(%endpoint, "subscribed to publications");
            loop {
                let received = tokio::select! {
                    r = sub.recv() => r,
                    _ = restarts.changed() => {
                        debug!("resubscribing after a master restart");
                        break;
                    }
                };
                let frames = match received {
                    Ok(f) => f,
                    Err(e) => {
                        warn!("{e}; resubscribing");
                        break;
                    }
                };
                let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                let opened = Opener {
                    aes: &session.aes,
                    require_signature_from: None,
                }
                .open(&refs, &mut serials);
                let publication = match opened {
                    Ok(p) => p,
                    Err(ProtoError::Hmac) => {
                        // The master has a new AES key: it restarted or rotated.
                        info!("a publication failed its HMAC: the master's key changed; re-authenticating");
                        session = self.renew(Some(session.generation)).await;
                        serials.reset();
                        match (Opener {
                            aes: &session.aes,
                            require_signature_from: None,
                        })
                        .open(&refs, &mut serials)
                        {
                            Ok(p) => p,
                            Err(e) => {
                                debug!("dropped a publication after re-auth: {e}");
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        debug!("dropped a publication: {e}");
                        continue;
                    }
                };
                if tx.send(publication).await.is_err() {
                    return;
                }
            }
        }
    }
}
