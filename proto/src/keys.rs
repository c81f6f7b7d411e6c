//! RSA as Salt uses it (`salt/crypt.py`, `salt/utils/rsax931.py`, `salt/utils/crypt.py`).
//!
//! * Private keys: PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), as `gen_keys` writes them.
//! * Public keys: SPKI PEM (`BEGIN PUBLIC KEY`). The master compares keys **as text** after
//!   `clean_key`, so a [`PublicKey`] keeps the exact text it was made from.
//! * OAEP (MGF1 with the same hash, empty label) for the key strings in `_auth` replies.
//! * PKCS#1 v1.5 signatures over the signed `_auth` load and publications.
//! * X9.31 raw RSA for `tok` and the `sig` over the AES key digest.

use crate::error::{Error, Result};
use rsa::hazmat::{rsa_decrypt_and_check, rsa_encrypt};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Oaep};
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256};
use zeroize::Zeroizing;

/// `enc_algo` of a request: the OAEP hash the master uses for our key strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncAlgo {
    #[default]
    OaepSha1,
    OaepSha224,
}

/// `sig_algo` of a request: the PKCS#1 v1.5 hash the master signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigAlgo {
    #[default]
    Pkcs1v15Sha1,
    Pkcs1v15Sha224,
}

impl EncAlgo {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OaepSha1 => "OAEP-SHA1",
            Self::OaepSha224 => "OAEP-SHA224",
        }
    }
}

impl std::str::FromStr for EncAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "OAEP-SHA1" => Ok(Self::OaepSha1),
            "OAEP-SHA224" => Ok(Self::OaepSha224),
            _ => Err(Error::Algorithm(s.into())),
        }
    }
}

impl SigAlgo {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pkcs1v15Sha1 => "PKCS1v15-SHA1",
            Self::Pkcs1v15Sha224 => "PKCS1v15-SHA224",
        }
    }
}

impl std::str::FromStr for SigAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "PKCS1v15-SHA1" => Ok(Self::Pkcs1v15Sha1),
            "PKCS1v15-SHA224" => Ok(Self::Pkcs1v15Sha224),
            _ => Err(Error::Algorithm(s.into())),
        }
    }
}

/// `salt.crypt.clean_key`: `"\n".join(key.strip().splitlines())`. Salt compares keys in
/// this form, so a trailing newline or CRLF endings do not matter, anything else does.
pub fn clean_key(pem: &str) -> String {
    pem.trim().lines().collect::<Vec<_>>().join("\n")
}

/// An RSA private key. Never printed; its PEM is zeroized when dropped.
pub struct PrivateKey {
    key: rsa::PrivateKey,
    public: PublicKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({} bits, <secret>)", self.key.size() * 8)
    }
}

impl PrivateKey {
    /// Generates a key with e = 65537, as `salt.crypt.gen_keys` does.
    pub fn generate(bits: usize) -> Result<Self> {
        if !(1024..=16384).contains(&bits) {
            return Err(Error::Key(format!(
                "key size {bits} is outside 1024..16384 bits (Salt uses 2048 or 4096)"
            )));
        }
        let key =
            rsa::PrivateKey::new(&mut rand::rng(), bits).map_err(|e| Error::Rsa(e.to_string()))?;
        Self::from_key(key)
    }

    fn from_key(key: rsa::PrivateKey) -> Result<Self> {
        let public = PublicKey::from_key(key.to_public_key())?;
        Ok(Self { key, public })
    }

    /// Reads PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = rsa::PrivateKey::from_pkcs1_pem(pem.trim())
            .or_else(|_| rsa::PrivateKey::from_pkcs8_pem(pem.trim()))
            .map_err(|e| Error::Key(format!("private key PEM: {e}")))?;
        Self::from_key(key)
    }

    /// PKCS#1 PEM with a trailing newline, byte-identical to what `gen_keys` writes.
    pub fn to_pem(&self) -> Zeroizing<String> {
        self.key
            .to_pkcs1_pem(LineEnding::LF)
            .expect("encoding a valid key cannot fail")
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Modulus length in bytes.
    pub fn size(&self) -> usize {
        self.key.size()
    }

    /// `PrivateKey.decrypt`: OAEP with `algo`'s hash for both the digest and MGF1.
    pub fn oaep_decrypt(&self, algo: EncAlgo, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let r = match algo {
            EncAlgo::OaepSha1 => self.key.decrypt(Oaep::<Sha1>::new(), ciphertext),
            EncAlgo::OaepSha224 => self.key.decrypt(Oaep::<Sha224>::new(), ciphertext),
        };
        r.map(Zeroizing::new)
            .map_err(|_| Error::Rsa("OAEP decryption failed: not encrypted to this key".into()))
    }

    /// `salt.crypt.sign_message`: PKCS#1 v1.5 over `msg`.
    pub fn sign(&self, algo: SigAlgo, msg: &[u8]) -> Vec<u8> {
        let r = match algo {
            SigAlgo::Pkcs1v15Sha1 => self.key.pkcs1v15_sign::<Sha1>(msg),
            SigAlgo::Pkcs1v15Sha224 => self.key.pkcs1v15_sign::<Sha224>(msg),
        };
        r.expect("signing with a valid key cannot fail")
    }

    /// X9.31 "private encrypt" (`RSA_private_encrypt` with `RSA_X931_PADDING`), as
    /// `salt.crypt.PrivateKey.encrypt` computes `tok` and the auth `sig`:
    ///
    /// ```text
    /// EM = 6B || BB.. || BA || m || CC   (6A || m || CC when m leaves no room for filler)
    /// s  = EM^d mod n;  output min(s, n - s), k bytes big-endian
    /// ```
    pub fn x931_sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let k = self.key.size();
        if msg.len() + 2 > k {
            return Err(Error::Rsa(format!(
                "X9.31: {} bytes do not fit a {k}-byte modulus",
                msg.len()
            )));
        }
        let mut em = Vec::with_capacity(k);
        if k - msg.len() - 2 == 0 {
            em.push(0x6A);
        } else {
            em.push(0x6B);
            em.resize(k - msg.len() - 2, 0xBB);
            em.push(0xBA);
        }
        em.extend_from_slice(msg);
        em.push(0xCC);
        let precision = self.key.n_bits_precision();
        let m = BoxedUint::from_be_slice(&em, precision).map_err(|e| Error::Rsa(e.to_string()))?;
        let s = rsa_decrypt_and_check(&self.key, Some(&mut rand::rng()), &m)
            .map_err(|e| Error::Rsa(e.to_string()))?;
        let n: &BoxedUint = self.key.n().as_ref();
        let alt = n.wrapping_sub(&s);
        let out = if s > alt { alt } else { s };
        Ok(pad_be(&out.to_be_bytes(), k))
    }
}

fn pad_be(bytes: &[u8], k: usize) -> Vec<u8> {
    let skip = bytes.len().saturating_sub(k);
    let bytes = &bytes[skip..];
    let mut out = vec![0u8; k - bytes.len()];
    out.extend_from_slice(bytes);
    out
}

/// An RSA public key together with the PEM text it came from (Salt compares the text).
#[derive(Clone)]
pub struct PublicKey {
    key: rsa::PublicKey,
    pem: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        clean_key(&self.pem) == clean_key(&other.pem)
    }
}

impl PublicKey {
    fn from_key(key: rsa::PublicKey) -> Result<Self> {
        let pem = key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::Key(e.to_string()))?;
        Ok(Self { key, pem })
    }

    /// Reads SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM and keeps the text.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let trimmed = pem.trim();
        let key = rsa::PublicKey::from_public_key_pem(trimmed)
            .or_else(|_| rsa::PublicKey::from_pkcs1_pem(trimmed))
            .map_err(|e| Error::Key(format!("public key PEM: {e}")))?;
        Ok(Self {
            key,
            pem: pem.to_string(),
        })
    }

    /// The PEM text exactly as made or read (SPKI with a trailing newline when made here).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The text a minion sends in `_auth` and the master compares with: `clean_key(pem)`.
    pub fn clean(&self) -> String {
        clean_key(&self.pem)
    }

    /// Modulus length in bytes.
    pub fn size(&self) -> usize {
        self.key.size()
    }

    /// `PublicKey.encrypt`: OAEP with `algo`'s hash.
    pub fn oaep_encrypt(&self, algo: EncAlgo, plaintext: &[u8]) -> Result<Vec<u8>> {
        let r = match algo {
            EncAlgo::OaepSha1 => self.key.oaep_encrypt::<Sha1>(plaintext),
            EncAlgo::OaepSha224 => self.key.oaep_encrypt::<Sha224>(plaintext),
        };
        r.map_err(|e| Error::Rsa(e.to_string()))
    }

    /// `salt.crypt.verify_signature`: PKCS#1 v1.5 over `msg`.
    pub fn verify(&self, algo: SigAlgo, msg: &[u8], sig: &[u8]) -> Result<()> {
        let r = match algo {
            SigAlgo::Pkcs1v15Sha1 => self.key.pkcs1v15_verify::<Sha1>(msg, sig),
            SigAlgo::Pkcs1v15Sha224 => self.key.pkcs1v15_verify::<Sha224>(msg, sig),
        };
        r.map_err(|_| Error::BadSignature("PKCS#1 v1.5"))
    }

    /// X9.31 "public decrypt": recovers the signed message, or fails on bad framing.
    pub fn x931_recover(&self, sig: &[u8]) -> Result<Vec<u8>> {
        let k = self.key.size();
        let bad = || Error::BadSignature("X9.31");
        if sig.len() != k {
            return Err(bad());
        }
        let precision = self.key.n_bits_precision();
        let s = BoxedUint::from_be_slice(sig, precision).map_err(|_| bad())?;
        let n: &BoxedUint = self.key.n().as_ref();
        if s >= *n {
            return Err(bad());
        }
        let mut v = rsa_encrypt(&self.key, &s).map_err(|_| bad())?;
        if v.to_be_bytes().last().copied().unwrap_or(0) & 0x0F != 0x0C {
            v = n.wrapping_sub(&v);
        }
        let em = pad_be(&v.to_be_bytes(), k);
        x931_unpad(&em).map(<[u8]>::to_vec).ok_or_else(bad)
    }

    /// Checks an X9.31 signature of `msg`.
    pub fn x931_verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        if self.x931_recover(sig)? == msg {
            Ok(())
        } else {
            Err(Error::BadSignature("X9.31"))
        }
    }

    /// `salt.utils.crypt.pem_finger` with sha256: what `salt-key -f`, `salt-call key.finger`
    /// and the minion's `master_finger` use.
    pub fn fingerprint(&self) -> String {
        pem_finger(&self.pem)
    }
}

/// OpenSSL's `RSA_padding_check_X931` on a k-byte block.
fn x931_unpad(em: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = em.split_first()?;
    let (&last, body) = rest.split_last()?;
    if last != 0xCC {
        return None;
    }
    match first {
        0x6A => Some(body),
        0x6B => {
            let pos = body.iter().position(|&b| b != 0xBB)?;
            (body[pos] == 0xBA).then(|| &body[pos + 1..])
        }
        _ => None,
    }
}

/// `salt.utils.crypt.pem_finger(key=pem)`, sha256: the hash of the base64 body lines, each
/// with its `\n` (BEGIN/END armor dropped, CRLF read as LF), as `aa:bb:...`.
pub fn pem_finger(pem: &str) -> String {
    let normalized = pem.replace("\r\n", "\n");
    let lines: Vec<&str> = normalized
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut h = Sha256::new();
    if lines.len() >= 2
        && lines[0].trim().starts_with("-----BEGIN")
        && lines[lines.len() - 1].trim().starts_with("-----END")
    {
        for l in &lines[1..lines.len() - 1] {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
    } else {
        h.update(pem.as_bytes());
    }
    colon_hex(&h.finalize())
}

/// Salt 3008's `key.finger` form: sha256 over the whole PEM text as stored.
pub fn pem_finger_whole(pem: &str) -> String {
    colon_hex(&Sha256::digest(pem.as_bytes()))
}

fn colon_hex(digest: &[u8]) -> String {
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x931_rejects_garbage() {
        let key = PrivateKey::generate(1024).unwrap();
        let pk = key.public_key();
        assert!(pk.x931_recover(&[]).is_err());
        assert!(pk.x931_recover(&[0xff; 128]).is_err());
        assert!(pk.x931_recover(&[0x00; 128]).is_err());
        assert!(pk.x931_recover(&[0x01; 200]).is_err());
        // A message that fills the block exactly takes the short 6A framing.
        let full = vec![7u8; key.size() - 2];
        let sig = key.x931_sign(&full).unwrap();
        assert_eq!(pk.x931_recover(&sig).unwrap(), full);
        assert!(key.x931_sign(&vec![7u8; key.size() - 1]).is_err());
    }

    #[test]
    fn roundtrips_on_a_fresh_key() {
        let key = PrivateKey::generate(2048).unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END RSA PRIVATE KEY-----\n"));
        let pub_pem = key.public_key().pem().to_string();
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let again = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key(), key.public_key());

        for algo in [EncAlgo::OaepSha1, EncAlgo::OaepSha224] {
            let ct = key.public_key().oaep_encrypt(algo, b"secret").unwrap();
            assert_eq!(&key.oaep_decrypt(algo, &ct).unwrap()[..], b"secret");
        }
        for algo in [SigAlgo::Pkcs1v15Sha1, SigAlgo::Pkcs1v15Sha224] {
            let sig = key.sign(algo, b"msg");
            key.public_key().verify(algo, b"msg", &sig).unwrap();
            assert!(key.public_key().verify(algo, b"msh", &sig).is_err());
        }
        let tok = key.x931_sign(b"salt").unwrap();
        key.public_key().x931_verify(b"salt", &tok).unwrap();
    }

    #[test]
    fn clean_key_matches_salt() {
        assert_eq!(clean_key("  a\r\nb\n\n"), "a\nb");
        assert_eq!(
            clean_key("-----BEGIN X-----\nAB\n-----END X-----\n"),
            "-----BEGIN X-----\nAB\n-----END X-----"
        );
    }

    #[test]
    fn bad_pem_is_an_error() {
        assert!(PublicKey::from_pem("hello").is_err());
        assert!(PrivateKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----"
        )
        .is_err());
        assert!(PrivateKey::generate(100).is_err());
    }

    #[test]
    fn algo_names() {
        assert_eq!(
            "OAEP-SHA224".parse::<EncAlgo>().unwrap(),
            EncAlgo::OaepSha224
        );
        assert!("OAEP-SHA256".parse::<EncAlgo>().is_err());
        assert_eq!(
            "PKCS1v15-SHA1".parse::<SigAlgo>().unwrap().as_str(),
            "PKCS1v15-SHA1"
        );
    }
}
