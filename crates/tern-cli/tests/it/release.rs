//! `tern release build / inspect / verify` and `tern key`.

use std::path::{Path, PathBuf};

use crate::support::{tern, tern_err, tern_ok};

fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    tern_ok(["key", "generate", "-o", private.to_str().unwrap()]);
    let public = dir.join(format!("{name}.pem.pub"));
    assert!(public.exists());
    (private, public)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

/// A bundle of two raw modules placed by address, and the files it was made from.
fn raw_bundle(dir: &Path, key: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let modules = vec![pattern(5000, 1), pattern(777, 2)];
    let mut args = vec![
        "release".to_string(),
        "build".into(),
        "--key".into(),
        key.display().to_string(),
        "--platform".into(),
        "6".into(),
        "--security-counter".into(),
        "3".into(),
        "--created".into(),
        "1790000000".into(),
        "--name".into(),
        "test release".into(),
        "-o".into(),
        dir.join("release.tern").display().to_string(),
    ];
    for (i, m) in modules.iter().enumerate() {
        let path = dir.join(format!("m{i}.bin"));
        std::fs::write(&path, m).unwrap();
        args.push(format!("{}@{:#x}:system_part:{}:{}", path.display(), 0x1000 + 0x10000 * i, i + 1, 100 + i));
    }
    tern_ok(&args);
    (dir.join("release.tern"), modules)
}

#[test]
fn build_inspect_verify_round_trip() {
    let dir = tern_testkit::scratch("release-round-trip");
    let (private, public) = keypair(&dir, "k");
    let (bundle, modules) = raw_bundle(&dir, &private);
    let out = tern_ok(["release", "verify", "--key", public.to_str().unwrap(), bundle.to_str().unwrap()]);
    assert!(out.contains("ok, 2 modules, platform 6, security counter 3"), "{out}");

    let json = tern_ok(["release", "inspect", "--json", "--key", public.to_str().unwrap(), bundle.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["signature_verified"], true);
    assert_eq!(v["name"], "test release");
    assert_eq!(v["created"], 1_790_000_000u64);
    assert_eq!(v["modules"].as_array().unwrap().len(), 2);
    assert_eq!(v["modules"][1]["start_address"], 0x11000);
    assert_eq!(v["modules"][1]["size"], modules[1].len());

    // Deterministic: the same inputs give the same bundle byte for byte.
    let first = std::fs::read(&bundle).unwrap();
    raw_bundle(&dir, &private);
    assert_eq!(first, std::fs::read(&bundle).unwrap());
}

#[test]
fn tampered_bundles_and_wrong_keys_are_rejected() {
    let dir = tern_testkit::scratch("release-tamper");
    let (private, public) = keypair(&dir, "k");
    let (_, other_public) = keypair(&dir, "other");
    let (bundle, _) = raw_bundle(&dir, &private);
    let bytes = std::fs::read(&bundle).unwrap();

    let err =
        tern_err(["release", "verify", "--key", other_public.to_str().unwrap(), bundle.to_str().unwrap()], &bundle);
    assert!(err.contains("not trusted"), "{err}");

    // A flipped bit anywhere: header, manifest, signature, either module.
    let tampered = dir.join("tampered.tern");
    let step = (bytes.len() / 97).max(1);
    for i in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x04;
        std::fs::write(&tampered, &bad).unwrap();
        tern_err(["release", "verify", "--key", public.to_str().unwrap(), tampered.to_str().unwrap()], &tampered);
    }
    // Truncated, empty, garbage.
    for (name, content) in [("cut", &bytes[..bytes.len() / 2]), ("empty", &[][..]), ("garbage", &b"hello world"[..])] {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        tern_err(["release", "verify", "--key", public.to_str().unwrap(), path.to_str().unwrap()], &path);
        tern_err(["release", "inspect", path.to_str().unwrap()], &path);
    }
}

#[test]
fn bad_keys_are_clear_errors() {
    let dir = tern_testkit::scratch("release-bad-keys");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let module = dir.join("m.bin");
    std::fs::write(&module, pattern(100, 0)).unwrap();
    let module_arg = format!("{}@0x0:user_part:1:1", module.display());
    let out = dir.join("x.tern");
    tern_err(
        [
            "release",
            "build",
            "--key",
            garbage.to_str().unwrap(),
            "--platform",
            "6",
            "-o",
            out.to_str().unwrap(),
            &module_arg,
        ],
        &garbage,
    );
    let missing = dir.join("missing.pem");
    tern_err(
        ["release", "build", "--key", missing.to_str().unwrap(), "-o", out.to_str().unwrap(), &module_arg],
        &missing,
    );
    // Refuses to overwrite keys.
    let (private, _) = keypair(&dir, "k");
    let run = tern(["key", "generate", "-o", private.to_str().unwrap()]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
}
