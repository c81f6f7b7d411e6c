//! Warm states: a base booted once, until its salt-minion's Python has imported what it
//! needs and waits for an identity on the virtio-serial channel [`CHANNEL`], and that
//! running state saved. Warm clones are restored from it (the `restored` step,
//! create/restore.rs) instead of booted.
//!
//! A state belongs to one base and one shape, and lives in the pool of the base's first
//! disk, so a remote host keeps its own:
//! - `BASE.warm-SHAPE-STAMP-DEV.qcow2`: an overlay over each base disk, as it was when the
//!   state was saved (frozen: each warm clone's overlay is made over it, never written);
//! - `BASE.warm-SHAPE-STAMP.save`: libvirt's save image of the running guest.
//!
//! SHAPE hashes what the saved state fixes that a profile may set (cpus, memory); STAMP
//! hashes the base's definition (but its UUID, description and metadata) and each disk's
//! path, size and modification time, so a base
//! that changed gets a new state and the old one is removed (its frozen disks only once no
//! clone uses them).

use super::{CloudError, Progress};
use crate::config::cloud::Profile;
use crate::libvirt::domain_xml::{self, CloneDisk, CloneSpec, DiskSource};
use crate::libvirt::saveimage::SaveImage;
use crate::libvirt::{Base, Hypervisor, LibvirtError, LocatedDisk};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The virtio-serial port a warm-ready guest waits on.
pub const CHANNEL: &str = "org.virtseed.warm.0";
/// How long a warming boot may take to say it is ready (~60 s under TCG here).
const READY_WAIT: Duration = Duration::from_secs(300);
/// Testing: another wait than [`READY_WAIT`], in seconds.
pub const READY_WAIT_ENV: &str = "VIRTSEED_TEST_WARM_WAIT";

fn ready_wait() -> Duration {
    std::env::var(READY_WAIT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(READY_WAIT)
}

/// A saved warm state, ready to restore clones from.
pub struct WarmState {
    /// `SHAPE-STAMP`.
    pub id: String,
    pub pool: String,
    /// The save image's volume name in `pool`.
    pub image_volume: String,
    /// Its header and XML.
    pub image: SaveImage,
    /// The state as a base: the saved XML, its disks the frozen overlays.
    pub base: Base,
}

/// The guest's JSON answer `line` says `{"virtseed_warm": 1, key: true}`; else its error.
pub fn check_answer(line: &str, key: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|_| format!("not virtseed's warm protocol: {:?}", clip(line)))?;
    if v["virtseed_warm"] != 1 {
        return Err(format!(
            "not virtseed's warm protocol (version {})",
            v["virtseed_warm"]
        ));
    }
    if let Some(e) = v["error"].as_str() {
        return Err(format!("the guest says: {}", clip(e)));
    }
    if v[key] == true {
        Ok(())
    } else {
        Err(format!("expected {key:?}, got {:?}", clip(line)))
    }
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

fn hex(d: impl AsRef<[u8]>, n: usize) -> String {
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..n]
        .to_string()
}

/// The profile keys a warm state cannot honour (it was saved with the base's devices), or
/// an error naming the first.
pub fn check_profile(prof: &Profile, base: &Base) -> Result<(), CloudError> {
    let refuse = |key: &str, why: &str| {
        Err(CloudError::Config(format!(
            "profile {:?} ({}): `{key}` cannot be used with `warm: true`: {why}",
            prof.name,
            prof.file.display()
        )))
    };
    if prof.disk_gib.is_some() {
        return refuse("disk", "a warm clone's disks have the size they were saved with; grow them after the create, or drop `warm`");
    }
    if prof.userdata.is_some() {
        return refuse(
            "userdata_file",
            "it needs cloud-init's first boot, and a warm clone is not booted",
        );
    }
    if prof.ssh_forward {
        return refuse("ssh_forward", "the saved state fixes the network devices");
    }
    if prof.seed == crate::config::cloud::SeedKind::Ssh {
        return refuse(
            "seed: ssh",
            "a warm clone gets its identity from virtseed over its channel, not by SSH",
        );
    }
    if prof.clone_strategy == crate::config::cloud::CloneStrategy::Full {
        return refuse(
            "clone_strategy: full",
            "warm clones are overlays over the state's frozen disks",
        );
    }
    if base.xml.nvram.is_some() {
        return refuse(
            "warm",
            &format!(
                "base {} boots UEFI with an NVRAM, which warm states do not support yet",
                base.name
            ),
        );
    }
    Ok(())
}

/// Names of a profile's warm state on its host.
struct Names {
    base: String,
    shape: String,
    id: String,
    pool: String,
}

impl Names {
    fn of(hv: &Hypervisor, prof: &Profile, base: &Base) -> Result<Self, LibvirtError> {
        let shape = Sha256::digest(format!("cpus={:?} memory={:?}", prof.cpus, prof.memory_mib));
        // The base's definition without what a redefinition changes by itself (its UUID)
        // or that no guest sees (description, metadata).
        let mut def = base.xml.root.clone();
        def.remove_children(|e| matches!(e.name.as_str(), "uuid" | "description" | "metadata"));
        let mut stamp = Sha256::new();
        stamp.update(def.to_xml());
        for d in &base.disks {
            stamp.update(hv.volume_stamp(&d.path)?);
        }
        let (shape, stamp) = (hex(shape, 6), hex(stamp.finalize(), 6));
        Ok(Self {
            base: base.name.clone(),
            id: format!("{shape}-{stamp}"),
            shape,
            pool: base.disks[0].pool.clone(),
        })
    }

    fn prefix(&self) -> String {
        format!("{}.warm-", self.base)
    }
    fn image(&self) -> String {
        format!("{}{}.save", self.prefix(), self.id)
    }
    fn disk(&self, target: &str) -> String {
        format!("{}{}-{target}.qcow2", self.prefix(), self.id)
    }
    /// The transient domain booted to make the state.
    fn domain(&self) -> String {
        format!("{}-warm-{}", self.base, self.id)
    }
}

/// One warming per state at a time, in this process and across processes.
struct WarmLock {
    _inner: std::sync::MutexGuard<'static, ()>,
    _file: Option<std::fs::File>,
}

fn lock(id: &str) -> WarmLock {
    static LOCKS: LazyLock<Mutex<HashMap<String, &'static Mutex<()>>>> =
        LazyLock::new(Default::default);
    let m: &'static Mutex<()> = LOCKS
        .lock()
        .expect("warm locks")
        .entry(id.to_string())
        .or_insert_with(|| Box::leak(Box::new(Mutex::new(()))));
    let inner = m.lock().unwrap_or_else(|p| p.into_inner());
    let file = super::lock_file(&format!("warm-{id}"))
        .1
        .ok()
        .filter(|f| f.lock().is_ok());
    WarmLock {
        _inner: inner,
        _file: file,
    }
}

/// The profile's warm state on `hv`, made first (progress `warming` for `who`) when it is
/// missing or its base changed.
pub fn state(
    hv: &Hypervisor,
    prof: &Profile,
    progress: &dyn Progress,
    who: &[String],
) -> Result<Arc<WarmState>, CloudError> {
    let base = hv.base(&prof.base_domain)?;
    check_profile(prof, &base)?;
    let names = Names::of(hv, prof, &base)?;
    let _lock = lock(&names.id);
    if hv.volume_path(&names.pool, &names.image())?.is_none() {
        let t = Instant::now();
        for n in who {
            progress.step(n, "warming", json!({"base": base.name, "state": names.id}));
        }
        tracing::info!(base = %base.name, state = %names.id, "warming: booting the base to save its warm state");
        make(hv, prof, &base, &names)?;
        tracing::info!(base = %base.name, state = %names.id, secs = t.elapsed().as_secs_f32(), "warm state saved");
        remove_stale(hv, &names, true);
    }
    load(hv, &base, &names).map(Arc::new)
}

/// Reads a saved state.
fn load(hv: &Hypervisor, base: &Base, names: &Names) -> Result<WarmState, CloudError> {
    let image = hv.read_save_image(&names.pool, &names.image())?;
    let xml = domain_xml::read_base(&names.domain(), &image.xml).map_err(LibvirtError::from)?;
    let mut disks = Vec::new();
    for d in &base.disks {
        let vol = names.disk(&d.target);
        let path = hv.volume_path(&d.pool, &vol)?.ok_or_else(|| {
            CloudError::Internal(format!(
                "warm state {}: its frozen disk {vol} is gone; drop the state (virtseed warm --drop) and warm again",
                names.id
            ))
        })?;
        disks.push(LocatedDisk {
            volume: vol,
            path,
            format: "qcow2".into(),
            by_volume: false,
            ..d.clone()
        });
    }
    Ok(WarmState {
        id: names.id.clone(),
        pool: names.pool.clone(),
        image_volume: names.image(),
        image,
        base: Base {
            name: names.domain(),
            xml,
            disks,
        },
    })
}

/// Boots the base as a transient domain on frozen overlays, waits for its guest to say it is
/// ready, and saves it. Whatever it made is removed if it fails.
fn make(hv: &Hypervisor, prof: &Profile, base: &Base, names: &Names) -> Result<(), CloudError> {
    // What a killed warming left (it never got to the save image) goes first.
    let _ = hv.stop_transient(&names.domain());
    let made = boot(hv, prof, base, names).and_then(|()| {
        let path = format!("{}/{}", hv.pool_path(&names.pool)?, names.image());
        hv.save_running(&names.domain(), &path)?;
        hv.refresh_pool(&names.pool)?;
        Ok(())
    });
    if made.is_err() {
        let _ = hv.stop_transient(&names.domain());
        for d in &base.disks {
            let _ = hv.delete_volume_named(&d.pool, &names.disk(&d.target));
        }
        let _ = hv.delete_volume_named(&names.pool, &names.image());
    }
    made
}

fn boot(hv: &Hypervisor, prof: &Profile, base: &Base, names: &Names) -> Result<(), CloudError> {
    let mut disks = Vec::new();
    for d in &base.disks {
        let vol = names.disk(&d.target);
        let _ = hv.delete_volume_named(&d.pool, &vol);
        let path = hv.create_overlay(&d.pool, &vol, d, d.capacity)?;
        disks.push(CloneDisk {
            target: d.target.clone(),
            source: DiskSource::File(path),
            format: "qcow2".into(),
        });
    }
    let spec = CloneSpec {
        name: names.domain(),
        uuid: uuid::Uuid::new_v4().to_string(),
        description: format!("virtseed warm state {} of {}", names.id, base.name),
        disks,
        nvram: None,
        cpus: prof.cpus,
        cpu_shares: None,
        memory_mib: prof.memory_mib,
        macs: vec![],
        ownership: Default::default(),
        extra_devices: vec![crate::libvirt::dom::Element::new("channel")
            .with_attr("type", "unix")
            .with_child(
                crate::libvirt::dom::Element::new("target")
                    .with_attr("type", "virtio")
                    .with_attr("name", CHANNEL),
            )],
        oem_strings: vec![],
        ssh_forward_port: None,
    };
    let (xml, _) = domain_xml::clone_xml(&base.xml, &spec).map_err(LibvirtError::from)?;
    let xml = domain_xml::warming_xml(&xml).map_err(LibvirtError::from)?;
    hv.create_transient(&xml)?;
    let fail = |e: String| {
        CloudError::Config(format!(
            "warming base {}: {e}. Its image has no virtseed warm guest side (or it failed): see docs/golden-images.md, \"Warm-ready images\"",
            base.name
        ))
    };
    let mut ch = hv.open_channel(&names.domain(), CHANNEL)?;
    let line = ch.recv_line(ready_wait()).map_err(fail)?;
    check_answer(&line, "ready").map_err(fail)
}

/// Removes other states of the same base and shape (the base changed since), or with
/// `stale_only` false every state of this shape (`virtseed warm --drop`). Frozen disks that
/// clones still use are kept. Returns what was removed and what was kept.
fn remove_stale(hv: &Hypervisor, names: &Names, stale_only: bool) -> (Vec<String>, Vec<String>) {
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let prefix = format!("{}{}-", names.prefix(), names.shape);
    let in_use: Vec<String> = hv
        .list()
        .map(|l| l.into_iter().map(|i| i.ownership.warm).collect())
        .unwrap_or_default();
    let Ok(vols) = hv.volumes_named(&names.pool, &prefix) else {
        return (removed, kept);
    };
    for v in vols {
        let id: String = v[names.prefix().len()..].chars().take(13).collect();
        if stale_only && id == names.id {
            continue;
        }
        if v.ends_with(".qcow2") && in_use.contains(&id) {
            kept.push(v);
            continue;
        }
        match hv.delete_volume_named(&names.pool, &v) {
            Ok(()) => removed.push(v),
            Err(e) => tracing::warn!("removing old warm state volume {v}: {e}"),
        }
    }
    (removed, kept)
}

/// `virtseed warm --drop`: removes the profile's warm state (every one of its shape on the
/// base); frozen disks that clones still use are kept, and named.
pub fn drop_state(
    hv: &Hypervisor,
    prof: &Profile,
) -> Result<(Vec<String>, Vec<String>), CloudError> {
    let base = hv.base(&prof.base_domain)?;
    let names = Names::of(hv, prof, &base)?;
    let _lock = lock(&names.id);
    Ok(remove_stale(hv, &names, false))
}

impl super::Cloud {
    /// `virtseed warm`: makes (`drop` false) or removes the warm state of `profile` on each
    /// of its hosts; says per host what it did.
    pub fn warm(
        &self,
        profile: &str,
        drop: bool,
        progress: &dyn Progress,
    ) -> Result<serde_json::Value, CloudError> {
        let prof = self.config.profile(profile).map_err(CloudError::Config)?;
        self.check_served(prof)?;
        let mut out = serde_json::Map::new();
        for h in &prof.hosts {
            let hv = self.hypervisor(&h.uri)?;
            let mut on_host = prof.clone();
            on_host.url = h.uri.clone();
            let v = if drop {
                let (removed, kept) = drop_state(&hv, &on_host)?;
                json!({"removed": removed, "kept_in_use": kept})
            } else {
                let t = Instant::now();
                let st = state(&hv, &on_host, progress, &[profile.to_string()])?;
                json!({
                    "state": st.id,
                    "pool": st.pool,
                    "image": st.image_volume,
                    "disks": st.base.disks.iter().map(|d| &d.path).collect::<Vec<_>>(),
                    "secs": (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                })
            };
            out.insert(self.host_name(&h.uri), v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        assert!(check_answer("{\"virtseed_warm\": 1, \"ready\": true}\n", "ready").is_ok());
        assert!(check_answer("{\"virtseed_warm\": 1, \"ready\": true}", "applied").is_err());
        let e = check_answer("{\"virtseed_warm\": 1, \"error\": \"no space\"}", "applied");
        assert!(e.unwrap_err().contains("no space"));
        assert!(check_answer("{\"virtseed_warm\": 2, \"ready\": true}", "ready").is_err());
        assert!(check_answer("login: ", "ready")
            .unwrap_err()
            .contains("not virtseed's warm protocol"));
    }
}
