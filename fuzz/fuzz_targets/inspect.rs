#![no_main]
//! Fuzz target `inspect`: see `tern_image::fuzzing::inspect`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_image::fuzzing::inspect(data));
