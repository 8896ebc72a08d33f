//! `tern image …`: sign, verify and inspect MCUboot images.
//!
//! `sign` takes imgtool's option names (and short flags) for the options it shares with
//! `imgtool sign`, so an imgtool command line carries over; given the same input, options
//! and key it writes the same bytes as imgtool 2.5.0. Keys are the PKCS#8 PEM files
//! `imgtool keygen -t ed25519` and `tern key generate` write.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use tern_image::mcuboot::{self, ImageDependency, KeyFormat, SignConfig, SlotConfig, TernModule, Version};
use tern_image::ModuleFunction;

use crate::key::{load_signing_key, load_verifying_key};

/// Commands on MCUboot images.
#[derive(Subcommand)]
pub enum Command {
    /// Make a signed MCUboot image from a raw binary (like `imgtool sign`).
    #[command(disable_version_flag = true)]
    Sign(SignArgs),
    /// Check images' SHA-256 and, with --key, their ED25519 signature.
    Verify {
        /// Public (or private) key the images must be signed with. Without it only the
        /// hash is checked.
        #[arg(short, long)]
        key: Option<PathBuf>,
        /// Image files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show an image's header, TLVs and what Tern reads from them.
    Inspect {
        /// Image files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object per file (JSON Lines).
        #[arg(long)]
        json: bool,
    },
}

/// Options of `tern image sign`.
#[derive(Args)]
pub struct SignArgs {
    /// ED25519 private key (PKCS#8 PEM). Without it the image carries only its hash.
    #[arg(short, long)]
    key: Option<PathBuf>,
    /// Image version: MAJOR[.MINOR[.REVISION[+BUILD]]].
    #[arg(short, long)]
    version: String,
    /// Header size in bytes (at least 32; Zephyr uses 0x200).
    #[arg(short = 'H', long, default_value = "32", value_parser = parse_u16)]
    header_size: u16,
    /// Insert the header before the input instead of overwriting its first
    /// --header-size bytes (which must then be zero).
    #[arg(long)]
    pad_header: bool,
    /// Slot size: the image plus the swap trailer must fit.
    #[arg(short = 'S', long, value_parser = parse_u32)]
    slot_size: Option<u32>,
    /// Pad the image to --slot-size, ending with the trailer magic.
    #[arg(long, requires = "slot_size")]
    pad: bool,
    /// Mark the padded image confirmed (implies --pad).
    #[arg(long, requires = "slot_size")]
    confirm: bool,
    /// Flash write alignment used by the swap trailer: 1, 2, 4, 8, 16 or 32.
    #[arg(long, default_value = "1")]
    align: u8,
    /// Sectors the swap status area allows for.
    #[arg(short = 'M', long, default_value = "128")]
    max_sectors: u32,
    /// The value erased flash reads as: 0 or 0xff (header and slot padding).
    #[arg(short = 'R', long, default_value = "0xff", value_parser = parse_erased)]
    erased_val: u8,
    /// Load address for an image that runs from RAM (sets the RAM_LOAD flag).
    #[arg(short = 'L', long, value_parser = parse_u32)]
    load_addr: Option<u32>,
    /// Dependencies on other images: "(IMAGE_ID, VERSION), ...".
    #[arg(short, long)]
    dependencies: Option<String>,
    /// Security counter: a number, or `auto` for the packed version.
    #[arg(short, long)]
    security_counter: Option<String>,
    /// How the key is named in the image: its hash or the full public key.
    #[arg(long, value_enum, default_value = "hash")]
    public_key_format: PublicKeyFormat,
    /// Mark the image non-bootable.
    #[arg(long)]
    non_bootable: bool,
    /// Tern module TLV: the module function (name such as `system_part`, or code).
    #[arg(long)]
    function: Option<String>,
    /// Tern module TLV: the module index.
    #[arg(long, requires = "function")]
    index: Option<u8>,
    /// Tern module TLV: the platform id.
    #[arg(long, requires = "function", value_parser = parse_u16)]
    platform: Option<u16>,
    /// The raw binary to sign.
    infile: PathBuf,
    /// Where to write the image.
    outfile: PathBuf,
}

/// imgtool's `--public-key-format` values.
#[derive(Clone, Copy, ValueEnum)]
enum PublicKeyFormat {
    /// SHA-256 of the public key (KEYHASH TLV).
    Hash,
    /// The DER public key (PUBKEY TLV).
    Full,
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Sign(args) => sign(args),
        Command::Verify { key, files } => {
            let key = key.map(|path| load_verifying_key(&path)).transpose()?;
            each_file(&files, |path, bytes| {
                let image = mcuboot::parse(bytes)?;
                let verified = image.verify(key.as_ref())?;
                let version = image.header().version;
                let sha = hex::encode(verified.sha256);
                if verified.signature_verified {
                    println!(
                        "{}: ok: version {version}, stored sha256 {sha} (the image hash TLV) matches, \
                         ED25519 signature verified",
                        path.display()
                    );
                } else {
                    println!(
                        "{}: hash ok: version {version}, stored sha256 {sha} (the image hash TLV) matches; \
                         signature not checked (no --key)",
                        path.display()
                    );
                }
                Ok(())
            })
        }
        Command::Inspect { files, json } => each_file(&files, |path, bytes| {
            let image = mcuboot::parse(bytes)?;
            if json {
                println!("{}", inspect_json(path, &image));
            } else {
                print_inspection(path, &image);
            }
            Ok(())
        }),
    }
}

/// Runs `action` on each file's bytes; a failing file is reported on one line naming it,
/// the others still run, and the exit code says whether all succeeded.
fn each_file(
    files: &[PathBuf],
    mut action: impl FnMut(&Path, &[u8]) -> Result<(), mcuboot::Error>,
) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for path in files {
        let outcome = match fs::read(path) {
            Err(err) => Err(format!("cannot read ({err})")),
            Ok(bytes) if bytes.is_empty() => Err("empty file".to_string()),
            Ok(bytes) => action(path, &bytes).map_err(|err| err.to_string()),
        };
        if let Err(problem) = outcome {
            eprintln!("error: {}: {problem}", path.display());
            ok = false;
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let version: Version = args.version.parse().map_err(|err| anyhow!("--version {:?}: {err}", args.version))?;
    let security_counter = match args.security_counter.as_deref() {
        None => None,
        Some(text) if text.eq_ignore_ascii_case("auto") => Some(version.packed()),
        Some(text) => Some(parse_u32(text).map_err(|err| anyhow!("--security-counter {text:?}: {err}"))?),
    };
    let dependencies = match &args.dependencies {
        None => Vec::new(),
        Some(text) => parse_dependencies(text).map_err(|err| anyhow!("--dependencies {text:?}: {err}"))?,
    };
    let tern_module = match &args.function {
        None => None,
        Some(text) => Some(TernModule {
            function: parse_function(text).map_err(|err| anyhow!("--function {text:?}: {err}"))?,
            index: args.index.unwrap_or(0),
            platform_id: args.platform.unwrap_or(0),
        }),
    };
    let slot = args.slot_size.map(|slot_size| SlotConfig {
        slot_size,
        pad: args.pad,
        confirm: args.confirm,
        align: args.align,
        max_sectors: args.max_sectors,
    });
    let config = SignConfig {
        header_size: args.header_size,
        pad_header: args.pad_header,
        version,
        load_addr: args.load_addr.unwrap_or(0),
        non_bootable: args.non_bootable,
        security_counter,
        dependencies,
        tern_module,
        key_format: match args.public_key_format {
            PublicKeyFormat::Hash => KeyFormat::Hash,
            PublicKeyFormat::Full => KeyFormat::Full,
        },
        slot,
        erased_val: args.erased_val,
    };
    let key = args.key.as_deref().map(load_signing_key).transpose()?;
    let input = fs::read(&args.infile).with_context(|| format!("{}: cannot read", args.infile.display()))?;
    let image =
        mcuboot::sign(&config, &input, key.as_ref()).map_err(|err| anyhow!("{}: {err}", args.infile.display()))?;
    fs::write(&args.outfile, &image).with_context(|| format!("{}: cannot write", args.outfile.display()))?;
    let signed = if key.is_some() { "signed" } else { "unsigned (hash only)" };
    println!("{}: {signed} MCUboot image, version {version}, {} bytes", args.outfile.display(), image.len());
    Ok(ExitCode::SUCCESS)
}

/// Parses an integer the way imgtool does: decimal, or with a 0x / 0o / 0b prefix.
fn parse_u64(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let (digits, radix) = if let Some(rest) = lower.strip_prefix("0x") {
        (rest, 16)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (rest, 8)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (rest, 2)
    } else {
        (lower.as_str(), 10)
    };
    u64::from_str_radix(digits, radix).map_err(|_| format!("{text:?} is not a number"))
}

fn parse_u32(text: &str) -> Result<u32, String> {
    u32::try_from(parse_u64(text)?).map_err(|_| format!("{text:?} does not fit in 32 bits"))
}

fn parse_u16(text: &str) -> Result<u16, String> {
    u16::try_from(parse_u64(text)?).map_err(|_| format!("{text:?} does not fit in 16 bits"))
}

fn parse_erased(text: &str) -> Result<u8, String> {
    match parse_u64(text)? {
        0 => Ok(0),
        0xff => Ok(0xff),
        _ => Err("must be 0 or 0xff".to_string()),
    }
}

/// Parses imgtool's dependency syntax: `(IMAGE_ID, VERSION), (IMAGE_ID, VERSION) …`.
fn parse_dependencies(text: &str) -> anyhow::Result<Vec<ImageDependency>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('(').ok_or_else(|| anyhow!("expected '(' at {rest:?}"))?;
        let (pair, after) = inner.split_once(')').ok_or_else(|| anyhow!("missing ')'"))?;
        let (id, version) = pair.split_once(',').ok_or_else(|| anyhow!("expected (IMAGE_ID, VERSION)"))?;
        let image_id: u8 =
            id.trim().parse().map_err(|_| anyhow!("image id {:?} is not a number below 256", id.trim()))?;
        let min_version: Version = version.trim().parse().map_err(|err| anyhow!("{:?}: {err}", version.trim()))?;
        out.push(ImageDependency { image_id, flags: 0, min_version });
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    if out.is_empty() {
        bail!("no dependencies given");
    }
    if out.len() > mcuboot::MAX_IMAGE_DEPENDENCIES {
        bail!("at most {} dependencies", mcuboot::MAX_IMAGE_DEPENDENCIES);
    }
    Ok(out)
}

/// A module function by name (`system_part`) or Device OS code (`4`).
fn parse_function(text: &str) -> anyhow::Result<ModuleFunction> {
    if let Ok(code) = parse_u64(text) {
        let code = u8::try_from(code).map_err(|_| anyhow!("function code must be below 256"))?;
        return Ok(ModuleFunction::from_code(code));
    }
    (0..=9)
        .map(ModuleFunction::from_code)
        .find(|function| function.name() == text)
        .ok_or_else(|| anyhow!("unknown module function (use a name such as system_part, or a code)"))
}

fn integrity_name(integrity: tern_image::Integrity) -> &'static str {
    match integrity {
        tern_image::Integrity::Valid => "valid",
        tern_image::Integrity::Invalid => "invalid",
        tern_image::Integrity::Unchecked => "unchecked",
    }
}

fn print_inspection(path: &Path, image: &mcuboot::Image<'_>) {
    let header = image.header();
    let layout = image.layout();
    let info = image.module_info();
    println!("{}: MCUboot image", path.display());
    println!("  version           {} (packed {:#010x})", header.version, info.version);
    println!("  load address      {:#010x}", header.load_addr);
    println!("  header size       {:#x}", header.header_size);
    println!("  body size         {:#x}", header.image_size);
    println!("  flags             {:#010x}", header.flags);
    println!("  protected TLVs    {:#x} bytes at {:#x}", layout.protected_len, layout.tlv_offset);
    println!("  unprotected TLVs  {:#x} bytes at {:#x}", layout.unprotected_len, layout.unprotected_offset);
    if let Some(module) = image.tern_module() {
        println!(
            "  tern module       platform {}, {} {} (function {})",
            module.platform_id,
            module.function.name(),
            module.index,
            module.function.code()
        );
    }
    if let Some(counter) = image.security_counter() {
        println!("  security counter  {counter}");
    }
    for dependency in image.dependencies() {
        println!("  depends on        image {} >= {}", dependency.image_id, dependency.min_version);
    }
    println!("  hash              {}", integrity_name(info.integrity));
    println!("  TLVs:");
    for tlv in image.tlvs() {
        let area = if tlv.protected { "protected" } else { "unprotected" };
        println!(
            "    {:#06x} {:<12} {:<11} {:>4} bytes  {}",
            tlv.kind,
            mcuboot::tlv::name(tlv.kind),
            area,
            tlv.value.len(),
            hex::encode(tlv.value)
        );
    }
}

fn inspect_json(path: &Path, image: &mcuboot::Image<'_>) -> serde_json::Value {
    let header = image.header();
    let info = image.module_info();
    let version = header.version;
    serde_json::json!({
        "path": path.display().to_string(),
        "format": "mcuboot",
        "version": info.version,
        "version_string": version.to_string(),
        "version_parts": {"major": version.major, "minor": version.minor, "revision": version.revision, "build": version.build},
        "load_addr": header.load_addr,
        "header_size": header.header_size,
        "image_size": header.image_size,
        "protected_tlv_size": header.protected_tlv_size,
        "flags": header.flags,
        "platform_id": info.platform_id,
        "function_code": info.function.code(),
        "function": info.function.name(),
        "index": info.index,
        "start_address": info.start_address,
        "end_address": info.end_address,
        "size": info.size,
        "sha256": info.sha256.map(hex::encode),
        "integrity": integrity_name(info.integrity),
        "security_counter": image.security_counter(),
        "image_dependencies": image.dependencies().map(|d| serde_json::json!({
            "image_id": d.image_id,
            "version": d.min_version.to_string(),
        })).collect::<Vec<_>>(),
        "dependencies": info.dependencies().map(|d| serde_json::json!({
            "function_code": d.function.code(),
            "index": d.index,
            "version": d.version,
        })).collect::<Vec<_>>(),
        "tlvs": image.tlvs().map(|t| serde_json::json!({
            "type": t.kind,
            "name": mcuboot::tlv::name(t.kind),
            "protected": t.protected,
            "value": hex::encode(t.value),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_imgtool_reads_them() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("0", Ok(0)),
            ("512", Ok(512)),
            ("0x200", Ok(0x200)),
            ("0X1f", Ok(0x1f)),
            ("0o17", Ok(0o17)),
            ("0b101", Ok(5)),
            ("", Err(())),
            ("0x", Err(())),
            ("12a", Err(())),
            ("-1", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_u64(text).map_err(|_| ()), *expected, "{text:?}");
        }
        assert!(parse_u16("0x10000").is_err());
        assert!(parse_u32("0x100000000").is_err());
    }

    #[test]
    fn dependency_lists() {
        let v = |text: &str| text.parse::<Version>().expect("valid version");
        let dep = |image_id, version: &str| ImageDependency { image_id, flags: 0, min_version: v(version) };
        let cases: &[(&str, Option<Vec<ImageDependency>>)] = &[
            ("(1, 1.2.3)", Some(vec![dep(1, "1.2.3")])),
            ("(1,1.2.3+4),(2, 0.1)", Some(vec![dep(1, "1.2.3+4"), dep(2, "0.1")])),
            (
                " (0, 0) , (255, 255.255.65535+4294967295) ,",
                Some(vec![dep(0, "0"), dep(255, "255.255.65535+4294967295")]),
            ),
            ("", None),
            ("(1 1.0)", None),
            ("(256, 1.0)", None),
            ("(1, 1.0", None),
            ("1, 1.0)", None),
            ("(1, 01.0)", None),
            ("(0,1),(1,1),(2,1),(3,1),(4,1),(5,1),(6,1),(7,1),(8,1)", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_dependencies(text).ok(), *expected, "{text:?}");
        }
    }

    #[test]
    fn module_functions_by_name_or_code() {
        let cases: &[(&str, Option<ModuleFunction>)] = &[
            ("system_part", Some(ModuleFunction::SystemPart)),
            ("monolithic", Some(ModuleFunction::MonoFirmware)),
            ("ncp_firmware", Some(ModuleFunction::NcpFirmware)),
            ("4", Some(ModuleFunction::SystemPart)),
            ("0x05", Some(ModuleFunction::UserPart)),
            ("42", Some(ModuleFunction::Other(42))),
            ("256", None),
            ("kernel", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_function(text).ok(), *expected, "{text:?}");
        }
    }
}
