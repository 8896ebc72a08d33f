//! Replays the committed fuzz corpus of the device targets through their entry points:
//! none may panic.

use tern_sim::fuzz;

/// A fuzz entry point.
type Target = fn(&[u8]);

#[test]
fn device_fuzz_corpus_replays() {
    let root = tern_testkit::repo_root().join("fuzz/corpus");
    let targets: [(&str, Target); 4] = [
        ("device-state", fuzz::state_record),
        ("device-block", fuzz::block_frame),
        ("device-offer", fuzz::offer_and_block),
        ("device-boot", fuzz::boot_arbitrary_flash),
    ];
    for (dir, target) in targets {
        let entries: Vec<_> = std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")).collect();
        assert!(!entries.is_empty(), "{dir}: no seeds");
        for entry in entries {
            let data = std::fs::read(entry.expect("entry").path()).expect("seed readable");
            target(&data);
            // Truncations and a flipped byte of every seed too.
            for cut in [0, 1, data.len() / 2] {
                target(&data[..cut.min(data.len())]);
            }
            let mut flipped = data.clone();
            if let Some(b) = flipped.get_mut(data.len() / 3) {
                *b ^= 0x40;
            }
            target(&flipped);
        }
    }
}

/// A few hundred pseudo-random inputs through every entry point (a smoke test; the
/// cargo-fuzz targets run the same functions for longer).
#[test]
fn random_inputs_never_panic() {
    let mut rng = tern_sim::flash::Rng(42);
    for i in 0..300 {
        let len = rng.below(if i % 3 == 0 { 4096 } else { 64 }) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        fuzz::state_record(&data);
        fuzz::block_frame(&data);
        if i % 10 == 0 {
            fuzz::boot_arbitrary_flash(&data);
            fuzz::offer_and_block(&data);
        }
    }
}

/// The `device-offer` input framing: length-prefixed documents, a zero terminator, then a
/// block frame; lengths past the end take what is left.
#[test]
fn offer_inputs_split_into_documents_and_a_block() {
    fn check(input: &[u8], documents: &[&[u8]], frame: &[u8]) {
        assert_eq!(fuzz::split_offer(input), (documents.to_vec(), frame), "{input:02x?}");
    }
    check(&[], &[], &[]);
    check(&[7], &[], &[]);
    check(&[0, 0], &[], &[]);
    check(&[0, 0, 1, 2, 3], &[], &[1, 2, 3]);
    check(&[0, 2, 0xA, 0xB, 0, 1, 0xC, 0, 0, 9], &[&[0xA, 0xB], &[0xC]], &[9]);
    check(&[0, 2, 0xA, 0xB, 0, 1, 0xC], &[&[0xA, 0xB], &[0xC]], &[]);
    // A length past the end takes the rest; a length with nothing left is an empty document.
    check(&[0x01, 0x00, 0xA, 0xB], &[&[0xA, 0xB]], &[]);
    check(&[0, 1, 0xA, 0, 5], &[&[0xA], &[]], &[]);
    // Seeds are written with the inverse.
    let joined = fuzz::join_offer(&[&[1, 2, 3], &[4]], &[5, 6]);
    assert_eq!(joined, [0, 3, 1, 2, 3, 0, 1, 4, 0, 0, 5, 6]);
    check(&joined, &[&[1, 2, 3], &[4]], &[5, 6]);
}

/// The hand-made `device-offer` seeds reach the agent paths their names say (so the
/// fuzzer starts from accepted multi-document offers, not only from rejections).
#[test]
fn named_offer_seeds_reach_their_paths() {
    use tern_device::agent::{Agent, BlockOutcome, OfferError};
    use tern_device::block::Block;

    fn check(seed: &str, expected_offer: Result<u8, OfferError>, expected_block: Option<BlockOutcome>) {
        let data = std::fs::read(tern_testkit::repo_root().join("fuzz/corpus/device-offer").join(seed))
            .unwrap_or_else(|e| panic!("{seed}: {e}"));
        let sc = tern_sim::scenario::synthetic(&tern_device::profile::NRF52840).into_iter().next().unwrap();
        let dev = sc.provisioned();
        let mut storage = dev.storage();
        let keys = dev.keys.clone();
        let mut agent = Agent::load(&mut storage, sc.profile, &keys).unwrap();
        let (documents, frame) = fuzz::split_offer(&data);
        let offer = agent.handle_offer_documents(&mut storage, documents.iter().copied()).map(|a| a.modules);
        assert_eq!(offer, expected_offer, "{seed}");
        let block = Block::decode(frame).ok().map(|b| agent.handle_block(&mut storage, b).unwrap());
        assert_eq!(block, expected_block, "{seed}");
    }
    check("app-update", Ok(1), None);
    check("statements-system-part-and-app", Ok(2), Some(BlockOutcome::Stored));
    check("release-and-statement", Err(OfferError::MixedDocuments), None);
}

/// The miniature layouts the `device-boot` target uses are working layouts, not just
/// small ones: they pass the profile check and every synthetic scenario runs on them to
/// its expected end without a fault (so fuzzing them exercises the real boot and agent
/// paths).
#[test]
fn miniature_fuzz_layouts_run_every_scenario() {
    for profile in fuzz::FUZZ_PROFILES {
        profile.check().unwrap_or_else(|e| panic!("{}: {e}", profile.name));
        let scenarios = tern_sim::scenario::synthetic(profile);
        assert!(scenarios.len() >= 8, "{}: {} scenarios", profile.name, scenarios.len());
        for sc in &scenarios {
            let base = sc.provisioned().bench.borrow().clone();
            let out = tern_sim::scenario::run(sc, &base, &[]);
            assert_eq!(out.bricked, None, "{} {}", profile.name, sc.name);
            assert!(out.violations.is_empty(), "{} {}: {:?}", profile.name, sc.name, out.violations);
            assert!(out.ops > 0 && out.boots > 0, "{} {}: nothing happened", profile.name, sc.name);
        }
    }
}
