#![no_main]
//! Fuzz target `bundle`: see `tern_image::fuzzing::bundle`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_image::fuzzing::bundle(data));
