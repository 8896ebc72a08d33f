#![no_main]
//! Fuzz target `device-boot`: see `tern_sim::fuzz::boot_arbitrary_flash` (the device crate's decoders and boot
//! manager on arbitrary bytes). `cargo test -p tern-sim` replays `fuzz/corpus/device-boot`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_sim::fuzz::boot_arbitrary_flash(data));
