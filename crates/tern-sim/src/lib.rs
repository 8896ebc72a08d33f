//! Tern's simulator: the proof that the device crate never bricks a device.
//!
//! - [`flash`]: a strict NOR flash model with wear and operation counters and fault
//!   injection (power cuts and tears, failing and silently failing operations, marginal
//!   cells, retention flips, wear-out: [`flash::FaultKind`]);
//! - [`device`]: a simulated device — the real device crate on the model flash with a
//!   platform profile, and a simulated application whose behaviour comes from its image;
//!   flash saved to and loaded from a file;
//! - [`scenario`]: update scenarios and the world that drives a device through them;
//! - [`explorer`]: the exhaustive power-cut explorer behind `tern sim powercut`;
//! - [`cost`]: the flash cost report behind `tern sim cost`;
//! - [`fuzz`]: entry points for fuzz targets.
#![forbid(unsafe_code)]

pub mod corpus;
pub mod cost;
pub mod device;
pub mod explorer;
pub mod flash;
pub mod fuzz;
pub mod scenario;
