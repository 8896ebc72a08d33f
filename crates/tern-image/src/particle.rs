//! Particle Device OS modules.
//!
//! (Being written: see issue 2. The public surface below is the contract other modules use.)

use crate::model::ModuleInfo;

/// Why bytes could not be read as a Particle module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No `module_info` prefix was found at any offset Particle uses.
    NoPrefix,
}

/// A parsed Particle module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// The format-independent description.
    pub info: ModuleInfo,
}

/// Parses `bytes` as a Particle module.
pub fn parse(bytes: &[u8]) -> Result<Module, Error> {
    let _ = bytes;
    Err(Error::NoPrefix)
}
