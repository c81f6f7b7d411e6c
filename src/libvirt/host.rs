//! What a hypervisor host offers to clone from and onto: its usable base domains and its
//! free memory (salt-cloud's `avail_images` and `avail_locations`).

use super::{state_name, Hypervisor, LibvirtError};
use serde::Serialize;

/// A domain a profile can clone: shut off and not made by virtseed.
#[derive(Debug, Clone, Serialize)]
pub struct BaseDomain {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// The host behind a connection.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub hostname: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub free_memory_mib: u64,
}

impl Hypervisor {
    /// The domains that can serve as a base (shut off, without virtseed's metadata), sorted.
    pub fn bases(&self) -> Result<Vec<BaseDomain>, LibvirtError> {
        let mut out = Vec::new();
        for d in self.domains()? {
            if self.ownership(&d).is_some() {
                continue;
            }
            // Gone between listing and reading: skipped.
            let (Ok(name), Ok(info)) = (d.name(), d.info()) else {
                continue;
            };
            let Ok((state, _)) = d.state() else { continue };
            if state_name(&state) == "shutoff" {
                out.push(BaseDomain {
                    name,
                    vcpus: info.nr_virt_cpu,
                    memory_mib: info.max_mem / 1024,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// libvirt's keepalive on this connection: a probe every `interval` s, the connection
    /// closed after `count` unanswered (needs libvirt's event loop running).
    pub fn keep_alive(&self, interval: i32, count: u32) -> Result<(), LibvirtError> {
        self.conn
            .set_keep_alive(interval, count)
            .map(|_| ())
            .map_err(self.err("keepalive"))
    }

    /// The host's name, CPUs and memory, as libvirt sees them.
    pub fn host_info(&self) -> Result<HostInfo, LibvirtError> {
        let node = self.conn.node_info().map_err(self.err("node info"))?;
        let free = self.conn.free_memory().map_err(self.err("free memory"))?;
        Ok(HostInfo {
            hostname: self.conn.hostname().map_err(self.err("hostname"))?,
            cpus: node.cpus,
            memory_mib: node.memory / 1024,
            free_memory_mib: free / (1024 * 1024),
        })
    }
}
