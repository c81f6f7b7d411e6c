//! The create journal: what each create in flight is about to make, written before it is
//! made, so that a virtseed killed at any step (kill -9, OOM, a host crash of the process)
//! can be reconciled at its next start.
//!
//! One small JSON file per (request, name) in `<state dir>/journal/`. Every make step of a
//! create appends its [`Intent`] first (volume pool and name, NVRAM file, domain name and
//! UUID, accepted key and fingerprint), so the file always names a superset of what exists.
//! The file is removed when the create is over: made and ready, or failed and fully undone.
//!
//! A file whose owner process is gone (pid and start time, from /proc) is an interrupted
//! create. [`super::Cloud::reconcile`] then keeps a name that had already answered its first
//! ping (its result was recorded) and undoes everything else, tolerating what never came to
//! exist; the sidecar returns the outcome to the job that was waiting.
//!
//! Writes are atomic (a temporary file renamed over the old one) but not fsynced: the
//! threat is the process dying, after which the kernel still writes what it was given.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Something a create is about to make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    /// A volume `name` in pool `pool` (disk overlay or copy, NVRAM copy, seed).
    Volume { pool: String, name: String },
    /// A file on this host (a local NVRAM copy).
    File { path: String },
    /// The domain, recognised by its UUID (a later domain of the same name is not ours).
    Domain { name: String, uuid: String },
    /// The accepted key `minions/<id>` with this fingerprint (removed only if still ours).
    Key { id: String, finger: String },
}

/// The Salt job a create answers, so a restarted sidecar can still return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRef {
    pub jid: String,
    pub fun: String,
    /// The job's arguments, as JSON.
    pub fun_args: Value,
    pub user: Option<String>,
}

/// The process that owns an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (/proc/PID/stat field 22): a
    /// recycled pid is not mistaken for the owner.
    pub start: u64,
}

impl Owner {
    pub fn me() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: proc_start(pid).unwrap_or(0),
        }
    }

    pub fn is_alive(&self) -> bool {
        proc_start(self.pid).is_some_and(|s| s == self.start)
    }
}

fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One create in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub request: String,
    pub job: Option<JobRef>,
    pub profile: String,
    pub uri: String,
    pub owner: Owner,
    /// The last step reached (`begun`, `disks`, ..., `started`, `waiting`).
    pub step: String,
    /// Everything the create is making or made, in order.
    pub intents: Vec<Intent>,
    /// The create's result once the minion answered (or no wait was asked): kept on reconcile.
    pub done: Option<Value>,
    /// The outcome was already returned to the job by a reconcile that could not undo all.
    #[serde(default)]
    pub reported: bool,
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("journal"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, request: &str, name: &str) -> PathBuf {
        let req: String = request
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.dir.join(format!("{req}--{name}.json"))
    }

    /// Writes `e` (creating or replacing its file).
    pub fn write(&self, e: &Entry) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&e.request, &e.name);
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let data = serde_json::to_vec_pretty(e).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Changes the entry of (`request`, `name`) if there is one.
    pub fn update(
        &self,
        request: &str,
        name: &str,
        f: impl FnOnce(&mut Entry),
    ) -> std::io::Result<()> {
        let path = self.path(request, name);
        let mut e: Entry = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f(&mut e);
        self.write(&e)
    }

    pub fn remove(&self, request: &str, name: &str) {
        let _ = std::fs::remove_file(self.path(request, name));
    }

    /// Removes the entry only while `owner` still owns it (one handed to the reconcile, after
    /// a rollback that left something behind, stays).
    pub fn remove_owned(&self, request: &str, name: &str, owner: &Owner) {
        let path = self.path(request, name);
        let owned = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
            .is_some_and(|e| &e.owner == owner);
        if owned {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Every entry, with the files that could not be read as errors.
    pub fn entries(&self) -> (Vec<Entry>, Vec<String>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return (out, errors);
        };
        for f in rd.flatten() {
            let p = f.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
            {
                Ok(e) => out.push(e),
                Err(e) => errors.push(format!("{}: {e}", p.display())),
            }
        }
        out.sort_by(|a, b| (&a.request, &a.name).cmp(&(&b.request, &b.name)));
        (out, errors)
    }

    /// Entries whose owner process is gone.
    pub fn interrupted(&self) -> (Vec<Entry>, Vec<String>) {
        let (all, errors) = self.entries();
        (
            all.into_iter().filter(|e| !e.owner.is_alive()).collect(),
            errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, owner: Owner) -> Entry {
        Entry {
            name: name.into(),
            request: "20261125120000123456".into(),
            job: None,
            profile: "p".into(),
            uri: "test:///default".into(),
            owner,
            step: "begun".into(),
            intents: vec![],
            done: None,
            reported: false,
        }
    }

    #[test]
    fn intents_round_trip_and_only_dead_owners_are_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        j.write(&entry("alive", Owner::me())).unwrap();
        // A pid that exists but started at another time: not the owner.
        let recycled = Owner {
            pid: std::process::id(),
            start: Owner::me().start + 1,
        };
        j.write(&entry("dead", recycled)).unwrap();
        j.update("20261125120000123456", "dead", |e| {
            e.intents.push(Intent::Volume {
                pool: "p".into(),
                name: "dead-vda.qcow2".into(),
            });
            e.intents.push(Intent::Domain {
                name: "dead".into(),
                uuid: "u".into(),
            });
        })
        .unwrap();
        let (gone, errors) = j.interrupted();
        assert!(errors.is_empty());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].name, "dead");
        assert_eq!(gone[0].intents.len(), 2);
        assert_eq!(j.entries().0.len(), 2);
        j.remove("20261125120000123456", "dead");
        assert_eq!(j.entries().0.len(), 1);
        // Updating an entry that is gone changes nothing.
        j.update("20261125120000123456", "dead", |e| e.step = "x".into())
            .unwrap();
        assert_eq!(j.entries().0.len(), 1);
    }

    #[test]
    fn a_damaged_file_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        j.write(&entry("ok", Owner::me())).unwrap();
        std::fs::write(j.dir().join("x--y.json"), b"{not json").unwrap();
        let (all, errors) = j.entries();
        assert_eq!(all.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("x--y.json"));
    }

    #[test]
    fn own_start_time_is_read() {
        assert!(Owner::me().start > 0);
        assert!(Owner::me().is_alive());
    }
}
