//! Format auto-detection: one entry point that reads any supported module.
//!
//! (Being written: see issue 2.)

use crate::model::ModuleInfo;

/// What [`inspect`] learned about a file.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The module's description, when any format recognised it.
    pub info: Option<ModuleInfo>,
}

/// Reads `bytes` as whichever supported format they are in.
pub fn inspect(bytes: &[u8]) -> Inspection {
    let info = crate::particle::parse(bytes).ok().map(|m| m.info);
    Inspection { info }
}
