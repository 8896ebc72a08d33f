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
