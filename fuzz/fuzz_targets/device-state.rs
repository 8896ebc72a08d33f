#![no_main]
//! Fuzz target `device-state`: see `tern_sim::fuzz::state_record` (the device crate's decoders and boot
//! manager on arbitrary bytes). `cargo test -p tern-sim` replays `fuzz/corpus/device-state`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_sim::fuzz::state_record(data));
