//! `tern module inspect`: output shape, exit status and one-line errors, on real and broken
//! files. (Agreement of the fields with Particle's reader is `particle_oracle`.)

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The keys of every JSON record, as `docs/cli.md` documents them.
const KEYS: [&str; 22] = [
    "path",
    "format",
    "valid",
    "errors",
    "crc_ok",
    "platform_id",
    "function_code",
    "function",
    "index",
    "version",
    "flags",
    "prefix_offset",
    "start_address",
    "end_address",
    "dependencies",
    "sha256",
    "file_sha256",
    "stored_sha256",
    "stored_sha256_matches",
    "size",
    "product_id",
    "product_version",
];

fn tern(args: &[&str], files: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).args(files).output().expect("tern runs")
}

fn corpus_module(name: &str) -> Vec<u8> {
    let path = tern_testkit::corpus().join("particle/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `inspect --json` must say about one file.
struct Expected {
    /// The format, or `None` when any is acceptable.
    format: Option<&'static str>,
    valid: bool,
    /// A phrase the error must contain, for invalid files.
    error: Option<&'static str>,
}

fn check(name: &str, bytes: &[u8], expected: Expected) {
    let dir = tern_testkit::scratch(&format!("inspect-{name}"));
    let file = dir.join(format!("{name}.bin"));
    std::fs::write(&file, bytes).expect("scratch is writable");
    let out = tern(&["module", "inspect", "--json"], std::slice::from_ref(&file));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: one JSON line per file, got {stdout:?}");
    let record: Value = serde_json::from_str(lines[0]).expect("a JSON object");
    let keys: Vec<&str> = record.as_object().expect("an object").keys().map(String::as_str).collect();
    let mut sorted_keys = KEYS.to_vec();
    sorted_keys.sort_unstable();
    let mut got_keys = keys.clone();
    got_keys.sort_unstable();
    assert_eq!(got_keys, sorted_keys, "{name}: exactly the documented keys");
    assert_eq!(record["path"], file.display().to_string(), "{name}");
    if let Some(format) = expected.format {
        assert_eq!(record["format"], format, "{name}: {record}");
    }
    assert_eq!(record["valid"], expected.valid, "{name}: {record}");
    assert_eq!(record["size"], bytes.len(), "{name}");
    assert_eq!(record["file_sha256"], hex::encode(Sha256::digest(bytes)), "{name}: the whole file's hash");
    assert_eq!(record["stored_sha256"], record["sha256"], "{name}: `sha256` is the stored hash's first name");
    let errors = record["errors"].as_array().expect("errors is a list");
    assert_eq!(out.status.success(), expected.valid, "{name}: exit status follows validity; stderr {stderr:?}");
    if expected.valid {
        assert!(errors.is_empty(), "{name}: a valid file has no errors: {record}");
        assert!(stderr.is_empty(), "{name}: nothing on stderr: {stderr:?}");
    } else {
        assert!(!errors.is_empty(), "{name}: an invalid file says why: {record}");
        let err_lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(err_lines.len(), 1, "{name}: one error line: {stderr:?}");
        assert!(err_lines[0].starts_with(&format!("error: {}: ", file.display())), "{name}: {stderr:?}");
        let phrase = expected.error.expect("invalid cases name the error");
        assert!(err_lines[0].contains(phrase), "{name}: {stderr:?} should mention {phrase:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_json_on_good_and_bad_files() {
    let module = corpus_module("040_user-part.bin");
    let mut tampered = module.clone();
    tampered[module.len() / 2] ^= 0x01;
    let mut garbage = vec![0u8; 4096];
    for (i, b) in garbage.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let mut padded = module.clone();
    padded.extend_from_slice(&[0xff; 100]);

    let invalid = |format, error| Expected { format: Some(format), valid: false, error: Some(error) };
    let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
        ("module", module.clone(), Expected { format: Some("particle"), valid: true, error: None }),
        ("empty", Vec::new(), invalid("raw", "empty file")),
        ("one-byte", vec![0x42], invalid("raw", "not a recognised module")),
        ("garbage", garbage, invalid("raw", "not a recognised module")),
        ("zeros", vec![0; 10_000], invalid("raw", "not a recognised module")),
        // Half a module: its own prefix no longer fits, but Particle's scoring finds a
        // low-confidence "prefix" in the code further on (binary-version-reader reports the
        // same, see `particle_oracle`); either way the file is reported invalid.
        ("truncated", module[..module.len() / 2].to_vec(), Expected { format: None, valid: false, error: Some("") }),
        (
            "last-byte-missing",
            module[..module.len() - 1].to_vec(),
            Expected { format: None, valid: false, error: Some("") },
        ),
        ("tampered", tampered, invalid("particle", "CRC-32 mismatch")),
        ("padded", padded, invalid("particle", "CRC-32 mismatch")),
        // Particle's reader throws on this real old bootloader (a suffix extension of length 0).
        ("zero-length-extension", corpus_module("RC2_bootloader.bin"), invalid("particle", "length 0")),
    ];
    for (name, bytes, expected) in cases {
        check(name, &bytes, expected);
    }
}

#[test]
fn inspect_reports_every_file_and_fails_if_any_is_bad() {
    let fixtures = tern_testkit::corpus().join("particle/fixtures");
    let files = [
        fixtures.join("040_user-part.bin"),
        PathBuf::from("/nonexistent/tern-test.bin"),
        fixtures.join("emptybin.bin"),
        fixtures.join("p2-user-part.bin"),
    ];
    let out = tern(&["module", "inspect", "--json"], &files);
    assert!(!out.status.success(), "a missing and an empty file make the run fail");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let records: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let got: Vec<&str> = records.iter().map(|r| r["path"].as_str().expect("path")).collect();
    assert_eq!(got, paths, "one record per file, in order");
    let valid: Vec<bool> = records.iter().map(|r| r["valid"] == true).collect();
    assert_eq!(valid, [true, false, false, true]);
    assert_eq!(records[1]["format"], Value::Null, "an unreadable file has no format");

    let stderr = String::from_utf8(out.stderr).expect("UTF-8");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one error line per bad file: {stderr:?}");
    assert!(lines[0].starts_with(&format!("error: {}: cannot read", paths[1])), "{stderr:?}");
    assert!(lines[1].starts_with(&format!("error: {}: empty file", paths[2])), "{stderr:?}");

    let ok = tern(&["module", "inspect", "--json"], &[files[0].clone(), files[3].clone()]);
    assert!(ok.status.success(), "all valid: success");
}

#[test]
fn inspect_table_has_a_header_and_a_row_per_file() {
    let fixtures = tern_testkit::corpus().join("particle/fixtures");
    let files = [fixtures.join("080_system-part1-xenon.bin"), fixtures.join("RC4_bootloader_pad_BM-09.bin")];
    let out = tern(&["module", "inspect"], &files);
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for column in ["FILE", "FORMAT", "PLATFORM", "FUNCTION", "VERSION", "ADDRESSES", "CRC", "STATUS"] {
        assert!(lines[0].contains(column), "header has {column}: {}", lines[0]);
    }
    let row = |line: &str, words: &[&str]| {
        for word in words {
            assert!(line.contains(word), "{line:?} should contain {word:?}");
        }
    };
    row(lines[1], &["080_system-part1-xenon.bin", "particle", "system_part (4)", "0x00030000", "valid"]);
    row(lines[2], &["RC4_bootloader_pad_BM-09.bin", "bootloader (2)", "BAD", "invalid: CRC-32 mismatch"]);
    assert!(!out.status.success(), "the bad CRC fails the run");
}

/// Both hashes, named: the file sha256 (every byte of the file) and the stored sha256
/// (what the module carries) with whether it matches the bytes it covers.
#[test]
fn inspect_names_the_file_and_the_stored_sha256() {
    let module = corpus_module("040_user-part.bin");
    let mut tampered = module.clone();
    tampered[module.len() / 2] ^= 0x01;
    // (case, bytes, stored sha256 matches, word in the table's STORED SHA256 column)
    let cases = [("module", module, Some(true), "matches"), ("tampered", tampered, Some(false), "differs")];
    for (name, bytes, matches, word) in cases {
        let dir = tern_testkit::scratch(&format!("inspect-hashes-{name}"));
        let file = dir.join(format!("{name}.bin"));
        std::fs::write(&file, &bytes).unwrap();
        let out = tern(&["module", "inspect", "--json"], std::slice::from_ref(&file));
        let record: Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
        let file_sha256 = hex::encode(Sha256::digest(&bytes));
        assert_eq!(record["file_sha256"], file_sha256, "{name}");
        assert_eq!(record["stored_sha256_matches"], serde_json::json!(matches), "{name}: {record}");
        let stored = record["stored_sha256"].as_str().expect("a Particle module stores a SHA-256");
        assert_ne!(stored, file_sha256, "{name}: two different hashes");
        let out = tern(&["module", "inspect"], std::slice::from_ref(&file));
        let table = String::from_utf8(out.stdout).unwrap();
        let (header, row) = table.split_once('\n').expect("a header and a row");
        assert!(header.contains("FILE SHA256") && header.contains("STORED SHA256"), "{header}");
        assert!(row.contains(&file_sha256[..16]), "{name}: {row}");
        assert!(row.contains(&format!("{} {word}", &stored[..16])), "{name}: {row}");
    }
}

#[test]
fn inspect_without_files_is_a_usage_error() {
    let out = tern(&["module", "inspect"], &[]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error status");
}

/// `tern module inspect … | head -1`: when the reader goes away, tern stops quietly with
/// the shell's broken-pipe status instead of reporting a panic.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let files = tern_testkit::corpus_files("particle/releases");
    // Far more output than a pipe buffers (64 KiB on Linux).
    let args: Vec<&PathBuf> = files.iter().cycle().take(files.len() * 20).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["module", "inspect", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern runs");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first).expect("a first line");
    // The read end is closed here.
    let out = child.wait_with_output().expect("tern ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
