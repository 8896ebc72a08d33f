#![no_main]
//! Fuzz target `device-offer`: see `tern_sim::fuzz::offer_and_block` (the input split into
//! length-prefixed signed documents, offered together, then a block frame). `cargo test -p
//! tern-sim` replays `fuzz/corpus/device-offer`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_sim::fuzz::offer_and_block(data));
