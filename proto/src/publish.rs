//! Publications on the publish port (`salt/transport/zeromq.py:PublishServer`,
//! `salt/channel/server.py:PubServerChannel.wrap_payload`).
//!
//! ```text
//! zmq_filtering off:  [ msgpack({"enc":"aes","load":Crypticle(K_aes).dumps(L)[,"sig_algo","sig"]}) ]
//! zmq_filtering on:   [ sha1(id).hexdigest() | "broadcast", same payload ]
//! L = {fun, arg, tgt, tgt_type, jid, ret, user, serial, ...}; kwargs ride at the end of `arg`
//!     as a map with "__kwarg__": True.
//! ```

use crate::crypticle::{Crypticle, SerialGuard};
use crate::error::{Error, Result};
use crate::jid::Jid;
use crate::keys::{PublicKey, SigAlgo};
use crate::msgpack;
use rmpv::Value;
use sha1::{Digest, Sha1};

/// The zmq_filtering topic of a minion id: ASCII sha1 hex.
pub fn topic_for(id: &str) -> String {
    hex::encode(Sha1::digest(id.as_bytes()))
}

/// The topic of messages for every minion under zmq_filtering.
pub const BROADCAST: &str = "broadcast";

/// A decrypted, checked publication.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub jid: Jid,
    pub fun: String,
    /// Positional arguments, without the trailing kwargs map.
    pub args: Vec<Value>,
    /// Keyword arguments (`__kwarg__` removed).
    pub kwargs: Vec<(String, Value)>,
    /// `arg` as sent, for `fun_args` in the return.
    pub raw_arg: Value,
    pub tgt: Value,
    pub tgt_type: String,
    pub ret: String,
    pub user: Option<String>,
    pub serial: Option<u64>,
    /// The whole load, for fields not lifted above (`delimiter`, `metadata`, ...).
    pub load: Value,
}

impl Publication {
    /// A keyword argument by name.
    pub fn kwarg(&self, name: &str) -> Option<&Value> {
        self.kwargs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// What decoding needs besides the bytes.
pub struct Opener<'a> {
    pub aes: &'a Crypticle,
    /// If set, the master's signature over the ciphertext must verify (a minion's
    /// `sign_pub_messages`); unsigned publications are then refused.
    pub require_signature_from: Option<&'a PublicKey>,
}

impl Opener<'_> {
    /// Decodes one publication from its ZeroMQ frames (1 or 2; the payload is the last).
    /// The serial is checked against `serials`, which it then advances.
    pub fn open(&self, frames: &[&[u8]], serials: &mut SerialGuard) -> Result<Publication> {
        let payload = frames.last().ok_or(Error::Missing("publication frame"))?;
        let outer = msgpack::decode(payload)?;
        let enc = msgpack::req_str(&outer, "enc")?;
        if enc != "aes" {
            return Err(Error::Shape {
                field: "enc",
                expected: "\"aes\"",
                found: enc.to_string(),
            });
        }
        let ct = msgpack::req_bytes(&outer, "load")?;
        if let Some(master) = self.require_signature_from {
            let sig = msgpack::req_bytes(&outer, "sig")?;
            let algo = match msgpack::get(&outer, "sig_algo").and_then(msgpack::str_of) {
                Some(a) => a.parse()?,
                None => SigAlgo::Pkcs1v15Sha1,
            };
            master
                .verify(algo, ct, sig)
                .map_err(|_| Error::BadSignature("publication"))?;
        }
        let mut load = self.aes.loads(ct, None)?;
        let serial = serials.check(&mut load)?;
        parse_load(load, serial)
    }
}

fn parse_load(load: Value, serial: Option<u64>) -> Result<Publication> {
    let jid = Jid::parse(msgpack::req_str(&load, "jid")?)?;
    let fun = msgpack::req_str(&load, "fun")?.to_string();
    let raw_arg = msgpack::get(&load, "arg")
        .cloned()
        .ok_or(Error::Missing("arg"))?;
    let mut args = match &raw_arg {
        Value::Array(a) => a.clone(),
        other => {
            return Err(Error::Shape {
                field: "arg",
                expected: "a list",
                found: msgpack::kind(other),
            })
        }
    };
    let mut kwargs = Vec::new();
    if let Some(Value::Map(pairs)) = args.last() {
        if pairs
            .iter()
            .any(|(k, v)| msgpack::str_of(k) == Some("__kwarg__") && *v == Value::Boolean(true))
        {
            kwargs = pairs
                .iter()
                .filter_map(|(k, v)| Some((msgpack::str_of(k)?.to_string(), v.clone())))
                .filter(|(k, _)| k != "__kwarg__")
                .collect();
            args.pop();
        }
    }
    let tgt = msgpack::get(&load, "tgt")
        .cloned()
        .ok_or(Error::Missing("tgt"))?;
    let tgt_type = msgpack::get(&load, "tgt_type")
        .and_then(msgpack::str_of)
        .unwrap_or("glob")
        .to_string();
    let ret = msgpack::get(&load, "ret")
        .and_then(msgpack::str_of)
        .unwrap_or("")
        .to_string();
    let user = msgpack::get(&load, "user")
        .and_then(msgpack::str_of)
        .map(str::to_string);
    Ok(Publication {
        jid,
        fun,
        args,
        kwargs,
        raw_arg,
        tgt,
        tgt_type,
        ret,
        user,
        serial,
        load,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypticle::generate_key_string;
    use crate::msgpack::{bin, map, text};

    fn publication(c: &Crypticle, serial: u64, arg: Value) -> Vec<u8> {
        let load = map([
            ("fun", text("test.arg")),
            ("arg", arg),
            ("tgt", text("virtseed")),
            ("tgt_type", text("glob")),
            ("jid", text("20261124040804123456")),
            ("ret", text("")),
            ("user", text("root")),
            ("serial", Value::from(serial)),
        ]);
        msgpack::encode(&map([
            ("enc", text("aes")),
            ("load", bin(c.dumps(&load, None))),
        ]))
    }

    #[test]
    fn kwargs_split_and_topics() {
        let c = Crypticle::from_key_string(generate_key_string().as_bytes()).unwrap();
        let arg = Value::Array(vec![
            text("a"),
            map([("__kwarg__", Value::Boolean(true)), ("k", text("v"))]),
        ]);
        let frame = publication(&c, 1, arg);
        let opener = Opener {
            aes: &c,
            require_signature_from: None,
        };
        let mut g = SerialGuard::default();
        // 2-frame form: the topic frame is ignored.
        let p = opener
            .open(&[topic_for("virtseed").as_bytes(), &frame], &mut g)
            .unwrap();
        assert_eq!(p.fun, "test.arg");
        assert_eq!(p.args, vec![text("a")]);
        assert_eq!(p.kwarg("k"), Some(&text("v")));
        assert_eq!(p.serial, Some(1));
        // replay of the same serial
        assert!(matches!(
            opener.open(&[&frame], &mut g),
            Err(Error::Replay { .. })
        ));
        assert_eq!(topic_for("minion").len(), 40);
    }

    #[test]
    fn garbage_is_an_error() {
        let c = Crypticle::from_key_string(generate_key_string().as_bytes()).unwrap();
        let opener = Opener {
            aes: &c,
            require_signature_from: None,
        };
        let mut g = SerialGuard::default();
        assert!(opener.open(&[], &mut g).is_err());
        assert!(opener.open(&[b"\xc1"], &mut g).is_err());
        let other = Crypticle::from_key_string(generate_key_string().as_bytes()).unwrap();
        let frame = publication(&other, 1, Value::Array(vec![]));
        assert_eq!(opener.open(&[&frame], &mut g), Err(Error::Hmac));
        let frame = publication(&c, 2, text("not a list"));
        assert!(matches!(
            opener.open(&[&frame], &mut g),
            Err(Error::Shape { field: "arg", .. })
        ));
    }
}
