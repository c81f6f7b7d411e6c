//! ZeroMQ, behind a small trait so the transport can be swapped (e.g. for libzmq).
//!
//! The `zeromq` crate's REQ socket never recovers once a receive timed out or the master
//! restarted (every later call fails with "Broken pipe"), so [`ZmqReq`] drops its socket on
//! any error or timeout and connects a fresh one for the next request. SUB sockets do
//! reconnect by themselves.

use super::BusError;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// One request, one reply.
pub trait ReqTransport: Send {
    fn request(
        &mut self,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, BusError>> + Send;
}

/// A stream of multi-frame messages.
pub trait SubTransport: Send {
    fn recv(&mut self) -> impl Future<Output = Result<Vec<Vec<u8>>, BusError>> + Send;
}

/// A REQ socket to the master's ret port that heals itself.
pub struct ZmqReq {
    endpoint: String,
    socket: Option<zeromq::ReqSocket>,
}

impl ZmqReq {
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            socket: None,
        }
    }

    async fn exchange(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, BusError> {
        if self.socket.is_none() {
            let mut s = zeromq::ReqSocket::new();
            s.connect(&self.endpoint)
                .await
                .map_err(|e| BusError::Transport(format!("connect {}: {e}", self.endpoint)))?;
            self.socket = Some(s);
        }
        let s = self.socket.as_mut().expect("just set");
        s.send(ZmqMessage::from(payload))
            .await
            .map_err(|e| BusError::Transport(format!("send to {}: {e}", self.endpoint)))?;
        let reply = s
            .recv()
            .await
            .map_err(|e| BusError::Transport(format!("receive from {}: {e}", self.endpoint)))?;
        // REQ replies are one frame; take the last to be safe.
        reply
            .into_vec()
            .pop()
            .map(|b| b.to_vec())
            .ok_or_else(|| BusError::Transport("empty reply".into()))
    }
}

impl ReqTransport for ZmqReq {
    async fn request(&mut self, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, BusError> {
        let r = match tokio::time::timeout(timeout, self.exchange(payload)).await {
            Ok(r) => r,
            Err(_) => Err(BusError::Timeout(format!(
                "no reply from {} within {}s",
                self.endpoint,
                timeout.as_secs_f32()
            ))),
        };
        if r.is_err() {
            // Lockstep REQ is now out of step (or the peer is gone): start over next time.
            if let Some(s) = self.socket.take() {
                drop(s.close().await);
            }
        }
        r
    }
}

/// Several REQ sockets to one endpoint, so concurrent jobs do not queue behind one
/// another's requests (a REQ socket allows one request in flight).
///
/// An idle socket is reused only for [`IDLE_MAX`]: nothing reads an idle REQ socket, so it
/// cannot answer the ZMTP heartbeat PINGs of a master that sets `zmq_heartbeat_ivl` (3008's
/// request server does, 10 s by default), and the master drops it after
/// `zmq_heartbeat_timeout`. A fresh connection over loopback costs about a millisecond.
pub struct ReqPool {
    endpoint: String,
    idle: Mutex<Vec<(ZmqReq, Instant)>>,
}

/// How long an idle REQ socket may wait in the pool.
pub const IDLE_MAX: Duration = Duration::from_secs(2);

impl ReqPool {
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Drops idle sockets (after a master restart they are all stale).
    pub async fn clear(&self) {
        self.idle.lock().await.clear();
    }

    pub async fn request(&self, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, BusError> {
        let reused = {
            let mut idle = self.idle.lock().await;
            // Newest last: drop the stale ones from the front.
            idle.retain(|(_, since)| since.elapsed() < IDLE_MAX);
            idle.pop().map(|(req, _)| req)
        };
        let mut req = reused.unwrap_or_else(|| ZmqReq::new(&self.endpoint));
        let r = req.request(payload, timeout).await;
        let mut idle = self.idle.lock().await;
        if idle.len() < 16 {
            idle.push((req, Instant::now()));
        }
        r
    }
}

/// A SUB socket to the publish port.
pub struct ZmqSub {
    socket: zeromq::SubSocket,
}

impl ZmqSub {
    /// Connects and subscribes to every topic in `topics` (`""` for all).
    pub async fn connect(endpoint: &str, topics: &[String]) -> Result<Self, BusError> {
        let mut socket = zeromq::SubSocket::new();
        socket
            .connect(endpoint)
            .await
            .map_err(|e| BusError::Transport(format!("connect {endpoint}: {e}")))?;
        for t in topics {
            socket
                .subscribe(t)
                .await
                .map_err(|e| BusError::Transport(format!("subscribe: {e}")))?;
        }
        Ok(Self { socket })
    }
}

impl SubTransport for ZmqSub {
    async fn recv(&mut self) -> Result<Vec<Vec<u8>>, BusError> {
        let m = self
            .socket
            .recv()
            .await
            .map_err(|e| BusError::Transport(format!("publication: {e}")))?;
        Ok(m.into_vec().into_iter().map(|b| b.to_vec()).collect())
    }
}
