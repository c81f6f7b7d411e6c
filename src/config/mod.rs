//! Configuration: the Salt master's own file (what the sidecar needs of it), virtseed's
//! settings, and (later) salt-cloud's providers and profiles.

pub mod cloud;
pub mod master;
pub mod settings;
pub mod yaml;

use std::path::PathBuf;

/// A configuration problem, naming the file (and line or key) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {msg}", .line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Yaml {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
    #[error("{path}: `{key}` {expected}")]
    Key {
        path: PathBuf,
        key: String,
        expected: String,
    },
}
