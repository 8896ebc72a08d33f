//! Modules that arrive as patches: a delta from the installed module or a compressed
//! image (`tern-delta`), received into the exchange area, applied into the module's place
//! once every block arrived, checked against the signed SHA-256 and installed like any
//! other — and a power cut at any flash operation of the application loses nothing.

use ed25519_dalek::VerifyingKey;
use tern_device::agent::{Agent, BlockError, BlockOutcome, BlockRequest, OfferError, OfferScope};
use tern_device::block::Block;
use tern_device::boot::{self, ResetCause};
use tern_device::profile::{NRF52840, STM32F2};
use tern_device::state::{UpdatePhase, UpdateResult};
use tern_image::model::ModuleFunction::{SystemPart, UserPart};
use tern_proto::Transfer;
use tern_sim::device::{Image, SimDevice};
use tern_sim::flash::FaultKind;

use crate::support::{dep, device, module, release};

/// An update of `modules` and how each travels (its transfer and the bytes sent).
struct Update {
    modules: Vec<Image>,
    transfers: Vec<Transfer>,
    sent: Vec<Vec<u8>>,
    signed: Vec<u8>,
}

/// The module installed in `module`'s slot on `dev`.
fn installed_bytes(dev: &SimDevice, keys: &[VerifyingKey], like: &Image) -> (Vec<u8>, [u8; 32]) {
    let agent = Agent::load(&mut dev.storage(), dev.profile, keys).expect("provisioned");
    let slot = dev.profile.slot_for(like.entry.function, like.entry.index).expect("a slot");
    let record = agent.state().installed[slot].expect("installed");
    (dev.slot_bytes(slot, record.size as usize), record.sha256)
}

/// A new application sent as a delta from the installed one and a new system part 1
/// sent compressed (a patch from nothing), of about `kib` KiB each.
fn update_of(dev: &SimDevice, keys: &[VerifyingKey], kib: usize) -> Update {
    let p = dev.profile;
    let sys = module(p, SystemPart, 1, 101, &[], (kib + 4) * 1024 + 300);
    let app = module(p, UserPart, 1, 2, &[dep(SystemPart, 1, 100)], kib * 1024 + 7);
    let (old_app, old_hash) = installed_bytes(dev, keys, &app);
    let config = tern_delta::Config::default();
    let delta = tern_delta::make(&old_app, &app.bytes, &config);
    let compressed = tern_delta::make(&[], &sys.bytes, &config);
    let transfers = vec![
        Transfer::Patch { source: None, length: compressed.len() as u32 },
        Transfer::Patch { source: Some(old_hash), length: delta.len() as u32 },
    ];
    let signed = release(p, 1, &[&sys, &app]);
    Update { modules: vec![sys, app], transfers, sent: vec![compressed, delta], signed }
}

fn update(dev: &SimDevice, keys: &[VerifyingKey]) -> Update {
    update_of(dev, keys, 20)
}

fn offer<'k>(dev: &SimDevice, keys: &'k [VerifyingKey], u: &Update) -> Result<Agent<'k>, OfferError> {
    let mut s = dev.storage();
    let mut agent = Agent::load(&mut s, dev.profile, keys).expect("provisioned");
    let hashes: Vec<[u8; 32]> = u.modules.iter().map(|m| m.entry.sha256).collect();
    let scope = OfferScope { attempt: Some(9), modules: &hashes, transfers: &u.transfers };
    agent.handle_offer_scoped(&mut s, [u.signed.as_slice()], scope)?;
    Ok(agent)
}

/// Feeds every block the agent asks for, in order; returns the last outcome.
fn feed(dev: &SimDevice, agent: &mut Agent<'_>, u: &Update) -> Result<BlockOutcome, BlockError> {
    let mut s = dev.storage();
    let mut last = Ok(BlockOutcome::Stored);
    loop {
        let mut wanted = [BlockRequest { module: 0, offset: 0, len: 0 }; 8];
        let n = agent.missing_blocks(&mut s, &mut wanted).expect("markers read");
        if n == 0 || !dev.bench.borrow().powered {
            return last;
        }
        for w in &wanted[..n] {
            let data = &u.sent[w.module as usize][w.offset as usize..][..w.len as usize];
            last = agent.handle_block(&mut s, Block { module: w.module, offset: w.offset, data });
            if last.is_err() || !dev.bench.borrow().powered {
                return last;
            }
        }
    }
}

fn slot_holds(dev: &SimDevice, m: &Image) -> bool {
    dev.slot_holds(dev.profile.slot_for(m.entry.function, m.entry.index).expect("a slot"), &m.bytes)
}

fn reboot(dev: &SimDevice, cause: ResetCause) {
    dev.bench.borrow_mut().power_on();
    boot::boot(&mut dev.storage(), dev.profile, cause).expect("boots");
}

#[test]
fn patched_modules_are_applied_checked_and_installed() {
    for p in [&STM32F2, &NRF52840] {
        let dev = device(p);
        let keys = dev.keys.clone();
        let u = update(&dev, &keys);
        let raw: usize = u.modules.iter().map(|m| m.bytes.len()).sum();
        let sent: usize = u.sent.iter().map(Vec::len).sum();
        let mut agent = offer(&dev, &keys, &u).expect("accepted");
        assert_eq!(agent.progress(), (0, sent as u64), "{}: progress counts patch bytes", p.name);
        assert_eq!(feed(&dev, &mut agent, &u), Ok(BlockOutcome::Complete), "{}", p.name);
        assert_eq!(agent.state().phase, UpdatePhase::Staged);
        reboot(&dev, ResetCause::Software);
        for m in &u.modules {
            assert!(slot_holds(&dev, m), "{}: {} installed from its patch", p.name, m.name);
        }
        println!("{}: {sent} bytes received for {raw} module bytes", p.name);
    }
}

#[test]
fn a_delta_for_another_source_is_refused_before_anything_changes() {
    for p in [&STM32F2, &NRF52840] {
        let dev = device(p);
        let keys = dev.keys.clone();
        let mut u = update(&dev, &keys);
        u.transfers[1] = Transfer::Patch { source: Some([7; 32]), length: u.sent[1].len() as u32 };
        match offer(&dev, &keys, &u) {
            Err(OfferError::DeltaSource(f, 1)) => assert_eq!(f, UserPart),
            other => panic!("{}: {:?}", p.name, other.map(|a| a.state().phase)),
        }
        let agent = Agent::load(&mut dev.storage(), p, &keys).unwrap();
        assert_eq!(agent.state().phase, UpdatePhase::Idle, "{}", p.name);
    }
}

/// A damaged patch — the compressed system part (a patch from nothing, module 0) or the
/// application's delta (module 1) — fails the update with the module it is about, and the
/// device keeps running the modules it had.
#[test]
fn a_damaged_patch_fails_and_the_device_keeps_its_modules() {
    for p in [&STM32F2, &NRF52840] {
        for target in [0usize, 1] {
            for damage in ["payload", "header", "truncated", "another module"] {
                let dev = device(p);
                let keys = dev.keys.clone();
                let mut u = update(&dev, &keys);
                let (old_sys, _) = installed_bytes(&dev, &keys, &u.modules[0]);
                let (old_app, _) = installed_bytes(&dev, &keys, &u.modules[1]);
                let source = match u.transfers[target] {
                    Transfer::Patch { source, .. } => source,
                    Transfer::Raw => None,
                };
                let config = tern_delta::Config::default();
                // A sound patch of the right kind for a module that is not the one offered.
                let other = match target {
                    0 => tern_delta::compress(&u.modules[1].bytes, &config),
                    _ => tern_delta::make(&old_app, &u.modules[0].bytes, &config),
                };
                let patch = &mut u.sent[target];
                match damage {
                    "another module" => {
                        *patch = other;
                        u.transfers[target] = Transfer::Patch { source, length: patch.len() as u32 };
                    }
                    "payload" => {
                        let mid = patch.len() / 2;
                        patch[mid] ^= 0x5A;
                    }
                    "header" => patch[20] ^= 1,
                    _ => {
                        patch.truncate(patch.len() - 9);
                        u.transfers[target] = Transfer::Patch { source, length: patch.len() as u32 };
                    }
                }
                let what = format!("{} module {target} {damage}", p.name);
                let mut agent = offer(&dev, &keys, &u).expect("accepted");
                assert_eq!(feed(&dev, &mut agent, &u), Err(BlockError::PatchFailed(target as u8)), "{what}");
                assert_eq!(agent.state().phase, UpdatePhase::Idle);
                assert_eq!(agent.state().last_result, UpdateResult::PatchFailed);
                reboot(&dev, ResetCause::Software);
                let slot = |m: &Image| p.slot_for(m.entry.function, m.entry.index).unwrap();
                assert!(dev.slot_holds(slot(&u.modules[0]), &old_sys), "{what}: the old system part still runs");
                assert!(dev.slot_holds(slot(&u.modules[1]), &old_app), "{what}: the old application still runs");
            }
        }
    }
}

/// Cuts the power at every flash operation from the last block on (applying the patches,
/// checking, recording the stage), one run per operation: after the reboot the agent
/// finishes, asks again for any block a repair erased, and the update installs.
#[test]
fn a_power_cut_at_any_operation_while_applying_loses_nothing() {
    for p in [&STM32F2, &NRF52840] {
        let mut cut_points = 0;
        let mut repaired = 0;
        for k in 0.. {
            let dev = device(p);
            let keys = dev.keys.clone();
            // Small modules: one run per flash operation.
            let u = update_of(&dev, &keys, 5);
            let mut agent = offer(&dev, &keys, &u).expect("accepted");
            // Every block but the last one.
            let last_module = u.sent.len() - 1;
            let last_offset = (u.sent[last_module].len() as u32 - 1) / 1024 * 1024;
            {
                let mut s = dev.storage();
                let mut all = Vec::new();
                for (i, bytes) in u.sent.iter().enumerate() {
                    for offset in (0..bytes.len() as u32).step_by(1024) {
                        all.push((i as u8, offset));
                    }
                }
                for &(module, offset) in &all {
                    if (module as usize, offset) == (last_module, last_offset) {
                        continue;
                    }
                    let data = &u.sent[module as usize][offset as usize..];
                    let data = &data[..data.len().min(1024)];
                    agent.handle_block(&mut s, Block { module, offset, data }).expect("stored");
                }
            }
            let at = dev.bench.borrow().op_count() + k;
            dev.bench.borrow_mut().faults = vec![(at, FaultKind::Cut)];
            let _ = feed(&dev, &mut agent, &u);
            if dev.bench.borrow().powered {
                // Past the last operation: the sweep is complete.
                assert!(slot_holds_staged(&agent), "{}: staged", p.name);
                break;
            }
            cut_points += 1;
            // The agent finishes at load; blocks a repair erased are asked again.
            dev.bench.borrow_mut().faults.clear();
            dev.bench.borrow_mut().power_on();
            boot::boot(&mut dev.storage(), p, ResetCause::PowerOn).expect("boots");
            let mut agent = Agent::load(&mut dev.storage(), p, &keys).expect("loads");
            if agent.state().phase == UpdatePhase::Receiving {
                repaired += 1;
                assert_eq!(feed(&dev, &mut agent, &u), Ok(BlockOutcome::Complete), "{} cut {k}", p.name);
            }
            assert_eq!(agent.state().phase, UpdatePhase::Staged, "{} cut {k}", p.name);
            reboot(&dev, ResetCause::Software);
            for m in &u.modules {
                assert!(slot_holds(&dev, m), "{} cut {k}: {} installed", p.name, m.name);
            }
            let (old, _) = installed_bytes(&dev, &keys, &u.modules[1]);
            assert_eq!(old, u.modules[1].bytes);
        }
        println!("{}: {cut_points} cut points, {repaired} needed blocks again", p.name);
        assert!(cut_points >= 20, "{}: the sweep covered the application ({cut_points} cuts)", p.name);
    }
}

fn slot_holds_staged(agent: &Agent<'_>) -> bool {
    agent.state().phase == UpdatePhase::Staged
}
