//! Firmware module formats for Tern.
//!
//! This crate is the only place in Tern that knows the byte layouts of module formats:
//!
//! - [`particle`]: Particle Device OS modules (prefix `module_info`, suffix, CRC-32),
//!   read byte-exactly as Particle's own tools read them;
//! - [`mcuboot`]: MCUboot images (header, TLVs, ED25519 signatures), read, verified,
//!   written and signed interoperably with `imgtool`;
//! - [`manifest`]: signed release manifests and signed module statements (COSE_Sign1
//!   over deterministic CBOR, ED25519), verifiable on a device without allocation;
//! - [`bundle`]: one file holding a signed manifest and its modules (writing needs `alloc`);
//! - [`hex`]: Intel HEX output for manufacturing (needs `alloc`);
//! - [`platform`]: Particle's platform ids, names, generations and MCUs.
//!
//! Every parser produces the same format-independent [`ModuleInfo`]. Parsers never panic
//! on input: every failure is a variant of a small error enum.
//!
//! The crate is `no_std`; the `alloc` feature adds builders and writers, `std` (default)
//! adds `std::error::Error` impls.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod bundle;
pub mod detect;
#[doc(hidden)]
pub mod fuzzing;
pub mod manifest;
pub mod mcuboot;
pub mod model;
pub mod particle;
pub mod platform;

#[cfg(feature = "alloc")]
pub mod hex;

pub use detect::{inspect, Inspection};
pub use model::{Dependency, Format, Integrity, ModuleFunction, ModuleInfo, MAX_DEPENDENCIES};
