//! Step `started`: the domain started. It journals nothing of its own: undoing the domain
//! ([`super::define::undo`]) stops it before undefining it.

use super::runner::{Action, Intents};
use super::{Made, Step, Vm};
use crate::cloud::CloudError;

pub struct Start<'a> {
    pub vm: Vm<'a>,
}

impl Action<Made> for Start<'_> {
    fn make(&self, _: &mut Made, _: &mut Intents<'_>) -> Result<(), CloudError> {
        Ok(self.vm.hv.start(self.vm.name)?)
    }

    fn step(&self) -> Step {
        Step::Started
    }
}
