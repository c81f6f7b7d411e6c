//! Salt's wire protocol, sans-IO.
//!
//! Everything about the bytes a Salt master and its peers exchange, and nothing about sockets,
//! files or clocks: callers pass in what they read and get back what to send. The specification
//! followed is `spec/salt-protocol.md` (Salt 3006, 3007, 3008); references in comments name
//! the Salt function a rule comes from.

pub mod auth;
pub mod crypticle;
pub mod error;
pub mod event;
pub mod jid;
pub mod keys;
pub mod msgpack;
pub mod publish;
pub mod request;
pub mod version;

pub use error::{Error, Result};
pub use rmpv::Value;
