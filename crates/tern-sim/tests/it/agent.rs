//! The agent and boot manager on the flash model: offer checks, block handling,
//! resumption, dependency checks, safe mode, and saving a device to a file.

use ed25519_dalek::SigningKey;
use tern_device::agent::{Agent, BlockOutcome, BlockRequest, OfferError};
use tern_device::block::{Block, BLOCK_SIZE};
use tern_device::boot::{self, ResetCause, Run, SafeModeReason};
use tern_device::profile::{Profile, NRF52840, STM32F2};
use tern_device::state::{UpdatePhase, UpdateResult, MAX_UPDATE_MODULES};
use tern_image::manifest::build::Document;
use tern_image::manifest::{self, Kind};
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image, SimDevice};
use tern_sim::flash::OpKind;
use tern_sim::scenario::{scenario_key, synthetic, Scenario};

fn dep(function: ModuleFunction, index: u8, version: u32) -> Dependency {
    Dependency { function, index, version }
}

/// A device provisioned like the synthetic scenarios of `profile`.
fn device(profile: &'static Profile) -> (SimDevice, Scenario) {
    let sc = synthetic(profile).into_iter().next().expect("synthetic scenarios exist");
    (sc.provisioned(), sc)
}

fn app(profile: &Profile, version: u32, deps: &[Dependency], size: usize) -> Image {
    Image::synthetic(profile, ModuleFunction::UserPart, 1, version, deps, Behaviour::Healthy, size)
}

fn signed(profile: &Profile, platform: u16, counter: u64, modules: &[&Image], key: &SigningKey) -> Vec<u8> {
    Document {
        kind: Kind::Release,
        platform_id: platform,
        product_id: 0,
        security_counter: counter,
        created: 1,
        modules: modules.iter().map(|m| m.entry).collect(),
        name: profile.name.into(),
    }
    .sign(key)
    .expect("valid document")
}

fn check_offer(profile: &'static Profile, offer: Vec<u8>, expected: Result<(), OfferError>) {
    let (dev, _) = device(profile);
    let mut s = dev.storage();
    let keys = dev.keys.clone();
    let mut agent = Agent::load(&mut s, profile, &keys).expect("provisioned");
    let got = agent.handle_offer(&mut s, &offer).map(|_| ());
    assert_eq!(got, expected);
    if expected.is_err() {
        assert_eq!(agent.state().phase, UpdatePhase::Idle, "a refused offer changes nothing");
    }
}

#[test]
fn offers_are_checked() {
    let key = scenario_key();
    let other = SigningKey::from_bytes(&[1; 32]);
    for p in [&STM32F2, &NRF52840] {
        let sys = dep(ModuleFunction::SystemPart, 1, 100);
        let good = app(p, 2, &[sys], 3000);
        let mut moved = good.clone();
        moved.entry.start_address += 0x1000;
        let mut huge = good.clone();
        huge.entry.size = 200 * 1024;
        let needs_missing = app(p, 2, &[dep(ModuleFunction::SystemPart, 9, 1)], 3000);
        let needs_newer_system = app(p, 2, &[dep(ModuleFunction::SystemPart, 1, 999)], 3000);
        // Neither profile has a third system part (the Electron's has).
        let part3 = Image::new(
            "part3",
            vec![0; 100],
            tern_sim::device::entry(ModuleFunction::SystemPart, 3, 1, 0x0806_0000, &[], tern_image::Format::Raw),
        );
        let cases: Vec<(Vec<u8>, Result<(), OfferError>)> = vec![
            (signed(p, p.platform_id, 1, &[&good], &key), Ok(())),
            (signed(p, p.platform_id, 0, &[&good], &key), Ok(())),
            (signed(p, p.platform_id, 1, &[&good], &other), Err(OfferError::Manifest(manifest::Error::UnknownKey))),
            (b"garbage".to_vec(), Err(OfferError::Manifest(manifest::Error::Malformed("COSE_Sign1 tag")))),
            (signed(p, 99, 1, &[&good], &key), Err(OfferError::WrongPlatform { device: p.platform_id, offer: 99 })),
            (signed(p, p.platform_id, 1, &[&moved], &key), Err(OfferError::WrongAddress(ModuleFunction::UserPart, 1))),
            (signed(p, p.platform_id, 1, &[&huge], &key), Err(OfferError::TooLarge)),
            (signed(p, p.platform_id, 1, &[&part3], &key), Err(OfferError::NoSlot(ModuleFunction::SystemPart, 3))),
            (signed(p, p.platform_id, 1, &[&good, &good], &key), Err(OfferError::TooManyModules)),
            (
                signed(p, p.platform_id, 1, &[&needs_missing], &key),
                Err(OfferError::UnsatisfiableDependency(dep(ModuleFunction::SystemPart, 9, 1))),
            ),
            // Merely unmet: accepted, the device will boot safe mode until healed.
            (signed(p, p.platform_id, 1, &[&needs_newer_system], &key), Ok(())),
        ];
        for (offer, expected) in cases {
            check_offer(p, offer, expected);
        }
    }
}

#[test]
fn security_counter_never_goes_backwards() {
    let (dev, _) = device(&NRF52840);
    let p = &NRF52840;
    let key = scenario_key();
    let mut s = dev.storage();
    let keys = dev.keys.clone();
    let new = app(p, 2, &[], 1500);
    let mut agent = Agent::load(&mut s, p, &keys).unwrap();
    agent.handle_offer(&mut s, &signed(p, p.platform_id, 5, &[&new], &key)).unwrap();
    agent.handle_block(&mut s, Block { module: 0, offset: 0, data: &new.bytes[..1024] }).unwrap();
    assert_eq!(
        agent.handle_block(&mut s, Block { module: 0, offset: 1024, data: &new.bytes[1024..] }),
        Ok(BlockOutcome::Complete)
    );
    boot::boot(&mut s, p, ResetCause::Software).unwrap();
    let mut agent = Agent::load(&mut s, p, &keys).unwrap();
    assert_eq!(agent.state().security_counter, 5);
    let old = app(p, 3, &[], 1500);
    assert_eq!(
        agent.handle_offer(&mut s, &signed(p, p.platform_id, 4, &[&old], &key)),
        Err(OfferError::Downgrade { device: 5, offer: 4 })
    );
}

/// Blocks in any order with duplicates; a reset in the middle resumes where it stopped; a
/// wrong block is caught by the hash.
#[test]
fn blocks_any_order_duplicates_resume_and_verify() {
    for p in [&STM32F2, &NRF52840] {
        let (dev, _) = device(p);
        let keys = dev.keys.clone();
        let new = app(p, 2, &[], 10 * 1024 + 5);
        let offer = signed(p, p.platform_id, 1, &[&new], &scenario_key());
        let block = |k: u32| {
            let start = (k * BLOCK_SIZE) as usize;
            Block { module: 0, offset: k * BLOCK_SIZE, data: &new.bytes[start..(start + 1024).min(new.bytes.len())] }
        };
        let mut s = dev.storage();
        let mut agent = Agent::load(&mut s, p, &keys).unwrap();
        assert!(!agent.handle_offer(&mut s, &offer).unwrap().resumed);
        for k in [10, 3, 3, 0, 7] {
            let out = agent.handle_block(&mut s, block(k)).unwrap();
            assert!(matches!(out, BlockOutcome::Stored | BlockOutcome::Duplicate));
        }
        assert_eq!(agent.handle_block(&mut s, block(3)), Ok(BlockOutcome::Duplicate));
        assert_eq!(
            agent.handle_block(&mut s, Block { module: 0, offset: 100, data: &[0; 1024] }),
            Err(tern_device::BlockError::BadOffset)
        );
        assert_eq!(
            agent.handle_block(&mut s, Block { module: 0, offset: 1024, data: &[0; 10] }),
            Err(tern_device::BlockError::BadLength)
        );
        assert_eq!(
            agent.handle_block(&mut s, Block { module: 1, offset: 0, data: &[0; 10] }),
            Err(tern_device::BlockError::UnknownModule)
        );

        // Reset: a new agent from flash, and the same offer again, keep the progress.
        let mut agent = Agent::load(&mut s, p, &keys).unwrap();
        assert!(agent.handle_offer(&mut s, &offer).unwrap().resumed);
        let mut missing = [BlockRequest { module: 0, offset: 0, len: 0 }; 16];
        let n = agent.missing_blocks(&mut s, &mut missing).unwrap();
        let offsets: Vec<u32> = missing[..n].iter().map(|r| r.offset / BLOCK_SIZE).collect();
        assert_eq!(offsets, vec![1, 2, 4, 5, 6, 8, 9]);
        assert_eq!(missing[n - 1].len, 1024);
        // Block 9 with wrong bytes: everything arrives, the hash catches it.
        for k in [1, 2, 4, 5, 6, 8] {
            agent.handle_block(&mut s, block(k)).unwrap();
        }
        let bad = vec![0xAA; 1024];
        assert_eq!(
            agent.handle_block(&mut s, Block { module: 0, offset: 9 * 1024, data: &bad }),
            Err(tern_device::BlockError::VerifyFailed(0))
        );
        assert_eq!(agent.state().last_result, UpdateResult::VerifyFailed);
        assert_eq!(agent.state().phase, UpdatePhase::Idle);
    }
}

/// An application needing a newer system part boots safe mode and says why; the system
/// part arriving heals it.
#[test]
fn unmet_dependency_boots_safe_mode_then_heals() {
    let p = &NRF52840;
    let (dev, _) = device(p);
    let keys = dev.keys.clone();
    let key = scenario_key();
    let mut s = dev.storage();
    let need = dep(ModuleFunction::SystemPart, 1, 150);
    let new_app = app(p, 9, &[need], 2000);
    let deliver = |s: &mut _, img: &Image, counter| {
        let mut agent = Agent::load(s, p, &keys).unwrap();
        agent.handle_offer(s, &signed(p, p.platform_id, counter, &[img], &key)).unwrap();
        let mut last = None;
        for (k, chunk) in img.bytes.chunks(1024).enumerate() {
            last = Some(agent.handle_block(s, Block { module: 0, offset: k as u32 * 1024, data: chunk }).unwrap());
        }
        assert_eq!(last, Some(BlockOutcome::Complete));
    };
    deliver(&mut s, &new_app, 1);
    let d = boot::boot(&mut s, p, ResetCause::Software).unwrap();
    assert_eq!(d.run, Run::SafeMode(SafeModeReason::DependencyUnmet(need)));
    // Safe mode does not use up test boots.
    for _ in 0..5 {
        assert_eq!(
            boot::boot(&mut s, p, ResetCause::PowerOn).unwrap().run,
            Run::SafeMode(SafeModeReason::DependencyUnmet(need))
        );
    }
    let sys = Image::synthetic(p, ModuleFunction::SystemPart, 1, 150, &[], Behaviour::Healthy, 4000);
    deliver(&mut s, &sys, 1);
    assert_eq!(boot::boot(&mut s, p, ResetCause::Software).unwrap().run, Run::Application { test: true });
}

#[test]
fn simulated_device_survives_save_and_load() {
    let (dev, _) = device(&STM32F2);
    let dir = tern_testkit::scratch("sim-save");
    let path = dir.join("device.bin");
    dev.save(&path).unwrap();
    let again = SimDevice::load(&path, dev.keys.clone()).unwrap();
    assert_eq!(again.profile.name, "photon");
    assert_eq!(again.bench.borrow().devices[0].bytes, dev.bench.borrow().devices[0].bytes);
    let mut s = again.storage();
    assert_eq!(boot::boot(&mut s, again.profile, ResetCause::PowerOn).unwrap().run, Run::Application { test: false });
    std::fs::write(&path, b"TERNSIM1\x03abc").unwrap();
    assert!(SimDevice::load(&path, vec![]).is_err());
}

/// Every Photon and Argon release binary of the corpus installs at its real start
/// address in its profile (offer accepted: slot, address and size match).
#[test]
fn profiles_are_consistent() {
    for p in tern_device::profile::PROFILES {
        assert_eq!(p.check(), Ok(()), "{}", p.name);
    }
}

/// A confirmed application that keeps panicking is replaced: by the rollback copy when
/// one exists (after an update), else by the factory image; an application whose slot no
/// longer matches its hash is never started.
#[test]
fn repeated_faults_and_corruption_lead_to_fallbacks() {
    let p = &STM32F2;
    let (dev, sc) = device(p);
    let mut s = dev.storage();
    let limit = p.boot.max_fault_resets;
    // No update yet, so no rollback copy: the factory image replaces the application.
    for i in 1..limit {
        let d = boot::boot(&mut s, p, ResetCause::Panic).unwrap();
        assert_eq!(d.run, Run::Application { test: false }, "fault reset {i} is tolerated");
    }
    let d = boot::boot(&mut s, p, ResetCause::Watchdog).unwrap();
    assert!(d.events.factory_restored);
    assert_eq!(d.run, Run::Application { test: true });
    let keys = dev.keys.clone();
    let agent = Agent::load(&mut s, p, &keys).unwrap();
    let app = p.app_slot().unwrap();
    assert_eq!(agent.state().installed[app].map(|m| m.sha256), Some(sc.factory.entry.sha256));
    assert_eq!(agent.state().last_result, UpdateResult::FactoryRestored);

    // Corrupt the application slot: the boot manager must not start it.
    let (dev, _) = device(p);
    let region = p.slots[app].region;
    dev.bench.borrow_mut().devices[0].bytes[region.offset as usize + 100] ^= 0xFF;
    let mut s = dev.storage();
    let d = boot::boot(&mut s, p, ResetCause::PowerOn).unwrap();
    assert!(d.events.factory_restored, "{d:?}");
    assert!(dev.slot_holds(app, &sc.factory.bytes));
}

#[test]
fn behaviour_comes_from_the_image() {
    let check = |bytes: &[u8], expected| assert_eq!(Behaviour::of_image(bytes), expected);
    check(b"TERN-APP:panic;rest", Behaviour::Panic);
    check(b"TERN-APP:hang;", Behaviour::Hang);
    check(b"TERN-APP:noconfirm;", Behaviour::NeverConfirms);
    check(b"TERN-APP:healthy;", Behaviour::Healthy);
    check(b"TERN-APP:unknown;", Behaviour::Healthy);
    check(b"", Behaviour::Healthy);
    for path in tern_testkit::corpus_files("particle/releases").iter().take(5) {
        check(&std::fs::read(path).unwrap(), Behaviour::Healthy);
    }
}

#[test]
fn safe_mode_on_request_is_one_shot() {
    let p = &NRF52840;
    let (dev, _) = device(p);
    let keys = dev.keys.clone();
    let mut s = dev.storage();
    Agent::load(&mut s, p, &keys).unwrap().request_safe_mode(&mut s).unwrap();
    assert_eq!(boot::boot(&mut s, p, ResetCause::Software).unwrap().run, Run::SafeMode(SafeModeReason::Requested));
    assert_eq!(boot::boot(&mut s, p, ResetCause::Software).unwrap().run, Run::Application { test: false });
}

/// A module statement (one module, signed on its own) as a server composes offers from
/// its catalog.
fn statement(platform: u16, product: u32, counter: u64, module: &Image, key: &SigningKey) -> Vec<u8> {
    Document {
        kind: Kind::ModuleStatement,
        platform_id: platform,
        product_id: product,
        security_counter: counter,
        created: 1,
        modules: vec![module.entry],
        name: String::new(),
    }
    .sign(key)
    .expect("valid statement")
}

/// The signed documents of one offer.
type Documents = Vec<Vec<u8>>;

/// Offers `documents` to a provisioned device and checks the outcome (the number of
/// modules accepted, or the error). A refused offer must leave the device as it was: no
/// flash operation at all, the same state.
fn check_documents(profile: &'static Profile, documents: &[Vec<u8>], expected: Result<u8, OfferError>) {
    let (dev, _) = device(profile);
    let mut s = dev.storage();
    let keys = dev.keys.clone();
    let mut agent = Agent::load(&mut s, profile, &keys).expect("provisioned");
    let before = agent.state().clone();
    let ops = dev.bench.borrow().op_count();
    let got = agent.handle_offer_documents(&mut s, documents.iter().map(Vec::as_slice)).map(|a| a.modules);
    assert_eq!(got, expected, "{} documents on {}", documents.len(), profile.name);
    if expected.is_err() {
        assert_eq!(agent.state(), &before, "a refused offer changes no state");
        assert_eq!(dev.bench.borrow().op_count(), ops, "a refused offer erases and programs nothing");
        assert_eq!(Agent::load(&mut s, profile, &keys).unwrap().state(), &before, "nor on flash");
    }
}

#[test]
fn offers_of_several_documents_are_checked() {
    use ModuleFunction::*;
    let key = scenario_key();
    let other = SigningKey::from_bytes(&[1; 32]);
    for p in [&STM32F2, &NRF52840] {
        let id = p.platform_id;
        let img = |f, i, v, deps: &[Dependency]| Image::synthetic(p, f, i, v, deps, Behaviour::Healthy, 3000);
        let sys = img(SystemPart, 1, 104, &[]);
        let app = img(UserPart, 1, 9, &[dep(SystemPart, 1, 104)]);
        let boot = img(Bootloader, 0, 11, &[]);
        let app_too_new = img(UserPart, 1, 9, &[dep(SystemPart, 1, 105)]);
        let stmt = |m: &Image| statement(id, 0, 1, m, &key);
        let release = signed(p, id, 1, &[&app], &key);
        let five: Vec<Vec<u8>> = [&sys, &app, &boot, &sys, &app].into_iter().map(stmt).collect();
        let cases: Vec<(Documents, Result<u8, OfferError>)> = vec![
            (vec![stmt(&sys), stmt(&app)], Ok(2)),
            // The application first: the order is the server's, dependencies judge the set.
            (vec![stmt(&app), stmt(&sys)], Ok(2)),
            (vec![stmt(&sys), stmt(&app), stmt(&boot)], Ok(3)),
            (vec![stmt(&app)], Ok(1)),
            (vec![], Err(OfferError::MixedDocuments)),
            (vec![release.clone(), stmt(&sys)], Err(OfferError::MixedDocuments)),
            (vec![stmt(&sys), release.clone()], Err(OfferError::MixedDocuments)),
            (vec![release.clone(), release.clone()], Err(OfferError::MixedDocuments)),
            (vec![stmt(&sys), statement(99, 0, 1, &app, &key)], Err(OfferError::MixedDocuments)),
            (vec![stmt(&sys), statement(id, 7, 1, &app, &key)], Err(OfferError::MixedDocuments)),
            (
                vec![statement(99, 0, 1, &sys, &key), statement(99, 0, 1, &app, &key)],
                Err(OfferError::WrongPlatform { device: id, offer: 99 }),
            ),
            // One statement signed by a key the device does not trust, among good ones.
            (
                vec![stmt(&sys), statement(id, 0, 1, &app, &other), stmt(&boot)],
                Err(OfferError::Manifest(manifest::Error::UnknownKey)),
            ),
            (
                vec![stmt(&sys), b"garbage".to_vec()],
                Err(OfferError::Manifest(manifest::Error::Malformed("COSE_Sign1 tag"))),
            ),
            (five, Err(OfferError::TooManyModules)),
            (vec![stmt(&app), stmt(&app)], Err(OfferError::TooManyModules)),
            (vec![stmt(&sys), stmt(&app_too_new)], Err(OfferError::UnsatisfiableDependency(dep(SystemPart, 1, 105)))),
        ];
        const { assert!(MAX_UPDATE_MODULES < 5, "the five-statement case must exceed the limit") };
        for (documents, expected) in cases {
            check_documents(p, &documents, expected);
        }
    }
}

/// Delivers every block of the accepted offer, in order.
fn deliver_all(agent: &mut Agent<'_>, s: &mut tern_sim::device::SimStorage, modules: &[&Image]) {
    let mut last = None;
    for (i, m) in modules.iter().enumerate() {
        for (k, chunk) in m.bytes.chunks(BLOCK_SIZE as usize).enumerate() {
            let block = Block { module: i as u8, offset: k as u32 * BLOCK_SIZE, data: chunk };
            last = Some(agent.handle_block(s, block).expect("block stored"));
        }
    }
    assert_eq!(last, Some(BlockOutcome::Complete));
}

/// Module statements for a system part, an application needing it and a bootloader are
/// received, verified and installed by the boot manager in the order the documents list
/// them (the bootloader last whatever its place: the one copy that may not be power-safe).
#[test]
fn statements_install_in_document_order() {
    use ModuleFunction::*;
    fn check(profile: &'static Profile, order: &[ModuleFunction], expected_writes: &[ModuleFunction]) {
        let p = profile;
        let key = scenario_key();
        let img = |f: ModuleFunction| {
            let (i, v, deps) = match f {
                SystemPart => (1, 104, vec![]),
                UserPart => (1, 9, vec![dep(SystemPart, 1, 104)]),
                _ => (0, 11, vec![]),
            };
            Image::synthetic(p, f, i, v, &deps, Behaviour::Healthy, 3000)
        };
        let images: Vec<Image> = order.iter().map(|&f| img(f)).collect();
        let refs: Vec<&Image> = images.iter().collect();
        let documents: Vec<Vec<u8>> = images.iter().map(|m| statement(p.platform_id, 0, 1, m, &key)).collect();
        let (dev, _) = device(p);
        let keys = dev.keys.clone();
        let mut s = dev.storage();
        let mut agent = Agent::load(&mut s, p, &keys).unwrap();
        let accepted = agent.handle_offer_documents(&mut s, documents.iter().map(Vec::as_slice)).unwrap();
        assert_eq!((accepted.modules, accepted.resumed), (order.len() as u8, false));
        let staged: Vec<ModuleFunction> = agent.state().staged().map(|m| m.module.function).collect();
        assert_eq!(staged, order, "staged in document order");
        deliver_all(&mut agent, &mut s, &refs);

        dev.bench.borrow_mut().reset_counter();
        let d = boot::boot(&mut s, p, ResetCause::Software).unwrap();
        assert!(d.events.installed_update);
        assert_eq!(d.run, Run::Application { test: true });
        // The order of the first program operation into each slot is the install order.
        let ops = dev.bench.borrow().ops.clone();
        let first_write = |f: ModuleFunction| {
            let r = p.slots[p.slot_for(f, if f == Bootloader { 0 } else { 1 }).unwrap()].region;
            ops.iter()
                .position(|op| {
                    op.kind == OpKind::Write && op.dev == r.dev && op.offset >= r.offset && op.offset < r.end()
                })
                .expect("the slot was written")
        };
        let mut writes: Vec<ModuleFunction> = order.to_vec();
        writes.sort_by_key(|&f| first_write(f));
        assert_eq!(writes, expected_writes, "install order on {}", p.name);
        let agent = Agent::load(&mut s, p, &keys).unwrap();
        for m in &images {
            let slot = p.slot_for(m.entry.function, m.entry.index).unwrap();
            assert_eq!(agent.state().installed[slot].map(|r| r.sha256), Some(m.entry.sha256));
            assert!(dev.slot_holds(slot, &m.bytes), "{} on flash", m.name);
        }
    }
    for p in [&STM32F2, &NRF52840] {
        check(p, &[SystemPart, UserPart], &[SystemPart, UserPart]);
        check(p, &[UserPart, SystemPart], &[UserPart, SystemPart]);
        check(p, &[Bootloader, SystemPart, UserPart], &[SystemPart, UserPart, Bootloader]);
    }
}

/// The security counter of a multi-document offer is the highest of its documents: it is
/// what the downgrade check compares and what the device keeps after installing.
#[test]
fn security_counter_of_several_documents_is_the_highest() {
    use ModuleFunction::*;
    let p = &NRF52840;
    let key = scenario_key();
    let sys = Image::synthetic(p, SystemPart, 1, 104, &[], Behaviour::Healthy, 2000);
    let app = Image::synthetic(p, UserPart, 1, 9, &[dep(SystemPart, 1, 104)], Behaviour::Healthy, 2000);
    let (dev, _) = device(p);
    let keys = dev.keys.clone();
    let mut s = dev.storage();
    let mut agent = Agent::load(&mut s, p, &keys).unwrap();
    let offer = [statement(p.platform_id, 0, 3, &sys, &key), statement(p.platform_id, 0, 7, &app, &key)];
    agent.handle_offer_documents(&mut s, offer.iter().map(Vec::as_slice)).unwrap();
    deliver_all(&mut agent, &mut s, &[&sys, &app]);
    boot::boot(&mut s, p, ResetCause::Software).unwrap();
    let mut agent = Agent::load(&mut s, p, &keys).unwrap();
    assert_eq!(agent.state().security_counter, 7);
    agent.confirm(&mut s).unwrap();

    let newer = Image::synthetic(p, UserPart, 1, 10, &[dep(SystemPart, 1, 104)], Behaviour::Healthy, 2000);
    let check = |counters: [u64; 2], expected: Result<u8, OfferError>| {
        let (dev2, _) = device(p);
        // The same device state each time: a copy of the flash after the install.
        dev2.bench.borrow_mut().clone_from(&dev.bench.borrow());
        let mut s2 = dev2.storage();
        let mut agent = Agent::load(&mut s2, p, &keys).unwrap();
        let offer = [
            statement(p.platform_id, 0, counters[0], &sys, &key),
            statement(p.platform_id, 0, counters[1], &newer, &key),
        ];
        let got = agent.handle_offer_documents(&mut s2, offer.iter().map(Vec::as_slice)).map(|a| a.modules);
        assert_eq!(got, expected, "counters {counters:?}");
    };
    check([6, 5], Err(OfferError::Downgrade { device: 7, offer: 6 }));
    check([7, 2], Ok(2));
    check([1, 9], Ok(2));
    check([0, 0], Err(OfferError::Downgrade { device: 7, offer: 0 }));
}

/// A multi-document transfer interrupted by a reset resumes with the same documents:
/// blocks of both modules received before the reset are kept. The same statements in
/// another order are another offer and start over.
#[test]
fn multi_document_offer_resumes_after_reset() {
    use ModuleFunction::*;
    for p in [&STM32F2, &NRF52840] {
        let key = scenario_key();
        let sys = Image::synthetic(p, SystemPart, 1, 104, &[], Behaviour::Healthy, 5 * 1024 + 10);
        let app = Image::synthetic(p, UserPart, 1, 9, &[dep(SystemPart, 1, 104)], Behaviour::Healthy, 3 * 1024);
        let offer = [statement(p.platform_id, 0, 1, &sys, &key), statement(p.platform_id, 0, 1, &app, &key)];
        let (dev, _) = device(p);
        let keys = dev.keys.clone();
        let mut s = dev.storage();
        let mut agent = Agent::load(&mut s, p, &keys).unwrap();
        assert!(!agent.handle_offer_documents(&mut s, offer.iter().map(Vec::as_slice)).unwrap().resumed);
        let block = |module: u8, k: u32| {
            let m = if module == 0 { &sys } else { &app };
            let start = (k * BLOCK_SIZE) as usize;
            Block { module, offset: k * BLOCK_SIZE, data: &m.bytes[start..(start + 1024).min(m.bytes.len())] }
        };
        for (module, k) in [(0, 0), (0, 5), (1, 1)] {
            assert_eq!(agent.handle_block(&mut s, block(module, k)), Ok(BlockOutcome::Stored));
        }

        let missing = |agent: &Agent<'_>, s: &mut _| {
            let mut out = [BlockRequest { module: 0, offset: 0, len: 0 }; 16];
            let n = agent.missing_blocks(s, &mut out).unwrap();
            out[..n].iter().map(|r| (r.module, r.offset / BLOCK_SIZE)).collect::<Vec<_>>()
        };
        let mut agent = Agent::load(&mut s, p, &keys).unwrap();
        assert!(agent.handle_offer_documents(&mut s, offer.iter().map(Vec::as_slice)).unwrap().resumed);
        assert_eq!(missing(&agent, &mut s), vec![(0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 2)], "{}", p.name);
        assert_eq!(agent.progress().0, 3 * u64::from(BLOCK_SIZE));

        // Reversed: a different offer, every block missing again.
        let reversed = [offer[1].clone(), offer[0].clone()];
        let mut agent = Agent::load(&mut s, p, &keys).unwrap();
        assert!(!agent.handle_offer_documents(&mut s, reversed.iter().map(Vec::as_slice)).unwrap().resumed);
        assert_eq!(missing(&agent, &mut s).len(), 3 + 6, "{}", p.name);
    }
}
