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

/// Splits a `device-offer` fuzz input into the signed documents of an offer and a block
/// frame, so that one input can exercise multi-document offers:
///
/// | bytes | meaning |
/// |---|---|
/// | 2 | length `n` of the next document, big-endian; `0` ends the list |
/// | `n` | the document |
/// | … | more documents; after the `0` terminator, the rest is a block frame |
///
/// A length running past the end of the input takes what is left, so every input splits
/// (an empty input is an offer with no document; a lone last byte is ignored).
pub fn split_offer(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut documents = Vec::new();
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if len == 0 {
            return (documents, tail);
        }
        let (document, tail) = tail.split_at(len.min(tail.len()));
        documents.push(document);
        rest = tail;
    }
    // A lone byte left over (half a length) is ignored.
    (documents, &[])
}

/// The inverse of [`split_offer`], for writing seeds: each document (at most 65,535
/// bytes) with its length, then the terminator and the block frame.
pub fn join_offer(documents: &[&[u8]], block: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for document in documents {
        let len = u16::try_from(document.len()).expect("seed documents are shorter than 64 KiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(document);
    }
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(block);
    out
}

/// A provisioned device of the first synthetic scenario receives the documents of `data`
/// (see [`split_offer`]) as one offer, then its block frame.
pub fn offer_and_block(data: &[u8]) {
    let Some(sc) = synthetic(&tern_device::profile::NRF52840).into_iter().next() else { return };
    let dev = sc.provisioned();
    let mut storage = dev.storage();
    let keys = dev.keys.clone();
    let (documents, frame) = split_offer(data);
    if let Ok(mut agent) = Agent::load(&mut storage, sc.profile, &keys) {
        let _ = agent.handle_offer_documents(&mut storage, documents.iter().copied());
        if let Ok(block) = Block::decode(frame) {
            let _ = agent.handle_block(&mut storage, block);
        }
    }
}
