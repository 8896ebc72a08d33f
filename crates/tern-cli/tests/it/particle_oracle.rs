//! `tern module inspect --json` against Particle's own reader, binary-version-reader 3.1.3
//! (`tests/oracle/particle-inspect.js` runs its `HalModuleParser`), on every file of the
//! Particle corpus, or of the directory in `$TERN_PARTICLE_DIR` (see
//! `scripts/compare-particle.sh`).
//!
//! For each file the oracle either
//! - rejects it (throws): `tern` must report it invalid with an error;
//! - finds no plausible prefix anywhere (its own confidence score is 0 at the offset it
//!   falls back to): `tern` must report it as `raw` and invalid, not a Particle module;
//! - parses it: `tern` must report a Particle module with the same platform, function,
//!   index, version, flags, dependencies, prefix offset, start/end address, SHA-256, CRC
//!   validity, size and product id/version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::process::Command;
use tern_testkit::files_under;

use serde_json::Value;

/// `node` from `PATH`, through `tern_testkit::peer` so that its absence fails in CI.
fn node() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("node")).find(|p| p.is_file()));
    tern_testkit::peer(found.unwrap_or_else(|| PathBuf::from("/usr/bin/node")))
}

/// Runs `program args files` in batches and returns the JSON object printed for each file,
/// by path. Each batch must print exactly one line per file.
fn json_lines(program: &Path, args: &[&str], files: &[PathBuf], key: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for batch in files.chunks(200) {
        let output = Command::new(program).args(args).args(batch).output().expect("the program runs");
        let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            batch.len(),
            "{} printed {} lines for {} files; stderr:\n{}",
            program.display(),
            lines.len(),
            batch.len(),
            String::from_utf8_lossy(&output.stderr)
        );
        for line in lines {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
            let path = value[key].as_str().expect("each record names its file").to_string();
            out.insert(path, value);
        }
    }
    out
}

/// Tallies of one comparison run.
#[derive(Default)]
struct Tally {
    parsed_by_both: usize,
    rejected_by_both: usize,
    not_a_module: usize,
    fields_compared: usize,
    disagreements: Vec<String>,
}

impl Tally {
    /// Prints the summary and every disagreement, then fails on any disagreement.
    fn report_and_assert(&self, what: &str) {
        eprintln!(
            "particle oracle, {what}: {} parsed by both, {} rejected by both, {} not a module for either; \
             {} fields compared; {} disagreements",
            self.parsed_by_both,
            self.rejected_by_both,
            self.not_a_module,
            self.fields_compared,
            self.disagreements.len()
        );
        for line in &self.disagreements {
            eprintln!("  {line}");
        }
        assert!(self.disagreements.is_empty(), "{} disagreements with binary-version-reader", self.disagreements.len());
    }

    fn check(&mut self, path: &str, field: &str, ours: &Value, oracle: &Value) {
        self.fields_compared += 1;
        if ours != oracle {
            self.disagreements.push(format!("{path}: {field}: tern {ours}, binary-version-reader {oracle}"));
        }
    }

    fn require(&mut self, path: &str, ok: bool, what: &str, ours: &Value) {
        if !ok {
            self.disagreements.push(format!("{path}: {what}; tern said {ours}"));
        }
    }
}

/// The oracle's product id or version: -1 means the suffix does not hold one.
fn product_field(value: &Value) -> Value {
    if value.as_i64() == Some(-1) {
        Value::Null
    } else {
        value.clone()
    }
}

/// The oracle's two dependency slots as `tern` lists them: empty slots (function 0) left out.
fn oracle_dependencies(oracle: &Value) -> Value {
    let slots = oracle["dependencies"].as_array().expect("two dependency slots");
    let listed = slots
        .iter()
        .filter(|d| d["function"].as_u64() != Some(0))
        .map(|d| serde_json::json!({"function_code": d["function"], "index": d["index"], "version": d["version"]}))
        .collect();
    Value::Array(listed)
}

fn compare(tally: &mut Tally, path: &str, ours: &Value, oracle: &Value) {
    let invalid_with_error =
        ours["valid"] == Value::Bool(false) && ours["errors"].as_array().is_some_and(|e| !e.is_empty());
    if oracle["ok"] == Value::Bool(false) {
        tally.rejected_by_both += 1;
        let what = format!("the oracle rejects it ({}), so tern must report it invalid", oracle["error"]);
        tally.require(path, invalid_with_error, &what, ours);
        return;
    }
    if oracle["prefixScore"].as_u64() == Some(0) {
        tally.not_a_module += 1;
        let raw = ours["format"] == "raw";
        tally.require(
            path,
            raw && invalid_with_error,
            "the oracle finds no plausible prefix: tern must say raw, invalid",
            ours,
        );
        return;
    }
    tally.parsed_by_both += 1;
    tally.require(path, ours["format"] == "particle", "the oracle parses it as a Particle module", ours);
    let pairs = [
        ("platform_id", "platformId"),
        ("function_code", "moduleFunction"),
        ("index", "moduleIndex"),
        ("version", "moduleVersion"),
        ("flags", "flags"),
        ("prefix_offset", "prefixOffset"),
        ("start_address", "startAddress"),
        ("end_address", "endAddress"),
        ("sha256", "sha256"),
        ("crc_ok", "crcOk"),
        ("size", "size"),
    ];
    for (ours_key, oracle_key) in pairs {
        tally.check(path, ours_key, &ours[ours_key], &oracle[oracle_key]);
    }
    tally.check(path, "dependencies", &ours["dependencies"], &oracle_dependencies(oracle));
    tally.check(path, "product_id", &ours["product_id"], &product_field(&oracle["productId"]));
    tally.check(path, "product_version", &ours["product_version"], &product_field(&oracle["productVersion"]));
    // A module the oracle finds a bad CRC in is not valid for tern either, unless it is a
    // combined file (flag 0x04): Particle's whole-file CRC never matches those, tern checks
    // each module instead (checked with the encoder's combined files below).
    let combined = oracle["flags"].as_u64().is_some_and(|f| f & 0x04 != 0);
    if oracle["crcOk"] == Value::Bool(false) && !combined {
        tally.require(path, invalid_with_error, "the CRC is wrong, so tern must report it invalid", ours);
    }
}

#[test]
fn inspect_agrees_with_binary_version_reader() {
    let dir = std::env::var_os("TERN_PARTICLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tern_testkit::corpus().join("particle"));
    let files = files_under(&dir);
    assert!(!files.is_empty(), "no files under {}", dir.display());
    let Some(node) = node() else { return };
    let Some(_) = tern_testkit::peer("tests/oracle/node_modules/binary-version-reader/package.json") else {
        return;
    };
    let script = tern_testkit::repo_root().join("tests/oracle/particle-inspect.js");

    let script_arg = script.to_str().expect("UTF-8 repository path");
    let oracle = json_lines(&node, &[script_arg], &files, "path");
    let ours = json_lines(Path::new(env!("CARGO_BIN_EXE_tern")), &["module", "inspect", "--json"], &files, "path");

    let mut tally = Tally::default();
    for file in &files {
        let path = file.display().to_string();
        let (Some(ours), Some(oracle)) = (ours.get(&path), oracle.get(&path)) else {
            tally.disagreements.push(format!("{path}: missing from the output of tern or of the oracle"));
            continue;
        };
        compare(&mut tally, &path, ours, oracle);
    }

    tally.report_and_assert(&format!("{} files under {}", files.len(), dir.display()));
    assert!(tally.parsed_by_both > 0, "no file was parsed by both readers");
}

/// A small deterministic pseudo-random generator (xorshift64*), so that the mutated files
/// are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Variants of a real module that exercise the reader's edge cases: truncations, changed
/// prefix and suffix bytes, moved prefixes, padding, concatenations.
fn mutations(bytes: &[u8], other: &[u8], rng: &mut Rng) -> Vec<(&'static str, Vec<u8>)> {
    let len = bytes.len();
    let mut out = Vec::new();
    out.push(("truncated", bytes[..rng.below(len + 1)].to_vec()));
    out.push(("short-tail", bytes[..len.saturating_sub(1 + rng.below(64))].to_vec()));
    let mut flipped = bytes.to_vec();
    let at = rng.below(len.min(0x240));
    flipped[at] ^= 1 << rng.below(8);
    out.push(("prefix-bit", flipped));
    let mut flags = bytes.to_vec();
    for offset in [0, 0x200, 0x184, 0xc0, 0x10c, 0x20] {
        if let Some(b) = flags.get_mut(offset + 9) {
            *b = [0x10, 0x02, 0x04, 0x01, 0x80, 0x12][rng.below(6)];
        }
    }
    out.push(("flags", flags));
    let mut suffix_size = bytes.to_vec();
    let size = [0u16, 35, 36, 39, 40, 41, 44, 62, 100, 0xffff, rng.next() as u16][rng.below(11)];
    suffix_size[len - 6..len - 4].copy_from_slice(&size.to_le_bytes());
    out.push(("suffix-size", suffix_size));
    let mut tail = bytes.to_vec();
    let at = len - 1 - rng.below(len.min(256));
    tail[at] = rng.next() as u8;
    out.push(("suffix-byte", tail));
    let mut moved = vec![0u8; 4 * (1 + rng.below(0x900))];
    moved.extend_from_slice(bytes);
    out.push(("moved", moved));
    let mut padded = bytes.to_vec();
    padded.extend(std::iter::repeat_n(0xff, 1 + rng.below(512)));
    out.push(("padded", padded));
    let mut joined = bytes.to_vec();
    joined.extend_from_slice(other);
    out.push(("joined", joined));
    out
}

/// The same comparison on mutated copies of the smaller corpus modules, so that agreement
/// rests on the format rules and not only on well-formed files.
#[test]
fn mutated_modules_agree_with_binary_version_reader() {
    let Some(node) = node() else { return };
    let Some(_) = tern_testkit::peer("tests/oracle/node_modules/binary-version-reader/package.json") else {
        return;
    };
    let sources: Vec<Vec<u8>> = tern_testkit::corpus_files("particle")
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file is readable"))
        .filter(|b| (64..=64 * 1024).contains(&b.len()))
        .collect();
    assert!(sources.len() >= 20, "too few small Particle modules in the corpus");
    let dir = tern_testkit::scratch("particle-mutations");
    let mut rng = Rng(0x7e57_5eed_0000_0001);
    let mut files = Vec::new();
    for round in 0..3 {
        for (i, bytes) in sources.iter().enumerate() {
            let other = &sources[(i + 1 + round) % sources.len()];
            for (name, mutated) in mutations(bytes, other, &mut rng) {
                let path = dir.join(format!("{round}-{i:03}-{name}.bin"));
                std::fs::write(&path, mutated).expect("scratch is writable");
                files.push(path);
            }
        }
    }
    let script = tern_testkit::repo_root().join("tests/oracle/particle-inspect.js");
    let oracle = json_lines(&node, &[script.to_str().expect("UTF-8 path")], &files, "path");
    let ours = json_lines(Path::new(env!("CARGO_BIN_EXE_tern")), &["module", "inspect", "--json"], &files, "path");
    let mut tally = Tally::default();
    for file in &files {
        let path = file.display().to_string();
        compare(&mut tally, &path, &ours[&path], &oracle[&path]);
    }
    tally.report_and_assert(&format!("mutated: {} files", files.len()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Modules made by binary-version-reader's own encoder from the smaller corpus modules
/// (`tests/oracle/particle-encode.js`): compressed modules, compressed assets, combined
/// files and modules with a security-mode extension. `inspect` must agree with the oracle
/// on them as on any file; in addition the compression header must be the one the encoder
/// wrote, and a combined file must split into the modules that were combined.
#[test]
fn encoded_modules_agree_with_binary_version_reader() {
    use tern_image::particle;

    let Some(node) = node() else { return };
    let Some(_) = tern_testkit::peer("tests/oracle/node_modules/binary-version-reader/package.json") else {
        return;
    };
    let sources: Vec<PathBuf> = tern_testkit::corpus_files("particle/fixtures")
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| (64..=64 * 1024).contains(&m.len())))
        .collect();
    let dir = tern_testkit::scratch("particle-encoded");
    let script = tern_testkit::repo_root().join("tests/oracle/particle-encode.js");
    let output = Command::new(&node).arg(&script).arg(&dir).args(&sources).output().expect("node runs the encoder");
    assert!(output.status.success(), "encoder failed: {}", String::from_utf8_lossy(&output.stderr));
    let made: Vec<Value> = String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let count = |kind: &str| made.iter().filter(|m| m["kind"] == kind).count();
    for kind in ["compressed", "asset", "combined", "protected"] {
        assert!(count(kind) >= 10, "the encoder made only {} {kind} modules", count(kind));
    }
    let files: Vec<PathBuf> = made.iter().map(|m| PathBuf::from(m["path"].as_str().expect("path"))).collect();

    let oracle =
        json_lines(&node, &[script.with_file_name("particle-inspect.js").to_str().expect("UTF-8")], &files, "path");
    let ours = json_lines(Path::new(env!("CARGO_BIN_EXE_tern")), &["module", "inspect", "--json"], &files, "path");
    let mut tally = Tally::default();
    let mut extra_checks = 0;
    for record in &made {
        let path = record["path"].as_str().expect("path");
        compare(&mut tally, path, &ours[path], &oracle[path]);
        let bytes = std::fs::read(path).expect("written by the encoder");
        if let Some(expected) = record.get("compression") {
            let module = particle::parse(&bytes).expect("a compressed module parses");
            let header = module.compression().map(|h| {
                h.map(|h| {
                    serde_json::json!({"headerSize": h.header_size, "method": h.method,
                    "windowBits": h.window_bits, "uncompressedSize": h.uncompressed_size})
                })
            });
            extra_checks += 1;
            if header != Some(Ok(expected.clone())) {
                tally.disagreements.push(format!("{path}: compression header {header:?}, encoder wrote {expected}"));
            }
        }
        if let Some(parts) = record.get("parts") {
            extra_checks += 1;
            if ours[path]["valid"] != Value::Bool(true) {
                tally.disagreements.push(format!("{path}: combined from intact modules but not valid: {}", ours[path]));
            }
            let split: Vec<Value> = particle::split_combined(&bytes)
                .map(|part| match part {
                    Ok((_, module)) if module.info.crc_ok == Some(true) => Value::from(module.bytes().len()),
                    Ok(_) => Value::from("bad CRC"),
                    Err(err) => Value::from(err.to_string()),
                })
                .collect();
            extra_checks += 1;
            if &Value::Array(split.clone()) != parts {
                tally.disagreements.push(format!("{path}: split into {split:?}, encoder combined {parts}"));
            }
        }
    }
    eprintln!(
        "particle oracle, encoded: {} files ({} compressed, {} assets, {} combined, {} protected): \
         {} fields compared, {} compression headers and splits checked; {} disagreements",
        files.len(),
        count("compressed"),
        count("asset"),
        count("combined"),
        count("protected"),
        tally.fields_compared,
        extra_checks,
        tally.disagreements.len()
    );
    for line in &tally.disagreements {
        eprintln!("  {line}");
    }
    assert!(tally.disagreements.is_empty(), "{} disagreements with binary-version-reader", tally.disagreements.len());
    let _ = std::fs::remove_dir_all(&dir);
}
