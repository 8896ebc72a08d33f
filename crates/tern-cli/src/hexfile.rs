//! `tern hex`: one Intel HEX file from modules or a release bundle, for manufacturing.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tern_image::bundle::{self, Bundle};
use tern_image::hex::{self, Segment};
use tern_image::Format;

use crate::key;
use crate::release::split_address;

/// Arguments of `tern hex`.
#[derive(Args)]
pub struct Command {
    /// Module files (`FILE` or `FILE@ADDRESS`) or release bundles, in any mix.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Key that bundles must be signed with; bundles are always verified before use.
    #[arg(long)]
    key: Option<PathBuf>,
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let trusted = cmd.key.as_deref().map(key::load_verifying_key).transpose()?;
    // (label, address, bytes)
    let mut placed: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for spec in &cmd.inputs {
        let (path, placement) = split_address(spec)?;
        let address = placement.address;
        let bytes = fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        if bytes.is_empty() {
            bail!("{}: empty file", path.display());
        }
        if bytes.starts_with(&bundle::MAGIC) {
            if address.is_some() {
                bail!("{spec}: a bundle's modules carry their own addresses; drop the @ADDRESS");
            }
            let key =
                trusted.ok_or_else(|| anyhow!("{}: bundles are verified before use: pass --key", path.display()))?;
            let verified =
                Bundle::parse(&bytes).and_then(|b| b.verify(&[key])).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            for (i, (entry, module)) in verified.modules().enumerate() {
                let label = format!("{} module #{} ({} {})", path.display(), i + 1, entry.function.name(), entry.index);
                placed.push((label, entry.start_address, module.to_vec()));
            }
            continue;
        }
        let info = tern_image::inspect(&bytes).info;
        let address = match (address, &info) {
            (Some(a), _) => a,
            (None, Some(info)) if info.format != Format::Raw => info.start_address,
            _ => bail!("{}: no address known for this file: write it as FILE@0xADDRESS", path.display()),
        };
        placed.push((path.display().to_string(), address, bytes));
    }
    let segments: Vec<Segment<'_>> =
        placed.iter().map(|(label, address, bytes)| Segment { address: *address, bytes, label }).collect();
    let text = hex::write(&segments).map_err(|e| anyhow!("{e}"))?;
    fs::write(&cmd.output, &text).with_context(|| format!("{}: cannot write", cmd.output.display()))?;
    for s in &segments {
        println!("{:#010x}..{:#010x}  {}", s.address, u64::from(s.address) + s.bytes.len() as u64, s.label);
    }
    println!(
        "{}: {} segments, {} bytes of data",
        cmd.output.display(),
        segments.len(),
        placed.iter().map(|p| p.2.len()).sum::<usize>()
    );
    Ok(ExitCode::SUCCESS)
}
