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

/// Writes `data` (mode `mode`, synced) to a new temp file beside `path`, then `finish(temp)`;
/// the temp file is gone afterwards whatever happened.
fn through_temp<T>(
    path: &Path,
    data: &[u8],
    mode: u32,
    finish: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<T, PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot file (Salt's key listings skip them), unique to this writer.
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        salt_proto::auth::new_nonce()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        finish(&tmp)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(io(path))
}

/// Writes `data` to `path` through a temp file in the same directory and a rename, so a
/// reader (the master) sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    through_temp(path, data, mode, |tmp| std::fs::rename(tmp, path))
}

/// Writes `data` to `path` only if nothing is there: through a temp file and a hard link,
/// which fails when `path` exists, so of two writers at once (two sidecars on one key store)
/// exactly one wins and neither replaces the other's file. Returns whether it was written.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<bool, PkiError> {
    through_temp(path, data, mode, |tmp| {
        match std::fs::hard_link(tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })
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

/// Where `id` stands in a master's key store (`pki_dir`, a cluster's `cluster_pki_dir`), as
/// `salt-key -L` would list it, checked against the fingerprint virtseed recorded for it
/// (`None`: no record, as for a clone made before it was kept): `accepted`, `accepted:
/// another key`, `pending`, `rejected`, `denied`, or `none`.
pub fn key_state(master_pki: &Path, id: &str, finger: Option<&str>) -> &'static str {
    let read = |dir: &str| std::fs::read_to_string(master_pki.join(dir).join(id)).ok();
    if let Some(text) = read("minions") {
        return match finger {
            Some(f) if !salt_proto::keys::pem_finger(&text).eq_ignore_ascii_case(f) => {
                "accepted: another key"
            }
            _ => "accepted",
        };
    }
    for (dir, state) in [
        ("minions_pre", "pending"),
        ("minions_rejected", "rejected"),
        ("minions_denied", "denied"),
    ] {
        if read(dir).is_some() {
            return state;
        }
    }
    "none"
}

/// Pre-accepts `pub_pem` for `id`: writes `minions/<id>` atomically (0644, as the master's
/// own accept leaves it) unless a key is already there, and drops an identical pending copy.
/// Never replaces a different accepted key.
pub fn pre_accept(master_pki: &Path, id: &str, pub_pem: &str) -> Result<Accepted, PkiError> {
    let state = accepted_state(master_pki, id, pub_pem)?;
    if state == Accepted::Absent {
        let dir = master_pki.join("minions");
        if !write_new(&dir.join(id), pub_pem.as_bytes(), 0o644)? {
            // Another writer (a second sidecar on this key store) took the id meanwhile.
            return accepted_state(master_pki, id, pub_pem);
        }
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

/// Writes `pub_pem` as the accepted key for `id` even over another key (the profile said
/// `force: true`). Returns the key that was there, if any.
pub fn force_accept(
    master_pki: &Path,
    id: &str,
    pub_pem: &str,
) -> Result<Option<String>, PkiError> {
    let path = master_pki.join("minions").join(id);
    let old = std::fs::read_to_string(&path).ok();
    write_atomic(&path, pub_pem.as_bytes(), 0o644)?;
    Ok(old)
}

/// Removes `minions/<id>` if it holds the key whose fingerprint is `finger` (ours), and the
/// master's cached data for the id, as `salt-key -d` does. A key that is not ours stays.
/// Returns whether a key was removed.
pub fn revoke(
    master_pki: &Path,
    cachedir: &Path,
    id: &str,
    finger: &str,
) -> Result<bool, PkiError> {
    let path = master_pki.join("minions").join(id);
    let removed = match std::fs::read_to_string(&path) {
        Ok(text) if salt_proto::keys::pem_finger(&text) == finger => {
            std::fs::remove_file(&path).map_err(io(&path))?;
            true
        }
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(PkiError::Io { path, source: e }),
    };
    if removed {
        purge_minion_cache(cachedir, id)?;
    }
    Ok(removed)
}

/// The key pending under `id`, whatever it is (a VM made for `accept: on_first_auth` is
/// destroyed: whoever signed in under its name, nothing of it stays). Returns whether there
/// was one.
pub fn drop_pending(master_pki: &Path, id: &str) -> Result<bool, PkiError> {
    let path = master_pki.join("minions_pre").join(id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PkiError::Io { path, source: e }),
    }
}

/// Every key of `id` the master holds, accepted, pending or rejected, whatever it is (for
/// `accept: manual`, where the VM made its own key and virtseed never knew it), and the
/// master's cache of it. Returns whether a key was removed.
pub fn revoke_any(master_pki: &Path, cachedir: &Path, id: &str) -> Result<bool, PkiError> {
    let mut removed = false;
    for dir in ["minions", "minions_pre", "minions_rejected"] {
        let path = master_pki.join(dir).join(id);
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PkiError::Io { path, source: e }),
        }
    }
    if removed {
        purge_minion_cache(cachedir, id)?;
    }
    Ok(removed)
}

/// The master's cached data for `id`: `minions/<id>/` (3006, 3007) and the `grains` and
/// `pillar` banks' `<id>.p` and `<id>:<pillarenv>.p` (3008's localfs cache).
pub fn purge_minion_cache(cachedir: &Path, id: &str) -> Result<(), PkiError> {
    let gone = |r: std::io::Result<()>, path: &Path| match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    };
    let dir = cachedir.join("minions").join(id);
    gone(std::fs::remove_dir_all(&dir), &dir)?;
    for bank in ["grains", "pillar"] {
        let bdir = cachedir.join(bank);
        let Ok(rd) = std::fs::read_dir(&bdir) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = n.strip_suffix(".p") else {
                continue;
            };
            if stem == id || stem.strip_prefix(id).is_some_and(|r| r.starts_with(':')) {
                gone(std::fs::remove_file(e.path()), &e.path())?;
            }
        }
    }
    Ok(())
}

/// RSA keys minted ahead of need, so a clone does not wait ~70 ms (2048 bits) for its key.
/// Filled by a background thread; `take` falls back to minting inline when empty.
pub struct KeyPool {
    bits: usize,
    keys: std::sync::Mutex<Vec<PrivateKey>>,
    want: usize,
    wake: std::sync::Condvar,
}

impl KeyPool {
    /// A pool of up to `want` keys of `bits`, filled by one background thread.
    pub fn start(bits: usize, want: usize) -> std::sync::Arc<Self> {
        let pool = std::sync::Arc::new(Self {
            bits,
            keys: Default::default(),
            want,
            wake: Default::default(),
        });
        let weak = std::sync::Arc::downgrade(&pool);
        std::thread::Builder::new()
            .name("keypool".into())
            .spawn(move || loop {
                let Some(pool) = weak.upgrade() else { return };
                {
                    let keys = pool.keys.lock().expect("keypool");
                    if keys.len() >= pool.want {
                        let _ = pool
                            .wake
                            .wait_timeout(keys, std::time::Duration::from_secs(1))
                            .expect("keypool");
                        continue;
                    }
                }
                if let Ok(k) = PrivateKey::generate(pool.bits) {
                    pool.keys.lock().expect("keypool").push(k);
                }
            })
            .expect("keypool thread");
        pool
    }

    /// A fresh key of `bits` (from the pool when it holds that size). Each key is handed
    /// out once.
    pub fn take(&self, bits: usize) -> Result<PrivateKey, salt_proto::Error> {
        if bits == self.bits {
            let k = self.keys.lock().expect("keypool").pop();
            self.wake.notify_one();
            if let Some(k) = k {
                return Ok(k);
            }
        }
        PrivateKey::generate(bits)
    }

    pub fn ready(&self) -> usize {
        self.keys.lock().expect("keypool").len()
    }
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

    /// Two sidecars on one key store (a cluster's `cluster_pki_dir`) accepting one name at
    /// once, each with its own clone's key: exactly one wins, the file holds its key, the
    /// others are told another key holds the name; no temp file is left.
    #[test]
    fn pre_accept_of_one_id_at_once_has_one_winner() {
        let d = tempdir();
        let keys: Vec<String> = (0..8)
            .map(|_| {
                PrivateKey::generate(1024)
                    .unwrap()
                    .public_key()
                    .pem()
                    .to_string()
            })
            .collect();
        for _round in 0..5 {
            let _ = std::fs::remove_file(d.join("minions/x"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(keys.len()));
            let results: Vec<(String, Accepted)> = std::thread::scope(|s| {
                let handles: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        let (d, b) = (&d, barrier.clone());
                        s.spawn(move || {
                            b.wait();
                            (k.clone(), pre_accept(d, "x", k).unwrap())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<&String> = results
                .iter()
                .filter(|(_, a)| *a == Accepted::Ours)
                .map(|(k, _)| k)
                .collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            assert_eq!(
                &std::fs::read_to_string(d.join("minions/x")).unwrap(),
                winners[0]
            );
            assert!(results
                .iter()
                .all(|(k, a)| k == winners[0] || *a == Accepted::Other));
        }
        let names: Vec<_> = std::fs::read_dir(d.join("minions"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn revoke_removes_only_our_key_and_its_cache() {
        let d = tempdir();
        let ours = PrivateKey::generate(1024).unwrap();
        let theirs = PrivateKey::generate(1024).unwrap();
        let cache = d.join("cache");
        std::fs::create_dir_all(cache.join("minions/a/data")).unwrap();
        std::fs::create_dir_all(cache.join("grains")).unwrap();
        std::fs::create_dir_all(cache.join("pillar")).unwrap();
        for f in [
            "grains/a.p",
            "pillar/a.p",
            "pillar/a:base.p",
            "grains/ab.p",
            "pillar/ab:x.p",
        ] {
            std::fs::write(cache.join(f), b"x").unwrap();
        }
        std::fs::write(d.join("minions/a"), theirs.public_key().pem()).unwrap();
        assert!(!revoke(&d, &cache, "a", &ours.public_key().fingerprint()).unwrap());
        assert!(d.join("minions/a").exists() && cache.join("minions/a").exists());
        assert!(revoke(&d, &cache, "a", &theirs.public_key().fingerprint()).unwrap());
        assert!(!d.join("minions/a").exists() && !cache.join("minions/a").exists());
        for f in ["grains/a.p", "pillar/a.p", "pillar/a:base.p"] {
            assert!(!cache.join(f).exists(), "{f}");
        }
        for f in ["grains/ab.p", "pillar/ab:x.p"] {
            assert!(cache.join(f).exists(), "{f} is another minion's");
        }
        assert!(!revoke(&d, &cache, "gone", "x").unwrap());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn key_state_is_where_salt_key_lists_the_id() {
        let d = tempdir();
        for dir in ["minions_rejected", "minions_denied"] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
        }
        let ours = PrivateKey::generate(1024)
            .unwrap()
            .public_key()
            .pem()
            .to_string();
        let finger = salt_proto::keys::pem_finger(&ours);
        assert_eq!(key_state(&d, "a", Some(&finger)), "none");
        std::fs::write(d.join("minions_denied/a"), &ours).unwrap();
        assert_eq!(key_state(&d, "a", Some(&finger)), "denied");
        std::fs::write(d.join("minions_rejected/a"), &ours).unwrap();
        assert_eq!(key_state(&d, "a", Some(&finger)), "rejected");
        std::fs::write(d.join("minions_pre/a"), &ours).unwrap();
        assert_eq!(key_state(&d, "a", Some(&finger)), "pending");
        // Salt's files may end in \r\n: the fingerprint is the key's.
        std::fs::write(d.join("minions/a"), ours.replace('\n', "\r\n")).unwrap();
        assert_eq!(key_state(&d, "a", Some(&finger.to_uppercase())), "accepted");
        assert_eq!(key_state(&d, "a", None), "accepted");
        let theirs = PrivateKey::generate(1024)
            .unwrap()
            .public_key()
            .pem()
            .to_string();
        std::fs::write(d.join("minions/a"), theirs).unwrap();
        assert_eq!(key_state(&d, "a", Some(&finger)), "accepted: another key");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn revoke_any_removes_every_key_of_the_id_and_only_its() {
        let d = tempdir();
        let cache = d.join("cache");
        std::fs::create_dir_all(cache.join("minions/a")).unwrap();
        for dir in ["minions_pre", "minions_rejected", "minions_denied"] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
        }
        for f in [
            "minions/a",
            "minions_pre/a",
            "minions_rejected/a",
            "minions_denied/a",
            "minions/ab",
            "minions_pre/b",
        ] {
            std::fs::write(d.join(f), b"key").unwrap();
        }
        assert!(revoke_any(&d, &cache, "a").unwrap());
        for f in ["minions/a", "minions_pre/a", "minions_rejected/a"] {
            assert!(!d.join(f).exists(), "{f}");
        }
        assert!(!cache.join("minions/a").exists());
        // Another id's keys, and the record of a key Salt denied for this id, stay.
        for f in ["minions/ab", "minions_pre/b", "minions_denied/a"] {
            assert!(d.join(f).exists(), "{f}");
        }
        assert!(!revoke_any(&d, &cache, "a").unwrap());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn keypool_hands_out_distinct_keys() {
        let pool = KeyPool::start(1024, 2);
        let t = std::time::Instant::now();
        while pool.ready() < 2 && t.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let a = pool.take(1024).unwrap();
        let b = pool.take(1024).unwrap();
        let c = pool.take(1024).unwrap();
        assert_ne!(a.public_key(), b.public_key());
        assert_ne!(b.public_key(), c.public_key());
        assert_eq!(pool.take(2048).unwrap().size(), 256);
    }
}
