//! Replays the committed fuzz corpus (`fuzz/corpus/delta/*`) through the entry point the
//! cargo-fuzz target calls, plus a deterministic mutation sweep over it: none may panic.

use std::path::Path;

use tern_delta::fuzzing;

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/delta");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable corpus entry").path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).expect("readable corpus file")).collect()
}

#[test]
fn replay_fuzz_corpus() {
    let inputs = corpus();
    // The corpus is committed with the repository: an empty replay means it went missing.
    assert!(inputs.len() >= 4, "fuzz corpus missing");
    for data in &inputs {
        fuzzing::apply(data);
    }
}

#[test]
fn mutations_of_the_corpus_never_panic() {
    // xorshift64: reproducible mutations without a dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in corpus() {
        for _ in 0..300 {
            let mut data = seed.clone();
            for _ in 0..1 + next() % 4 {
                if data.is_empty() {
                    break;
                }
                let at = (next() % data.len() as u64) as usize;
                match next() % 3 {
                    0 => data[at] ^= 1 << (next() % 8),
                    1 => data[at] = next() as u8,
                    _ => data.truncate(at),
                }
            }
            fuzzing::apply(&data);
        }
    }
}

/// Writes the hand-made seeds (run once with `--ignored` when the format changes).
#[test]
#[ignore]
fn write_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/delta");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, data) in fuzzing::seeds() {
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}
