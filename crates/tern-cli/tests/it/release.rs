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

#[test]
fn module_statements_sign_and_verify() {
    let dir = tern_testkit::scratch("statements");
    let (private, public) = keypair(&dir, "k");
    let (_, other_public) = keypair(&dir, "other");
    let source = tern_testkit::corpus().join("particle/releases/argon-system-part1@4.0.2.bin");
    let module = dir.join("argon-system-part1.bin");
    std::fs::copy(&source, &module).unwrap();

    let out = tern_ok([
        "module",
        "sign",
        "--key",
        private.to_str().unwrap(),
        "--security-counter",
        "9",
        module.to_str().unwrap(),
    ]);
    assert!(out.contains("argon-system-part1.bin.stmt"), "{out}");
    let out = tern_ok(["module", "verify", "--key", public.to_str().unwrap(), module.to_str().unwrap()]);
    // The statement carries what the module says about itself (checked against Particle's
    // own reader by the oracle test).
    let info: serde_json::Value =
        serde_json::from_str(&tern_ok(["module", "inspect", "--json", module.to_str().unwrap()])).unwrap();
    let expected =
        format!("ok, system_part 1 v{}, platform {}, security counter 9", info["version"], info["platform_id"]);
    assert!(out.contains(&expected), "{out} lacks {expected}");

    // Wrong key, tampered module, tampered statement: each a one-line error naming the file.
    let stmt = dir.join("argon-system-part1.bin.stmt");
    let err = tern_err(["module", "verify", "--key", other_public.to_str().unwrap(), module.to_str().unwrap()], &stmt);
    assert!(err.contains("not trusted"), "{err}");
    let mut bytes = std::fs::read(&module).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&module, &bytes).unwrap();
    tern_err(["module", "verify", "--key", public.to_str().unwrap(), module.to_str().unwrap()], &module);
    bytes[1000] ^= 1;
    std::fs::write(&module, &bytes).unwrap();
    let mut statement = std::fs::read(&stmt).unwrap();
    let last = statement.len() - 1;
    statement[last] ^= 1;
    std::fs::write(&stmt, &statement).unwrap();
    tern_err(["module", "verify", "--key", public.to_str().unwrap(), module.to_str().unwrap()], &stmt);

    // A raw image must say what it is and which platform it is for.
    let raw = dir.join("raw.bin");
    std::fs::write(&raw, pattern(100, 1)).unwrap();
    let raw_spec = format!("{}@0x1000:asset:1:1", raw.display());
    let err = tern_err(["module", "sign", "--key", private.to_str().unwrap(), &raw_spec], &raw);
    assert!(err.contains("--platform"), "{err}");
    tern_ok(["module", "sign", "--key", private.to_str().unwrap(), "--platform", "12", &raw_spec]);
    tern_ok(["module", "verify", "--key", public.to_str().unwrap(), raw.to_str().unwrap()]);
}

#[test]
fn release_of_real_modules_is_ordered_for_install() {
    let dir = tern_testkit::scratch("release-real");
    let (private, public) = keypair(&dir, "k");
    let releases = tern_testkit::corpus().join("particle/releases");
    let bundle = dir.join("photon.tern");
    // Given in the wrong order on purpose: the bundle lists bootloader, part 1, part 2.
    let inputs = ["photon-system-part2@1.5.2.bin", "photon-system-part1@1.5.2.bin", "photon-bootloader@1.5.2+lto.bin"];
    let mut args = vec!["release".to_string(), "build".into(), "--key".into(), private.display().to_string()];
    args.extend(["-o".to_string(), bundle.display().to_string()]);
    args.extend(inputs.iter().map(|f| releases.join(f).display().to_string()));
    tern_ok(&args);
    let json = tern_ok(["release", "inspect", "--json", "--key", public.to_str().unwrap(), bundle.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["platform_id"], 6);
    let order: Vec<(u64, u64)> = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["function_code"].as_u64().unwrap(), m["index"].as_u64().unwrap()))
        .collect();
    assert_eq!(order, vec![(2, 0), (4, 1), (4, 2)]);
    assert_eq!(v["modules"][1]["start_address"], 0x0802_0000);

    // Modules from two platforms cannot share a release.
    let argon = tern_testkit::corpus().join("particle/releases/argon-system-part1@4.0.2.bin");
    let photon = releases.join("photon-system-part1@1.5.2.bin");
    let run = crate::support::tern([
        "release",
        "build",
        "--key",
        private.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        photon.to_str().unwrap(),
        argon.to_str().unwrap(),
    ]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("a release targets one platform"), "{}", run.stderr);
}
