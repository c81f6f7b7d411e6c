//! Step `defined`: the clone's domain. The base's XML renamed (new name, UUID and MACs) with
//! the clone's disks, NVRAM and seed, the profile's sizing, and virtseed's ownership record
//! (what `destroy` deletes, and what marks the domain as ours); autostart with `onboot`.
//!
//! An [`Intent::Domain`], undone by undefining (and stopping) the domain only while it has
//! the UUID given here: a later domain of the same name is not ours ([`undo`]).

use super::runner::{Action, Intents};
use super::{Made, Step, Vm};
use crate::cloud::journal::Intent;
use crate::cloud::CloudError;
use crate::config::cloud::{AcceptMode, IpSource};
use crate::libvirt::domain_xml::{self, CloneSpec, Ownership};
use crate::libvirt::{Hypervisor, LibvirtError};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Define<'a> {
    pub vm: Vm<'a>,
    pub uuid: &'a str,
    /// The request id recorded in the ownership record.
    pub request: &'a str,
    /// The warm state the clone is restored from (recorded: its frozen disk backs the clone).
    pub warm: Option<&'a str>,
}

impl Action<Made> for Define<'_> {
    fn make(&self, made: &mut Made, intents: &mut Intents<'_>) -> Result<(), CloudError> {
        let vm = self.vm;
        if vm.prof.ssh_forward {
            made.ssh_port = Some(free_loopback_port()?);
        }
        let spec = self.spec(made);
        let (xml, macs) = domain_xml::clone_xml(&vm.base.xml, &spec).map_err(LibvirtError::from)?;
        intents.intend(Intent::Domain {
            name: vm.name.into(),
            uuid: self.uuid.into(),
        })?;
        vm.hv.define(&xml, vm.prof.validate_xml)?;
        if vm.prof.onboot {
            vm.hv.set_autostart(vm.name, true)?;
        }
        made.macs = macs;
        made.domain_xml = Some(xml);
        Ok(())
    }

    fn step(&self) -> Step {
        Step::Defined
    }
}

impl Define<'_> {
    /// The clone as the XML rewriter wants it; takes the devices the earlier steps made.
    fn spec(&self, made: &mut Made) -> CloneSpec {
        let prof = self.vm.prof;
        CloneSpec {
            name: self.vm.name.into(),
            uuid: self.uuid.into(),
            description: prof
                .desc
                .clone()
                .unwrap_or_else(|| format!("cloned from {} by virtseed", prof.base_domain)),
            disks: std::mem::take(&mut made.disks),
            nvram: made.nvram.clone(),
            cpus: prof.cpus,
            cpu_shares: prof.cpuunits,
            memory_mib: prof.memory_mib,
            macs: made.macs.clone(),
            ownership: Ownership {
                profile: prof.name.clone(),
                provider: prof.provider.clone(),
                base: prof.base_domain.clone(),
                fingerprint: made.fingerprint(),
                created: now_secs(),
                request: self.request.into(),
                volumes: made.volumes.clone(),
                files: std::mem::take(&mut made.files),
                accept: match prof.accept {
                    AcceptMode::Preseed => "preseed".into(),
                    AcceptMode::OnFirstAuth => "on_first_auth".into(),
                    AcceptMode::Manual => "manual".into(),
                },
                window: prof.autoaccept_window_secs,
                ip_source: match prof.ip_source {
                    IpSource::IpLearning => "ip-learning".into(),
                    IpSource::QemuAgent => "qemu-agent".into(),
                },
                warm: self.warm.unwrap_or_default().into(),
                ssh_port: made.ssh_port,
            },
            extra_devices: std::mem::take(&mut made.extra_devices),
            oem_strings: std::mem::take(&mut made.oem_strings),
            ssh_forward_port: made.ssh_port,
        }
    }
}

/// Undoes an [`Intent::Domain`]: undefines the domain `name` (stopping it first) only if it
/// has `uuid`; no such domain is not an error.
pub fn undo(hv: &Hypervisor, name: &str, uuid: &str) -> Result<(), String> {
    hv.undefine_uuid(name, uuid)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A TCP port on 127.0.0.1 free now (the kernel's pick), for `ssh_forward`. Another process
/// may take it before QEMU binds it: then the domain fails to start and the create is undone.
fn free_loopback_port() -> Result<u16, CloudError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            CloudError::Internal(format!("finding a free loopback port for ssh_forward: {e}"))
        })
}
