//! The live connections to a Salt master: the minion channel (auth, requests, publications),
//! the master's local event bus, and the clear channel with the root key.

pub mod channel;
pub mod clear;
pub mod events;
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
