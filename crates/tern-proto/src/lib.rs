//! The Tern device protocol: the messages a device and the server exchange, their CBOR
//! encoding, and the MQTT topics they travel on.
//!
//! `no_std`, no allocation, no `unsafe`: the same code runs in the device agent on a
//! microcontroller and in the server. Decoding borrows byte strings from the input, and
//! lists have fixed capacity ([`List`]), so a message's size is known at compile time.
//!
//! - [`message`]: the typed messages ([`Describe`], [`UpdateOffer`], [`BlockRequest`],
//!   [`Block`], [`Progress`], [`UpdateResult`], [`Command`]) and their reason codes.
//! - [`codec`]: deterministic CBOR encoding, versioned by [`PROTOCOL_VERSION`]; decoding
//!   never panics and reports a [`DecodeError`].
//! - [`topic`]: the topic layout `tern/v1/d/{device}/{up|down}/{kind}`.
//! - [`attempt`]: the server side of one update attempt as a sans-IO state machine
//!   (offer, pulled blocks, progress, result, confirmation by Describe, timeouts).
//!
//! The full wire reference, with every key, is `docs/protocol.md`.
#![no_std]
#![forbid(unsafe_code)]

pub mod attempt;
pub mod codec;
pub mod fuzzing;
pub mod list;
pub mod message;
pub mod topic;

pub use codec::{DecodeError, EncodeError, PROTOCOL_VERSION};
pub use list::List;
pub use message::*;
pub use topic::{is_valid_device_id, Topic, TopicForm};

#[cfg(test)]
mod attempt_tests;
#[cfg(test)]
mod tests;
