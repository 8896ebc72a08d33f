//! Tern's device side: the update agent, the boot manager and the device's protocol
//! conversation with the server.
//!
//! `no_std`, no allocation, no `unsafe`; flash only through `embedded-storage`'s
//! [`NorFlash`](embedded_storage::nor_flash::NorFlash) (see [`storage`]). The core is
//! sans-IO: it performs no IO besides flash and reads no clock. The caller feeds it events
//! (an offer, a block, a confirmation, a reset cause) and acts on what it returns (blocks
//! to request, what to boot, which watchdog to arm). [`conversation::Conversation`] wraps
//! the agent in the whole `tern-proto` conversation (Describe, windowed block requests
//! and their retries, progress, results with reasons, commands), so a port only carries
//! messages, gives it the time and resets when it says.
//!
//! # One update, from offer to confirmation
//!
//! 1. **Offer** — [`Agent::handle_offer`](agent::Agent::handle_offer): the signed manifest
//!    is verified (trusted key, platform, security counter, slots and addresses,
//!    dependencies, size); the state record moves to *preparing*, the exchange and progress
//!    areas are erased, then to *receiving* ([`state`] documents the record).
//! 2. **Blocks** — [`Agent::missing_blocks`](agent::Agent::missing_blocks) says what to
//!    ask for; [`Agent::handle_block`](agent::Agent::handle_block) stores each block (any
//!    order, duplicates ignored) and programs its progress marker. After a reset,
//!    [`Agent::load`](agent::Agent::load) recovers the progress from the markers.
//! 3. **Verify** — on the last block, every staged module's SHA-256 is checked against the
//!    signed manifest; the update becomes *staged* (pending).
//! 4. **Install** — at the next boot, [`boot::boot`] turns the staged update into a
//!    journaled job: rollback copies, then the new modules, each step erase–copy–verify,
//!    the step count recorded after each; a reset anywhere resumes it.
//! 5. **Test boot** — the new application runs *on test* with a watchdog; each boot is
//!    counted ([`state::BootState::Testing`]).
//! 6. **Confirm** — [`Agent::confirm`](agent::Agent::confirm) marks it good. Without it,
//!    the boot manager rolls back after [`profile::BootPolicy::max_test_boots`] boots.
#![no_std]
#![forbid(unsafe_code)]

pub mod agent;
pub mod block;
pub mod boot;
pub mod conversation;
pub mod profile;
pub mod state;
pub mod storage;

pub use agent::{Agent, BlockError, BlockOutcome, BlockRequest, OfferAccepted, OfferError};
pub use block::{Block, BLOCK_SIZE};
pub use boot::{boot, BootDecision, BootError, ResetCause, Run, SafeModeReason};
pub use conversation::{Conversation, ConversationConfig, PlatformAction, Retained, Start};
pub use profile::{Profile, NRF52840, STM32F2};
pub use state::{DeviceState, UpdateResult};
