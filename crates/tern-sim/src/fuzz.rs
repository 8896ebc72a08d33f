//! Entry points for fuzz targets: each takes arbitrary bytes and must never panic.
//!
//! The device targets are made cheap per run so that a fuzzer explores (goal: at least
//! 10,000 runs per second on one core): arbitrary flash is laid over the miniature layouts
//! [`MINI_GEN2`] and [`MINI_GEN3`] (a few hundred KiB instead of several MiB, the same
//! code paths), and offers go to one provisioned device kept between runs whose changed
//! sectors are copied back after each run ([`Bench::restore_from`]).

use std::cell::RefCell;

use tern_device::agent::Agent;
use tern_device::block::Block;
use tern_device::boot::{self, ResetCause};
use tern_device::profile::{BootPolicy, FlashGeometry, Profile, Region, SectorRun, Slot};
use tern_device::state::DeviceState;
use tern_image::model::ModuleFunction;

use crate::device::SimDevice;
use crate::flash::Bench;
use crate::scenario::{scenario_key, synthetic, Scenario};

const KIB: u32 = 1024;

const fn region(dev: u8, offset: u32, size: u32) -> Region {
    Region { dev, offset, size }
}

const fn slot(name: &'static str, function: ModuleFunction, index: u8, region: Region) -> Slot {
    Slot { name, function, index, region }
}

const MINI_POLICY: BootPolicy = BootPolicy { max_test_boots: 3, max_fault_resets: 5, test_watchdog_ms: 60_000 };

/// A miniature STM32F2-class layout for fuzzing: one internal flash of mixed sector sizes
/// (16 KiB sectors, then 32 KiB ones; 256 KiB in all) holding the bootloader, both state
/// banks, the progress markers, the factory image, two system parts, the application and
/// the exchange area — the Photon's regions, scaled down.
pub const MINI_GEN2: Profile = Profile {
    name: "mini-gen2",
    platform_id: 6,
    devices: &[FlashGeometry {
        name: "internal",
        base_address: 0x0800_0000,
        sectors: &[SectorRun { count: 4, size: 16 * KIB }, SectorRun { count: 6, size: 32 * KIB }],
        write_size: 4,
    }],
    slots: &[
        slot("bootloader", ModuleFunction::Bootloader, 0, region(0, 0, 16 * KIB)),
        slot("system-part1", ModuleFunction::SystemPart, 1, region(0, 0x1_8000, 32 * KIB)),
        slot("system-part2", ModuleFunction::SystemPart, 2, region(0, 0x2_0000, 32 * KIB)),
        slot("application", ModuleFunction::UserPart, 1, region(0, 0x2_8000, 32 * KIB)),
    ],
    state_banks: [region(0, 0x4000, 16 * KIB), region(0, 0x8000, 16 * KIB)],
    progress: region(0, 0xC000, 16 * KIB),
    exchange: region(0, 0x3_0000, 64 * KIB),
    factory: region(0, 0x1_0000, 32 * KIB),
    immutable_first_stage: false,
    boot: MINI_POLICY,
};

/// A miniature nRF52840-class layout for fuzzing: a 64 KiB internal flash (radio stack,
/// system part, application, bootloader) and a 128 KiB external one (state banks,
/// progress markers, exchange area, factory image, assets), 4 KiB sectors — the Boron's
/// regions, scaled down.
pub const MINI_GEN3: Profile = Profile {
    name: "mini-gen3",
    platform_id: 13,
    devices: &[
        FlashGeometry {
            name: "internal",
            base_address: 0,
            sectors: &[SectorRun { count: 16, size: 4 * KIB }],
            write_size: 4,
        },
        FlashGeometry {
            name: "external",
            base_address: 0x1200_0000,
            sectors: &[SectorRun { count: 32, size: 4 * KIB }],
            write_size: 1,
        },
    ],
    slots: &[
        slot("radio-stack", ModuleFunction::RadioStack, 0, region(0, 0x1000, 12 * KIB)),
        slot("system-part1", ModuleFunction::SystemPart, 1, region(0, 0x4000, 16 * KIB)),
        slot("application", ModuleFunction::UserPart, 1, region(0, 0x8000, 16 * KIB)),
        slot("bootloader", ModuleFunction::Bootloader, 0, region(0, 0xC000, 8 * KIB)),
        slot("assets", ModuleFunction::Asset, 0, region(1, 0x1_3000, 16 * KIB)),
    ],
    state_banks: [region(1, 0, 4 * KIB), region(1, 0x1000, 4 * KIB)],
    progress: region(1, 0x2000, 4 * KIB),
    exchange: region(1, 0x3000, 48 * KIB),
    factory: region(1, 0xF000, 16 * KIB),
    immutable_first_stage: false,
    boot: MINI_POLICY,
};

/// The layouts `device-boot` lays arbitrary flash over.
pub const FUZZ_PROFILES: [&Profile; 2] = [&MINI_GEN2, &MINI_GEN3];

/// Decodes a state record (`tern_device::state::DeviceState::decode`).
pub fn state_record(data: &[u8]) {
    let _ = DeviceState::decode(data);
}

/// Decodes a block frame (`tern_device::block::Block::decode`).
pub fn block_frame(data: &[u8]) {
    let _ = Block::decode(data);
}

/// Boots a device whose flash holds arbitrary contents: `data` is tiled over every
/// device of the miniature layout chosen by its first byte ([`FUZZ_PROFILES`]), then the
/// boot manager runs and the agent loads. Also feeds the rest as an offer and as a block.
pub fn boot_arbitrary_flash(data: &[u8]) {
    struct Layout {
        erased: Bench,
        dev: SimDevice,
    }
    thread_local! {
        /// Per layout, an erased bench and the device reused by every run: each run puts
        /// the bench back to erased (only the sectors the last run changed are copied)
        /// and then overwrites every byte, so no run sees another's flash.
        static LAYOUTS: Vec<Layout> = FUZZ_PROFILES
            .iter()
            .map(|p| {
                let erased = Bench::new(p.devices);
                let dev = SimDevice::with_bench(p, vec![scenario_key().verifying_key()], erased.clone());
                Layout { erased, dev }
            })
            .collect();
    }
    let Some((&selector, rest)) = data.split_first() else { return };
    let which = selector as usize % FUZZ_PROFILES.len();
    let profile = FUZZ_PROFILES[which];
    LAYOUTS.with(|layouts| {
        let layout = &layouts[which];
        let dev = &layout.dev;
        {
            let mut b = dev.bench.borrow_mut();
            b.restore_from(&layout.erased);
            if !rest.is_empty() {
                let programmed: Vec<bool> = rest.iter().map(|&byte| byte != 0xFF).collect();
                for d in &mut b.devices {
                    tile(&mut d.bytes, rest);
                    tile(&mut d.programmed, &programmed);
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
    });
}

/// Fills `dst` with `pattern` repeated (by doubling: a few large copies, not one per
/// repetition).
fn tile<T: Copy>(dst: &mut [T], pattern: &[T]) {
    let n = pattern.len().min(dst.len());
    dst[..n].copy_from_slice(&pattern[..n]);
    let mut filled = n;
    while filled > 0 && filled < dst.len() {
        let m = filled.min(dst.len() - filled);
        dst.copy_within(..m, filled);
        filled += m;
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
/// (see [`split_offer`]) as one offer, then its block frame. The device is provisioned
/// once per thread; each run starts from that flash (only the sectors the previous run
/// changed are copied back).
pub fn offer_and_block(data: &[u8]) {
    struct Provisioned {
        scenario: Scenario,
        base: Bench,
        dev: SimDevice,
    }
    thread_local! {
        static DEVICE: RefCell<Option<Provisioned>> = const { RefCell::new(None) };
    }
    DEVICE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let Some(scenario) = synthetic(&tern_device::profile::NRF52840).into_iter().next() else { return };
            let dev = scenario.provisioned();
            let base = dev.bench.borrow().clone();
            *cell = Some(Provisioned { scenario, base, dev });
        }
        let Some(p) = cell.as_mut() else { return };
        p.dev.bench.borrow_mut().restore_from(&p.base);
        let mut storage = p.dev.storage();
        let keys = p.dev.keys.clone();
        let (documents, frame) = split_offer(data);
        if let Ok(mut agent) = Agent::load(&mut storage, p.scenario.profile, &keys) {
            let _ = agent.handle_offer_documents(&mut storage, documents.iter().copied());
            if let Ok(block) = Block::decode(frame) {
                let _ = agent.handle_block(&mut storage, block);
            }
        }
    });
}
