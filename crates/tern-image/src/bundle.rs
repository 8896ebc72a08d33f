//! Release bundles: one file holding a signed manifest and its modules.
//!
//! (Being written: see issue 2.)
