//! Step `started`: the domain started. It journals nothing of its own: undoing the domain
//! ([`super::define::undo`]) stops it before undefining it.

use super::runner::{Action, Intents};
use super::{Made, Step};
use crate::cloud::CloudError;
use crate::libvirt::Hypervisor;

pub struct Start<'a> {
    pub hv: &'a Hypervisor,
    pub name: &'a str,
}

impl Action<Made> for Start<'_> {
    fn step(&self) -> Step {
        Step::Started
    }

    fn make(&self, _: &mut Made, _: &mut Intents<'_>) -> Result<(), CloudError> {
        Ok(self.hv.start(self.name)?)
    }
}
