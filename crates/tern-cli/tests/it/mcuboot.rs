//! MCUboot interoperability with imgtool 2.5.0, in both directions, and bad input.
//!
//! imgtool is the oracle: `tern image sign` output must pass `imgtool verify` and be
//! byte-identical to `imgtool sign` output for the same input, options and key (ED25519
//! signatures are deterministic); `imgtool dumpinfo` must list the same header fields and
//! TLVs as `tern image inspect`; images `imgtool sign` makes must verify in `tern`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use tern_image::mcuboot;

/// The imgtool peer, or `None` (test skipped) outside CI when it is not installed.
fn imgtool() -> Option<PathBuf> {
    tern_testkit::python_tool("imgtool")
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()))
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tern() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tern"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
}

/// Deterministic filler bytes (a small linear congruential generator).
fn filler(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (state >> 16) as u8
        })
        .collect()
}

/// An ED25519 key pair made by imgtool: (private PEM path, public PEM path).
fn imgtool_keys(imgtool: &Path, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    run_ok(imgtool, &["keygen", "-t", "ed25519", "-k", path_str(&private)]);
    let pem = run_ok(imgtool, &["getpub", "-k", path_str(&private), "-e", "pem"]);
    std::fs::write(&public, pem).expect("scratch is writable");
    (private, public)
}

fn load_public(path: &Path) -> VerifyingKey {
    let pem = std::fs::read_to_string(path).expect("key file readable");
    VerifyingKey::from_public_key_pem(&pem).expect("imgtool writes SubjectPublicKeyInfo PEM")
}

/// `imgtool dumpinfo -f json`.
fn dumpinfo(imgtool: &Path, image: &Path) -> Value {
    let text = run_ok(imgtool, &["dumpinfo", "-f", "json", path_str(image)]);
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("dumpinfo JSON: {err}\n{text}"))
}

/// `tern image inspect --json`.
fn tern_inspect(image: &Path) -> Value {
    let text = run_ok(tern(), &["image", "inspect", "--json", path_str(image)]);
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("tern JSON: {err}\n{text}"))
}

/// Checks that tern reads the header and every TLV as imgtool's `dumpinfo` does.
fn check_against_dumpinfo(imgtool: &Path, image: &Path) {
    let theirs = dumpinfo(imgtool, image);
    let ours = tern_inspect(image);
    let header = &theirs["header"];
    for (their_key, our_key) in [
        ("load_addr", "load_addr"),
        ("hdr_size", "header_size"),
        ("img_size", "image_size"),
        ("protected_tlv_size", "protected_tlv_size"),
        ("flags", "flags"),
        ("version", "version_string"),
    ] {
        assert_eq!(header[their_key], ours[our_key], "{}: header {their_key}", image.display());
    }
    let mut their_tlvs = Vec::new();
    for (area, protected) in [("tlvs_prot", true), ("tlvs", false)] {
        for tlv in theirs["tlv_area"][area].as_array().into_iter().flatten() {
            their_tlvs.push((tlv["type"].as_u64(), protected, tlv["data"].as_str().map(str::to_owned)));
        }
    }
    let our_tlvs: Vec<_> = ours["tlvs"]
        .as_array()
        .expect("tlvs is a list")
        .iter()
        .map(|t| (t["type"].as_u64(), t["protected"].as_bool().expect("bool"), t["value"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(our_tlvs, their_tlvs, "{}: TLVs", image.display());
}

/// One `sign` configuration, given to both tools.
struct SignCase {
    name: &'static str,
    /// Options both tools accept, spelled the same way.
    args: &'static [&'static str],
    /// Options only tern takes, and their imgtool equivalent.
    tern_only: &'static [&'static str],
    imgtool_only: &'static [&'static str],
    /// Sign with the key (otherwise hash only).
    signed: bool,
    /// The input starts with this many zero bytes (for signing without --pad-header).
    zero_header: usize,
}

const SIGN_CASES: &[SignCase] = &[
    SignCase {
        name: "minimal",
        args: &["-v", "1.0.0", "-H", "32", "--pad-header", "-S", "0x10000"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "zephyr header in the input, version with build",
        args: &["-v", "2.5.17+123456", "-H", "0x200", "-S", "0x20000"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0x200,
    },
    SignCase {
        name: "one dependency",
        args: &["-v", "1.2.3", "-H", "0x200", "--pad-header", "-S", "0x20000", "-d", "(1, 2.3.4)"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "dependencies and security counter",
        args: &[
            "-v",
            "3.0.1+9",
            "-H",
            "0x80",
            "--pad-header",
            "-S",
            "0x20000",
            "-d",
            "(0, 1.0.0+1),(2, 255.255.65535+4294967295), (7,0.1)",
            "-s",
            "0x42",
        ],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "security counter auto",
        args: &["-v", "4.3.2+1", "-H", "32", "--pad-header", "-S", "0x10000", "-s", "auto"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "padded to the slot, align 4",
        args: &["-v", "1.1.1", "-H", "0x200", "--pad-header", "-S", "0x8000", "--pad", "--align", "4"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "confirmed, align 16 (larger trailer magic)",
        args: &["-v", "1.1.2", "-H", "0x200", "--pad-header", "-S", "0x10000", "--confirm", "--align", "16"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "padded, erased value 0, 64 sectors, align 8, dependency",
        args: &[
            "-v",
            "0.0.1",
            "-H",
            "32",
            "--pad-header",
            "-S",
            "0x6000",
            "--pad",
            "-R",
            "0",
            "-M",
            "64",
            "--align",
            "8",
            "-d",
            "(1, 1.0.0)",
        ],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "full public key",
        args: &["-v", "1.0.0", "-H", "32", "--pad-header", "-S", "0x10000", "--public-key-format", "full"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "RAM load address, non-bootable",
        args: &["-v", "9.8.7", "-H", "32", "--pad-header", "-S", "0x10000", "-L", "0x20000000", "--non-bootable"],
        tern_only: &[],
        imgtool_only: &[],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "Tern module TLV (an imgtool custom TLV)",
        args: &["-v", "5.0.0", "-H", "0x200", "--pad-header", "-S", "0x20000", "-s", "12", "-d", "(1, 5.0.0)"],
        tern_only: &["--function", "system_part", "--index", "2", "--platform", "32"],
        imgtool_only: &["--custom-tlv", "0x54a0", "0x0104020020000000"],
        signed: true,
        zero_header: 0,
    },
    SignCase {
        name: "unsigned",
        args: &["-v", "1.0.0", "-H", "32", "--pad-header", "-S", "0x10000", "-s", "3"],
        tern_only: &[],
        imgtool_only: &[],
        signed: false,
        zero_header: 0,
    },
];

#[test]
fn tern_signed_images_pass_imgtool_verify_and_equal_imgtool_output() {
    let Some(imgtool) = imgtool() else { return };
    let dir = tern_testkit::scratch("mcuboot-sign");
    let (private, public) = imgtool_keys(&imgtool, &dir, "signer");
    for (n, case) in SIGN_CASES.iter().enumerate() {
        let input = dir.join(format!("{n}.bin"));
        let mut bytes = vec![0u8; case.zero_header];
        bytes.extend(filler(1000 + 37 * n, n as u32));
        std::fs::write(&input, &bytes).expect("scratch is writable");
        let ours = dir.join(format!("{n}.tern.bin"));
        let theirs = dir.join(format!("{n}.imgtool.bin"));
        let key_args: Vec<&str> = if case.signed { vec!["-k", path_str(&private)] } else { vec![] };

        let mut args = vec!["image", "sign"];
        args.extend(&key_args);
        args.extend(case.args);
        args.extend(case.tern_only);
        args.extend([path_str(&input), path_str(&ours)]);
        run_ok(tern(), &args);

        let mut args = vec!["sign"];
        args.extend(&key_args);
        args.extend(case.args);
        args.extend(case.imgtool_only);
        args.extend([path_str(&input), path_str(&theirs)]);
        run_ok(&imgtool, &args);

        let (ours_bytes, theirs_bytes) =
            (std::fs::read(&ours).expect("written"), std::fs::read(&theirs).expect("written"));
        assert!(ours_bytes == theirs_bytes, "case {:?}: tern and imgtool images differ", case.name);

        if case.signed {
            for key in [&public, &private] {
                let out = run_ok(&imgtool, &["verify", "-k", path_str(key), path_str(&ours)]);
                assert!(out.contains("Image was correctly validated"), "case {:?}: {out}", case.name);
            }
            let out = run_ok(tern(), &["image", "verify", "-k", path_str(&public), path_str(&theirs)]);
            assert!(out.contains("signature verified"), "case {:?}: {out}", case.name);
        } else {
            let out = run_ok(&imgtool, &["verify", path_str(&ours)]);
            assert!(out.contains("Image was correctly validated"), "case {:?}: {out}", case.name);
            let out = run(tern(), &["image", "verify", "-k", path_str(&public), path_str(&theirs)]);
            assert!(!out.status.success(), "case {:?}: an unsigned image passed a key check", case.name);
        }
        check_against_dumpinfo(&imgtool, &ours);
    }
}

/// Signs with imgtool: ED25519 key, two dependencies, a security counter, padded slot.
fn imgtool_image(imgtool: &Path, dir: &Path, private: &Path, body_len: usize, extra: &[&str]) -> PathBuf {
    let input = dir.join(format!("body-{body_len}.bin"));
    std::fs::write(&input, filler(body_len, 99)).expect("scratch is writable");
    let output = dir.join(format!("imgtool-{body_len}-{}.bin", extra.len()));
    let mut args = vec!["sign", "-k", path_str(private), "-v", "3.4.5+6", "-H", "0x200", "--pad-header"];
    args.extend(["-S", "0x4000", "-d", "(1, 2.3.4+5), (3, 0.1)", "-s", "77"]);
    args.extend(extra);
    args.extend([path_str(&input), path_str(&output)]);
    run_ok(imgtool, &args);
    output
}

#[test]
fn imgtool_signed_images_are_read_and_verified_by_tern() {
    let Some(imgtool) = imgtool() else { return };
    let dir = tern_testkit::scratch("mcuboot-read");
    let (private, public) = imgtool_keys(&imgtool, &dir, "signer");
    let plain = imgtool_image(&imgtool, &dir, &private, 3000, &[]);
    let padded = imgtool_image(&imgtool, &dir, &private, 3000, &["--pad"]);
    let key = load_public(&public);

    for image_path in [&plain, &padded] {
        // The library, on the whole file.
        let bytes = std::fs::read(image_path).expect("written");
        let image = mcuboot::parse(&bytes).expect("tern parses imgtool output");
        let verified = image.verify(Some(&key)).expect("tern verifies imgtool output");
        assert!(verified.signature_verified);
        assert_eq!(verified.security_counter, Some(77));
        let dependencies: Vec<_> = verified.dependencies().map(|d| (d.image_id, d.min_version.to_string())).collect();
        assert_eq!(dependencies, [(1, "2.3.4+5".to_string()), (3, "0.1.0+0".to_string())]);
        assert_eq!(image.header().version.to_string(), "3.4.5+6");
        assert_eq!(image.header().header_size, 0x200);
        assert_eq!(image.header().image_size, 3000);
        let info = image.module_info();
        assert_eq!(info.version, 3 << 24 | 4 << 16 | 5);
        assert_eq!(info.integrity, tern_image::Integrity::Valid);
        let mapped: Vec<_> = info.dependencies().map(|d| (d.function.code(), d.index, d.version)).collect();
        assert_eq!(mapped, [(3, 1, 2 << 24 | 3 << 16 | 4), (3, 3, 1 << 16)]);
        // imgtool reports the same digest tern recomputed.
        let out = run_ok(&imgtool, &["verify", "-k", path_str(&public), path_str(image_path)]);
        assert!(out.contains(&format!("Image digest: {}", hex::encode(verified.sha256))), "{out}");

        // The CLI.
        let out = run_ok(tern(), &["image", "verify", "--key", path_str(&public), path_str(image_path)]);
        assert!(out.contains("ok: version 3.4.5+6") && out.contains("signature verified"), "{out}");
        let json = tern_inspect(image_path);
        assert_eq!(json["version"], 0x0304_0005);
        assert_eq!(json["security_counter"], 77);
        assert_eq!(json["integrity"], "valid");
        assert_eq!(
            json["image_dependencies"],
            serde_json::json!([{"image_id": 1, "version": "2.3.4+5"}, {"image_id": 3, "version": "0.1.0+0"}])
        );
        check_against_dumpinfo(&imgtool, image_path);
    }
    assert_eq!(std::fs::read(&padded).expect("written").len(), 0x4000);

    // imgtool derives "auto" security counters from the version; tern reads the same.
    let auto = imgtool_image(&imgtool, &dir, &private, 100, &["-s", "auto"]);
    let bytes = std::fs::read(&auto).expect("written");
    let image = mcuboot::parse(&bytes).expect("parses");
    assert_eq!(image.security_counter(), Some(image.header().version.packed()));
}

/// Every way a file can be bad, through the library: never a panic, always an error.
#[test]
fn library_rejects_every_tampered_truncated_or_garbage_image() {
    let Some(imgtool) = imgtool() else { return };
    let dir = tern_testkit::scratch("mcuboot-bad-lib");
    let (private, public) = imgtool_keys(&imgtool, &dir, "signer");
    let (_, other_public) = imgtool_keys(&imgtool, &dir, "other");
    let input = dir.join("small.bin");
    std::fs::write(&input, filler(24, 5)).expect("scratch is writable");
    let path = dir.join("small.signed.bin");
    let args = [
        "sign",
        "-k",
        path_str(&private),
        "-v",
        "1.2.3",
        "-H",
        "32",
        "--pad-header",
        "-S",
        "0x1000",
        "-d",
        "(1, 1.0.0)",
        "-s",
        "5",
        path_str(&input),
        path_str(&path),
    ];
    run_ok(&imgtool, &args);
    let good = std::fs::read(&path).expect("written");
    let key = load_public(&public);
    let check = |bytes: &[u8]| mcuboot::parse(bytes).and_then(|image| image.verify(Some(&key)));
    check(&good).expect("the untouched image verifies");

    let mut positions = 0;
    for at in 0..good.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= mask;
            assert!(check(&bad).is_err(), "byte {at} of {} ^ {mask:#04x} went undetected", good.len());
            positions += 1;
        }
    }
    assert_eq!(positions, good.len() * 3);
    for len in 0..good.len() {
        assert!(check(&good[..len]).is_err(), "a {len}-byte prefix verified");
    }
    assert_eq!(check(&[]).map(|_| ()), Err(mcuboot::Error::TooShort));
    let other = load_public(&other_public);
    let image = mcuboot::parse(&good).expect("parses");
    assert_eq!(image.verify(Some(&other)).map(|_| ()), Err(mcuboot::Error::KeyMismatch));

    // Garbage: random bytes, and random bytes behind a valid magic and header sizes.
    for seed in 0..2000u32 {
        let len = (seed as usize * 7) % 400;
        let mut bytes = filler(len, seed);
        if seed % 2 == 0 && len >= 16 {
            bytes[..16].copy_from_slice(&good[..16]);
        }
        if seed % 4 == 0 {
            let keep = good.len().min(len);
            bytes[..keep].copy_from_slice(&good[..keep]);
            if keep > 0 {
                bytes[seed as usize % keep] = (seed >> 3) as u8;
            }
        }
        let _ = check(&bytes);
        if let Ok(image) = mcuboot::parse(&bytes) {
            let _ = image.module_info();
            let _ = image.tlvs().count();
        }
    }
}

/// Asserts a failing `tern` run: non-zero exit, one line on stderr naming `file`.
fn check_cli_error(args: &[&str], file: &str, problem: &str) {
    let out = run(tern(), args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line:\n{stderr}");
    assert!(stderr.contains(file), "{args:?}: error does not name {file}: {stderr}");
    assert!(stderr.contains(problem), "{args:?}: error does not say {problem:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

#[test]
fn cli_reports_bad_input_on_one_line_naming_the_file() {
    let Some(imgtool) = imgtool() else { return };
    let dir = tern_testkit::scratch("mcuboot-bad-cli");
    let (private, public) = imgtool_keys(&imgtool, &dir, "signer");
    let (_, other_public) = imgtool_keys(&imgtool, &dir, "other");
    let good = imgtool_image(&imgtool, &dir, &private, 500, &[]);
    let good_bytes = std::fs::read(&good).expect("written");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("scratch is writable");
        path_str(&path).to_owned()
    };
    let empty = write("empty.bin", &[]);
    let truncated = write("truncated.bin", &good_bytes[..good_bytes.len() - 10]);
    let garbage = write("garbage.bin", &filler(700, 3));
    let mut tampered_bytes = good_bytes.clone();
    tampered_bytes[0x200 + 100] ^= 0x20;
    let tampered = write("tampered.bin", &tampered_bytes);
    let missing = dir.join("missing.bin");
    let missing = path_str(&missing);
    let (public, other_public) = (path_str(&public), path_str(&other_public));
    let good = path_str(&good);

    let cases: &[(&[&str], &str, &str)] = &[
        (&["image", "verify", "-k", public, &empty], &empty, "empty file"),
        (&["image", "verify", "-k", public, &truncated], &truncated, "truncated"),
        (&["image", "verify", "-k", public, &garbage], &garbage, "not an MCUboot image"),
        (&["image", "verify", "-k", public, &tampered], &tampered, "SHA-256 does not match"),
        (&["image", "verify", "-k", other_public, good], good, "different key"),
        (&["image", "verify", "-k", public, missing], missing, "cannot read"),
        (&["image", "verify", &tampered], &tampered, "SHA-256 does not match"),
        (&["image", "inspect", &garbage], &garbage, "not an MCUboot image"),
        (&["image", "inspect", "--json", &empty], &empty, "empty file"),
        (&["image", "verify", "-k", &garbage, good], &garbage, "PEM"),
        (&["image", "sign", "-k", public, "-v", "1.0.0", "--pad-header", good, "/dev/null"], public, "private key"),
        (&["image", "sign", "-v", "1.0.0", "--pad-header", missing, "/dev/null"], missing, "cannot read"),
        (&["image", "sign", "-v", "1.0.0", &garbage, "/dev/null"], &garbage, "--pad-header"),
        (&["image", "sign", "-v", "1.0.0", "--pad-header", "-S", "0x100", &garbage, "/dev/null"], &garbage, "slot"),
        (&["image", "sign", "-v", "1.2.3.4", "--pad-header", good, "/dev/null"], "1.2.3.4", "version"),
        (&["image", "sign", "-v", "1", "-d", "(1 1.0)", "--pad-header", good, "/dev/null"], "(1 1.0)", "dependencies"),
    ];
    for (args, file, problem) in cases {
        check_cli_error(args, file, problem);
    }
    // One bad file among good ones: each is reported, the exit code says failure.
    let out = run(tern(), &["image", "verify", "-k", public, good, &garbage, good]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}
