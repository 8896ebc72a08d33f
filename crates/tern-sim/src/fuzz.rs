//! Entry points for fuzz targets: each takes arbitrary bytes and must never panic.

use tern_device::agent::Agent;
use tern_device::block::Block;
use tern_device::boot::{self, ResetCause};
use tern_device::state::DeviceState;

use crate::device::SimDevice;
use crate::scenario::{scenario_key, synthetic};

/// Decodes a state record (`tern_device::state::DeviceState::decode`).
pub fn state_record(data: &[u8]) {
    let _ = DeviceState::decode(data);
}

/// Decodes a block frame (`tern_device::block::Block::decode`).
pub fn block_frame(data: &[u8]) {
    let _ = Block::decode(data);
}

/// Boots a device whose flash holds arbitrary contents: `data` is tiled over every
/// device of the profile chosen by its first byte, then the boot manager runs and the
/// agent loads. Also feeds the rest as an offer and as a block.
pub fn boot_arbitrary_flash(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let profile = tern_device::profile::PROFILES[selector as usize % tern_device::profile::PROFILES.len()];
    let dev = SimDevice::new(profile, vec![scenario_key().verifying_key()]);
    if !rest.is_empty() {
        let mut b = dev.bench.borrow_mut();
        for d in &mut b.devices {
            for (i, byte) in d.bytes.iter_mut().enumerate() {
                *byte = rest[i % rest.len()];
            }
            for (p, &byte) in d.programmed.iter_mut().zip(&d.bytes) {
                *p = byte != 0xFF;
            }
        }
    }
    let mut storage = dev.storage();
    let _ = boot::boot(&mut storage, profile, ResetCause::PowerOn);
    let keys = dev.keys.clone();
    if let Ok(mut agent) = Agent::load(&mut storage, profile, &keys) {
        let _ = agent.handle_offer(&mut storage, rest);
        if let Ok(block) = Block::decode(rest) {
            let _ = agent.handle_block(&mut storage, block);
        }
    }
}

/// A provisioned device of the first synthetic scenario receives `data` as an offer, then
/// as a block frame.
pub fn offer_and_block(data: &[u8]) {
    let Some(sc) = synthetic(&tern_device::profile::NRF52840).into_iter().next() else { return };
    let dev = sc.provisioned();
    let mut storage = dev.storage();
    let keys = dev.keys.clone();
    if let Ok(mut agent) = Agent::load(&mut storage, sc.profile, &keys) {
        let _ = agent.handle_offer(&mut storage, data);
        if let Ok(block) = Block::decode(data) {
            let _ = agent.handle_block(&mut storage, block);
        }
    }
}
