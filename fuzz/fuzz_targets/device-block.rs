#![no_main]
//! Fuzz target `device-block`: see `tern_sim::fuzz::block_frame` (the device crate's decoders and boot
//! manager on arbitrary bytes). `cargo test -p tern-sim` replays `fuzz/corpus/device-block`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_sim::fuzz::block_frame(data));
