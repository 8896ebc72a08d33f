//! Tests of the device crate on `tern-sim`'s flash model: what one offer can stage and
//! which of its signed modules it stages (`offers`), and the sans-IO conversation with the
//! server (`conversation`), and modules that arrive as patches (`delta`).

mod conversation;
mod delta;
mod end_to_end;
mod offers;
mod support;
