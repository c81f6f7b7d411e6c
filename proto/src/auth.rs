//! Minion authentication (`salt/crypt.py:AsyncAuth.sign_in`, `handle_signin_response`,
//! `verify_master`, `decrypt_aes`).
//!
//! ```text
//! -> {"enc":"clear","version":3,"load":{"cmd":"_auth","id","nonce","enc_algo","sig_algo","pub"[,"token"]}}
//! <- {"enc":"clear","load":B,"sig":PKCS1v15(master.pem, B)}   B = msgpack(inner)
//!    inner accepted: {enc:"pub", pub_key, publish_port, aes:OAEP(K_aes), session:OAEP(K_sess),
//!                     sig:X931(sha256(K_aes).hexdigest()), nonce[, token]}
//!    otherwise:      {ret: True (pending) | False (rejected/denied) | "full", nonce}
//! ```

use crate::error::{Error, Result};
use crate::keys::{EncAlgo, PrivateKey, PublicKey, SigAlgo};
use crate::msgpack::{self, bin, map, text};
use rmpv::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What a peer needs to sign in and to check the answer.
#[derive(Debug, Clone, Copy)]
pub struct SignIn<'a> {
    pub id: &'a str,
    pub key: &'a PrivateKey,
    pub nonce: &'a str,
    pub enc_algo: EncAlgo,
    pub sig_algo: SigAlgo,
    /// The master key we trust (pinned on first use). With it we check the reply signature,
    /// and with `token` we make the master prove it holds the matching private key.
    pub master: Option<&'a PublicKey>,
    /// A secret the master must decrypt and return (`AsyncAuth.token`); only with `master`.
    pub token: Option<&'a [u8]>,
}

/// A fresh request nonce, `uuid4().hex`-shaped: 32 lowercase hex characters.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::RngExt::fill(&mut rand::rng(), &mut b[..]);
    hex::encode(b)
}

impl SignIn<'_> {
    /// The `_auth` request envelope, packed.
    pub fn request(&self, autosign_grains: Option<Value>) -> Result<Vec<u8>> {
        let mut load = vec![
            ("cmd", text("_auth")),
            ("id", text(self.id)),
            ("nonce", text(self.nonce)),
            ("enc_algo", text(self.enc_algo.as_str())),
            ("sig_algo", text(self.sig_algo.as_str())),
            ("pub", text(self.key.public_key().clean())),
        ];
        if let (Some(master), Some(token)) = (self.master, self.token) {
            load.push(("token", bin(master.oaep_encrypt(self.enc_algo, token)?)));
        }
        if let Some(grains) = autosign_grains {
            load.push(("autosign_grains", grains));
        }
        Ok(crate::request::clear(map(load)))
    }

    /// Checks and decodes the master's reply to [`SignIn::request`].
    pub fn decode_reply(&self, reply: &[u8]) -> Result<AuthReply> {
        let outer = msgpack::decode(reply)?;
        if let Some(s) = msgpack::str_of(&outer) {
            return Err(Error::Master(s.to_string()));
        }
        let load = msgpack::get(&outer, "load").ok_or_else(|| master_said(&outer))?;
        // An unsigned map load: `{"ret": "bad enc algo" | "bad sig algo"}`.
        if let Value::Map(_) = load {
            return Err(master_said(load));
        }
        let signed = msgpack::bytes_of(load).ok_or_else(|| master_said(&outer))?;
        let sig = msgpack::get(&outer, "sig").and_then(msgpack::bytes_of);
        if let Some(master) = self.master {
            let sig = sig.ok_or(Error::BadSignature("auth reply (unsigned)"))?;
            master
                .verify(self.sig_algo, signed, sig)
                .map_err(|_| Error::BadSignature("auth reply"))?;
        }
        let inner = msgpack::decode(signed)?;
        if msgpack::req_bytes(&inner, "nonce")? != self.nonce.as_bytes() {
            return Err(Error::Nonce);
        }
        if msgpack::get(&inner, "pub_key").is_none() {
            return match msgpack::get(&inner, "ret") {
                Some(Value::Boolean(true)) => Ok(AuthReply::Pending),
                Some(Value::Boolean(false)) => Ok(AuthReply::Rejected),
                Some(v) if msgpack::str_of(v) == Some("full") => Ok(AuthReply::Full),
                _ => Err(master_said(&inner)),
            };
        }
        self.accepted(&inner, signed, sig)
            .map(|a| AuthReply::Accepted(Box::new(a)))
    }

    fn accepted(&self, inner: &Value, signed: &[u8], sig: Option<&[u8]>) -> Result<Accepted> {
        let master = PublicKey::from_pem(msgpack::req_str(inner, "pub_key")?)?;
        match self.master {
            Some(pinned) if *pinned != master => return Err(Error::MasterKeyChanged),
            Some(_) => {}
            // Trust on first use, as a minion does; the signature still proves the reply is
            // whole and made by the holder of the key it carries.
            None => {
                if let Some(sig) = sig {
                    master.verify(self.sig_algo, signed, sig)?;
                }
            }
        }
        let aes = self
            .key
            .oaep_decrypt(self.enc_algo, msgpack::req_bytes(inner, "aes")?)?;
        let digest = hex::encode(Sha256::digest(&aes[..]));
        master
            .x931_verify(digest.as_bytes(), msgpack::req_bytes(inner, "sig")?)
            .map_err(|_| Error::BadSignature("AES key (X9.31)"))?;
        let session = match msgpack::get(inner, "session") {
            Some(v) => {
                let ct = msgpack::bytes_of(v).ok_or(Error::Shape {
                    field: "session",
                    expected: "a string",
                    found: msgpack::kind(v),
                })?;
                Some(text_key(self.key.oaep_decrypt(self.enc_algo, ct)?)?)
            }
            None => None,
        };
        if let (Some(_), Some(token)) = (self.master, self.token) {
            let echoed = self
                .key
                .oaep_decrypt(self.enc_algo, msgpack::req_bytes(inner, "token")?)?;
            if &echoed[..] != token {
                return Err(Error::BadSignature("master token"));
            }
        }
        let publish_port = msgpack::get(inner, "publish_port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        Ok(Accepted {
            master,
            publish_port,
            aes: text_key(aes)?,
            session,
        })
    }
}

fn text_key(raw: Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>> {
    String::from_utf8(raw.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| Error::KeyString)
}

fn master_said(v: &Value) -> Error {
    let shown = msgpack::get(v, "ret")
        .or_else(|| msgpack::get(v, "error"))
        .or_else(|| msgpack::get(v, "msg"))
        .unwrap_or(v);
    Error::Master(msgpack::to_json(shown))
}

/// The outcome of `_auth`.
#[derive(Debug)]
pub enum AuthReply {
    Accepted(Box<Accepted>),
    /// The key waits in `minions_pre/` (`ret: True`): retry after `acceptance_wait_time`.
    Pending,
    /// Rejected or denied (`ret: False`): another key holds this id, or it was rejected.
    Rejected,
    /// `max_minions` reached.
    Full,
}

/// What an accepted peer learns: the master key, the shared publication key and its
/// per-peer session key (v3).
pub struct Accepted {
    pub master: PublicKey,
    pub publish_port: Option<u16>,
    /// K_aes, the key string for publications.
    pub aes: Zeroizing<String>,
    /// K_sess, the key string for requests and replies (protocol v3).
    pub session: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("master", &self.master)
            .field("publish_port", &self.publish_port)
            .finish_non_exhaustive()
    }
}
