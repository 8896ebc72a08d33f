//! Intel HEX output: modules placed at their addresses in one file for manufacturing.
//!
//! (Being written: see issue 2.)
