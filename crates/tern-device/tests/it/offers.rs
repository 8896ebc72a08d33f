//! The agent's offer checks that the server plans with: the capacity a device describes
//! (exactly what an offer may stage), and offers that stage part of a signed release.

use tern_device::agent::{self, Agent, BlockRequest, OfferError, OfferScope};
use tern_device::block::{Block, BLOCK_SIZE};
use tern_device::boot::{self, ResetCause};
use tern_device::profile::{FlashGeometry, Profile, NRF52840, STM32F2};
use tern_device::state::{UpdatePhase, MAX_UPDATE_MODULES};
use tern_image::model::ModuleFunction::{self, Bootloader, RadioStack, SystemPart, UserPart};
use tern_proto::Capacity;
use tern_sim::device::{Image, SimDevice};

use crate::support::{dep, device, module, release};

const KIB: u32 = 1024;

/// The capacity follows the profile: the exchange area, or the progress markers when they
/// run out first (8 write units per block).
#[test]
fn capacity_is_the_smaller_of_exchange_and_markers() {
    static WIDE_WRITES: Profile =
        Profile { devices: &[FlashGeometry { write_size: 16, ..STM32F2.devices[0] }], ..STM32F2 };
    let check = |p: &Profile, staging_bytes: u32| {
        let expected = Capacity {
            staging_bytes,
            max_modules: MAX_UPDATE_MODULES as u8,
            block_size: BLOCK_SIZE,
            patches: true,
            link: None,
        };
        assert_eq!(agent::capacity(p), expected, "{}", p.name);
    };
    // 256 KiB exchange; 16 KiB of markers at 4 bytes per unit cover 512 blocks.
    check(&STM32F2, 256 * KIB);
    // 2 MiB exchange; 16 KiB of markers at 1 byte per unit cover 2048 blocks.
    check(&NRF52840, 2048 * KIB);
    // 16-byte write units: 16 KiB of markers cover only 128 blocks.
    check(&WIDE_WRITES, 128 * KIB);
}

/// How many modules an offer staged and which, in staging order; or why it was refused.
type Staged = Result<(u8, Vec<ModuleFunction>), OfferError>;

/// Offers `documents` with `selection` as attempt 7 to a fresh agent on `dev`.
fn offer(dev: &SimDevice, documents: &[&[u8]], selection: &[[u8; 32]]) -> Staged {
    let keys = dev.keys.clone();
    let mut s = dev.storage();
    let mut agent = Agent::load(&mut s, dev.profile, &keys).expect("provisioned");
    let scope = OfferScope { attempt: Some(7), modules: selection, transfers: &[] };
    let got = agent.handle_offer_scoped(&mut s, documents.iter().copied(), scope);
    match got {
        Ok(accepted) => {
            assert_eq!(agent.state().attempt, Some(7), "the attempt is recorded with the offer");
            Ok((accepted.modules, agent.state().staged().map(|m| m.module.function).collect()))
        }
        Err(e) => {
            assert_eq!(agent.state().phase, UpdatePhase::Idle, "a refused offer changes nothing");
            Err(e)
        }
    }
}

/// An offer of exactly the capacity the device describes is accepted; one block more is
/// refused as too large (both modules fit their slots: only the total exceeds).
#[test]
fn offer_of_exactly_the_capacity_is_accepted() {
    let p = &STM32F2;
    let staging = agent::capacity(p).staging_bytes as usize;
    let app = module(p, UserPart, 1, 2, &[dep(SystemPart, 1, 100)], 56 * KIB as usize);
    for (extra, expected) in
        [(0, Ok(2)), (BLOCK_SIZE as usize, Err(OfferError::TooLarge)), (1, Err(OfferError::TooLarge))]
    {
        // The system part fills what the application leaves, plus `extra` bytes (one
        // byte more is a whole block more once rounded).
        let size = staging - app.bytes.len() + extra;
        let sys = module(p, SystemPart, 1, 101, &[], size);
        let signed = release(p, 1, &[&sys, &app]);
        let got = offer(&device(p), &[&signed], &[]).map(|(n, _)| n);
        assert_eq!(got, expected, "{extra} bytes beyond the capacity");
    }
}

/// Five modules on the nRF52840: bootloader, radio stack, system part, application and
/// the asset slot are all signed by one release; the offer picks what it stages.
fn gen3_release() -> (Vec<Image>, Vec<u8>) {
    let p = &NRF52840;
    let modules = vec![
        module(p, Bootloader, 0, 11, &[], 3000),
        module(p, RadioStack, 0, 201, &[], 5000),
        module(p, SystemPart, 1, 102, &[dep(RadioStack, 0, 201)], 6000),
        module(p, UserPart, 1, 2, &[dep(SystemPart, 1, 100)], 4000),
    ];
    let refs: Vec<&Image> = modules.iter().collect();
    let signed = release(p, 1, &refs);
    (modules, signed)
}

/// An offer's module list selects which signed entries are staged, in the list's order.
#[test]
fn offers_stage_the_modules_they_select() {
    let (m, signed) = gen3_release();
    let [boot, radio, sys, app] = [&m[0], &m[1], &m[2], &m[3]];
    let h = |i: &Image| i.entry.sha256;
    let unknown = module(&NRF52840, UserPart, 1, 3, &[], 4000);
    let cases: &[(&str, Vec<[u8; 32]>, Staged)] = &[
        ("empty: all, signed order", vec![], Ok((4, vec![Bootloader, RadioStack, SystemPart, UserPart]))),
        (
            "all, signed order",
            vec![h(boot), h(radio), h(sys), h(app)],
            Ok((4, vec![Bootloader, RadioStack, SystemPart, UserPart])),
        ),
        ("subset", vec![h(app)], Ok((1, vec![UserPart]))),
        ("subset of two", vec![h(radio), h(sys)], Ok((2, vec![RadioStack, SystemPart]))),
        ("reordered subset", vec![h(sys), h(radio)], Ok((2, vec![SystemPart, RadioStack]))),
        ("unknown hash", vec![h(app), h(&unknown)], Err(OfferError::UnsignedModule)),
        ("same module twice", vec![h(app), h(app)], Err(OfferError::TooManyModules)),
        // Trust and safety checks still apply to a subset: the system part needs the new
        // radio stack, which this stage does not bring.
        (
            "system part without its radio stack",
            vec![h(sys)],
            Err(OfferError::UnsatisfiableDependency(dep(RadioStack, 0, 201))),
        ),
    ];
    for (case, selection, expected) in cases {
        let got = offer(&device(&NRF52840), &[&signed], selection);
        assert_eq!(&got, expected, "{case}");
    }
}

/// A module that no signed document lists is refused even when the documents are module
/// statements (one per module); the statements' own modules can be selected.
#[test]
fn statements_select_like_releases() {
    let p = &NRF52840;
    let (m, _) = gen3_release();
    let statements = tern_sim::scenario::Scenario::statements(p, &m[1..3], 1);
    let docs: Vec<&[u8]> = statements.iter().map(Vec::as_slice).collect();
    let h = |i: usize| m[i].entry.sha256;
    assert_eq!(offer(&device(p), &docs, &[]), Ok((2, vec![RadioStack, SystemPart])));
    assert_eq!(offer(&device(p), &docs, &[h(1), h(2)]), Ok((2, vec![RadioStack, SystemPart])));
    assert_eq!(offer(&device(p), &docs, &[h(3)]), Err(OfferError::UnsignedModule));
}

/// A subset offer interrupted by a reset resumes: the same selection keeps the blocks
/// received, and the staged subset installs only those modules.
#[test]
fn subset_offer_resumes_after_reset_and_installs_only_the_subset() {
    let p = &NRF52840;
    let (m, signed) = gen3_release();
    let (radio, sys) = (&m[1], &m[2]);
    let selection = [sys.entry.sha256, radio.entry.sha256];
    let dev = device(p);
    let keys = dev.keys.clone();
    let mut s = dev.storage();
    let scope = OfferScope { attempt: Some(41), modules: &selection, transfers: &[] };
    let mut agent = Agent::load(&mut s, p, &keys).unwrap();
    let installed_before = agent.state().installed;
    assert!(!agent.handle_offer_scoped(&mut s, [signed.as_slice()], scope).unwrap().resumed);
    fn block(image: &Image, module: u8, k: u32) -> Block<'_> {
        let start = (k * BLOCK_SIZE) as usize;
        Block { module, offset: k * BLOCK_SIZE, data: &image.bytes[start..(start + 1024).min(image.bytes.len())] }
    }
    agent.handle_block(&mut s, block(sys, 0, 2)).unwrap();
    agent.handle_block(&mut s, block(radio, 1, 0)).unwrap();

    // A reset; the server offers the same stage again.
    let mut agent = Agent::load(&mut s, p, &keys).unwrap();
    assert_eq!(agent.state().attempt, Some(41));
    assert!(agent.handle_offer_scoped(&mut s, [signed.as_slice()], scope).unwrap().resumed);
    let mut out = [BlockRequest { module: 0, offset: 0, len: 0 }; 16];
    let n = agent.missing_blocks(&mut s, &mut out).unwrap();
    let missing: Vec<(u8, u32)> = out[..n].iter().map(|r| (r.module, r.offset / BLOCK_SIZE)).collect();
    assert_eq!(missing, vec![(0, 0), (0, 1), (0, 3), (0, 4), (0, 5), (1, 1), (1, 2), (1, 3), (1, 4)]);
    // The same stage under another attempt id (a server that restarted the attempt) keeps
    // the blocks and records the new id.
    let renamed = OfferScope { attempt: Some(42), ..scope };
    assert!(agent.handle_offer_scoped(&mut s, [signed.as_slice()], renamed).unwrap().resumed);
    let mut agent = Agent::load(&mut s, p, &keys).unwrap();
    assert_eq!(agent.state().attempt, Some(42));
    assert_eq!(agent.missing_blocks(&mut s, &mut out).unwrap(), missing.len());
    for (module, k) in missing {
        let image = if module == 0 { sys } else { radio };
        agent.handle_block(&mut s, block(image, module, k)).unwrap();
    }
    assert_eq!(agent.state().phase, UpdatePhase::Staged);

    boot::boot(&mut s, p, ResetCause::Software).unwrap();
    let agent = Agent::load(&mut s, p, &keys).unwrap();
    for (slot, before) in installed_before.iter().enumerate().take(p.slots.len()) {
        let now = agent.state().installed[slot];
        let function = p.slots[slot].function;
        let expected = match function {
            RadioStack => Some(radio.entry.sha256),
            SystemPart => Some(sys.entry.sha256),
            _ => before.map(|m| m.sha256),
        };
        assert_eq!(now.map(|m| m.sha256), expected, "slot {slot} ({function:?})");
    }
    assert!(dev.slot_holds(p.slot_for(SystemPart, 1).unwrap(), &sys.bytes));
}
