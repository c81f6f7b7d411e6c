//! The master's local event bus (`salt/utils/event.py`, `salt/transport/ipc.py` in 3006,
//! `salt/transport/tcp.py` over unix sockets in 3007+).
//!
//! ```text
//! body  = tag || "\n\n" || msgpack(data, use_bin_type=True)
//! frame = msgpack({"head": {}, "body": bin(body)})
//! wire  = frame | u32be(len(frame)) || frame          (see SaltVersion::*_framing)
//! ```

use crate::error::{Error, Result};
use crate::msgpack::{self, bin, map};
use crate::version::Framing;
use rmpv::Value;

/// Salt trims events above `max_event_size` (1 MiB); frames far above that are garbage.
pub const MAX_FRAME: usize = 64 << 20;

/// One event: a tag and its data (a map).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub tag: String,
    pub data: Value,
}

impl Event {
    /// The event body, `tag\n\n msgpack(data)`.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tag.len() + 64);
        out.extend_from_slice(self.tag.as_bytes());
        out.extend_from_slice(b"\n\n");
        out.extend_from_slice(&msgpack::encode_standard(&self.data));
        out
    }

    /// Parses a body: tag up to the first `\n\n`, then one msgpack map.
    pub fn from_body(body: &[u8]) -> Result<Self> {
        let split = body
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or_else(|| Error::Event("no `\\n\\n` after the tag".into()))?;
        let tag = std::str::from_utf8(&body[..split])
            .map_err(|_| Error::Event("tag is not UTF-8".into()))?
            .to_string();
        let data = msgpack::decode(&body[split + 2..])?;
        if !matches!(data, Value::Map(_)) {
            return Err(Error::Event(format!(
                "event data is {}, not a map",
                msgpack::kind(&data)
            )));
        }
        Ok(Self { tag, data })
    }

    /// The bytes to write to `master_event_pull.ipc`.
    pub fn encode_frame(&self, framing: Framing) -> Vec<u8> {
        let frame = msgpack::encode_standard(&map([
            ("head", map::<String>([])),
            ("body", bin(self.body())),
        ]));
        match framing {
            Framing::Bare => frame,
            Framing::LengthPrefixed => {
                let mut out = Vec::with_capacity(frame.len() + 4);
                out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                out.extend_from_slice(&frame);
                out
            }
        }
    }
}

/// Cuts a byte stream from the event bus into events. Feed it what the socket gives, then
/// call [`EventStream::next_event`] until it returns `Ok(None)`.
#[derive(Debug)]
pub struct EventStream {
    framing: Framing,
    buf: Vec<u8>,
}

impl EventStream {
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            buf: Vec::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole event, `Ok(None)` if more bytes are needed. An error means the stream
    /// is out of step and the connection should be dropped.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        let (frame, used) = match self.framing {
            Framing::LengthPrefixed => {
                if self.buf.len() < 4 {
                    return Ok(None);
                }
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_FRAME {
                    return Err(Error::Event(format!(
                        "frame of {len} bytes is over the limit"
                    )));
                }
                if self.buf.len() < 4 + len {
                    return Ok(None);
                }
                (msgpack::decode(&self.buf[4..4 + len])?, 4 + len)
            }
            Framing::Bare => {
                if self.buf.len() > MAX_FRAME + 16 {
                    return Err(Error::Event("unframed data over the limit".into()));
                }
                match msgpack::decode_prefix(&self.buf)? {
                    Some((v, used)) => (v, used),
                    None => return Ok(None),
                }
            }
        };
        self.buf.drain(..used);
        let body = msgpack::get(&frame, "body")
            .and_then(msgpack::bytes_of)
            .ok_or_else(|| {
                Error::Event(format!("frame without a body: {}", msgpack::kind(&frame)))
            })?;
        Event::from_body(body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::text;

    #[test]
    fn roundtrip_both_framings_byte_by_byte() {
        let ev = Event {
            tag: "salt/cloud/web1/created".into(),
            data: map([("name", text("web1")), ("n", Value::from(3))]),
        };
        for framing in [Framing::Bare, Framing::LengthPrefixed] {
            let wire = [ev.encode_frame(framing), ev.encode_frame(framing)].concat();
            let mut s = EventStream::new(framing);
            let mut got = Vec::new();
            for b in &wire {
                s.push(std::slice::from_ref(b));
                while let Some(e) = s.next_event().unwrap() {
                    got.push(e);
                }
            }
            assert_eq!(got, vec![ev.clone(), ev.clone()]);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut s = EventStream::new(Framing::LengthPrefixed);
        s.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(s.next_event().is_err());
        let mut s = EventStream::new(Framing::Bare);
        s.push(&[0xc1]);
        assert!(s.next_event().is_err());
        assert!(Event::from_body(b"no separator").is_err());
        assert!(Event::from_body(b"tag\n\n\xc1").is_err());
    }
}
