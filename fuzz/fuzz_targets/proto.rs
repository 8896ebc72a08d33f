#![no_main]
//! Fuzz target `proto`: see `tern_proto::fuzzing::decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_proto::fuzzing::decode(data));
