#![no_main]
//! Fuzz target `delta`: see `tern_delta::fuzzing::apply` (the patch decoder and applier on
//! arbitrary bytes, whole patches or bare payloads, fed in chunks of varying size).
//! `cargo test -p tern-delta` replays `fuzz/corpus/delta`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_delta::fuzzing::apply(data));
