//! The clone engine over libvirt (the `virt` crate, blocking: call it from spawn_blocking).
//!
//! Everything here works through libvirt's API, never the host's files, so a
//! `qemu+ssh://` hypervisor behaves as a local one.

pub mod agent;
pub mod dom;
pub mod domain_xml;
pub mod host;
pub mod saveimage;
mod volumes;
pub mod warm;

use domain_xml::{BaseXml, DiskSource, Ownership, NS, NS_PREFIX};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::sys;

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("libvirt {uri}: {op}: {msg}")]
    Call {
        uri: String,
        op: String,
        msg: String,
        code: i32,
    },
    #[error("{0}")]
    Xml(#[from] domain_xml::DomainXmlError),
    #[error("base domain {name:?} does not exist on {uri}")]
    NoBase { name: String, uri: String },
    #[error("base domain {name:?} is {state}: a running base would corrupt its clones' overlays; shut it off first (virsh shutdown {name})")]
    BaseRunning { name: String, state: String },
    #[error("a domain named {name:?} already exists on {uri}{}", if *.ours { " (made by virtseed; destroy it first)" } else { " (not made by virtseed)" })]
    Exists {
        name: String,
        uri: String,
        ours: bool,
    },
    #[error("volume {name:?} already exists in pool {pool:?}; virtseed never overwrites a volume")]
    VolumeExists { name: String, pool: String },
    #[error("no domain named {name:?} on {uri}")]
    NoDomain { name: String, uri: String },
    #[error("domain {name:?} was not made by virtseed (no virtseed metadata); virtseed does not touch it")]
    NotOurs { name: String },
    #[error("disk: {want} GiB is smaller than the base disk ({have} bytes); a clone's disk can only grow")]
    Shrink { want: u64, have: u64 },
    #[error("base disk {target}: {msg}")]
    BaseDisk { target: String, msg: String },
}

impl LibvirtError {
    /// The connection to libvirtd broke (libvirtd stopped or restarted): the same call may
    /// succeed once it is back.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            LibvirtError::Call { code, msg, .. } => {
                let c = *code as u32;
                c == sys::VIR_ERR_SYSTEM_ERROR
                    || c == sys::VIR_ERR_RPC
                    || c == sys::VIR_ERR_NO_CONNECT
                    || msg.contains("client socket is closed")
                    || msg.contains("End of file while reading data")
            }
            _ => false,
        }
    }

    /// libvirt's error number, when the error came from libvirt.
    pub fn code(&self) -> Option<i32> {
        match self {
            LibvirtError::Call { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn raw_code(e: &virt::error::Error) -> i32 {
    match e.code() {
        Enum::Known(k) => {
            use virt::enumutil::RawEnum;
            k.to_raw() as i32
        }
        Enum::Unknown(v) => v as i32,
    }
}

/// Domain states as words.
pub fn state_name(s: &Enum<DomainState, sys::virDomainState>) -> &'static str {
    match s {
        Enum::Known(DomainState::Running) => "running",
        Enum::Known(DomainState::Blocked) => "blocked",
        Enum::Known(DomainState::Paused) => "paused",
        Enum::Known(DomainState::Shutdown) => "shutting down",
        Enum::Known(DomainState::Shutoff) => "shutoff",
        Enum::Known(DomainState::Crashed) => "crashed",
        Enum::Known(DomainState::PMSuspended) => "pmsuspended",
        _ => "unknown",
    }
}

/// One open connection to a hypervisor.
pub struct Hypervisor {
    conn: Connect,
    uri: String,
}

// Connect is Send + Sync (libvirt connections are thread-safe).

/// A base disk, located in its pool.
#[derive(Debug, Clone)]
pub struct LocatedDisk {
    pub target: String,
    pub pool: String,
    pub volume: String,
    pub path: String,
    /// The on-disk format (from the volume, else the domain's driver type, else raw).
    pub format: String,
    pub capacity: u64,
    /// The base disk was referenced as `<source pool= volume=>`.
    pub by_volume: bool,
}

/// A base domain, checked shut off, its disks located.
#[derive(Clone)]
pub struct Base {
    pub name: String,
    pub xml: BaseXml,
    pub disks: Vec<LocatedDisk>,
}

/// A domain virtseed made, as `list` shows it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub uuid: String,
    pub state: String,
    pub ownership: Ownership,
    pub addresses: Vec<String>,
    pub macs: Vec<String>,
    pub vcpus: u32,
    pub memory_kib: u64,
}

fn xml_escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

impl Hypervisor {
    pub fn open(uri: &str) -> Result<Self, LibvirtError> {
        // libvirt's default handler prints every error to stderr; ours are returned instead.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| LibvirtError::Call {
            uri: uri.into(),
            op: "connect".into(),
            msg: e.message().to_string(),
            code: raw_code(&e),
        })?;
        Ok(Self {
            conn,
            uri: uri.to_string(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The hypervisor is on this host (`driver:///...`, no host part).
    pub fn is_local(&self) -> bool {
        self.uri.contains(":///")
    }

    pub fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    fn err(&self, op: impl Into<String>) -> impl FnOnce(virt::error::Error) -> LibvirtError + '_ {
        let op = op.into();
        move |e| LibvirtError::Call {
            uri: self.uri.clone(),
            op,
            msg: e.message().to_string(),
            code: raw_code(&e),
        }
    }

    /// A volume-creation error; "exists already" (another request won the name) is made
    /// the same clear error as our own check.
    fn vol_err(&self, e: virt::error::Error, pool: &str, vol: &str, op: String) -> LibvirtError {
        if raw_code(&e) == sys::VIR_ERR_STORAGE_VOL_EXIST as i32 {
            return LibvirtError::VolumeExists {
                name: vol.into(),
                pool: pool.into(),
            };
        }
        self.err(op)(e)
    }

    fn lookup(&self, name: &str) -> Result<Option<Domain>, LibvirtError> {
        match self.conn.lookup_domain_by_name(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if raw_code(&e) == sys::VIR_ERR_NO_DOMAIN as i32 => Ok(None),
            Err(e) => Err(self.err(format!("look up domain {name}"))(e)),
        }
    }

    /// The ownership record of a domain, if virtseed made it.
    fn ownership(&self, dom: &Domain) -> Option<Ownership> {
        let xml = dom
            .metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(NS), 0)
            .ok()?;
        Ownership::parse(&xml).ok()
    }

    /// Refuses a name that is already a domain (ours or not).
    pub fn check_free(&self, name: &str) -> Result<(), LibvirtError> {
        match self.lookup(name)? {
            None => Ok(()),
            Some(d) => Err(LibvirtError::Exists {
                name: name.into(),
                uri: self.uri.clone(),
                ours: self.ownership(&d).is_some(),
            }),
        }
    }

    /// Reads the base domain: it must exist and be shut off; its disks are found through
    /// the pools that hold them.
    pub fn base(&self, name: &str) -> Result<Base, LibvirtError> {
        let dom = self.lookup(name)?.ok_or_else(|| LibvirtError::NoBase {
            name: name.into(),
            uri: self.uri.clone(),
        })?;
        let (state, _) = dom.state().map_err(self.err(format!("state of {name}")))?;
        if !matches!(state, Enum::Known(DomainState::Shutoff)) {
            return Err(LibvirtError::BaseRunning {
                name: name.into(),
                state: state_name(&state).into(),
            });
        }
        let xml = dom
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE)
            .map_err(self.err(format!("XML of {name}")))?;
        let bx = domain_xml::read_base(name, &xml)?;
        let mut disks = Vec::new();
        for d in &bx.disks {
            let (vol, by_volume) = match &d.source {
                DiskSource::File(path) => (
                    self.conn.lookup_storage_vol_by_path(path).map_err(|e| {
                        LibvirtError::BaseDisk {
                            target: d.target.clone(),
                            msg: format!(
                                "{path} is in no libvirt storage pool ({}); define a dir pool for its directory (virsh pool-define-as NAME dir --target DIR)",
                                e.message()
                            ),
                        }
                    })?,
                    false,
                ),
                DiskSource::Volume { pool, volume } => {
                    let p = self.conn.lookup_storage_pool_by_name(pool)
                        .map_err(self.err(format!("pool {pool}")))?;
                    (
                        p.lookup_storage_vol_by_name(volume)
                            .map_err(self.err(format!("volume {volume} in pool {pool}")))?,
                        true,
                    )
                }
            };
            let pool = vol
                .lookup_storage_pool()
                .and_then(|p| p.name())
                .map_err(self.err("pool of base disk"))?;
            let info = vol.info().map_err(self.err("base volume info"))?;
            let vxml = vol.xml_desc(0).map_err(self.err("base volume XML"))?;
            let vformat = dom::parse(&vxml)
                .ok()
                .and_then(|v| v.child("target")?.child("format")?.attr("type"));
            disks.push(LocatedDisk {
                target: d.target.clone(),
                pool,
                volume: vol.name().map_err(self.err("volume name"))?,
                path: vol.path().map_err(self.err("volume path"))?,
                format: vformat
                    .or_else(|| d.format.clone())
                    .unwrap_or_else(|| "raw".into()),
                capacity: info.capacity,
                by_volume,
            });
        }
        Ok(Base {
            name: name.into(),
            xml: bx,
            disks,
        })
    }

    /// Undefines (stopping it first) the domain `name` only if it has this UUID. Returns
    /// false if there is no such domain, or one of that name that is not the one we made.
    pub fn undefine_uuid(&self, name: &str, uuid: &str) -> Result<bool, LibvirtError> {
        let Some(dom) = self.lookup(name)? else {
            return Ok(false);
        };
        if dom.uuid_string().map_err(self.err("uuid"))? != uuid {
            return Ok(false);
        }
        self.undefine_domain(&dom, name)?;
        Ok(true)
    }

    /// Defines the domain (validating the XML against libvirt's schema when asked).
    pub fn define(&self, xml: &str, validate: bool) -> Result<(), LibvirtError> {
        let flags = if validate {
            sys::VIR_DOMAIN_DEFINE_VALIDATE
        } else {
            0
        };
        self.conn
            .define_domain_xml_flags(xml, flags)
            .map(|_| ())
            .map_err(self.err("define domain"))
    }

    fn ours(&self, name: &str) -> Result<(Domain, Ownership), LibvirtError> {
        let dom = self.lookup(name)?.ok_or_else(|| LibvirtError::NoDomain {
            name: name.into(),
            uri: self.uri.clone(),
        })?;
        let o = self
            .ownership(&dom)
            .ok_or_else(|| LibvirtError::NotOurs { name: name.into() })?;
        Ok((dom, o))
    }

    pub fn start(&self, name: &str) -> Result<(), LibvirtError> {
        let (dom, _) = self.ours(name)?;
        if dom.is_active().unwrap_or(false) {
            return Ok(());
        }
        dom.create()
            .map(|_| ())
            .map_err(self.err(format!("start {name}")))
    }

    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), LibvirtError> {
        let (dom, _) = self.ours(name)?;
        dom.set_autostart(on)
            .map(|_| ())
            .map_err(self.err(format!("autostart {name}")))
    }

    /// Detaches the disk whose source is `path` from a domain virtseed made (its persistent
    /// definition, and the running guest when it lets go), then deletes the volume.
    /// File `path` inside VM `name` (one virtseed made), read through its QEMU guest agent.
    pub fn guest_file(
        &self,
        name: &str,
        path: &str,
    ) -> Result<Result<zeroize::Zeroizing<Vec<u8>>, agent::AgentError>, LibvirtError> {
        let (dom, _) = self.ours(name)?;
        Ok(agent::read_file(&dom, path))
    }

    pub fn remove_disk(&self, name: &str, path: &str) -> Result<(), LibvirtError> {
        let (dom, _) = self.ours(name)?;
        let find = |flags: u32| -> Result<Option<String>, LibvirtError> {
            let xml = dom.xml_desc(flags).map_err(self.err("domain XML"))?;
            let root = dom::parse(&xml).map_err(|e| LibvirtError::Xml(e.into()))?;
            Ok(root.child("devices").and_then(|d| {
                d.elements()
                    .find(|e| {
                        e.name == "disk"
                            && e.child("source").and_then(|s| s.attr("file")).as_deref()
                                == Some(path)
                    })
                    .map(|e| e.to_xml())
            }))
        };
        if let Some(x) = find(sys::VIR_DOMAIN_XML_INACTIVE)? {
            dom.detach_device_flags(&x, sys::VIR_DOMAIN_AFFECT_CONFIG)
                .map_err(self.err(format!("detach {path} from {name}")))?;
        }
        if dom.is_active().unwrap_or(false) {
            if let Some(x) = find(0)? {
                // Best effort: a guest without hotplug keeps it until its next power cycle.
                let _ = dom.detach_device_flags(&x, sys::VIR_DOMAIN_AFFECT_LIVE);
            }
        }
        self.delete_volume(path)
    }

    /// Stops a domain at once (power off).
    pub fn stop(&self, name: &str) -> Result<(), LibvirtError> {
        let (dom, _) = self.ours(name)?;
        if !dom.is_active().unwrap_or(false) {
            return Ok(());
        }
        dom.destroy().map_err(self.err(format!("stop {name}")))
    }

    pub fn reboot(&self, name: &str) -> Result<(), LibvirtError> {
        let (dom, _) = self.ours(name)?;
        if !dom.is_active().unwrap_or(false) {
            return dom
                .create()
                .map(|_| ())
                .map_err(self.err(format!("start {name}")));
        }
        dom.reset()
            .map(|_| ())
            .map_err(self.err(format!("reboot {name}")))
    }

    /// Stops and undefines a domain virtseed made (managed save, snapshot and checkpoint
    /// metadata, NVRAM), then deletes every volume it owns. Returns the deleted paths.
    pub fn destroy(&self, name: &str) -> Result<Vec<String>, LibvirtError> {
        let (dom, own) = self.ours(name)?;
        self.undefine_domain(&dom, name)?;
        let mut deleted = Vec::new();
        for v in &own.volumes {
            self.delete_volume(v)?;
            deleted.push(v.clone());
        }
        // Files we copied (a local NVRAM); undefine with the NVRAM flag usually took it.
        if self.is_local() {
            for f in &own.files {
                match std::fs::remove_file(f) {
                    Ok(()) => deleted.push(f.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(LibvirtError::BaseDisk {
                            target: "nvram".into(),
                            msg: format!("cannot remove {f}: {e}"),
                        })
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Removes a domain by name whatever it holds (used to undo our own define).
    pub fn undefine(&self, name: &str) -> Result<(), LibvirtError> {
        match self.lookup(name)? {
            Some(dom) => self.undefine_domain(&dom, name),
            None => Ok(()),
        }
    }

    fn undefine_domain(&self, dom: &Domain, name: &str) -> Result<(), LibvirtError> {
        if dom.is_active().unwrap_or(false) {
            if let Err(e) = dom.destroy() {
                // It may have stopped by itself in between.
                if dom.is_active().unwrap_or(true) {
                    return Err(self.err(format!("stop {name}"))(e));
                }
            }
        }
        let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
        match dom.undefine_flags(flags) {
            Ok(()) => Ok(()),
            // Drivers without NVRAM or checkpoint support refuse the flags: retry plainly.
            Err(_) => dom.undefine().map_err(self.err(format!("undefine {name}"))),
        }
    }

    fn describe(&self, dom: &Domain, own: Ownership) -> Result<Instance, LibvirtError> {
        let name = dom.name().map_err(self.err("domain name"))?;
        let (state, _) = dom.state().map_err(self.err(format!("state of {name}")))?;
        let mut addresses = Vec::new();
        let mut macs = Vec::new();
        if dom.is_active().unwrap_or(false) {
            // The profile's `ip_source`, as salt-cloud's driver reads it (leases for
            // ip-learning, the guest agent for qemu-agent), with the ARP table after the
            // leases (bridged networks have none); every source for older clones.
            let sources: &[u32] = match own.ip_source.as_str() {
                "ip-learning" => &[
                    sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
                    sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
                ],
                "qemu-agent" => &[sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT],
                _ => &[
                    sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
                    sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
                    sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
                ],
            };
            for &src in sources {
                if let Ok(ifs) = dom.interface_addresses(src, 0) {
                    for i in ifs {
                        for a in i.addrs {
                            if !a.addr.starts_with("127.")
                                && a.addr != "::1"
                                && !addresses.contains(&a.addr)
                            {
                                addresses.push(a.addr);
                            }
                        }
                    }
                }
                if !addresses.is_empty() {
                    break;
                }
            }
        }
        let info = dom.info().map_err(self.err(format!("info of {name}")))?;
        if let Ok(xml) = dom.xml_desc(0) {
            if let Ok(root) = dom::parse(&xml) {
                if let Some(devs) = root.child("devices") {
                    for i in devs.elements().filter(|e| e.name == "interface") {
                        if let Some(m) = i.child("mac").and_then(|m| m.attr("address")) {
                            macs.push(m);
                        }
                    }
                }
            }
        }
        Ok(Instance {
            uuid: dom.uuid_string().map_err(self.err("uuid"))?,
            name,
            state: state_name(&state).into(),
            ownership: own,
            addresses,
            macs,
            vcpus: info.nr_virt_cpu,
            memory_kib: info.max_mem,
        })
    }

    /// Every domain, ours or not.
    fn domains(&self) -> Result<Vec<Domain>, LibvirtError> {
        self.conn
            .list_all_domains(0)
            .map_err(self.err("list domains"))
    }

    /// The domains virtseed made (those carrying its metadata), sorted by name.
    pub fn list(&self) -> Result<Vec<Instance>, LibvirtError> {
        let mut out = Vec::new();
        for d in self.domains()? {
            if let Some(o) = self.ownership(&d) {
                match self.describe(&d, o) {
                    Ok(i) => out.push(i),
                    // Undefined between listing and reading: it is simply gone.
                    Err(e) if e.code() == Some(sys::VIR_ERR_NO_DOMAIN as i32) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One domain virtseed made.
    pub fn show(&self, name: &str) -> Result<Instance, LibvirtError> {
        let (dom, own) = self.ours(name)?;
        self.describe(&dom, own)
    }

    /// The domain's XML as libvirt holds it (inactive definition).
    pub fn xml(&self, name: &str) -> Result<String, LibvirtError> {
        let dom = self.lookup(name)?.ok_or_else(|| LibvirtError::NoDomain {
            name: name.into(),
            uri: self.uri.clone(),
        })?;
        dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(self.err("domain XML"))
    }

    /// Names of all domains (ours or not), for callers that need to know what exists.
    pub fn all_domain_names(&self) -> Result<Vec<String>, LibvirtError> {
        let doms = self
            .conn
            .list_all_domains(0)
            .map_err(self.err("list domains"))?;
        Ok(doms.iter().filter_map(|d| d.name().ok()).collect())
    }

    /// The prefix-qualified element name for our metadata.
    pub fn metadata_key() -> &'static str {
        NS_PREFIX
    }
}
