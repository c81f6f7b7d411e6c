//! Step `image_copied` (warm clones): the clone's own copy of its warm state's saved image,
//! beside it in the state's pool, whose header holds the clone's XML (the XML it was defined
//! with: its name, UUID, disks, MACs), so that restoring the copy resumes this clone
//! ([`crate::libvirt::saveimage`]). An [`Intent::Volume`](crate::cloud::journal::Intent),
//! undone by deleting it ([`super::volume::undo`]); the `restored` step deletes it once read.

use super::runner::{Action, Intents};
use super::{volume, Made, Step, Vm};
use crate::cloud::warm::WarmState;
use crate::cloud::CloudError;

pub struct Image<'a> {
    pub vm: Vm<'a>,
    pub state: &'a WarmState,
}

impl Action<Made> for Image<'_> {
    fn make(&self, made: &mut Made, intents: &mut Intents<'_>) -> Result<(), CloudError> {
        let Vm { hv, name, .. } = self.vm;
        let st = self.state;
        let xml = made
            .domain_xml
            .as_deref()
            .ok_or_else(|| CloudError::Internal("a warm clone without its XML".into()))?;
        let head = st
            .image
            .with_xml(xml)
            .map_err(|e| CloudError::Internal(format!("warm state {}: {e}", st.id)))?;
        let copy = format!("{name}.restore.save");
        let path = volume::make(intents, &st.pool, &copy, || {
            hv.copy_with_head(&st.pool, &st.image_volume, &copy, &head)
        })?;
        made.image_copy = Some((st.pool.clone(), copy, path));
        Ok(())
    }

    fn step(&self) -> Step {
        Step::ImageCopied
    }
}
