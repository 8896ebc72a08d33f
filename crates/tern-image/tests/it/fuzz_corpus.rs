//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the same entry
//! points the fuzz targets call, so every input a fuzzer ever kept is re-checked by plain
//! `cargo test`: none may panic.

use std::path::Path;

use tern_image::fuzzing;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("particle", fuzzing::particle),
    ("inspect", fuzzing::inspect),
    ("mcuboot", fuzzing::mcuboot),
    ("manifest", fuzzing::manifest),
    ("bundle", fuzzing::bundle),
];

#[test]
fn replay_fuzz_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("readable corpus entry").path();
            let data = std::fs::read(&path).expect("readable corpus file");
            // A panic here names the target and file through the test's failure output.
            eprintln!("replaying {name}/{}", path.file_name().unwrap_or_default().to_string_lossy());
            target(&data);
            replayed += 1;
        }
    }
    // The corpus is committed with the repository: an empty replay means it went missing.
    assert!(replayed > 0, "no fuzz corpus found under {}", root.display());
    println!("replayed {replayed} fuzz corpus inputs");
}
