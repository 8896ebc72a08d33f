//! Simulated Tern devices connected to a real Tern server over MQTT.
//!
//! A [`SimRuntime`] is one device: `tern-device`'s boot manager and update agent running
//! on `tern-sim`'s strict NOR flash model with a platform profile, an application whose
//! behaviour comes from the image it runs, and the `tern-proto` conversation with the
//! server's gateway over a [`Link`] — the real [`MqttLink`], optionally wrapped in a seeded
//! [`FaultyLink`] that loses, duplicates and reorders messages.
//!
//! What the device does, in protocol terms (`docs/protocol.md`) — all of it decided by
//! `tern-device`'s sans-IO [`Conversation`](tern_device::Conversation), which the runtime
//! only pumps:
//!
//! - **Describe** on every connection and after every boot: the modules the device's state
//!   record lists as installed, the boot reason, and the result of the last attempt;
//! - **UpdateOffer** → [`Agent::handle_offer_scoped`](tern_device::Agent::handle_offer_scoped); a refusal
//!   becomes a Result `failed` with its reason;
//! - **BlockRequest**s for what [`Agent::missing_blocks`](tern_device::Agent::missing_blocks)
//!   says is missing, at most `window` in flight, re-asked after a timeout; after a reset
//!   only what the flash does not hold is asked for;
//! - **Progress** while downloading and when staged; then a reboot through the boot
//!   manager, which installs; the test boot is confirmed once the device is connected;
//! - **Result** when an attempt ends (confirmed, rolled back with the reason, failed,
//!   cancelled); **commands** reboot, safe mode, factory restore and cancel.
//!
//! With a state directory the flash is saved (its state record holds the attempt id), so a
//! simulated device survives restarts of its process.
//!
//! For fleets, [`fleet`] decides from device indexes which devices misbehave on an update
//! ([`Mix`], applied through [`ReceivedApps`]), which are cellular and which go offline
//! when ([`Offline`], applied through an [`Intermittent`] link).
#![forbid(unsafe_code)]

pub mod device_os;
pub mod fleet;
pub mod link;
pub mod provision;
pub mod runtime;

pub use fleet::{Mix, Offline, OfflineRule};
pub use link::{Faults, FaultyLink, Incoming, Intermittent, Link, MqttLink, MqttTarget};
pub use runtime::{ReceivedApps, RunError, Settings, SimRuntime, Stats};
