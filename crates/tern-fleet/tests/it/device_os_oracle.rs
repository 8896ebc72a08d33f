//! Modules Tern writes, read by Particle's own reader: binary-version-reader 3.1.3
//! (`tests/oracle/particle-inspect.js`, installed by `scripts/install-peers.sh`; a missing
//! peer fails this test in CI) must report for every module of the synthetic Device OS
//! (`tern_fleet::device_os`, every profile, both releases, applications) and for a seeded
//! sweep of modules from `tern_image::particle::write` exactly the fields they were written
//! with, and Tern's reader the same.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use tern_device::profile::PROFILES;
use tern_fleet::device_os;
use tern_image::model::{Dependency, ModuleFunction};
use tern_image::particle::{self, prefix::Flags, NewModule};
use tern_sim::device::Behaviour;

/// `node` from `PATH`, through `tern_testkit::peer` so that its absence fails in CI.
fn node() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("node")).find(|p| p.is_file()));
    tern_testkit::peer(found.unwrap_or_else(|| PathBuf::from("/usr/bin/node")))
}

/// What a module was written with, in the oracle's vocabulary.
struct Written {
    name: String,
    bytes: Vec<u8>,
    expected: Value,
}

fn expected(m: &NewModule<'_>, len: usize) -> Value {
    let slot = |i: usize| {
        m.dependencies.get(i).map_or(
            json!({"function": 0, "index": 0, "version": 0}),
            |d| json!({"function": d.function.code(), "index": d.index, "version": d.version}),
        )
    };
    let (product_id, product_version) = m.product.map_or((-1, -1), |(id, v)| (i64::from(id), i64::from(v)));
    json!({
        "ok": true,
        "prefixOffset": m.prefix_offset,
        "prefixScore": 7,
        "startAddress": m.start_address,
        "endAddress": m.start_address as usize + len - 4,
        "flags": m.flags.0,
        "moduleVersion": m.version,
        "platformId": m.platform_id,
        "moduleFunction": m.function.code(),
        "moduleIndex": m.index,
        "dependencies": [slot(0), slot(1)],
        "productId": product_id,
        "productVersion": product_version,
        "suffixSize": if m.product.is_some() { 40 } else { 36 },
        "crcOk": true,
        "size": len,
    })
}

fn write(name: String, m: &NewModule<'_>) -> Written {
    let bytes = particle::write(m).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut expected = expected(m, bytes.len());
    // The stored SHA-256 is the hash of everything before it.
    expected["sha256"] = json!(hex(&sha(&bytes[..bytes.len() - 38])));
    Written { name, bytes, expected }
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The modules of the synthetic Device OS as `NewModule`s again, from what Tern's reader
/// finds in them (checked against the oracle below, so a reader and writer that agree with
/// each other but not with Particle fail).
fn synthetic_device_os() -> Vec<Written> {
    let mut out = Vec::new();
    for &profile in PROFILES {
        let releases = device_os::releases(profile).expect("synthetic releases");
        let needs = releases[1].application_dependency().expect("system parts");
        let mut images: Vec<_> = releases.iter().flat_map(|r| r.modules.clone()).collect();
        images.push(device_os::application(profile, 3, &[needs], Behaviour::Panic, 5000).expect("an application"));
        for image in images {
            let module = particle::parse(&image.bytes).unwrap_or_else(|e| panic!("{}: {e}", image.name));
            let suffix = usize::from(module.suffix().size) + 4;
            let at = module.prefix_offset();
            let mut contents = image.bytes[..at].to_vec();
            contents.extend_from_slice(&image.bytes[at + particle::PREFIX_SIZE..image.bytes.len() - suffix]);
            let deps: Vec<Dependency> = image.entry.dependencies().copied().collect();
            let m = NewModule {
                platform_id: profile.platform_id,
                function: image.entry.function,
                index: image.entry.index,
                version: image.entry.version,
                start_address: image.entry.start_address,
                prefix_offset: at,
                mcu_target: 0,
                flags: Flags(module.info.flags),
                dependencies: &deps,
                product: module.info.product_id.zip(module.info.product_version),
                contents: &contents,
            };
            let written = write(format!("{}-{}", profile.name, image.name), &m);
            assert!(written.bytes == image.bytes, "{}: the writer makes the same bytes again", image.name);
            out.push(written);
        }
    }
    out
}

/// Seeded random modules of every shape the writer makes.
fn sweep(count: usize) -> Vec<Written> {
    let mut x = 0x0bad_5eed_1234_5678u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    while out.len() < count {
        let len = 100 + (next() % 3000) as usize;
        let contents: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let r = next();
        let dep = |r: u64| Dependency {
            function: ModuleFunction::from_code(1 + (r % 9) as u8),
            index: (r >> 8) as u8,
            version: u32::from((r >> 16) as u16),
        };
        let deps = [dep(next()), dep(next())];
        let m = NewModule {
            platform_id: [0, 6, 8, 10, 12, 13, 23, 26, 32][(r % 9) as usize],
            function: ModuleFunction::from_code(1 + ((r >> 4) % 9) as u8),
            index: (r >> 8) as u8,
            version: u32::from((r >> 16) as u16),
            start_address: (next() as u32) & 0x0fff_fffc,
            prefix_offset: [0, 0x200, 0x184, 0xc0, 0x10c][((r >> 32) % 5) as usize],
            mcu_target: 0,
            flags: Flags(((r >> 40) & 1) as u8),
            dependencies: &deps[..((r >> 44) % 3) as usize],
            product: ((r >> 48) & 1 == 1).then_some(((r >> 49) as u16, (r >> 3) as u16)),
            contents: &contents,
        };
        // A random prefix elsewhere in random bytes is possible in principle; the writer
        // refuses such a module rather than write one the reader takes differently.
        if particle::write(&m).is_ok() {
            out.push(write(format!("sweep-{:03}", out.len()), &m));
        }
    }
    out
}

#[test]
fn binary_version_reader_reads_written_modules_as_written() {
    let Some(node) = node() else { return };
    let Some(_) = tern_testkit::peer("tests/oracle/node_modules/binary-version-reader/package.json") else {
        return;
    };
    let dir = tern_testkit::scratch("device-os-oracle");
    let mut modules = synthetic_device_os();
    let synthetic = modules.len();
    modules.extend(sweep(300));
    let mut files = Vec::new();
    for m in &modules {
        let path = dir.join(format!("{}.bin", m.name));
        std::fs::write(&path, &m.bytes).expect("scratch is writable");
        files.push(path);
    }
    let script = tern_testkit::repo_root().join("tests/oracle/particle-inspect.js");
    let output = Command::new(&node).arg(&script).args(&files).output().expect("node runs the oracle");
    assert!(output.status.success(), "oracle failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), modules.len(), "one line per file");

    let mut disagreements = Vec::new();
    let mut fields = 0;
    for (m, oracle) in modules.iter().zip(&lines) {
        let ours = particle::parse(&m.bytes).map(|p| p.info);
        for (field, want) in m.expected.as_object().expect("an object") {
            fields += 1;
            if &oracle[field] != want {
                disagreements
                    .push(format!("{}: {field}: written {want}, binary-version-reader {}", m.name, oracle[field]));
            }
        }
        match ours {
            Ok(info) => {
                let tern = json!({"moduleVersion": info.version, "platformId": info.platform_id,
                    "moduleFunction": info.function.code(), "prefixOffset": info.header_offset,
                    "sha256": info.sha256.map(|s| hex(&s))});
                for (field, value) in tern.as_object().expect("an object") {
                    if &m.expected[field] != value {
                        disagreements.push(format!("{}: {field}: written {}, tern {value}", m.name, m.expected[field]));
                    }
                }
            }
            Err(e) => disagreements.push(format!("{}: tern cannot read it: {e}", m.name)),
        }
    }
    eprintln!(
        "writer oracle: {} modules ({synthetic} synthetic Device OS, {} sweep), {fields} fields compared, {} disagreements",
        modules.len(),
        modules.len() - synthetic,
        disagreements.len()
    );
    for d in &disagreements {
        eprintln!("  {d}");
    }
    assert!(disagreements.is_empty(), "{} disagreements with binary-version-reader", disagreements.len());
    let _ = std::fs::remove_dir_all(&dir);
}
