//! Reading a base domain's XML and writing its clone's.

use super::dom::{self, Element};

/// virtseed's metadata namespace (ownership record on every domain it makes).
pub const NS: &str = "https://virtseed.dev/xmlns/instance/1";
pub const NS_PREFIX: &str = "virtseed";

/// Where a base disk's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskSource {
    File(String),
    Volume { pool: String, volume: String },
}

/// One disk of the base domain that a clone needs its own copy of.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseDisk {
    /// The guest device name (`vda`), unique in a domain.
    pub target: String,
    pub source: DiskSource,
    /// The `<driver type=...>` (qcow2, raw), if given.
    pub format: Option<String>,
}

/// What a base domain offers to clone.
#[derive(Debug, Clone)]
pub struct BaseXml {
    pub root: Element,
    pub disks: Vec<BaseDisk>,
    pub nvram: Option<String>,
}

impl BaseXml {
    /// Whether the base has the QEMU guest agent's virtio channel, which its clones keep
    /// (`accept: on_first_auth` reads the VM's own key through the agent).
    pub fn has_agent_channel(&self) -> bool {
        self.root.child("devices").is_some_and(|d| {
            d.elements().any(|e| {
                e.name == "channel"
                    && e.child("target").and_then(|t| t.attr("name")).as_deref()
                        == Some("org.qemu.guest_agent.0")
            })
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DomainXmlError {
    #[error("{0}")]
    Xml(String),
    #[error("base domain {base:?}: disk {target} is {kind}; virtseed clones file and volume disks only (a shared {kind} disk would be written by every clone)")]
    UnsupportedDisk {
        base: String,
        target: String,
        kind: String,
    },
    #[error("base domain {base:?} has no disk to clone")]
    NoDisk { base: String },
    #[error("{0}")]
    Unsupported(String),
}

impl From<dom::XmlError> for DomainXmlError {
    fn from(e: dom::XmlError) -> Self {
        DomainXmlError::Xml(e.to_string())
    }
}

fn is_removable(disk: &Element) -> bool {
    matches!(
        disk.attr("device").as_deref(),
        Some("cdrom") | Some("floppy")
    )
}

/// Parses the base's XML and finds the disks to clone. Block, network and other disk types
/// are refused: every clone would share and write the same device.
pub fn read_base(base: &str, xml: &str) -> Result<BaseXml, DomainXmlError> {
    let root = dom::parse(xml)?;
    if root.name != "domain" {
        return Err(DomainXmlError::Xml(format!(
            "expected <domain>, found <{}>",
            root.name
        )));
    }
    let mut disks = Vec::new();
    let mut targets = std::collections::HashSet::new();
    if let Some(devices) = root.child("devices") {
        for d in devices.elements().filter(|e| e.name == "disk") {
            // libvirt refuses two disks on one target; a clone's rewrite goes by target.
            if let Some(t) = d.child("target").and_then(|t| t.attr("dev")) {
                if !targets.insert(t.clone()) {
                    return Err(DomainXmlError::Xml(format!(
                        "base domain {base:?}: two disks on target {t}"
                    )));
                }
            }
            if is_removable(d) {
                continue;
            }
            let target = d
                .child("target")
                .and_then(|t| t.attr("dev"))
                .unwrap_or_else(|| "?".into());
            let kind = d.attr("type").unwrap_or_else(|| "file".into());
            let source = d.child("source");
            let src = match (kind.as_str(), source) {
                ("file", Some(s)) if s.attr("file").is_some() => {
                    DiskSource::File(s.attr("file").unwrap_or_default())
                }
                ("volume", Some(s)) if s.attr("pool").is_some() && s.attr("volume").is_some() => {
                    DiskSource::Volume {
                        pool: s.attr("pool").unwrap_or_default(),
                        volume: s.attr("volume").unwrap_or_default(),
                    }
                }
                // A file disk without a source is an empty drive: nothing to clone.
                ("file", None) => continue,
                _ => {
                    return Err(DomainXmlError::UnsupportedDisk {
                        base: base.into(),
                        target,
                        kind: format!("a {kind} disk"),
                    })
                }
            };
            disks.push(BaseDisk {
                target,
                source: src,
                format: d.child("driver").and_then(|drv| drv.attr("type")),
            });
        }
    }
    if disks.is_empty() {
        return Err(DomainXmlError::NoDisk { base: base.into() });
    }
    let nvram = root
        .child("os")
        .and_then(|os| os.child("nvram"))
        .map(|n| n.text())
        .filter(|t| !t.is_empty());
    Ok(BaseXml { root, disks, nvram })
}

/// The ownership record virtseed writes into every clone's `<metadata>`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ownership {
    pub profile: String,
    pub provider: String,
    pub base: String,
    pub fingerprint: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub request: String,
    /// Every volume this clone owns, by path (disks, NVRAM, seed): what destroy deletes.
    pub volumes: Vec<String>,
    /// The NVRAM file, if copied outside a pool.
    pub files: Vec<String>,
    /// `preseed` or `on_first_auth` (the image makes its own key).
    pub accept: String,
    /// For `on_first_auth`: seconds after `created` during which a first key is accepted.
    pub window: u64,
    /// Where libvirt looks for the clone's addresses: `ip-learning` (DHCP leases, then the
    /// host's ARP table) or `qemu-agent`; empty in clones made before it was recorded.
    pub ip_source: String,
    /// The warm state the clone was restored from (its frozen disk backs the clone's);
    /// empty for a booted clone.
    pub warm: String,
    /// `ssh_forward`: the port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: Option<u16>,
}

impl Ownership {
    pub fn to_element(&self) -> Element {
        let p = |n: &str| format!("{NS_PREFIX}:{n}");
        let mut el = Element::new(&p("instance"))
            .with_attr(&format!("xmlns:{NS_PREFIX}"), NS)
            .with_child(Element::new(&p("profile")).with_text(&self.profile))
            .with_child(Element::new(&p("provider")).with_text(&self.provider))
            .with_child(Element::new(&p("base")).with_text(&self.base))
            .with_child(Element::new(&p("fingerprint")).with_text(&self.fingerprint))
            .with_child(Element::new(&p("created")).with_text(&self.created.to_string()))
            .with_child(Element::new(&p("request")).with_text(&self.request))
            .with_child(Element::new(&p("accept")).with_text(&self.accept))
            .with_child(Element::new(&p("window")).with_text(&self.window.to_string()));
        if !self.ip_source.is_empty() {
            el = el.with_child(Element::new(&p("ip_source")).with_text(&self.ip_source));
        }
        if !self.warm.is_empty() {
            el = el.with_child(Element::new(&p("warm")).with_text(&self.warm));
        }
        if let Some(port) = self.ssh_port {
            el = el.with_child(Element::new(&p("ssh_port")).with_text(&port.to_string()));
        }
        for v in &self.volumes {
            el = el.with_child(Element::new(&p("volume")).with_text(v));
        }
        for f in &self.files {
            el = el.with_child(Element::new(&p("file")).with_text(f));
        }
        el
    }

    /// Reads the record back from the element libvirt returns for our namespace (libvirt may
    /// pick its own prefix, so match on local names).
    pub fn parse(xml: &str) -> Result<Self, DomainXmlError> {
        let root = dom::parse(xml)?;
        let local = |n: &str| n.rsplit(':').next().unwrap_or(n).to_string();
        if local(&root.name) != "instance" {
            return Err(DomainXmlError::Xml("not a virtseed instance record".into()));
        }
        let mut o = Ownership::default();
        for c in root.elements() {
            let t = c.text();
            match local(&c.name).as_str() {
                "profile" => o.profile = t,
                "provider" => o.provider = t,
                "base" => o.base = t,
                "fingerprint" => o.fingerprint = t,
                "created" => o.created = t.parse().unwrap_or(0),
                "request" => o.request = t,
                "accept" => o.accept = t,
                "window" => o.window = t.parse().unwrap_or(0),
                "ip_source" => o.ip_source = t,
                "warm" => o.warm = t,
                "ssh_port" => o.ssh_port = t.parse().ok(),
                "volume" => o.volumes.push(t),
                "file" => o.files.push(t),
                _ => {}
            }
        }
        Ok(o)
    }
}

/// Where a clone's copy of one base disk lives.
#[derive(Debug, Clone, PartialEq)]
pub struct CloneDisk {
    pub target: String,
    /// The volume's path (for file disks) or pool/volume (for volume disks).
    pub source: DiskSource,
    pub format: String,
}

/// Everything that differs between the base and its clone.
#[derive(Debug, Clone)]
pub struct CloneSpec {
    pub name: String,
    pub uuid: String,
    pub description: String,
    pub disks: Vec<CloneDisk>,
    pub nvram: Option<String>,
    pub cpus: Option<u32>,
    /// The CPU weight, `<cputune><shares>`.
    pub cpu_shares: Option<u32>,
    pub memory_mib: Option<u64>,
    /// MACs for the interfaces, in order (chosen ahead for the seed's network config);
    /// interfaces past the list get random ones.
    pub macs: Vec<String>,
    pub ownership: Ownership,
    /// Extra devices (the seed disk), appended to `<devices>`.
    pub extra_devices: Vec<Element>,
    /// SMBIOS type 11 OEM strings (`<sysinfo type='smbios'><oemStrings>`).
    pub oem_strings: Vec<String>,
    /// Forward this port on 127.0.0.1 to the guest's port 22 (QEMU user networking).
    pub ssh_forward_port: Option<u16>,
}

/// How many network interfaces the base has (each clone gets a MAC for each).
pub fn interface_count(base: &BaseXml) -> usize {
    base.root
        .child("devices")
        .map(|d| d.elements().filter(|e| e.name == "interface").count())
        .unwrap_or(0)
}

/// A locally administered unicast MAC in QEMU's 52:54:00 range, random.
pub fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Writes the clone's domain XML from the base's. Returns the XML and the MACs given.
pub fn clone_xml(
    base: &BaseXml,
    spec: &CloneSpec,
) -> Result<(String, Vec<String>), DomainXmlError> {
    let mut root = base.root.clone();
    root.remove_attr("id");
    root.child_or_insert("name").set_text(&spec.name);
    root.child_or_insert("uuid").set_text(&spec.uuid);
    // A VM generation ID copied from the base would be every clone's: empty, libvirt makes
    // a fresh one (and a restored guest learns from it that it was cloned).
    if let Some(g) = root.child_mut("genid") {
        g.set_text("");
    }
    root.child_or_insert("description")
        .set_text(&spec.description);
    if let Some(mib) = spec.memory_mib {
        set_memory(&mut root, mib);
    }
    if let Some(n) = spec.cpus {
        set_cpus(&mut root, n);
    }
    if let Some(shares) = spec.cpu_shares {
        root.child_or_insert("cputune")
            .child_or_insert("shares")
            .set_text(&shares.to_string());
    }
    if let (Some(path), Some(os)) = (&spec.nvram, root.child_mut("os")) {
        if let Some(nv) = os.child_mut("nvram") {
            nv.set_text(path);
        }
    }
    // A base that was itself seeded (a clone turned template) carries its own identity in
    // its SMBIOS strings, private key included: never a clone's.
    drop_virtseed_credentials(&mut root);
    if !spec.oem_strings.is_empty() {
        set_oem_strings(&mut root, &spec.oem_strings);
    }
    set_machine_id_arg(&mut root, &spec.uuid);
    let base_name = base
        .root
        .child("name")
        .map(|n| n.text())
        .unwrap_or_default();
    let mut macs = Vec::new();
    let devices = root.child_or_insert("devices");
    devices.remove_children(|e| e.name == "disk" && is_removable(e));
    for d in devices.elements_mut() {
        match d.name.as_str() {
            "disk" => {
                let target = d.child("target").and_then(|t| t.attr("dev"));
                if let Some(cd) = spec
                    .disks
                    .iter()
                    .find(|c| Some(&c.target) == target.as_ref())
                {
                    set_disk(d, cd);
                }
            }
            "interface" => {
                let mac = spec
                    .macs
                    .get(macs.len())
                    .cloned()
                    .unwrap_or_else(random_mac);
                d.child_or_insert("mac").set_attr("address", &mac);
                // A host-side device name from the base would clash.
                d.remove_children(|e| e.name == "target");
                macs.push(mac);
            }
            "serial" | "console" => rename_console_log(d, &base_name, &spec.name),
            "channel" if d.attr("type").as_deref() == Some("unix") => {
                // The agent socket path names the domain: let libvirt make a fresh one.
                if let Some(s) = d.child_mut("source") {
                    s.remove_attr("path");
                }
            }
            _ => {}
        }
    }
    for extra in &spec.extra_devices {
        devices.append(extra.clone());
    }
    if let Some(port) = spec.ssh_forward_port {
        forward_ssh(&mut root, port)?;
    }
    let meta = root.child_or_insert("metadata");
    meta.remove_children(|e| {
        e.name.ends_with(":instance")
            && e.attr(&format!("xmlns:{}", e.name.split(':').next().unwrap_or("")))
                .as_deref()
                == Some(NS)
    });
    meta.append(spec.ownership.to_element());
    Ok((root.to_xml(), macs))
}

/// A warming domain's XML from the clone XML written for it: no ownership record (it is
/// not a clone) and a `<genid/>`, so libvirt gives each domain restored from its saved
/// state a new VM generation ID, and the guest kernel learns it was cloned.
pub fn warming_xml(xml: &str) -> Result<String, DomainXmlError> {
    let mut root = dom::parse(xml)?;
    root.remove_children(|e| e.name == "metadata" || e.name == "genid");
    root.append(Element::new("genid"));
    Ok(root.to_xml())
}

/// Sizes the domain's memory to `mib` MiB.
fn set_memory(root: &mut Element, mib: u64) {
    let kib = (mib * 1024).to_string();
    for tag in ["memory", "currentMemory"] {
        if let Some(m) = root.child_mut(tag) {
            m.set_attr("unit", "KiB");
            m.set_text(&kib);
        }
    }
    if root.child("memory").is_none() {
        root.append(
            Element::new("memory")
                .with_attr("unit", "KiB")
                .with_text(&kib),
        );
    }
    // A hotplug ceiling below the new size would be refused by libvirt.
    root.remove_children(|e| e.name == "maxMemory");
}

/// Gives the domain `n` vCPUs, one socket each.
fn set_cpus(root: &mut Element, n: u32) {
    let v = root.child_or_insert("vcpu");
    v.remove_attr("current");
    v.set_text(&n.to_string());
    if let Some(topo) = root.child_mut("cpu").and_then(|c| c.child_mut("topology")) {
        topo.set_attr("sockets", &n.to_string());
        topo.set_attr("dies", "1");
        topo.set_attr("cores", "1");
        topo.set_attr("threads", "1");
        if topo.attr("clusters").is_some() {
            topo.set_attr("clusters", "1");
        }
    }
    root.remove_children(|e| e.name == "vcpus");
}

/// The kernel argument that makes systemd take `uuid` as the machine-id, whatever a booted
/// template left in `/etc/machine-id`: PID 1 reads it before any unit, journal or DHCP
/// client starts. Only bases that boot a kernel directly (`<os><kernel>`) have a command
/// line in their definition; a bootloader's is inside the disk, and there the guest side
/// (or the template's own empty machine-id) has to do it.
pub const MACHINE_ID_ARG: &str = "systemd.machine_id=";

fn set_machine_id_arg(root: &mut Element, uuid: &str) {
    let Some(os) = root.child_mut("os") else {
        return;
    };
    if os.child("kernel").is_none() {
        return;
    }
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let cmdline = os.child_or_insert("cmdline");
    let mut args: Vec<String> = cmdline
        .text()
        .split_whitespace()
        .filter(|a| !a.starts_with(MACHINE_ID_ARG))
        .map(str::to_string)
        .collect();
    args.push(format!("{MACHINE_ID_ARG}{}", hex.to_ascii_lowercase()));
    cmdline.set_text(&args.join(" "));
}

/// True if the base's definition gives its kernel a command line, so each clone gets its
/// machine-id there (`set_machine_id_arg`).
pub fn boots_kernel_directly(base: &BaseXml) -> bool {
    base.root
        .child("os")
        .is_some_and(|os| os.child("kernel").is_some())
}

/// Removes the identity virtseed seeded into the base itself (SMBIOS strings naming
/// `virtseed.` credentials), and the sysinfo and `<smbios mode='sysinfo'/>` if nothing else
/// is left in them.
fn drop_virtseed_credentials(root: &mut Element) {
    let ours = |e: &Element| {
        let t = e.text();
        t.starts_with("io.systemd.credential") && t.contains(":virtseed.")
    };
    let mut emptied = false;
    for si in root
        .elements_mut()
        .filter(|e| e.name == "sysinfo" && e.attr("type").as_deref() == Some("smbios"))
    {
        if let Some(oem) = si.child_mut("oemStrings") {
            oem.remove_children(|e| e.name == "entry" && ours(e));
            if oem.elements().next().is_none() {
                si.remove_children(|e| e.name == "oemStrings");
            }
        }
        emptied |= si.elements().next().is_none();
    }
    if emptied {
        root.remove_children(|e| {
            e.name == "sysinfo"
                && e.attr("type").as_deref() == Some("smbios")
                && e.elements().next().is_none()
        });
        if let Some(os) = root.child_mut("os") {
            os.remove_children(|e| e.name == "smbios");
        }
    }
}

/// SMBIOS type 11 OEM strings, replacing the base's SMBIOS sysinfo.
fn set_oem_strings(root: &mut Element, strings: &[String]) {
    let os = root.child_or_insert("os");
    os.remove_children(|e| e.name == "smbios");
    os.append(Element::new("smbios").with_attr("mode", "sysinfo"));
    root.remove_children(|e| e.name == "sysinfo" && e.attr("type").as_deref() == Some("smbios"));
    let mut oem = Element::new("oemStrings");
    for s in strings {
        oem = oem.with_child(Element::new("entry").with_text(s));
    }
    root.append(
        Element::new("sysinfo")
            .with_attr("type", "smbios")
            .with_child(oem),
    );
}

/// Points disk `d` at the clone's copy `cd`.
fn set_disk(d: &mut Element, cd: &CloneDisk) {
    d.remove_children(|e| e.name == "backingStore");
    // The disk's type follows its new source (a volume base may get a file clone).
    d.set_attr(
        "type",
        match cd.source {
            DiskSource::File(_) => "file",
            DiskSource::Volume { .. } => "volume",
        },
    );
    let src = d.child_or_insert("source");
    match &cd.source {
        DiskSource::File(path) => {
            src.remove_attr("pool");
            src.remove_attr("volume");
            src.set_attr("file", path);
        }
        DiskSource::Volume { pool, volume } => {
            src.remove_attr("file");
            src.set_attr("pool", pool);
            src.set_attr("volume", volume);
        }
    }
    let drv = d.child_or_insert("driver");
    if drv.attr("name").is_none() {
        drv.set_attr("name", "qemu");
    }
    drv.set_attr("type", &cd.format);
}

/// A console log named after the base would be shared by every clone: renamed after the
/// clone, or dropped.
fn rename_console_log(d: &mut Element, base_name: &str, name: &str) {
    let Some(log) = d.child_mut("log") else {
        return;
    };
    if let Some(f) = log.attr("file") {
        if !base_name.is_empty() && f.contains(base_name) {
            log.set_attr("file", &f.replace(base_name, name));
        } else {
            log.remove_attr("file");
        }
    }
    if log.attr("file").is_none() {
        d.remove_children(|e| e.name == "log");
    }
}

/// QEMU's namespace for `<qemu:commandline>`.
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Replaces the first user-mode interface by the same NIC (model and MAC) on a QEMU user
/// netdev with `hostfwd=tcp:127.0.0.1:PORT-:22`. libvirt 9.0's own `<portForward>` needs
/// the passt backend (package `passt`, not tried here); slirp's `hostfwd` needs nothing more
/// than QEMU, through `<qemu:commandline>` (libvirt marks the domain tainted: custom-argv).
/// Only loopback is ever bound.
fn forward_ssh(root: &mut Element, port: u16) -> Result<(), DomainXmlError> {
    let devices = root.child_or_insert("devices");
    let user = devices
        .elements()
        .find(|e| e.name == "interface" && e.attr("type").as_deref() == Some("user"))
        .cloned()
        .ok_or_else(|| {
            DomainXmlError::Unsupported("ssh_forward needs a user-mode interface (`<interface type='user'>`) in the base domain; on a real network leave it out and the address comes from ip_source".into())
        })?;
    let mut seen = false;
    devices.remove_children(|e| {
        let first = !seen && e.name == "interface" && e.attr("type").as_deref() == Some("user");
        seen |= first;
        first
    });
    let mac = user
        .child("mac")
        .and_then(|m| m.attr("address"))
        .unwrap_or_else(random_mac);
    let model = match user.child("model").and_then(|m| m.attr("type")).as_deref() {
        None | Some("virtio") => "virtio-net-pci".to_string(),
        Some(other) => other.to_string(),
    };
    root.set_attr("xmlns:qemu", QEMU_NS);
    let arg = |v: &str| Element::new("qemu:arg").with_attr("value", v);
    root.append(
        Element::new("qemu:commandline")
            .with_child(arg("-netdev"))
            .with_child(arg(&format!(
                "user,id=vsfwd0,hostfwd=tcp:127.0.0.1:{port}-:22"
            )))
            .with_child(arg("-device"))
            .with_child(arg(&format!("{model},netdev=vsfwd0,mac={mac}"))),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const BASE: &str = r#"<domain type='kvm' id='3'>
  <name>base</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <description>golden</description>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/base_VARS.fd</nvram>
  </os>
  <cpu mode='host-model'><topology sockets='1' dies='1' cores='1' threads='1'/></cpu>
  <devices>
    <!-- the system disk -->
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/pool/base.qcow2'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='data' volume='base-data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:aa:bb:cc'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cd'/>
      <source network='default'/>
      <target dev='vnet3'/>
    </interface>
    <serial type='pty'><log file='/var/log/libvirt/qemu/base-console.log' append='off'/></serial>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-base/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>"#;

    #[test]
    fn two_disks_on_one_target_are_refused() {
        // Found by the fuzzer: an empty drive (no source) on the target of a disk to clone.
        // The clone's rewrite goes by target, and gave the empty drive a volume too.
        let xml = BASE
            .replace("<source file='/pool/base.qcow2'/>", "")
            .replace("<target dev='vda'", "<target dev='vdb'");
        let e = read_base("base", &xml).unwrap_err().to_string();
        assert!(e.contains("two disks on target vdb"), "{e}");
        let cdrom = BASE.replace("<target dev='sda'", "<target dev='vda'");
        if cdrom != BASE {
            assert!(read_base("base", &cdrom).is_err());
        }
    }

    fn spec() -> CloneSpec {
        CloneSpec {
            name: "web1".into(),
            uuid: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            description: "cloned from base by virtseed".into(),
            disks: vec![
                CloneDisk {
                    target: "vda".into(),
                    source: DiskSource::File("/pool/web1-vda.qcow2".into()),
                    format: "qcow2".into(),
                },
                CloneDisk {
                    target: "vdb".into(),
                    source: DiskSource::Volume {
                        pool: "data".into(),
                        volume: "web1-vdb.qcow2".into(),
                    },
                    format: "qcow2".into(),
                },
            ],
            nvram: Some("/var/lib/libvirt/qemu/nvram/web1_VARS.fd".into()),
            cpus: Some(4),
            cpu_shares: None,
            memory_mib: Some(2048),
            macs: vec![],
            ownership: Ownership {
                profile: "p".into(),
                provider: "kvm".into(),
                base: "base".into(),
                fingerprint: "aa:bb".into(),
                created: 1700000000,
                request: "r1".into(),
                volumes: vec!["/pool/web1-vda.qcow2".into()],
                files: vec![],
                accept: "preseed".into(),
                window: 0,
                ip_source: "qemu-agent".into(),
                warm: "s1".into(),
                ssh_port: Some(40022),
            },
            extra_devices: vec![],
            oem_strings: vec![],
            ssh_forward_port: None,
        }
    }

    #[test]
    fn ssh_forward_replaces_the_user_nic_by_a_loopback_hostfwd() {
        let b = read_base("b", BASE).unwrap();
        let mut sp = spec();
        sp.ssh_forward_port = Some(40022);
        let (xml, macs) = clone_xml(&b, &sp).unwrap();
        let root = dom::parse(&xml).unwrap();
        assert_eq!(root.attr("xmlns:qemu").as_deref(), Some(QEMU_NS));
        let devs = root.child("devices").unwrap();
        assert!(!devs
            .elements()
            .any(|e| e.name == "interface" && e.attr("type").as_deref() == Some("user")));
        let args: Vec<String> = root
            .child("qemu:commandline")
            .unwrap()
            .elements()
            .filter_map(|a| a.attr("value"))
            .collect();
        assert_eq!(args[1], "user,id=vsfwd0,hostfwd=tcp:127.0.0.1:40022-:22");
        assert_eq!(
            args[3],
            format!("virtio-net-pci,netdev=vsfwd0,mac={}", macs[0])
        );
    }

    #[test]
    fn the_agent_channel_is_found_or_not() {
        assert!(read_base("base", BASE).unwrap().has_agent_channel());
        let without = BASE.replace("org.qemu.guest_agent.0", "org.example.other.0");
        assert!(!read_base("base", &without).unwrap().has_agent_channel());
    }

    #[test]
    fn reads_base_disks() {
        let b = read_base("base", BASE).unwrap();
        assert_eq!(b.disks.len(), 2, "the cdrom is not cloned");
        assert_eq!(
            b.disks[0].source,
            DiskSource::File("/pool/base.qcow2".into())
        );
        assert_eq!(b.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(
            b.disks[1].source,
            DiskSource::Volume {
                pool: "data".into(),
                volume: "base-data.img".into()
            }
        );
        assert_eq!(
            b.nvram.as_deref(),
            Some("/var/lib/libvirt/qemu/nvram/base_VARS.fd")
        );
    }

    #[test]
    fn cpu_weight_and_macs_chosen_ahead() {
        let b = read_base("base", BASE).unwrap();
        assert_eq!(interface_count(&b), 2);
        let mut sp = spec();
        sp.cpu_shares = Some(1000);
        sp.macs = vec!["52:54:00:12:34:56".into()];
        let (xml, macs) = clone_xml(&b, &sp).unwrap();
        let root = dom::parse(&xml).unwrap();
        let shares = root.child("cputune").and_then(|c| c.child("shares"));
        assert_eq!(shares.map(|s| s.text()).as_deref(), Some("1000"));
        assert_eq!(macs.len(), 2);
        assert_eq!(macs[0], "52:54:00:12:34:56");
        assert!(macs[1].starts_with("52:54:00:") && macs[1] != macs[0]);
        // Without cpuunits, the base's cputune (if any) is left alone.
        let (xml, _) = clone_xml(&b, &spec()).unwrap();
        assert!(!xml.contains("<cputune>"), "{xml}");
    }

    #[test]
    fn refuses_shared_disks() {
        let xml = BASE.replace(
            "<disk type='volume' device='disk'>",
            "<disk type='block' device='disk'>",
        );
        let e = read_base("base", &xml).unwrap_err();
        assert!(e.to_string().contains("disk vdb is a block disk"), "{e}");
        let e = read_base("base", "<domain><name>x</name></domain>").unwrap_err();
        assert_eq!(
            e,
            DomainXmlError::NoDisk {
                base: "base".into()
            }
        );
    }

    /// Found by fuzz/domain_xml: the disk's `type` must follow its new source, or the clone
    /// says `type='volume'` with a `file=` source (and is not a valid base itself).
    #[test]
    fn disk_type_follows_the_new_source() {
        let b = read_base("base", BASE).unwrap();
        let mut s = spec();
        s.disks[0].source = DiskSource::Volume {
            pool: "p".into(),
            volume: "web1-vda.qcow2".into(),
        };
        s.disks[1].source = DiskSource::File("/pool/web1-vdb.qcow2".into());
        let (xml, _) = clone_xml(&b, &s).unwrap();
        let again = read_base("web1", &xml).unwrap();
        assert_eq!(again.disks[0].source, s.disks[0].source);
        assert_eq!(again.disks[1].source, s.disks[1].source);
        assert!(!xml.contains("file='/pool/base.qcow2'"), "{xml}");
    }

    #[test]
    fn clone_rewrites_identity_devices_and_sizing() {
        let b = read_base("base", BASE).unwrap();
        let (xml, macs) = clone_xml(&b, &spec()).unwrap();
        let c = dom::parse(&xml).unwrap();
        assert_eq!(c.attr("id"), None);
        assert_eq!(c.child("name").unwrap().text(), "web1");
        assert_eq!(
            c.child("uuid").unwrap().text(),
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        );
        assert_eq!(
            c.child("description").unwrap().text(),
            "cloned from base by virtseed"
        );
        assert_eq!(c.child("memory").unwrap().text(), "2097152");
        assert_eq!(c.child("currentMemory").unwrap().text(), "2097152");
        assert_eq!(c.child("vcpu").unwrap().text(), "4");
        assert_eq!(
            c.child("cpu")
                .unwrap()
                .child("topology")
                .unwrap()
                .attr("sockets")
                .unwrap(),
            "4"
        );
        assert_eq!(
            c.child("os").unwrap().child("nvram").unwrap().text(),
            "/var/lib/libvirt/qemu/nvram/web1_VARS.fd"
        );
        let devs = c.child("devices").unwrap();
        let disks: Vec<&Element> = devs.elements().filter(|e| e.name == "disk").collect();
        assert_eq!(disks.len(), 2, "cdrom dropped");
        assert_eq!(
            disks[0].child("source").unwrap().attr("file").unwrap(),
            "/pool/web1-vda.qcow2"
        );
        assert!(disks[0].child("backingStore").is_none());
        assert_eq!(
            disks[1].child("source").unwrap().attr("volume").unwrap(),
            "web1-vdb.qcow2"
        );
        assert_eq!(
            disks[1].child("driver").unwrap().attr("type").unwrap(),
            "qcow2"
        );
        let ifs: Vec<&Element> = devs.elements().filter(|e| e.name == "interface").collect();
        assert_eq!(macs.len(), 2);
        for (i, m) in ifs.iter().zip(&macs) {
            let a = i.child("mac").unwrap().attr("address").unwrap();
            assert_eq!(&a, m);
            assert!(
                a.starts_with("52:54:00:") && a != "52:54:00:aa:bb:cc" && a != "52:54:00:aa:bb:cd"
            );
            assert!(i.child("target").is_none());
        }
        assert_ne!(macs[0], macs[1]);
        assert_eq!(
            devs.child("serial")
                .unwrap()
                .child("log")
                .unwrap()
                .attr("file")
                .unwrap(),
            "/var/log/libvirt/qemu/web1-console.log"
        );
        let ch = devs.child("channel").unwrap();
        assert_eq!(ch.child("source").unwrap().attr("path"), None);
        // Other metadata kept, ours added and readable back.
        assert!(xml.contains("<libosinfo:os id=\"http://debian.org/debian/12\"/>"));
        assert!(xml.contains("<!-- the system disk -->"));
        let meta = c.child("metadata").unwrap();
        let ours = meta
            .elements()
            .find(|e| e.name == "virtseed:instance")
            .unwrap();
        assert_eq!(Ownership::parse(&ours.to_xml()).unwrap(), spec().ownership);
    }

    /// A base that boots its kernel directly and was itself seeded by virtseed (a clone
    /// shut down and used as a template), with one SMBIOS string of the user's own.
    const DIRECT_SEEDED_BASE: &str = r#"<domain type='kvm'>
  <name>tmpl</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='KiB'>1048576</memory>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/var/lib/golden/vmlinuz</kernel>
    <cmdline>root=/dev/vda rw systemd.machine_id=11111111222233334444555555555555 quiet</cmdline>
    <smbios mode='sysinfo'/>
  </os>
  <sysinfo type='smbios'>
    <oemStrings>
      <entry>io.systemd.credential.binary:virtseed.minion_id=dG1wbA==</entry>
      <entry>io.systemd.credential.binary:virtseed.minion.pem=c2VjcmV0</entry>
      <entry>site=lab</entry>
    </oemStrings>
  </sysinfo>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/pool/tmpl.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>"#;

    #[test]
    fn direct_kernel_clones_get_their_uuid_as_machine_id() {
        let b = read_base("tmpl", DIRECT_SEEDED_BASE).unwrap();
        assert!(boots_kernel_directly(&b));
        assert!(!boots_kernel_directly(&read_base("base", BASE).unwrap()));
        let (xml, _) = clone_xml(&b, &spec()).unwrap();
        let c = dom::parse(&xml).unwrap();
        assert_eq!(
            c.child("os").unwrap().child("cmdline").unwrap().text(),
            "root=/dev/vda rw quiet systemd.machine_id=aaaaaaaabbbbccccddddeeeeeeeeeeee",
            "the base's id replaced by the clone's"
        );
        // No command line appears where the base boots through a bootloader.
        let (xml, _) = clone_xml(&read_base("base", BASE).unwrap(), &spec()).unwrap();
        assert!(!xml.contains("cmdline") && !xml.contains(MACHINE_ID_ARG));
    }

    #[test]
    fn a_seeded_bases_own_credentials_never_reach_a_clone() {
        let b = read_base("tmpl", DIRECT_SEEDED_BASE).unwrap();
        // Seeded by cloud-init (no SMBIOS strings of its own): the base's are dropped, the
        // user's own string is kept.
        let (xml, _) = clone_xml(&b, &spec()).unwrap();
        assert!(!xml.contains("virtseed.minion"), "{xml}");
        let c = dom::parse(&xml).unwrap();
        let entries: Vec<String> = c
            .child("sysinfo")
            .unwrap()
            .child("oemStrings")
            .unwrap()
            .elements()
            .map(|e| e.text())
            .collect();
        assert_eq!(entries, ["site=lab"]);
        assert!(c.child("os").unwrap().child("smbios").is_some());
        // With nothing else in them, the sysinfo and the smbios mode go too.
        let only_ours = DIRECT_SEEDED_BASE.replace("<entry>site=lab</entry>", "");
        let (xml, _) = clone_xml(&read_base("tmpl", &only_ours).unwrap(), &spec()).unwrap();
        let c = dom::parse(&xml).unwrap();
        assert!(c.child("sysinfo").is_none(), "{xml}");
        assert!(c.child("os").unwrap().child("smbios").is_none(), "{xml}");
    }

    #[test]
    fn oem_strings_for_smbios_seed() {
        let b = read_base("base", BASE).unwrap();
        let mut s = spec();
        s.oem_strings = vec!["io.systemd.credential.binary:salt.id=d2ViMQ==".into()];
        let (xml, _) = clone_xml(&b, &s).unwrap();
        let c = dom::parse(&xml).unwrap();
        assert_eq!(
            c.child("os")
                .unwrap()
                .child("smbios")
                .unwrap()
                .attr("mode")
                .unwrap(),
            "sysinfo"
        );
        let si = c.child("sysinfo").unwrap();
        assert_eq!(
            si.child("oemStrings")
                .unwrap()
                .child("entry")
                .unwrap()
                .text(),
            s.oem_strings[0]
        );
    }
}
