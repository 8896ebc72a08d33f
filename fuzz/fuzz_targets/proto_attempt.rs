#![no_main]
//! Fuzz target `proto_attempt`: see `tern_proto::fuzzing::attempt`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_proto::fuzzing::attempt(data));
