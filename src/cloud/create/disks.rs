//! Step `disks`: one volume per base disk, named after the clone and the device
//! (`<name>-<dev>.qcow2`): an overlay over the base disk (`clone_strategy: quick`) or a copy
//! in the base's format (`full`), in the profile's pool or else the base disk's; the first
//! one grown to the profile's `disk`.
//!
//! Each volume is an [`Intent::Volume`](crate::cloud::journal::Intent), undone by deleting
//! it ([`volume::undo`]). A volume already there was not made here and is left alone.

use super::runner::{Action, Intents};
use super::{volume, Made, Step, Vm};
use crate::cloud::CloudError;
use crate::config::cloud::CloneStrategy;
use crate::libvirt::domain_xml::{CloneDisk, DiskSource};
use crate::libvirt::{LibvirtError, LocatedDisk};

pub struct Disks<'a> {
    pub vm: Vm<'a>,
}

impl Action<Made> for Disks<'_> {
    fn make(&self, made: &mut Made, intents: &mut Intents<'_>) -> Result<(), CloudError> {
        let Vm { hv, base, prof, .. } = self.vm;
        for (i, d) in base.disks.iter().enumerate() {
            let capacity = if i == 0 {
                self.first_capacity(d)?
            } else {
                d.capacity
            };
            let pool = prof.pool.clone().unwrap_or_else(|| d.pool.clone());
            let (vol_name, format) = self.volume_name(d);
            let path = volume::make(intents, &pool, &vol_name, || match prof.clone_strategy {
                CloneStrategy::Quick => hv.create_overlay(&pool, &vol_name, d, capacity),
                CloneStrategy::Full => hv.create_copy(&pool, &vol_name, d, capacity),
            })?;
            made.volumes.push(path.clone());
            made.disks.push(CloneDisk {
                target: d.target.clone(),
                source: if d.by_volume {
                    DiskSource::Volume {
                        pool,
                        volume: vol_name,
                    }
                } else {
                    DiskSource::File(path)
                },
                format,
            });
        }
        Ok(())
    }

    fn step(&self) -> Step {
        Step::Disks
    }
}

impl Disks<'_> {
    /// The first disk's size: the profile's `disk`, which may grow it but not shrink it.
    fn first_capacity(&self, d: &LocatedDisk) -> Result<u64, LibvirtError> {
        let Some(gib) = self.vm.prof.disk_gib else {
            return Ok(d.capacity);
        };
        let want = gib * 1024 * 1024 * 1024;
        if want < d.capacity {
            return Err(LibvirtError::Shrink {
                want: gib,
                have: d.capacity,
            });
        }
        Ok(want)
    }

    /// The clone's volume for base disk `d`, and its format.
    fn volume_name(&self, d: &LocatedDisk) -> (String, String) {
        let name = self.vm.name;
        match self.vm.prof.clone_strategy {
            CloneStrategy::Quick => (format!("{name}-{}.qcow2", d.target), "qcow2".to_string()),
            CloneStrategy::Full => {
                let ext = if d.format == "qcow2" { "qcow2" } else { "img" };
                (format!("{name}-{}.{ext}", d.target), d.format.clone())
            }
        }
    }
}
