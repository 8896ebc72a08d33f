//! Regression tests of issue 13: a corrupted copy source never bricks, an interrupted
//! repair erase is redone, power cuts during test boots do not fail good applications,
//! failing flash with the power on is survived, and the state record's log spreads wear.

use tern_device::agent::{Agent, BlockOutcome};
use tern_device::block::{Block, BLOCK_SIZE};
use tern_device::boot::{self, BootError, ResetCause, Run};
use tern_device::profile::{Profile, NRF52840, STM32F2};
use tern_device::state::{self, UpdatePhase, UpdateResult};
use tern_sim::device::{Image, SimDevice};
use tern_sim::explorer::{explore, Config};
use tern_sim::flash::{FaultKind, OpKind};
use tern_sim::scenario::{self, synthetic, Scenario, Task};

fn scenario(profile: &'static Profile, name: &str) -> Scenario {
    synthetic(profile).into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no scenario {name}"))
}

fn update_of(sc: &Scenario) -> (Vec<u8>, Vec<Image>) {
    match &sc.tasks[0] {
        Task::Update { documents, modules, .. } => (documents[0].clone(), modules.clone()),
        Task::FactoryRestore => unreachable!("the scenarios used here start with an update"),
    }
}

/// Offers the scenario's first update and delivers every block: the update is staged.
fn stage(dev: &SimDevice, sc: &Scenario) {
    let (offer, modules) = update_of(sc);
    let mut s = dev.storage();
    let keys = dev.keys.clone();
    let mut agent = Agent::load(&mut s, sc.profile, &keys).expect("provisioned");
    agent.handle_offer(&mut s, &offer).expect("offer accepted");
    let mut last = None;
    for (i, m) in modules.iter().enumerate() {
        for (k, chunk) in m.bytes.chunks(BLOCK_SIZE as usize).enumerate() {
            let block = Block { module: i as u8, offset: k as u32 * BLOCK_SIZE, data: chunk };
            last = Some(agent.handle_block(&mut s, block).expect("block stored"));
        }
    }
    assert_eq!(last, Some(BlockOutcome::Complete));
    assert_eq!(agent.state().phase, UpdatePhase::Staged);
}

fn flip(dev: &SimDevice, d: u8, offset: u32) {
    dev.bench.borrow_mut().devices[d as usize].bytes[offset as usize] ^= 0x04;
}

/// A bit flipped in a staged image after it was verified: the install is abandoned before
/// anything is erased, the device boots what it had and reports the failed verification —
/// at this boot and every later one. Same for the staged bootloader (the copy that is not
/// power-safe on the STM32F2) and for a system part delivered with the application.
#[test]
fn flipped_bit_in_staged_image_is_abandoned() {
    for p in [&STM32F2, &NRF52840] {
        for name in ["app-update", "bootloader-update", "system-parts-and-app"] {
            let sc = scenario(p, name);
            let dev = sc.provisioned();
            stage(&dev, &sc);
            // The last staged module: installed after the others in the update job.
            let last = {
                let mut s = dev.storage();
                let keys = dev.keys.clone();
                let agent = Agent::load(&mut s, p, &keys).expect("state loads");
                *agent.state().staged().last().expect("staged")
            };
            flip(&dev, p.exchange.dev, p.exchange.offset + last.offset + last.module.size / 2);
            let ops_before = dev.bench.borrow().ops.len();
            for boot_no in 0..3 {
                let mut s = dev.storage();
                let d = boot::boot(&mut s, p, ResetCause::PowerOn)
                    .unwrap_or_else(|e| panic!("{name} on {}: {e:?}", p.name));
                assert_eq!(d.run, Run::Application { test: false }, "{name} on {}, boot {boot_no}", p.name);
                let keys = dev.keys.clone();
                let agent = Agent::load(&mut s, p, &keys).expect("state loads");
                let st = agent.state();
                assert_eq!(st.last_result, UpdateResult::VerifyFailed, "{name} on {}", p.name);
                assert_eq!((st.phase, st.job), (UpdatePhase::Idle, None), "{name} on {}", p.name);
                for img in &sc.initial {
                    let slot = p.slot_for(img.entry.function, img.entry.index).expect("slot");
                    assert!(dev.slot_holds(slot, &img.bytes), "{name} on {}: {} replaced", p.name, img.name);
                    assert_eq!(st.installed[slot].map(|m| m.sha256), Some(img.entry.sha256));
                }
            }
            // Every source is checked before the job's first erase: a staged set of several
            // modules erases no slot when its last one is bad.
            let b = dev.bench.borrow();
            for op in &b.ops[ops_before..] {
                let hits_slot = p.slots.iter().any(|slot| {
                    let r = slot.region;
                    op.dev == r.dev && op.offset < r.end() && r.offset < op.offset + op.len
                });
                assert!(!hits_slot, "{name} on {}: {op:?} wrote a slot", p.name);
            }
        }
    }
}

/// The factory image no longer verifies when a factory restore on request starts: the
/// restore is abandoned, the application keeps running.
#[test]
fn flipped_bit_in_factory_image_on_request() {
    for p in [&STM32F2, &NRF52840] {
        let sc = scenario(p, "factory-restore-on-request");
        let dev = sc.provisioned();
        let mut s = dev.storage();
        let keys = dev.keys.clone();
        let mut agent = Agent::load(&mut s, p, &keys).expect("provisioned");
        assert!(agent.request_factory_restore(&mut s).expect("flash works"));
        flip(&dev, p.factory.dev, p.factory.offset + 500);
        let d = boot::boot(&mut s, p, ResetCause::Software).expect("boots");
        assert_eq!(d.run, Run::Application { test: false }, "{}", p.name);
        let agent = Agent::load(&mut s, p, &keys).expect("state loads");
        assert_eq!(agent.state().last_result, UpdateResult::VerifyFailed);
        assert_eq!(agent.state().factory, None, "a factory image that fails verification is forgotten");
    }
}

/// The agent's sector repair (after a torn block write) erases a sector of the exchange
/// area; that erase, cut by a power loss, leaves cells that read erased and drift later.
/// The erase is journaled in the state record and redone at the next boot, so the blocks
/// received into the sector afterwards do not drift; the update installs.
#[test]
fn interrupted_repair_erase_then_drift() {
    for p in [&STM32F2, &NRF52840] {
        let sc = scenario(p, "interrupted-download-resumed");
        let base = sc.provisioned().bench.borrow().clone();
        let clean = scenario::run(&sc, &base, &[]);
        assert!(clean.violations.is_empty() && clean.bricked.is_none(), "{:?}", clean.violations);
        // A torn write of a block in the exchange area, then a marginal (cut at the very
        // end) erase at every later erase of the exchange area: the repair's among them.
        let ex = p.exchange;
        let in_exchange = |op: &tern_sim::flash::Op| op.dev == ex.dev && ex.offset <= op.offset && op.offset < ex.end();
        let torn = clean
            .log
            .iter()
            .enumerate()
            .filter(|(_, op)| op.kind == OpKind::Write && in_exchange(op) && op.len >= 512)
            .nth(3)
            .map(|(i, _)| i as u64)
            .expect("blocks are written to the exchange area");
        let after_tear = scenario::run(&sc, &base, &[(torn, FaultKind::TornWrite)]);
        let repairs: Vec<u64> = after_tear
            .log
            .iter()
            .enumerate()
            .skip(torn as usize + 1)
            .filter(|(_, op)| op.kind == OpKind::Erase && in_exchange(op))
            .map(|(i, _)| i as u64)
            .collect();
        assert!(!repairs.is_empty(), "{}: the torn block is repaired by erasing its sector", p.name);
        for repair in repairs {
            let faults = [(torn, FaultKind::TornWrite), (repair, FaultKind::MarginalErase)];
            let out = scenario::run(&sc, &base, &faults);
            assert_eq!(out.injected.len(), 2, "{}: {faults:?}", p.name);
            assert!(out.bricked.is_none(), "{}: {faults:?}: {:?}", p.name, out.bricked);
            assert!(out.violations.is_empty(), "{}: {faults:?}: {:?}", p.name, out.violations);
            // The journal made the boot manager erase the sector again.
            let again = out
                .log
                .iter()
                .skip(repair as usize + 1)
                .any(|op| op.kind == OpKind::Erase && out.log[repair as usize].offset == op.offset);
            assert!(again, "{}: the interrupted repair erase was not redone", p.name);
        }
    }
}

/// The triple faults the random runs found (`tern sim powercut --random-runs 3000` before
/// the fix): power cuts between a test boot's count and its confirmation failed the
/// factory application (disabled until the server acts) or rolled back a good update.
#[test]
fn triple_faults_during_test_boots() {
    let cases: &[(&str, &[(u64, FaultKind)])] = &[
        (
            "factory-restore-on-request",
            &[(14, FaultKind::TornErase), (18, FaultKind::Cut), (22, FaultKind::Cut), (23, FaultKind::Cut)],
        ),
        (
            "factory-restore-on-request",
            &[(15, FaultKind::Cut), (16, FaultKind::Cut), (20, FaultKind::Cut), (24, FaultKind::Cut)],
        ),
        (
            "factory-restore-on-request",
            &[(15, FaultKind::Cut), (18, FaultKind::Cut), (21, FaultKind::TornWrite), (23, FaultKind::TornWrite)],
        ),
    ];
    for p in [&STM32F2, &NRF52840] {
        for (name, faults) in cases {
            let sc = scenario(p, name);
            let base = sc.provisioned().bench.borrow().clone();
            let out = scenario::run(&sc, &base, faults);
            assert!(
                out.bricked.is_none() && out.violations.is_empty(),
                "{name} on {}: {faults:?}: {:?}",
                p.name,
                out.violations
            );
        }
        // Whatever the operation indexes of this build: every triple of cuts at the first
        // test boot of each scenario that has one.
        for name in ["factory-restore-on-request", "app-update", "bad-app-rollback"] {
            let sc = scenario(p, name);
            let base = sc.provisioned().bench.borrow().clone();
            let clean = scenario::run(&sc, &base, &[]);
            let n = clean.ops;
            for a in n.saturating_sub(8)..n {
                for b in a + 1..a + 5 {
                    for c in b + 1..b + 5 {
                        let faults = [(a, FaultKind::Cut), (b, FaultKind::Cut), (c, FaultKind::Cut)];
                        let out = scenario::run(&sc, &base, &faults);
                        assert!(
                            out.bricked.is_none() && out.violations.is_empty(),
                            "{name} on {}: {faults:?}: {:?} {:?}",
                            p.name,
                            out.bricked,
                            out.violations
                        );
                    }
                }
            }
        }
    }
}

/// The default explorer run finds that class: with the test-boot accounting of before the
/// fix (every boot counted, whatever the reset), its chains report violations. Checked
/// through the explorer's own counters: nearby pairs and triples ran on every scenario.
#[test]
fn default_explorer_runs_nearby_chains() {
    let sc = scenario(&STM32F2, "factory-restore-on-request");
    let rep = explore(&sc, &Config { random_runs: 0, ..Config::default() });
    assert!(
        rep.multi_fault_runs > 10 * rep.flash_ops,
        "{} chains for {} operations",
        rep.multi_fault_runs,
        rep.flash_ops
    );
    assert_eq!((rep.bricked, rep.violations), (0, 0), "{:?}", rep.examples);
}

/// A program or an erase that fails with the power on (an error returned) anywhere in an
/// update or a fallback: the port resets, the device resumes and finishes.
#[test]
fn failing_erase_and_program_with_power_on() {
    for p in [&STM32F2, &NRF52840] {
        for name in ["app-update", "system-parts-and-app", "bad-app-rollback", "factory-restore-on-request"] {
            let sc = scenario(p, name);
            let config = Config {
                random_runs: 0,
                chain_window: 0,
                kinds: vec![
                    FaultKind::FailErase,
                    FaultKind::FailProgram,
                    FaultKind::SilentErase,
                    FaultKind::SilentProgram,
                ],
                ..Config::default()
            };
            let rep = explore(&sc, &config);
            assert!(rep.faults_injected >= rep.flash_ops, "{name} on {}: every operation faulted", p.name);
            assert_eq!((rep.bricked, rep.violations), (0, 0), "{name} on {}: {:?}", p.name, rep.examples);
        }
    }
}

/// The boot manager's answer to a state it cannot use is an error, never a panic, and a
/// device whose records were written by the 4 KiB banks of earlier Gen 3 layouts still
/// loads (both old banks lie inside the new bank A).
#[test]
fn state_log_reads_records_of_the_old_gen3_banks() {
    let sc = scenario(&NRF52840, "app-update");
    let dev = sc.provisioned();
    let mut s = dev.storage();
    let st = state::load(&mut s, &NRF52840).expect("provisioned").state;
    // Rewrite the flash as the old layout had it: one record at 0x0, a newer one at 0x1000.
    let bank = NRF52840.state_banks[0];
    {
        let mut b = dev.bench.borrow_mut();
        let d = &mut b.devices[bank.dev as usize];
        for k in 0..0xC000usize {
            d.bytes[k] = 0xFF;
            d.programmed[k] = false;
        }
        let mut rec = [0u8; state::RECORD_LEN];
        let mut old = st.clone();
        old.sequence = 7;
        old.encode(&mut rec);
        d.bytes[..state::RECORD_LEN].copy_from_slice(&rec);
        old.sequence = 8;
        old.last_result = UpdateResult::Confirmed;
        old.encode(&mut rec);
        d.bytes[0x1000..0x1000 + state::RECORD_LEN].copy_from_slice(&rec);
    }
    let loaded = state::load(&mut s, &NRF52840).expect("old records load");
    assert_eq!((loaded.state.sequence, loaded.state.last_result), (8, UpdateResult::Confirmed));
    let d = boot::boot(&mut s, &NRF52840, ResetCause::PowerOn).expect("boots");
    assert_eq!(d.run, Run::Application { test: false });
    assert!(!matches!(boot::boot(&mut s, &NRF52840, ResetCause::PowerOn), Err(BootError::NoState)));
}

/// The state record's log spreads its erases: over 24 application updates in a row, the
/// most-erased state sector is erased at most once per update (four times per update when
/// each state change erased a bank), and every state change was written.
#[test]
fn state_record_wear_is_spread() {
    for p in [&STM32F2, &NRF52840] {
        let e = tern_sim::cost::endurance(p, 24);
        assert!(e.state_writes >= 24 * 7, "{}: {} state writes", p.name, e.state_writes);
        let records = u64::from(p.state_banks[0].size / state::RECORD_LEN as u32);
        // One bank erase per `records` writes, shared by two banks.
        assert!(e.state_sector_erases * records <= e.state_writes / 2 + records, "{}: {e:?}", p.name);
        assert!(e.state_sector_erases_per_update <= 1.0, "{}: {e:?}", p.name);
    }
}

/// A block write cut at its very end reads right but drifts after a later power-on. The
/// agent does not trust a block that was written but not marked as received: it rewrites
/// it (repairing its sector), so the drift never reaches the staged image and the update
/// installs from the first offer — before, the block was kept, and only the boot manager's
/// check before installing caught the drift, after which the server had to offer again.
#[test]
fn block_write_cut_at_its_very_end_is_rewritten() {
    for p in [&STM32F2, &NRF52840] {
        for name in ["app-update", "interrupted-download-resumed", "system-parts-and-app"] {
            let sc = scenario(p, name);
            let base = sc.provisioned().bench.borrow().clone();
            let clean = scenario::run(&sc, &base, &[]);
            assert_eq!(clean.offers, 1, "{name} on {}", p.name);
            let ex = p.exchange;
            let blocks: Vec<u64> = clean
                .log
                .iter()
                .enumerate()
                .filter(|(_, op)| {
                    op.kind == OpKind::Write && op.dev == ex.dev && ex.offset <= op.offset && op.offset < ex.end()
                })
                .map(|(i, _)| i as u64)
                .collect();
            assert!(blocks.len() >= 4, "{name} on {}: blocks are written to the exchange area", p.name);
            for at in blocks {
                let faults = [(at, FaultKind::MarginalProgram)];
                let out = scenario::run(&sc, &base, &faults);
                assert_eq!(out.injected.len(), 1, "{name} on {}: {faults:?}", p.name);
                assert!(
                    out.bricked.is_none() && out.violations.is_empty(),
                    "{name} on {}: {faults:?}: {:?}",
                    p.name,
                    out.violations
                );
                assert_eq!(out.offers, 1, "{name} on {}: {faults:?}: the drifted block needed a second offer", p.name);
            }
        }
    }
}

/// An erase of the progress markers that reports success but leaves zero bits (found by
/// `--faults all --all-pairs`: `[(2, SilentErase), (16, ScatterTear)]` on the Photon's
/// `app-update`): a marker unit left at 0 made a block the server never sent look received,
/// and the device waited for nothing. Erases are read back, a failed one is an error, the
/// port resets and the offer's preparation is redone. The stuck bytes land at random: the
/// seed is varied with a fault past the end of the run (never injected).
#[test]
fn silent_erase_of_the_progress_markers() {
    for p in [&STM32F2, &NRF52840] {
        for name in ["app-update", "interrupted-download-resumed"] {
            let sc = scenario(p, name);
            let base = sc.provisioned().bench.borrow().clone();
            let clean = scenario::run(&sc, &base, &[]);
            let pr = p.progress;
            let erases: Vec<u64> = clean
                .log
                .iter()
                .enumerate()
                .filter(|(_, op)| op.kind == OpKind::Erase && op.dev == pr.dev && op.offset == pr.offset)
                .map(|(i, _)| i as u64)
                .collect();
            assert!(!erases.is_empty(), "{name} on {}: the offer erases the progress markers", p.name);
            for at in erases {
                for k in 0..64 {
                    let faults = [(at, FaultKind::SilentErase), (1_000_000 + k, FaultKind::Cut)];
                    let out = scenario::run(&sc, &base, &faults);
                    assert!(
                        out.bricked.is_none() && out.violations.is_empty(),
                        "{name} on {}: {faults:?}: {:?}",
                        p.name,
                        out.violations
                    );
                }
            }
        }
    }
    let sc = scenario(&STM32F2, "app-update");
    let base = sc.provisioned().bench.borrow().clone();
    let out = scenario::run(&sc, &base, &[(2, FaultKind::SilentErase), (16, FaultKind::ScatterTear)]);
    assert!(out.violations.is_empty(), "{:?}", out.violations);
}

/// Found by the acceptance run (`bad-app-rollback`, 112 runs per profile): the offer is
/// cut right after the device journaled it (`marginal_program` of that state write), the
/// device goes on by itself, the bad application fails its test boots and the rollback
/// copy of the good one has flipped (`retention`), so the factory image is restored —
/// the best end there is. The simulated server then offered the bad update a second
/// time, as if it had never been sent (a real server ends the attempt on the failed
/// result). Now the device ends on the factory image having taken one offer.
#[test]
fn offer_cut_after_journaling_is_not_sent_again_after_a_failure() {
    for p in [&STM32F2, &NRF52840] {
        let sc = scenario(p, "bad-app-rollback");
        let base = sc.provisioned().bench.borrow().clone();
        let clean = scenario::run(&sc, &base, &[]);
        // The offer's first state write, and the writes of the rollback copy (into the
        // exchange area, after its erase).
        let state_write = clean.log.iter().position(|op| op.kind == OpKind::Write).expect("a write") as u64;
        let copy_erase = clean
            .log
            .iter()
            .rposition(|op| {
                op.kind == OpKind::Erase
                    && op.dev == p.exchange.dev
                    && op.offset >= p.exchange.offset
                    && op.offset < p.exchange.end()
            })
            .expect("the rollback copy's erase") as u64;
        let mut factory_endings = 0;
        for copy_write in copy_erase + 1..copy_erase + 4 {
            let faults = [(state_write + 1, FaultKind::MarginalProgram), (copy_write, FaultKind::Retention)];
            let out = scenario::run(&sc, &base, &faults);
            assert!(
                out.bricked.is_none() && out.violations.is_empty(),
                "{} {faults:?}: {:?} {:?}",
                p.name,
                out.bricked,
                out.violations
            );
            assert_eq!(out.offers, 0, "{} {faults:?}: the device went on from its journal", p.name);
            factory_endings += usize::from(out.injected.len() == 2);
        }
        assert!(factory_endings > 0, "{}: no run injected both faults", p.name);
    }
}
