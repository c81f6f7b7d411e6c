use thiserror::Error;

/// Everything that can go wrong while reading or writing Salt's bytes.
///
/// Every decoder in this crate returns one of these for bad input; none panics.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("not valid msgpack: {0}")]
    Msgpack(String),
    #[error("{0} trailing bytes after a msgpack value")]
    TrailingBytes(usize),
    #[error("expected {expected} for `{field}`, found {found}")]
    Shape {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("AES key string is not base64 of 48, 56 or 64 bytes")]
    KeyString,
    #[error("ciphertext of {0} bytes is too short for IV, one block and HMAC")]
    ShortCiphertext(usize),
    #[error(
        "HMAC check failed: wrong key or corrupted message (did the master rotate its AES key?)"
    )]
    Hmac,
    #[error("bad block padding after decryption")]
    Padding,
    #[error("decrypted payload lacks the `pickle::` prefix")]
    NoPickle,
    #[error("nonce mismatch: the reply does not answer this request")]
    Nonce,
    #[error("replayed publication: serial {got} is not above the last one seen, {last}")]
    Replay { got: u64, last: u64 },
    #[error("RSA: {0}")]
    Rsa(String),
    #[error("{0} signature did not verify")]
    BadSignature(&'static str),
    #[error("not a usable RSA key: {0}")]
    Key(String),
    #[error("unsupported algorithm `{0}` (Salt knows OAEP-SHA1, OAEP-SHA224, PKCS1v15-SHA1, PKCS1v15-SHA224)")]
    Algorithm(String),
    #[error("master key changed: the pinned key differs from the one the master sent")]
    MasterKeyChanged,
    #[error("the master answered {0:?}")]
    Master(String),
    #[error("event frame: {0}")]
    Event(String),
    #[error("invalid jid `{0}`: Salt jids are 20 digits")]
    Jid(String),
    #[error("invalid Salt version `{0}`: expected e.g. 3007.17")]
    Version(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
