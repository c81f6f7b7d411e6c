//! A volume a step makes (a disk, the NVRAM copy, the seed): its [`Intent::Volume`] recorded
//! before it is made, and its undo. Shared by the steps that make volumes.

use super::runner::Intents;
use crate::cloud::journal::Intent;
use crate::cloud::CloudError;
use crate::libvirt::{Hypervisor, LibvirtError};

/// Makes volume `name` in `pool` with `make`, recorded first. A volume already there was not
/// made by this create: the intent is withdrawn, so the rollback leaves that volume alone.
pub fn make<T>(
    intents: &mut Intents<'_>,
    pool: &str,
    name: &str,
    make: impl FnOnce() -> Result<T, LibvirtError>,
) -> Result<T, CloudError> {
    intents.intend(Intent::Volume {
        pool: pool.into(),
        name: name.into(),
    })?;
    let made = make();
    if matches!(made, Err(LibvirtError::VolumeExists { .. })) {
        intents.withdraw();
    }
    Ok(made?)
}

/// Undoes an [`Intent::Volume`]: deletes the volume, if it exists.
pub fn undo(hv: &Hypervisor, pool: &str, name: &str) -> Result<(), String> {
    hv.delete_volume_named(pool, name)
        .map_err(|e| e.to_string())
}
