//! `tern delta make | apply | bench` on real pairs from the corpus.

use std::path::PathBuf;

use crate::support::{tern, tern_err, tern_ok};

fn pair(name: &str) -> (PathBuf, PathBuf) {
    let dir = tern_testkit::corpus().join("pairs").join(name);
    (dir.join("old.bin"), dir.join("new.bin"))
}

#[test]
fn make_then_apply_reproduces_the_new_image() {
    let (old, new) = pair("particle_photon_bootloader_1.2.1_to_1.3.1");
    let dir = tern_testkit::scratch("delta-make-apply");
    let patch = dir.join("p.tdp");
    let out = dir.join("new.bin");
    let made = tern_ok([
        "delta".as_ref(),
        "make".as_ref(),
        old.as_os_str(),
        new.as_os_str(),
        "-o".as_ref(),
        patch.as_os_str(),
    ]);
    // The module prefix gives the Photon bootloader's load address.
    assert!(made.contains("load address 0x08000000"), "{made}");
    let patch_len = std::fs::metadata(&patch).expect("patch written").len();
    assert!(patch_len < 1500, "{patch_len} bytes");
    tern_ok(["delta".as_ref(), "apply".as_ref(), old.as_os_str(), patch.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert!(std::fs::read(&out).expect("output") == std::fs::read(&new).expect("new"));

    // Applied to another image, the patch is refused in one line naming the patch.
    let err = tern_err(
        ["delta".as_ref(), "apply".as_ref(), new.as_os_str(), patch.as_os_str(), "-o".as_ref(), out.as_os_str()],
        &patch,
    );
    assert!(err.contains("wrong source"), "{err}");
    // A truncated patch likewise.
    let cut = dir.join("cut.tdp");
    let bytes = std::fs::read(&patch).expect("patch");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let err = tern_err(
        ["delta".as_ref(), "apply".as_ref(), old.as_os_str(), cut.as_os_str(), "-o".as_ref(), out.as_os_str()],
        &cut,
    );
    assert!(err.contains("truncated"), "{err}");
}

/// A PAIRS.tsv directory with two small corpus pairs (paths absolute), in a scratch
/// directory of its own for each test (`name`).
fn small_pairs(name: &str) -> PathBuf {
    let dir = tern_testkit::scratch(name);
    let mut tsv = String::from("name\told\tnew\n");
    for name in ["particle_photon_bootloader_1.2.1_to_1.3.1", "adafruit_feather52832_bootloader_0.8.3_to_0.9.0_blonly"]
    {
        let (old, new) = pair(name);
        tsv += &format!("{name}\t{}\t{}\n", old.display(), new.display());
    }
    std::fs::write(dir.join("PAIRS.tsv"), tsv).expect("write PAIRS.tsv");
    dir
}

fn number(cell: &str) -> u64 {
    cell.parse().unwrap_or_else(|_| panic!("not a byte count: {cell:?}"))
}

#[test]
fn bench_without_peers_prints_tern_and_its_ablations() {
    let out = tern_ok([
        "delta".as_ref(),
        "bench".as_ref(),
        small_pairs("delta-bench-alone").as_os_str(),
        "--no-peers".as_ref(),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pair\tnew\ttern\tbytes only\tno maps\tbranches\tpointers\tno external\tno repeats");
    for row in &lines[1..3] {
        let cells: Vec<&str> = row.split('\t').collect();
        assert_eq!(cells.len(), 9, "{row}");
        let tern = number(cells[2]);
        assert!(tern < number(cells[1]));
        // On these Thumb-2 images modelling everything beats modelling nothing.
        assert!(tern < number(cells[3]), "{row}");
    }
    assert!(lines[3].starts_with("geomean patch/new\t"), "{out}");
    let ram: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("applier RAM: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("applier RAM line");
    assert!(ram <= 16 * 1024, "{ram}");
    assert!(out.contains("apply throughput on this host: "), "{out}");

    // The second table: each new image compressed (a patch from nothing, applied back by
    // the bench), as a ratio, next to Tern without repeats.
    let at = lines.iter().position(|l| l.starts_with("new image of pair\t")).expect("full-image table");
    assert_eq!(lines[at], "new image of pair\tbytes\ttern\ttern ratio\tno repeats");
    for row in &lines[at + 1..at + 3] {
        let cells: Vec<&str> = row.split('\t').collect();
        assert_eq!(cells.len(), 5, "{row}");
        let ratio: f64 = cells[3].parse().expect("ratio");
        assert!((ratio - number(cells[2]) as f64 / number(cells[1]) as f64).abs() < 1e-3, "{row}");
        // Real firmware compresses, and repeats of its own bytes are worth something.
        assert!(ratio < 0.8, "{row}");
        assert!(ratio < cells[4].parse::<f64>().expect("ratio"), "{row}");
    }
    assert!(lines[at + 3].starts_with("geomean compressed/full\t"), "{out}");
}

#[test]
fn bench_runs_the_peers_side_by_side() {
    // Outside CI a missing peer venv skips this test; in CI it fails.
    if tern_testkit::python_tool("python").is_none() {
        return;
    }
    let run = tern(["delta".as_ref(), "bench".as_ref(), small_pairs("delta-bench-peers").as_os_str()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split('\t').collect();
    for peer in
        ["bsdiff4", "detools-lzma", "detools-heatshrink", "hdiffpatch-lzma2", "hpatchlite-tuz", "xdelta3", "zstd"]
    {
        assert!(header.contains(&peer), "no {peer} column: {}", lines[0]);
    }
    for row in &lines[1..3] {
        let cells: Vec<&str> = row.split('\t').collect();
        // Every peer produced a patch (a missing one would show "-").
        for cell in &cells[3..10] {
            assert!(number(cell) > 0, "{row}");
        }
    }
    assert!(run.stdout.contains("tern / best peer per pair: geomean "), "{}", run.stdout);
    // The general-purpose compressors beside Tern's full images.
    let full = lines.iter().find(|l| l.starts_with("new image of pair\t")).expect("full-image table");
    assert_eq!(*full, "new image of pair\tbytes\ttern\ttern ratio\txz -9\tzstd -19\tgzip -9\tno repeats");
}
