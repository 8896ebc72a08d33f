//! Quick measurement while developing: patch sizes over a PAIRS.tsv directory and
//! patches from nothing of each new image (`cargo run --release -p tern-delta --example
//! measure -- DIR [compress-only]`).
use std::time::Instant;

use tern_delta::{apply_all, make, Config};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/work/shared/corpus/pairs".into()));
    let mode = args.next().unwrap_or_default();
    let tsv = std::fs::read_to_string(dir.join("PAIRS.tsv")).expect("PAIRS.tsv");
    let base = Config { repeats: std::env::var("NOREP").is_err(), ..Config::default() };
    let (mut ld, mut lc, mut k) = (0.0, 0.0, 0);
    for line in tsv.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let old = std::fs::read(dir.join(f[1])).unwrap();
        let new = std::fs::read(dir.join(f[2])).unwrap();
        let config = Config { load_address: Some(load_of(&new)), ..base };
        let mut dr = f64::NAN;
        if mode != "c" {
            let t = Instant::now();
            let p = make(&old, &new, &config);
            let mt = t.elapsed();
            assert_eq!(apply_all(&old, &p).unwrap(), new, "{}", f[0]);
            dr = p.len() as f64 / new.len() as f64;
            ld += dr.ln();
            eprint!("{:50} delta {:7} {:.4} ({:.2}s) ", f[0], p.len(), dr, mt.as_secs_f64());
        }
        let mut cr = f64::NAN;
        if mode != "d" {
            let t = Instant::now();
            let c = make(&[], &new, &config);
            let mt = t.elapsed();
            let t = Instant::now();
            assert_eq!(apply_all(&[], &c).unwrap(), new, "{} compressed", f[0]);
            let at = t.elapsed();
            cr = c.len() as f64 / new.len() as f64;
            lc += cr.ln();
            eprint!(" full {:7}/{:7} {:.4} ({:.2}s, apply {:.1} MB/s)", c.len(), new.len(), cr, mt.as_secs_f64(), new.len() as f64 / at.as_secs_f64() / 1e6);
        }
        let _ = (dr, cr);
        eprintln!();
        k += 1;
    }
    eprintln!("ram {}", tern_delta::APPLIER_RAM);
    eprintln!("geomean delta {:.4} full {:.4}", (ld / f64::from(k)).exp(), (lc / f64::from(k)).exp());
}

fn load_of(image: &[u8]) -> u32 {
    match tern_image::particle::parse(image) {
        Ok(m) if m.stored_crc() == m.computed_crc() => m.prefix().start_address,
        _ => tern_delta::infer_load_address(image),
    }
}
