//! `tern hex` output read back by third-party readers: Python `intelhex` and `srec_cat`.

use std::path::Path;
use std::process::Command;

use crate::support::{tern_err, tern_ok};

/// Reads `hex` with Python intelhex and returns `(start, bytes)` for each contiguous segment.
fn read_with_intelhex(hex: &Path) -> Option<Vec<(u32, Vec<u8>)>> {
    let python = tern_testkit::python_tool("python")?;
    let script = "import sys, intelhex\n\
        ih = intelhex.IntelHex(sys.argv[1])\n\
        for start, end in ih.segments():\n\
        \x20   sys.stdout.write('%d %s\\n' % (start, ih.tobinstr(start=start, end=end - 1).hex()))\n";
    let out = Command::new(python).arg("-c").arg(script).arg(hex).output().expect("python runs");
    assert!(out.status.success(), "intelhex rejected the file: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("ascii output");
    Some(
        text.lines()
            .map(|line| {
                let (start, data) = line.split_once(' ').expect("two fields");
                (start.parse().expect("address"), hex::decode(data).expect("hex data"))
            })
            .collect(),
    )
}

/// Converts `hex` to a flat binary with `srec_cat`, returning the bytes from `base`.
fn read_with_srec_cat(hex: &Path, base: u32, out_dir: &Path) -> Option<Vec<u8>> {
    let srec_cat = tern_testkit::peer("/usr/bin/srec_cat")?;
    let bin = out_dir.join("srec.bin");
    let status = Command::new(srec_cat)
        .arg(hex)
        .arg("-intel")
        .arg("-offset")
        .arg(format!("-{base:#x}"))
        .arg("-o")
        .arg(&bin)
        .arg("-binary")
        .status()
        .expect("srec_cat runs");
    assert!(status.success(), "srec_cat rejected the file");
    Some(std::fs::read(bin).expect("srec_cat output"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn hex_of_modules_reads_back_in_third_party_tools() {
    let dir = tern_testkit::scratch("hex-modules");
    // Two modules, one crossing a 64 KiB boundary, with a gap between them.
    let a = pattern(70_000, 1);
    let b = pattern(1_000, 2);
    std::fs::write(dir.join("a.bin"), &a).unwrap();
    std::fs::write(dir.join("b.bin"), &b).unwrap();
    let hex = dir.join("out.hex");
    let a_addr = 0x0800_c000u32;
    let b_addr = 0x0803_0000u32;
    let args = [
        "hex".to_string(),
        format!("{}@{a_addr:#x}", dir.join("a.bin").display()),
        format!("{}@{b_addr:#x}", dir.join("b.bin").display()),
        "-o".into(),
        hex.display().to_string(),
    ];
    tern_ok(&args);

    if let Some(segments) = read_with_intelhex(&hex) {
        assert_eq!(segments, vec![(a_addr, a.clone()), (b_addr, b.clone())]);
    }
    if let Some(flat) = read_with_srec_cat(&hex, a_addr, &dir) {
        assert_eq!(&flat[..a.len()], &a[..]);
        let b_off = (b_addr - a_addr) as usize;
        assert_eq!(&flat[b_off..b_off + b.len()], &b[..]);
    }
}

#[test]
fn hex_rejects_overlaps_and_missing_addresses() {
    let dir = tern_testkit::scratch("hex-bad");
    let a = dir.join("a.bin");
    std::fs::write(&a, pattern(64, 3)).unwrap();
    let out = dir.join("out.hex");
    let err = tern_err(
        [
            "hex",
            &format!("{}@0x1000", a.display()),
            &format!("{}@0x1020", a.display()),
            "-o",
            &out.display().to_string(),
        ],
        &a,
    );
    assert!(err.contains("overlaps"), "{err}");
    tern_err(["hex", &a.display().to_string(), "-o", &out.display().to_string()], &a);
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    tern_err(["hex", &format!("{}@0x0", empty.display()), "-o", &out.display().to_string()], &empty);
    assert!(!out.exists(), "no output is written on error");
}
