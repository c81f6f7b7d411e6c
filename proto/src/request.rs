//! Request envelopes on the ret port (`salt/channel/client.py:_package_load`) and their
//! replies, plus the loads of the `aes` commands a minion sends.
//!
//! ```text
//! clear: {"enc":"clear","load":{...},"version":3}
//! aes:   {"enc":"aes","load":Crypticle(K_sess).dumps(load + nonce, ts, tok, id),"version":3,
//!         "id":<id>,"enc_algo":..,"sig_algo":..}
//! ```
//! The reply to an aes request is one str-typed blob `Crypticle(K_sess).dumps(ret, nonce)`;
//! errors come back as bare strings (`"bad load"`) or maps (`{"msg": "bad load"}`).

use crate::crypticle::Crypticle;
use crate::error::{Error, Result};
use crate::keys::{EncAlgo, SigAlgo};
use crate::msgpack::{self, bin, map, text};
use rmpv::Value;

/// Protocol version sent on every request; masters since 3006.17/3007.9 refuse lower.
pub const VERSION: i64 = 3;

/// A clear request envelope, packed.
pub fn clear(load: Value) -> Vec<u8> {
    msgpack::encode(&map([
        ("enc", text("clear")),
        ("load", load),
        ("version", Value::from(VERSION)),
    ]))
}

/// What identifies this peer on aes requests.
#[derive(Clone, Copy)]
pub struct AesPeer<'a> {
    pub id: &'a str,
    /// `X931(minion.pem, b"salt")`, a constant per key.
    pub tok: &'a [u8],
    pub session: &'a Crypticle,
    pub enc_algo: EncAlgo,
    pub sig_algo: SigAlgo,
}

impl AesPeer<'_> {
    /// Seals `load` (a map) as a v3 aes request; `ts` is Unix seconds.
    pub fn request(&self, mut load: Value, nonce: &str, ts: i64) -> Vec<u8> {
        msgpack::set(&mut load, "nonce", text(nonce));
        msgpack::set(&mut load, "ts", Value::from(ts));
        msgpack::set(&mut load, "tok", bin(self.tok.to_vec()));
        msgpack::set(&mut load, "id", text(self.id));
        msgpack::encode(&map([
            ("enc", text("aes")),
            ("load", bin(self.session.dumps(&load, None))),
            ("version", Value::from(VERSION)),
            ("id", text(self.id)),
            ("enc_algo", text(self.enc_algo.as_str())),
            ("sig_algo", text(self.sig_algo.as_str())),
        ]))
    }

    /// Opens the reply to a request sent with `nonce`.
    pub fn decode_reply(&self, reply: &[u8], nonce: &str) -> Result<Value> {
        let v = msgpack::decode(reply)?;
        match &v {
            Value::String(_) | Value::Binary(_) => {
                let blob = msgpack::bytes_of(&v).unwrap_or_default();
                match self.session.loads(blob, Some(nonce)) {
                    Ok(ret) => Ok(ret),
                    // Short printable text is the master talking, not ciphertext.
                    Err(e) => match msgpack::str_of(&v) {
                        Some(s) if s.len() < 200 && !s.is_empty() => {
                            Err(Error::Master(s.to_string()))
                        }
                        _ => Err(e),
                    },
                }
            }
            Value::Map(_)
                if msgpack::get(&v, "msg").is_some() || msgpack::get(&v, "error").is_some() =>
            {
                Err(Error::Master(msgpack::to_json(&v)))
            }
            // `_pillar` and a few others answer with a plain map.
            _ => Ok(v),
        }
    }
}

/// The reply to a clear request: `{"enc":"clear","load":L}` gives L; anything else is
/// returned as it is (wheel, runner and ping reply bare).
pub fn decode_clear_reply(reply: &[u8]) -> Result<Value> {
    let mut v = msgpack::decode(reply)?;
    if msgpack::get(&v, "enc").and_then(msgpack::str_of) == Some("clear") {
        if let Some(load) = msgpack::remove(&mut v, "load") {
            return Ok(load);
        }
    }
    Ok(v)
}

/// A job return (`_return`), as `salt/minion.py:_return_pub` sends it.
pub struct Return<'a> {
    pub id: &'a str,
    pub jid: &'a str,
    pub fun: &'a str,
    pub fun_args: Value,
    pub ret: Value,
    pub retcode: i64,
    pub success: bool,
    /// The publication's `user`, echoed as minions do; the `salt` CLI's non-default outputters
    /// wait out their timeout for returns without it (seen on 3007.17).
    pub user: Option<&'a str>,
}

impl Return<'_> {
    pub fn load(self) -> Value {
        let user = self.user.map(|u| ("user", text(u)));
        map([
            ("cmd", text("_return")),
            ("id", text(self.id)),
            ("jid", text(self.jid)),
            ("fun", text(self.fun)),
            ("fun_args", self.fun_args),
            ("return", self.ret),
            ("retcode", Value::from(self.retcode)),
            ("success", Value::Boolean(self.success)),
        ]
        .into_iter()
        .chain(user))
    }
}

/// A `_pillar` request as `salt/pillar/__init__.py:AsyncRemotePillar` sends it (`ver: "2"`:
/// the answer comes encrypted to the minion's own key and signed by the master).
pub fn pillar_load(id: &str, grains: Value) -> Value {
    map([
        ("cmd", text("_pillar")),
        ("id", text(id)),
        ("grains", grains),
        ("saltenv", Value::Nil),
        ("pillarenv", Value::Nil),
        ("pillar_override", map::<&str>([])),
        ("extra_minion_data", map::<&str>([])),
        ("ver", text("2")),
    ])
}

/// Opens a `send_private` reply (`salt/channel/server.py:_encrypt_private`, read as
/// `crypted_transfer_decode_dictentry` does): `{"key": RSA-OAEP(own key, K), dictkey:
/// Crypticle(K).dumps({"data": msgpack({"key", dictkey, "nonce"}), "sig"})}`. The master's
/// signature over `data` must verify, and `data` must echo this request's nonce and key.
pub fn open_private(
    reply: &Value,
    dictkey: &str,
    own: &crate::keys::PrivateKey,
    master: &crate::keys::PublicKey,
    enc_algo: EncAlgo,
    sig_algo: SigAlgo,
    nonce: &str,
) -> Result<Value> {
    if let Some(err) = msgpack::get(reply, "error").or_else(|| msgpack::get(reply, "msg")) {
        return Err(Error::Master(msgpack::to_json(err)));
    }
    let sealed_key = msgpack::req_bytes(reply, "key")?;
    let key = own.oaep_decrypt(enc_algo, sealed_key)?;
    let pcrypt = Crypticle::from_key_string(&key)?;
    let blob = msgpack::get(reply, dictkey)
        .and_then(msgpack::bytes_of)
        .ok_or(Error::Missing("pillar"))?;
    let signed = pcrypt.loads(blob, None)?;
    let data = msgpack::req_bytes(&signed, "data")?;
    let sig = msgpack::req_bytes(&signed, "sig")?;
    master.verify(sig_algo, data, sig)?;
    let inner = msgpack::decode(data)?;
    if msgpack::get(&inner, "nonce").and_then(msgpack::str_of) != Some(nonce) {
        return Err(Error::Nonce);
    }
    if msgpack::get(&inner, "key").and_then(msgpack::bytes_of) != Some(sealed_key) {
        return Err(Error::BadSignature("private reply key"));
    }
    Ok(msgpack::get(&inner, dictkey).cloned().unwrap_or(Value::Nil))
}

/// A `_minion_event` in the `tag` form Salt minions use. The master fires the **whole load**
/// under `tag` (no blacklist), so reactors see `{cmd, id, tag, data, ...}`.
pub fn minion_event(id: &str, tag: &str, data: Value) -> Value {
    map([
        ("cmd", text("_minion_event")),
        ("id", text(id)),
        ("tag", text(tag)),
        ("data", data),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypticle::generate_key_string;

    #[test]
    fn aes_roundtrip_and_errors() {
        let key = generate_key_string();
        let session = Crypticle::from_key_string(key.as_bytes()).unwrap();
        let peer = AesPeer {
            id: "virtseed",
            tok: b"tok",
            session: &session,
            enc_algo: EncAlgo::OaepSha1,
            sig_algo: SigAlgo::Pkcs1v15Sha1,
        };
        let nonce = "0123456789abcdef0123456789abcdef";
        let req = peer.request(
            minion_event("virtseed", "a/b", map([("x", Value::from(1))])),
            nonce,
            5,
        );
        let env = msgpack::decode(&req).unwrap();
        assert_eq!(msgpack::req_str(&env, "id").unwrap(), "virtseed");
        assert_eq!(msgpack::get(&env, "version"), Some(&Value::from(3)));
        let inner = session
            .loads(msgpack::req_bytes(&env, "load").unwrap(), None)
            .unwrap();
        assert_eq!(msgpack::req_str(&inner, "nonce").unwrap(), nonce);
        assert_eq!(msgpack::get(&inner, "ts"), Some(&Value::from(5)));

        let reply = msgpack::encode(&bin(session.dumps(&Value::Nil, Some(nonce))));
        assert_eq!(peer.decode_reply(&reply, nonce).unwrap(), Value::Nil);
        let other = "ffffffffffffffffffffffffffffffff";
        assert_eq!(peer.decode_reply(&reply, other), Err(Error::Nonce));
        let bad = msgpack::encode(&text("bad load"));
        assert_eq!(
            peer.decode_reply(&bad, nonce),
            Err(Error::Master("bad load".into()))
        );
        let routing = msgpack::encode(&map([("error", text("Routing error"))]));
        assert!(matches!(
            peer.decode_reply(&routing, nonce),
            Err(Error::Master(_))
        ));
    }

    #[test]
    fn clear_reply_unwraps_publish() {
        let r = msgpack::encode(&map([
            ("enc", text("clear")),
            ("load", map([("jid", text("1"))])),
        ]));
        assert_eq!(
            msgpack::req_str(&decode_clear_reply(&r).unwrap(), "jid").unwrap(),
            "1"
        );
        assert_eq!(
            decode_clear_reply(&msgpack::encode(&Value::from(1))).unwrap(),
            Value::from(1)
        );
    }

    /// A `send_private` reply built as the master builds it opens to the pillar; a wrong
    /// nonce, a signature by another key or a tampered key are refused.
    #[test]
    fn private_reply() {
        use crate::keys::PrivateKey;
        let minion = PrivateKey::generate(1024).unwrap();
        let master = PrivateKey::generate(1024).unwrap();
        let impostor = PrivateKey::generate(1024).unwrap();
        let nonce = "0123456789abcdef0123456789abcdef";
        let pillar = map([("role", text("web"))]);
        let seal = |signer: &PrivateKey, nonce: &str| {
            let k = generate_key_string();
            let sealed = minion
                .public_key()
                .oaep_encrypt(EncAlgo::OaepSha1, k.as_bytes())
                .unwrap();
            let data = msgpack::encode(&map([
                ("key", bin(sealed.clone())),
                ("pillar", pillar.clone()),
                ("nonce", text(nonce)),
            ]));
            let sig = signer.sign(SigAlgo::Pkcs1v15Sha1, &data);
            let inner = map([("data", bin(data)), ("sig", bin(sig))]);
            let pcrypt = Crypticle::from_key_string(k.as_bytes()).unwrap();
            map([
                ("key", bin(sealed)),
                ("pillar", bin(pcrypt.dumps(&inner, None))),
            ])
        };
        let open = |reply: &Value| {
            open_private(
                reply,
                "pillar",
                &minion,
                master.public_key(),
                EncAlgo::OaepSha1,
                SigAlgo::Pkcs1v15Sha1,
                nonce,
            )
        };
        assert_eq!(open(&seal(&master, nonce)).unwrap(), pillar);
        assert_eq!(
            open(&seal(&master, "ffffffffffffffffffffffffffffffff")),
            Err(Error::Nonce)
        );
        assert!(open(&seal(&impostor, nonce)).is_err());
        let mut swapped = seal(&master, nonce);
        let other = seal(&master, nonce);
        msgpack::set(
            &mut swapped,
            "key",
            msgpack::get(&other, "key").unwrap().clone(),
        );
        assert!(open(&swapped).is_err());
        assert!(matches!(
            open(&map([("error", text("bad load"))])),
            Err(Error::Master(_))
        ));
    }
}
