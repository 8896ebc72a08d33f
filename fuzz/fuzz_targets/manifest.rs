#![no_main]
//! Fuzz target `manifest`: see `tern_image::fuzzing::manifest`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_image::fuzzing::manifest(data));
