//! Step `nvram`: the clone's own UEFI variable store, when the base has one.
//!
//! - In a storage pool: copied through libvirt as the volume `<name>_VARS.fd` of that pool
//!   ([`Intent::Volume`], undone by deleting it: [`super::volume::undo`]).
//! - A local file (libvirt's nvram dir): copied beside the base's as `<name>_VARS.fd`
//!   ([`Intent::File`], undone by removing the file: [`undo_file`]).
//! - Elsewhere: nothing is made; libvirt makes a fresh one from the loader's template.
//!
//! A copy already there was not made here and is left alone.

use super::runner::{Action, Intents};
use super::{volume, Made, Step, Vm};
use crate::cloud::journal::Intent;
use crate::cloud::CloudError;
use crate::libvirt::Hypervisor;

pub struct Nvram<'a> {
    pub vm: Vm<'a>,
}

impl Action<Made> for Nvram<'_> {
    fn make(&self, made: &mut Made, intents: &mut Intents<'_>) -> Result<(), CloudError> {
        let Some(p) = self.vm.base.xml.nvram.as_deref() else {
            return Ok(());
        };
        let nvram = match self.copy_volume(p, intents)? {
            Some(c) => {
                made.volumes.push(c.clone());
                c
            }
            None if self.vm.hv.is_local() && std::path::Path::new(p).is_file() => {
                let dest = self.copy_file(p, intents)?;
                made.files.push(dest.clone());
                dest
            }
            None => sibling(p, self.vm.name),
        };
        made.nvram = Some(nvram);
        Ok(())
    }

    fn step(&self) -> Step {
        Step::Nvram
    }
}

impl Nvram<'_> {
    /// The base's NVRAM copied as a volume of its pool (journaled first), if it is one.
    fn copy_volume(
        &self,
        base_nvram: &str,
        intents: &mut Intents<'_>,
    ) -> Result<Option<String>, CloudError> {
        let Vm { hv, name, .. } = self.vm;
        let Some(pool) = hv.nvram_pool(base_nvram) else {
            return Ok(hv.copy_nvram(base_nvram, name)?);
        };
        let vol = Hypervisor::nvram_volume_name(name);
        volume::make(intents, &pool, &vol, || hv.copy_nvram(base_nvram, name))
    }

    /// The base's NVRAM file `p` copied beside it (journaled first); the copy's path.
    fn copy_file(&self, p: &str, intents: &mut Intents<'_>) -> Result<String, CloudError> {
        let dest = sibling(p, self.vm.name);
        intents.intend(Intent::File { path: dest.clone() })?;
        let copy = || -> std::io::Result<()> {
            let mut src = std::fs::File::open(p)?;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dest)?;
            std::io::copy(&mut src, &mut out)?;
            out.sync_all()
        };
        copy().map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                intents.withdraw();
            }
            CloudError::Internal(format!("copying the NVRAM {p} to {dest}: {e}"))
        })?;
        Ok(dest)
    }
}

/// Undoes an [`Intent::File`]: removes the file, if it exists.
pub fn undo_file(path: &str) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Where libvirt would keep a fresh NVRAM for the clone, beside the base's.
fn sibling(base_nvram: &str, name: &str) -> String {
    let dir = std::path::Path::new(base_nvram)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/var/lib/libvirt/qemu/nvram".into());
    format!("{dir}/{name}_VARS.fd")
}
