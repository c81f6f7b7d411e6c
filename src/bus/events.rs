//! The master's local event bus: `sock_dir/master_event_pub.ipc` (subscribe) and
//! `sock_dir/master_event_pull.ipc` (fire). These are unix sockets on the master's host, which
//! is why the sidecar runs there, as the master's user.
//!
//! The subscribe side's framing is detected from the first byte (a length prefix starts with
//! 0x00, a bare frame with a map marker); the fire side's comes from the Salt version
//! (configured, or the newest releases' length prefix by default).

use super::BusError;
use salt_proto::event::{Event, EventStream};
use salt_proto::jid::iso_stamp;
use salt_proto::msgpack;
use salt_proto::version::{Framing, SaltVersion};
use salt_proto::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

/// Fire framing when the version is unknown: every supported release since 3006.26,
/// 3007.15 and 3008.2 uses the length prefix.
const DEFAULT_FIRE: Framing = Framing::LengthPrefixed;

#[derive(Clone)]
pub struct EventBus {
    sock_dir: PathBuf,
    version: Option<SaltVersion>,
    tx: broadcast::Sender<Event>,
    /// Counts connections to the publisher: a second one means the master restarted.
    connections: watch::Sender<u64>,
    /// The sidecar's key: every event fired carries its proof (see [`super::proof`]).
    signer: Option<super::proof::Signer>,
}

impl EventBus {
    /// A bus client; call [`EventBus::listen`] once to start receiving.
    pub fn new(sock_dir: &Path, version: Option<SaltVersion>) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            sock_dir: sock_dir.to_path_buf(),
            version,
            tx,
            connections: watch::channel(0).0,
            signer: None,
        }
    }

    /// The same bus, every event fired signed by `signer`.
    pub fn signed_by(mut self, signer: super::proof::Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// How many times the publisher was (re)connected; it goes up when the master restarts.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connections.subscribe()
    }

    /// Receives every event from now on (filter by tag yourself).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Reads the publisher forever, reconnecting when the master goes away. The master drops
    /// slow subscribers, so this task only decodes and hands events over.
    pub async fn listen(self) {
        let path = self.sock_dir.join("master_event_pub.ipc");
        loop {
            match self.read_once(&path).await {
                Ok(()) => debug!("event bus closed; reconnecting"),
                Err(e) => debug!("event bus: {e}; reconnecting"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn read_once(&self, path: &Path) -> Result<(), BusError> {
        let mut sock = UnixStream::connect(path)
            .await
            .map_err(|source| BusError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        // A new connection: the first at start, any later one after the master restarted.
        self.connections.send_modify(|c| *c += 1);
        debug!(path = %path.display(), "event bus connected");
        let mut buf = vec![0u8; 64 * 1024];
        let mut stream: Option<EventStream> = None;
        loop {
            let n = sock.read(&mut buf).await.map_err(|source| BusError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            if n == 0 {
                return Ok(());
            }
            let s = stream.get_or_insert_with(|| {
                let framing = match self.version {
                    Some(v) => v.subscribe_framing(),
                    None if buf[0] == 0 => Framing::LengthPrefixed,
                    None => Framing::Bare,
                };
                EventStream::new(framing)
            });
            s.push(&buf[..n]);
            loop {
                match s.next_event() {
                    Ok(Some(ev)) => {
                        let _ = self.tx.send(ev);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!("event bus stream out of step ({e}); reconnecting");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Fires an event as a local Salt process does, adding `_stamp` when absent.
    pub async fn fire(&self, tag: &str, mut data: Value) -> Result<(), BusError> {
        if !matches!(data, Value::Map(_)) {
            data = msgpack::map([("data", data)]);
        }
        if let Some(signer) = &self.signer {
            let plain = serde_json::from_str(&msgpack::to_json(&data)).unwrap_or_default();
            let proof = signer.event_proof(tag, &plain);
            msgpack::set(
                &mut data,
                super::proof::EVENT_FIELD,
                super::from_json(&proof),
            );
        }
        if msgpack::get(&data, "_stamp").is_none() {
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            let offset = self.version.is_some_and(SaltVersion::stamp_has_offset);
            msgpack::set(
                &mut data,
                "_stamp",
                msgpack::text(iso_stamp(micros, offset)),
            );
        }
        let framing = self.version.map_or(DEFAULT_FIRE, SaltVersion::fire_framing);
        let bytes = Event {
            tag: tag.to_string(),
            data,
        }
        .encode_frame(framing);
        let path = self.sock_dir.join("master_event_pull.ipc");
        let io = |source| BusError::Io {
            path: path.clone(),
            source,
        };
        let mut sock = UnixStream::connect(&path).await.map_err(io)?;
        sock.write_all(&bytes).await.map_err(io)?;
        sock.flush().await.map_err(io)?;
        sock.shutdown().await.map_err(io)?;
        // Let the puller read to EOF before the socket goes away.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut sink)).await;
        Ok(())
    }
}
