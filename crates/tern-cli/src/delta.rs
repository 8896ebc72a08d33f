//! `tern delta make | apply | bench`: delta patches between two versions of an image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use tern_delta::{Applier, Config, Status, APPLIER_RAM};

/// Commands on delta patches.
#[derive(Subcommand)]
pub enum Command {
    /// Make the patch that turns OLD into NEW.
    Make(MakeArgs),
    /// Apply a patch to OLD (checks OLD's SHA-256 first and the result's at the end).
    Apply {
        /// The image the patch was made from.
        old: PathBuf,
        /// The patch.
        patch: PathBuf,
        /// Where to write the new image.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Compare Tern's patches with the peer tools on every pair of a PAIRS.tsv directory,
    /// then every pair's new image compressed (a patch from nothing) with xz, zstd and gzip.
    #[command(after_help = "Peers: bsdiff4, detools and hdiffpatch from the peers venv \
                            ($TERN_PEERS/venv, default .peers/venv), xdelta3 and zstd from PATH; \
                            `bash scripts/install-delta-peers.sh` installs them; xz and gzip from \
                            PATH (Debian's xz-utils and gzip). A missing peer is reported and its \
                            columns left empty; with CI=true it is an error.")]
    Bench(BenchArgs),
}

/// Arguments of `tern delta make`.
#[derive(Args)]
pub struct MakeArgs {
    /// The image the device runs now.
    old: PathBuf,
    /// The image to update it to.
    new: PathBuf,
    /// Where to write the patch.
    #[arg(short, long)]
    output: PathBuf,
    /// Load address of both images (hex with 0x, or decimal). Default: read from a
    /// Particle module's prefix, else inferred from the pointers in the new image.
    #[arg(long, value_parser = parse_u32)]
    load_address: Option<u32>,
}

/// Arguments of `tern delta bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Directory with a PAIRS.tsv (columns name, old, new; paths relative to it).
    #[arg(default_value = "../shared/corpus/pairs")]
    pairs: PathBuf,
    /// Only Tern's own columns (no peers).
    #[arg(long)]
    no_peers: bool,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("{s}: not a 32-bit address ({e})"))
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Make(args) => make(args),
        Command::Apply { old, patch, output } => apply(&old, &patch, &output),
        Command::Bench(args) => bench(args),
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// The load address of an image: a Particle module's prefix says it (when the module's
/// CRC checks out, so a raw image with prefix-like bytes is not mistaken for one); any
/// other image is inferred from its pointers.
pub fn load_address(image: &[u8]) -> u32 {
    match tern_image::particle::parse(image) {
        Ok(m) if m.stored_crc() == m.computed_crc() => m.prefix().start_address,
        _ => tern_delta::infer_load_address(image),
    }
}

fn make(args: MakeArgs) -> anyhow::Result<ExitCode> {
    let old = read(&args.old)?;
    let new = read(&args.new)?;
    if u32::try_from(old.len()).is_err() || u32::try_from(new.len()).is_err() {
        bail!("{}: images must be smaller than 4 GiB", args.new.display());
    }
    let load = args.load_address.unwrap_or_else(|| load_address(&new));
    let patch = tern_delta::make(&old, &new, &Config { load_address: Some(load), ..Config::default() });
    fs::write(&args.output, &patch).with_context(|| format!("{}: cannot write", args.output.display()))?;
    println!(
        "{}: {} bytes for {} new bytes ({:.4}), load address {load:#010x}",
        args.output.display(),
        patch.len(),
        new.len(),
        patch.len() as f64 / new.len().max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// Applies `patch` to `old` the way a device does: in small chunks, through the streaming
/// applier. Returns the new image.
fn apply_streaming(old: &[u8], patch: &[u8]) -> Result<Vec<u8>, tern_delta::ApplyError> {
    let mut applier = Applier::new();
    let mut out = Vec::new();
    let mut source = old;
    let mut status = Status::NeedMore;
    for chunk in patch.chunks(512) {
        status = applier.feed(chunk, &mut source, &mut out)?;
    }
    if status != Status::Done {
        applier.finish()?;
    }
    Ok(out)
}

fn apply(old_path: &Path, patch_path: &Path, output: &Path) -> anyhow::Result<ExitCode> {
    let old = read(old_path)?;
    let patch = read(patch_path)?;
    let new = apply_streaming(&old, &patch).map_err(|e| anyhow!("{}: {e}", patch_path.display()))?;
    fs::write(output, &new).with_context(|| format!("{}: cannot write", output.display()))?;
    println!("{}: {} bytes, SHA-256 checked", output.display(), new.len());
    Ok(ExitCode::SUCCESS)
}

/// The peers the bench runs, in column order.
const PEERS: [&str; 7] =
    ["bsdiff4", "detools-lzma", "detools-heatshrink", "hdiffpatch-lzma2", "hpatchlite-tuz", "xdelta3", "zstd"];

/// Tern's ablation columns: what each modelling idea is worth. "bytes only" predicts
/// every byte from the old image as it is (no repeats either); "no maps" recognises
/// branches and pointers but assumes nothing moved; "branches" and "pointers" add the
/// image's address map for one of them; "no external" is everything but the map of
/// addresses outside the image; "no repeats" everything but references into the new
/// image's own earlier bytes.
fn ablations(load: u32) -> [(&'static str, Config); 6] {
    let all = Config { load_address: Some(load), ..Config::default() };
    [
        (
            "bytes only",
            Config { branches: false, pointers: false, address_map: false, external: false, repeats: false, ..all },
        ),
        ("no maps", Config { address_map: false, external: false, repeats: false, ..all }),
        ("branches", Config { pointers: false, external: false, repeats: false, ..all }),
        ("pointers", Config { branches: false, external: false, repeats: false, ..all }),
        ("no external", Config { external: false, repeats: false, ..all }),
        ("no repeats", Config { repeats: false, ..all }),
    ]
}

/// The general-purpose compressors a full image is compared with (from PATH; Debian's
/// xz-utils, zstd and gzip), with their arguments.
const COMPRESSORS: [(&str, &[&str]); 3] =
    [("xz", &["-9", "-c"]), ("zstd", &["-19", "-q", "-c"]), ("gzip", &["-9", "-c"])];

/// Which of [`COMPRESSORS`] are installed; missing ones are an error with CI=true.
fn find_compressors() -> anyhow::Result<Vec<bool>> {
    let found: Vec<bool> = COMPRESSORS.iter().map(|(tool, _)| on_path(tool)).collect();
    let missing: Vec<&str> = COMPRESSORS.iter().zip(&found).filter(|(_, ok)| !**ok).map(|((t, _), _)| *t).collect();
    if !missing.is_empty() {
        let msg = format!("compressors missing: {} (Debian: apt-get install xz-utils zstd gzip)", missing.join(", "));
        if tern_testkit_free_in_ci() {
            bail!("{msg}; CI=true, so the bench must compare against every compressor");
        }
        eprintln!("warning: {msg}");
    }
    Ok(found)
}

/// Size of `file` compressed by `tool` with `args`.
fn compressed_size(tool: &str, args: &[&str], file: &Path) -> anyhow::Result<u64> {
    let run =
        std::process::Command::new(tool).args(args).arg(file).output().with_context(|| format!("running {tool}"))?;
    if !run.status.success() {
        bail!("{tool} {}: {}", file.display(), String::from_utf8_lossy(&run.stderr).trim());
    }
    Ok(run.stdout.len() as u64)
}

struct Peers {
    python: Option<PathBuf>,
    xdelta3: bool,
    zstd: bool,
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new(tool).arg("-V").output().is_ok()
}

impl Peers {
    fn find() -> anyhow::Result<Peers> {
        let dir = std::env::var_os("TERN_PEERS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".peers"));
        let python = dir.join("venv/bin/python");
        let python_ok = std::process::Command::new(&python)
            .args(["-c", "import bsdiff4, detools, hdiffpatch"])
            .output()
            .is_ok_and(|o| o.status.success());
        let peers = Peers { python: python_ok.then_some(python), xdelta3: on_path("xdelta3"), zstd: on_path("zstd") };
        let mut missing = Vec::new();
        if peers.python.is_none() {
            missing.push(format!("bsdiff4/detools/hdiffpatch ({} with those modules)", dir.join("venv").display()));
        }
        if !peers.xdelta3 {
            missing.push("xdelta3".into());
        }
        if !peers.zstd {
            missing.push("zstd".into());
        }
        if !missing.is_empty() {
            let msg = format!("peer tools missing: {} (run `bash scripts/install-delta-peers.sh`)", missing.join(", "));
            if tern_testkit_free_in_ci() {
                bail!("{msg}; CI=true, so the bench must compare against every peer");
            }
            eprintln!("warning: {msg}");
        }
        Ok(peers)
    }

    /// Patch sizes by peer (`None` where the peer is missing).
    fn sizes(&self, old: &Path, new: &Path, scratch: &Path) -> anyhow::Result<Vec<Option<u64>>> {
        let mut out = vec![None; PEERS.len()];
        if let Some(python) = &self.python {
            let run = std::process::Command::new(python)
                .args(["-c", PEERS_PY])
                .arg(old)
                .arg(new)
                .output()
                .context("running the Python peers")?;
            if !run.status.success() {
                bail!("{}: Python peers failed: {}", new.display(), String::from_utf8_lossy(&run.stderr).trim());
            }
            for line in String::from_utf8_lossy(&run.stdout).lines() {
                let (name, size) = line.split_once('\t').ok_or_else(|| anyhow!("peer output: {line}"))?;
                let i = PEERS.iter().position(|p| *p == name).ok_or_else(|| anyhow!("unknown peer {name}"))?;
                out[i] = Some(size.trim().parse()?);
            }
        }
        let tool = |args: &[&std::ffi::OsStr], file: &Path| -> anyhow::Result<Option<u64>> {
            let status = std::process::Command::new(args[0]).args(&args[1..]).output()?;
            if !status.status.success() {
                bail!("{:?} failed: {}", args[0], String::from_utf8_lossy(&status.stderr).trim());
            }
            Ok(Some(fs::metadata(file)?.len()))
        };
        if self.xdelta3 {
            let f = scratch.join("patch.xd3");
            out[5] = tool(
                &[
                    "xdelta3".as_ref(),
                    "-9".as_ref(),
                    "-e".as_ref(),
                    "-f".as_ref(),
                    "-s".as_ref(),
                    old.as_os_str(),
                    new.as_os_str(),
                    f.as_os_str(),
                ],
                &f,
            )?;
        }
        if self.zstd {
            let f = scratch.join("patch.zst");
            let from = format!("--patch-from={}", old.display());
            out[6] = tool(
                &[
                    "zstd".as_ref(),
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "-19".as_ref(),
                    from.as_ref(),
                    new.as_os_str(),
                    "-o".as_ref(),
                    f.as_os_str(),
                ],
                &f,
            )?;
        }
        Ok(out)
    }
}

/// Whether this is a CI run (where every peer must be there).
fn tern_testkit_free_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The Python peers' runner (also at scripts/delta-peers.py).
const PEERS_PY: &str = include_str!("../../../scripts/delta-peers.py");

fn geomean(ratios: &[f64]) -> f64 {
    if ratios.is_empty() {
        return f64::NAN;
    }
    (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp()
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let tsv_path = args.pairs.join("PAIRS.tsv");
    let tsv = fs::read_to_string(&tsv_path).with_context(|| format!("{}: cannot read", tsv_path.display()))?;
    let peers = if args.no_peers { None } else { Some(Peers::find()?) };
    let scratch = std::env::temp_dir().join(format!("tern-delta-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;

    let mut header: Vec<String> = vec!["pair".into(), "new".into(), "tern".into()];
    if peers.is_some() {
        header.extend(PEERS.iter().map(|p| p.to_string()));
        header.push("tern/best".into());
    }
    header.extend(ablations(0).iter().map(|(n, _)| n.to_string()));
    println!("{}", header.join("\t"));

    let columns = 1 + PEERS.len() + ablations(0).len();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); columns];
    let mut best_ratios = Vec::new();
    let mut tern_vs_best = Vec::new();
    let (mut applied_bytes, mut apply_secs) = (0u64, 0f64);
    for line in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            bail!("{}: a line without name, old and new: {line}", tsv_path.display());
        }
        let (old_path, new_path) = (args.pairs.join(f[1]), args.pairs.join(f[2]));
        let (old, new) = (read(&old_path)?, read(&new_path)?);
        let load = load_address(&new);
        let patch = tern_delta::make(&old, &new, &Config { load_address: Some(load), ..Config::default() });
        let started = Instant::now();
        let back = apply_streaming(&old, &patch).map_err(|e| anyhow!("{}: Tern's own patch: {e}", f[0]))?;
        apply_secs += started.elapsed().as_secs_f64();
        applied_bytes += new.len() as u64;
        if back != new {
            bail!("{}: Tern's patch does not reproduce the new image", f[0]);
        }
        let n = new.len() as f64;
        let mut row = vec![f[0].to_string(), new.len().to_string(), patch.len().to_string()];
        ratios[0].push(patch.len() as f64 / n);
        if let Some(peers) = &peers {
            let sizes = peers.sizes(&old_path, &new_path, &scratch)?;
            for (i, s) in sizes.iter().enumerate() {
                row.push(s.map_or("-".into(), |s| s.to_string()));
                if let Some(s) = s {
                    ratios[1 + i].push(*s as f64 / n);
                }
            }
            if let Some(best) = sizes.iter().flatten().min() {
                let r = patch.len() as f64 / *best as f64;
                best_ratios.push(*best as f64 / n);
                tern_vs_best.push(r);
                row.push(format!("{r:.3}"));
            } else {
                row.push("-".into());
            }
        }
        for (i, (_, cfg)) in ablations(load).iter().enumerate() {
            let p = tern_delta::make(&old, &new, cfg);
            ratios[1 + PEERS.len() + i].push(p.len() as f64 / n);
            row.push(p.len().to_string());
        }
        println!("{}", row.join("\t"));
    }
    let _ = fs::remove_dir_all(&scratch);

    let mut means = vec!["geomean patch/new".to_string(), String::new(), format!("{:.4}", geomean(&ratios[0]))];
    if peers.is_some() {
        for r in &ratios[1..=PEERS.len()] {
            means.push(if r.is_empty() { "-".into() } else { format!("{:.4}", geomean(r)) });
        }
        means.push(if tern_vs_best.is_empty() { "-".into() } else { format!("{:.3}", geomean(&tern_vs_best)) });
    }
    for r in &ratios[1 + PEERS.len()..] {
        means.push(format!("{:.4}", geomean(r)));
    }
    println!("{}", means.join("\t"));
    if !best_ratios.is_empty() {
        println!("best peer per pair: geomean patch/new {:.4}", geomean(&best_ratios));
        println!("tern / best peer per pair: geomean {:.3}", geomean(&tern_vs_best));
    }
    println!("applier RAM: {APPLIER_RAM} bytes (state, buffers, address map and model; no heap)");
    println!(
        "apply throughput on this host: {:.1} MB/s ({} bytes in {:.2} s, 512-byte patch chunks)",
        applied_bytes as f64 / apply_secs.max(1e-9) / 1e6,
        applied_bytes,
        apply_secs
    );
    println!();
    full_images(&args, &tsv_path, &tsv)?;
    Ok(ExitCode::SUCCESS)
}

/// The second table: every pair's new image sent whole and compressed, as Tern's patch
/// from nothing (applied back and checked) next to the general-purpose compressors, as
/// compressed / full.
fn full_images(args: &BenchArgs, tsv_path: &Path, tsv: &str) -> anyhow::Result<()> {
    let tools = if args.no_peers { vec![false; COMPRESSORS.len()] } else { find_compressors()? };
    let mut header = vec!["new image of pair".to_string(), "bytes".into(), "tern".into(), "tern ratio".into()];
    for ((tool, tool_args), ok) in COMPRESSORS.iter().zip(&tools) {
        if *ok {
            header.push(format!("{tool} {}", tool_args[0]));
        }
    }
    header.push("no repeats".into());
    println!("{}", header.join("\t"));
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 2 + COMPRESSORS.len()];
    let (mut applied_bytes, mut apply_secs, mut make_secs) = (0u64, 0f64, 0f64);
    for line in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            bail!("{}: a line without name, old and new: {line}", tsv_path.display());
        }
        let new_path = args.pairs.join(f[2]);
        let new = read(&new_path)?;
        let config = Config { load_address: Some(load_address(&new)), ..Config::default() };
        let started = Instant::now();
        let patch = tern_delta::compress(&new, &config);
        make_secs += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let back = apply_streaming(&[], &patch).map_err(|e| anyhow!("{}: Tern's compressed image: {e}", f[0]))?;
        apply_secs += started.elapsed().as_secs_f64();
        applied_bytes += new.len() as u64;
        if back != new {
            bail!("{}: Tern's compressed image does not reproduce the image", f[0]);
        }
        let n = new.len().max(1) as f64;
        let mut row = vec![
            f[0].to_string(),
            new.len().to_string(),
            patch.len().to_string(),
            format!("{:.4}", patch.len() as f64 / n),
        ];
        ratios[0].push(patch.len() as f64 / n);
        for (i, ((tool, tool_args), ok)) in COMPRESSORS.iter().zip(&tools).enumerate() {
            if *ok {
                let size = compressed_size(tool, tool_args, &new_path)?;
                ratios[1 + i].push(size as f64 / n);
                row.push(format!("{:.4}", size as f64 / n));
            }
        }
        let plain = tern_delta::compress(&new, &Config { repeats: false, ..config });
        ratios[1 + COMPRESSORS.len()].push(plain.len() as f64 / n);
        row.push(format!("{:.4}", plain.len() as f64 / n));
        println!("{}", row.join("\t"));
    }
    let mut means = vec!["geomean compressed/full".to_string(), String::new(), String::new()];
    for r in ratios.iter().filter(|r| !r.is_empty()) {
        means.push(format!("{:.4}", geomean(r)));
    }
    println!("{}", means.join("\t"));
    println!(
        "full images: made in {make_secs:.1} s; applied (the same applier, from an empty old image) at {:.1} MB/s",
        applied_bytes as f64 / apply_secs.max(1e-9) / 1e6
    );
    Ok(())
}
