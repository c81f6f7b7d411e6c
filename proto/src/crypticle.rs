//! `salt/crypt.py:Crypticle`: Salt's symmetric envelope.
//!
//! ```text
//! key string = base64(aes_key || hmac_key(32))       aes_key 24 bytes by default (AES-192)
//! encrypt(p) = IV(16) || AES-CBC(PKCS7(p)) || HMAC-SHA256(hmac_key, IV || ct)
//! dumps(o)   = encrypt("pickle::" [|| nonce(32 ASCII)] || msgpack(o))
//! ```
//! Publications carry a `serial` inside the plaintext for replay protection: see [`SerialGuard`].

use crate::error::{Error, Result};
use crate::msgpack;
use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt as _;
use rmpv::Value;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

const SIG_SIZE: usize = 32;
const IV_SIZE: usize = 16;
const PICKLE: &[u8] = b"pickle::";
/// Length of the nonce Salt puts in request replies (`uuid4().hex`).
pub const NONCE_LEN: usize = 32;

/// A Salt AES key: the AES part and the HMAC part of a decoded key string.
#[derive(Clone)]
pub struct Crypticle {
    aes_key: Zeroizing<Vec<u8>>,
    hmac_key: Zeroizing<[u8; SIG_SIZE]>,
}

impl std::fmt::Debug for Crypticle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crypticle(AES-{}, <secret>)", self.aes_key.len() * 8)
    }
}

/// A fresh key string as `Crypticle.generate_key_string(key_size=192)` makes it: base64 of 56
/// random bytes (76 ASCII characters).
pub fn generate_key_string() -> Zeroizing<String> {
    let mut raw = [0u8; 24 + SIG_SIZE];
    rand::rng().fill(&mut raw[..]);
    let s = base64::engine::general_purpose::STANDARD.encode(raw);
    raw.zeroize();
    Zeroizing::new(s)
}

impl Crypticle {
    /// From a key string (the base64 text the master RSA-encrypts for us).
    pub fn from_key_string(key: &[u8]) -> Result<Self> {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(key.trim_ascii())
                .map_err(|_| Error::KeyString)?,
        );
        // extract_keys: aes_key = raw[:-32], hmac_key = raw[-32:]
        let aes_len = raw.len().checked_sub(SIG_SIZE).ok_or(Error::KeyString)?;
        if !matches!(aes_len, 16 | 24 | 32) {
            return Err(Error::KeyString);
        }
        let mut hmac_key = Zeroizing::new([0u8; SIG_SIZE]);
        hmac_key.copy_from_slice(&raw[aes_len..]);
        Ok(Self {
            aes_key: Zeroizing::new(raw[..aes_len].to_vec()),
            hmac_key,
        })
    }

    /// Encrypts with a random IV.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; IV_SIZE];
        rand::rng().fill(&mut iv[..]);
        self.encrypt_with_iv(plaintext, &iv)
    }

    /// Encrypts with a given IV (deterministic; for test vectors).
    pub fn encrypt_with_iv(&self, plaintext: &[u8], iv: &[u8; IV_SIZE]) -> Vec<u8> {
        let ct = match self.aes_key.len() {
            16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(&self.aes_key, iv)
                .expect("key and IV lengths checked")
                .encrypt_padded_vec::<Pkcs7>(plaintext),
            24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(&self.aes_key, iv)
                .expect("key and IV lengths checked")
                .encrypt_padded_vec::<Pkcs7>(plaintext),
            _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(&self.aes_key, iv)
                .expect("key and IV lengths checked")
                .encrypt_padded_vec::<Pkcs7>(plaintext),
        };
        let mut out = Vec::with_capacity(IV_SIZE + ct.len() + SIG_SIZE);
        out.extend_from_slice(iv);
        out.extend_from_slice(&ct);
        let tag = self.mac().chain_update(&out).finalize().into_bytes();
        out.extend_from_slice(&tag);
        out
    }

    /// Checks the HMAC (constant time), then decrypts.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>> {
        if data.len() < IV_SIZE + 16 + SIG_SIZE {
            return Err(Error::ShortCiphertext(data.len()));
        }
        let (body, tag) = data.split_at(data.len() - SIG_SIZE);
        self.mac()
            .chain_update(body)
            .verify_slice(tag)
            .map_err(|_| Error::Hmac)?;
        let (iv, ct) = body.split_at(IV_SIZE);
        if ct.len() % 16 != 0 {
            return Err(Error::Padding);
        }
        let pt = match self.aes_key.len() {
            16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(&self.aes_key, iv)
                .expect("key and IV lengths checked")
                .decrypt_padded_vec::<Pkcs7>(ct),
            24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(&self.aes_key, iv)
                .expect("key and IV lengths checked")
                .decrypt_padded_vec::<Pkcs7>(ct),
            _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(&self.aes_key, iv)
                .expect("key and IV lengths checked")
                .decrypt_padded_vec::<Pkcs7>(ct),
        };
        pt.map_err(|_| Error::Padding)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.hmac_key[..])
            .expect("HMAC takes any key length")
    }

    /// `Crypticle.dumps(obj, nonce)`.
    pub fn dumps(&self, obj: &Value, nonce: Option<&str>) -> Vec<u8> {
        self.encrypt(&Self::plaintext(obj, nonce))
    }

    /// `dumps` with a fixed IV, for test vectors.
    pub fn dumps_with_iv(&self, obj: &Value, nonce: Option<&str>, iv: &[u8; IV_SIZE]) -> Vec<u8> {
        self.encrypt_with_iv(&Self::plaintext(obj, nonce), iv)
    }

    fn plaintext(obj: &Value, nonce: Option<&str>) -> Vec<u8> {
        let body = msgpack::encode(obj);
        let mut pt = Vec::with_capacity(PICKLE.len() + NONCE_LEN + body.len());
        pt.extend_from_slice(PICKLE);
        if let Some(n) = nonce {
            pt.extend_from_slice(n.as_bytes());
        }
        pt.extend_from_slice(&body);
        pt
    }

    /// `Crypticle.loads(data, nonce)` without the serial check (see [`SerialGuard`]).
    ///
    /// Where Salt returns `{}` for a missing `pickle::` prefix, this returns an error.
    pub fn loads(&self, data: &[u8], nonce: Option<&str>) -> Result<Value> {
        let pt = self.decrypt(data)?;
        let rest = pt.strip_prefix(PICKLE).ok_or(Error::NoPickle)?;
        let rest = match nonce {
            Some(n) => {
                if rest.len() < NONCE_LEN || &rest[..NONCE_LEN] != n.as_bytes() {
                    return Err(Error::Nonce);
                }
                &rest[NONCE_LEN..]
            }
            None => rest,
        };
        msgpack::decode(rest)
    }
}

/// Replay protection for publications (`Crypticle.loads`, `serial` branch): a dict with a
/// `serial` must carry one above the last seen. Reset it when the AES key changes, since the
/// master restarts its counter on rotation.
#[derive(Debug, Default, Clone)]
pub struct SerialGuard {
    last: u64,
}

impl SerialGuard {
    /// Pops `serial` from `load` (if present) and checks it.
    pub fn check(&mut self, load: &mut Value) -> Result<Option<u64>> {
        let Some(serial) = msgpack::remove(load, "serial") else {
            return Ok(None);
        };
        let got = serial.as_u64().ok_or_else(|| Error::Shape {
            field: "serial",
            expected: "a non-negative integer",
            found: msgpack::kind(&serial),
        })?;
        if got <= self.last {
            return Err(Error::Replay {
                got,
                last: self.last,
            });
        }
        self.last = got;
        Ok(Some(got))
    }

    pub fn reset(&mut self) {
        self.last = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from spec/salt-protocol.md §4 (real 3008.5 code, IV forced).
    #[test]
    fn spec_vector() {
        let c = Crypticle::from_key_string(
            b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc=",
        )
        .unwrap();
        let obj = msgpack::map([
            ("cmd", msgpack::text("_return")),
            ("id", msgpack::text("m1")),
            ("jid", msgpack::text("20240101000000000000")),
            ("return", Value::Boolean(true)),
        ]);
        let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
        let out = c.dumps_with_iv(&obj, Some("0123456789abcdef0123456789abcdef"), &iv);
        assert_eq!(
            hex::encode(&out),
            "000102030405060708090a0b0c0d0e0fc03c9c8acff922fc7d2548736c10a15697a829f1160278ef5e6fddb89116c7fb\
             42d528cb193aad0809c9faf973338ee068c63e0ab9ae713969725f86d38ec4a912046cfac2f54597a9b0c947e49204a3\
             10bf3565f86c742d95411e5ffa7c3f5131338456f7bd733a1bdd99df4b2dc54314f81afc0d4fe752f8c98852e0f1695a"
        );
        let back = c
            .loads(&out, Some("0123456789abcdef0123456789abcdef"))
            .unwrap();
        assert_eq!(back, obj);
        assert_eq!(
            c.loads(&out, Some("ffffffffffffffffffffffffffffffff")),
            Err(Error::Nonce)
        );
    }

    #[test]
    fn tampering_fails_the_hmac() {
        let c = Crypticle::from_key_string(generate_key_string().as_bytes()).unwrap();
        let mut ct = c.encrypt(b"hello");
        ct[20] ^= 1;
        assert_eq!(c.decrypt(&ct), Err(Error::Hmac));
        assert!(matches!(
            c.decrypt(&[0; 10]),
            Err(Error::ShortCiphertext(10))
        ));
    }

    #[test]
    fn other_key_fails_the_hmac() {
        let a = Crypticle::from_key_string(generate_key_string().as_bytes()).unwrap();
        let b = Crypticle::from_key_string(generate_key_string().as_bytes()).unwrap();
        assert_eq!(b.decrypt(&a.encrypt(b"x")), Err(Error::Hmac));
    }

    #[test]
    fn bad_key_strings() {
        assert_eq!(
            Crypticle::from_key_string(b"not base64!").unwrap_err(),
            Error::KeyString
        );
        assert_eq!(
            Crypticle::from_key_string(b"AAAA").unwrap_err(),
            Error::KeyString
        );
    }

    #[test]
    fn serials_must_grow() {
        let mut g = SerialGuard::default();
        let mut a = msgpack::map([("serial", Value::from(1)), ("fun", msgpack::text("x"))]);
        assert_eq!(g.check(&mut a), Ok(Some(1)));
        assert!(msgpack::get(&a, "serial").is_none());
        let mut b = msgpack::map([("serial", Value::from(1))]);
        assert_eq!(g.check(&mut b), Err(Error::Replay { got: 1, last: 1 }));
        g.reset();
        let mut c = msgpack::map([("serial", Value::from(1))]);
        assert_eq!(g.check(&mut c), Ok(Some(1)));
    }
}
