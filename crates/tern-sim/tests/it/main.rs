//! Integration tests of the simulator and, through it, of the device crate.

mod agent;
mod explorer;
mod fuzz_corpus;
mod nobrick;
mod profiles;
