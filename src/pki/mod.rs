//! Minion keys on disk: the sidecar's own keypair, and keys placed in the master's pki_dir
//! the way the master itself stores them.

use salt_proto::keys::{clean_key, PrivateKey};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    BadKey { path: PathBuf, msg: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` through a temp file in the same directory and a rename, so a
/// reader (the master) sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// The sidecar's own keypair in `dir` (`minion.pem` 0400, `minion.pub` 0644), made on first
/// start like a minion makes its own.
pub fn load_or_create_keypair(dir: &Path, bits: usize) -> Result<PrivateKey, PkiError> {
    let pem_path = dir.join("minion.pem");
    if pem_path.exists() {
        let text = std::fs::read_to_string(&pem_path).map_err(io(&pem_path))?;
        return PrivateKey::from_pem(&text).map_err(|e| PkiError::BadKey {
            path: pem_path,
            msg: e.to_string(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let key = PrivateKey::generate(bits).map_err(|e| PkiError::BadKey {
        path: pem_path.clone(),
        msg: e.to_string(),
    })?;
    write_atomic(&pem_path, key.to_pem().as_bytes(), 0o400)?;
    write_atomic(
        &dir.join("minion.pub"),
        key.public_key().pem().as_bytes(),
        0o644,
    )?;
    Ok(key)
}

/// What is in the master's `minions/<id>` relative to the key we hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Our key, exactly (as Salt compares: `clean_key` text).
    Ours,
    /// Another key holds the id.
    Other,
    /// No accepted key.
    Absent,
}

/// Looks at `pki_dir/minions/<id>`.
pub fn accepted_state(master_pki: &Path, id: &str, pub_pem: &str) -> Result<Accepted, PkiError> {
    let path = master_pki.join("minions").join(id);
    match std::fs::read_to_string(&path) {
        Ok(text) if clean_key(&text) == clean_key(pub_pem) => Ok(Accepted::Ours),
        Ok(_) => Ok(Accepted::Other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Accepted::Absent),
        Err(e) => Err(PkiError::Io { path, source: e }),
    }
}

/// Pre-accepts `pub_pem` for `id`: writes `minions/<id>` atomically (0644, as the master's
/// own accept leaves it) unless a key is already there, and drops an identical pending copy.
/// Never replaces a different accepted key.
pub fn pre_accept(master_pki: &Path, id: &str, pub_pem: &str) -> Result<Accepted, PkiError> {
    let state = accepted_state(master_pki, id, pub_pem)?;
    if state == Accepted::Absent {
        let dir = master_pki.join("minions");
        write_atomic(&dir.join(id), pub_pem.as_bytes(), 0o644)?;
        let pre = master_pki.join("minions_pre").join(id);
        if let Ok(text) = std::fs::read_to_string(&pre) {
            if clean_key(&text) == clean_key(pub_pem) {
                let _ = std::fs::remove_file(&pre);
            }
        }
        return Ok(Accepted::Ours);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tempdir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("virtseed-pki-{}", salt_proto::auth::new_nonce()));
        std::fs::create_dir_all(d.join("minions")).unwrap();
        std::fs::create_dir_all(d.join("minions_pre")).unwrap();
        d
    }

    #[test]
    fn keypair_is_made_once_with_tight_modes() {
        let d = tempdir();
        let k1 = load_or_create_keypair(&d.join("own"), 2048).unwrap();
        let k2 = load_or_create_keypair(&d.join("own"), 2048).unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        let mode = std::fs::metadata(d.join("own/minion.pem")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o400);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn pre_accept_never_replaces_another_key() {
        let d = tempdir();
        let ours = PrivateKey::generate(1024).unwrap();
        let theirs = PrivateKey::generate(1024).unwrap();
        std::fs::write(d.join("minions_pre/a"), ours.public_key().pem()).unwrap();
        assert_eq!(
            pre_accept(&d, "a", ours.public_key().pem()).unwrap(),
            Accepted::Ours
        );
        assert!(!d.join("minions_pre/a").exists());
        assert_eq!(
            pre_accept(&d, "a", ours.public_key().pem()).unwrap(),
            Accepted::Ours
        );

        std::fs::write(d.join("minions/b"), theirs.public_key().pem()).unwrap();
        assert_eq!(
            pre_accept(&d, "b", ours.public_key().pem()).unwrap(),
            Accepted::Other
        );
        assert_eq!(
            std::fs::read_to_string(d.join("minions/b")).unwrap(),
            theirs.public_key().pem()
        );
        std::fs::remove_dir_all(&d).ok();
    }
}
