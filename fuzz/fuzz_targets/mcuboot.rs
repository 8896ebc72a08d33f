#![no_main]
//! Fuzz target `mcuboot`: see `tern_image::fuzzing::mcuboot`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_image::fuzzing::mcuboot(data));
