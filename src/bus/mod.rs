//! The live connections to a Salt master: the minion channel (auth, requests, publications),
//! the master's local event bus, and the clear channel with the root key.

pub mod channel;
pub mod clear;
pub mod events;
pub mod proof;
pub mod transport;

/// Failures on the bus. Each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{0}")]
    Timeout(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error(transparent)]
    Proto(#[from] salt_proto::Error),
    #[error("{0}")]
    Auth(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A JSON value as Salt's msgpack value (strings as str, maps with str keys).
pub fn from_json(v: &serde_json::Value) -> rmpv::Value {
    use rmpv::Value;
    use serde_json::Value as J;
    match v {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        J::String(s) => salt_proto::msgpack::text(s.as_str()),
        J::Array(a) => Value::Array(a.iter().map(from_json).collect()),
        J::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (salt_proto::msgpack::text(k.as_str()), from_json(v)))
                .collect(),
        ),
    }
}
