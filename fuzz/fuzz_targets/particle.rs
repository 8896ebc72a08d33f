#![no_main]
//! Fuzz target `particle`: see `tern_image::fuzzing::particle`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_image::fuzzing::particle(data));
