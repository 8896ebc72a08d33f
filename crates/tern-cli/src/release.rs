//! `tern release …`: build, inspect and verify signed release bundles.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use sha2::{Digest, Sha256};
use tern_image::bundle::{self, Bundle};
use tern_image::manifest::build::Document;
use tern_image::manifest::{key_id, Kind, Manifest, ModuleEntry};
use tern_image::{Format, ModuleFunction, ModuleInfo};
use tern_plan::Slot;

use crate::key;

/// What a signed document (release manifest or module statement) targets and when it
/// was made; shared by `tern release build` and `tern module sign`.
#[derive(Args, Clone, Debug, Default)]
pub struct SigningTarget {
    /// Target platform id (default: the platform the modules declare).
    #[arg(long)]
    pub platform: Option<u16>,
    /// Target product id (0: any product).
    #[arg(long, default_value_t = 0)]
    pub product_id: u32,
    /// Anti-rollback counter: devices refuse documents whose counter is lower than that
    /// of one they already accepted.
    #[arg(long, default_value_t = 0)]
    pub security_counter: u64,
    /// Creation time in seconds since the Unix epoch (default: now). Fix it for
    /// reproducible output.
    #[arg(long)]
    pub created: Option<u64>,
}

impl SigningTarget {
    /// The creation time to record: `--created`, or now.
    pub fn created(&self) -> u64 {
        self.created
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default())
    }
}

/// Commands on release bundles.
#[derive(Subcommand)]
pub enum Command {
    /// Sign a release manifest over module files and write them as one bundle.
    ///
    /// Module metadata (function, index, version, address, dependencies, platform) is
    /// read from each file; the modules are listed in the order their dependencies
    /// require (bootloader and radio stack first, system parts by index, then the
    /// application), which is the order a device installs them in.
    Build {
        /// Signing key (PKCS#8 PEM, as written by `tern key generate` or imgtool).
        #[arg(short, long)]
        key: PathBuf,
        /// Output bundle file.
        #[arg(short, long)]
        output: PathBuf,
        /// Module files. `FILE@ADDRESS` places a module whose format carries no address.
        #[arg(required = true)]
        modules: Vec<String>,
        #[command(flatten)]
        target: SigningTarget,
        /// A name for the release (at most 64 bytes).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Create a numbered release of a product on the server, from signed catalog modules.
    Create(crate::products::ReleaseCreate),
    /// List a product's releases on the server.
    List {
        /// The product.
        #[arg(long)]
        product: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one of a product's releases on the server.
    Show {
        /// The product.
        #[arg(long)]
        product: u32,
        /// Release number.
        number: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a bundle contains. The signature is checked only with `--key`.
    Inspect {
        /// Bundle file.
        file: PathBuf,
        /// Public (or private) key to verify the signature with.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle: manifest signature, every module's hash, every module's own
    /// integrity data. Exits non-zero on any failure.
    Verify {
        /// Public (or private) key the release must be signed with.
        #[arg(short, long)]
        key: PathBuf,
        /// Bundle files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Build { key, output, modules, target, name } => {
            let signing_key = key::load_signing_key(&key)?;
            let mut loaded = modules.iter().map(|spec| load_module(spec)).collect::<anyhow::Result<Vec<_>>>()?;
            order_for_install(&mut loaded);
            let platform_id = match target.platform {
                Some(p) => p,
                None => common_platform(&loaded)?,
            };
            let doc = Document {
                kind: Kind::Release,
                platform_id,
                product_id: target.product_id,
                security_counter: target.security_counter,
                created: target.created(),
                modules: loaded.iter().map(|m| m.entry).collect(),
                name,
            };
            let signed = doc.sign(&signing_key).map_err(|e| anyhow!("cannot build the manifest: {e}"))?;
            let bytes: Vec<&[u8]> = loaded.iter().map(|m| m.bytes.as_slice()).collect();
            let bundle = bundle::write(&signed, &bytes).map_err(|e| anyhow!("cannot write the bundle: {e}"))?;
            fs::write(&output, &bundle).with_context(|| format!("{}: cannot write", output.display()))?;
            println!("{}: {} modules, {} bytes, platform {platform_id}", output.display(), loaded.len(), bundle.len());
            for (i, m) in loaded.iter().enumerate() {
                println!("  {}. {}  {}", i + 1, describe(&m.entry), m.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Create(args) => crate::products::release_create(args),
        Command::List { product, json } => crate::products::release_list(product, json),
        Command::Show { product, number, json } => crate::products::release_show(product, number, json),
        Command::Inspect { file, key, json } => {
            let bytes = read(&file)?;
            let parsed = Bundle::parse(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let kid = parsed.key_id().map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let (manifest, verified) = match key {
                Some(key) => {
                    let key = key::load_verifying_key(&key)?;
                    let v = parsed.verify(&[key]).map_err(|e| anyhow!("{}: {e}", file.display()))?;
                    (v.manifest, true)
                }
                None => {
                    let manifest = parsed.unverified_manifest().map_err(|e| anyhow!("{}: {e}", file.display()))?;
                    parsed.check_modules(&manifest).map_err(|e| anyhow!("{}: {e}", file.display()))?;
                    (manifest, false)
                }
            };
            if json {
                println!("{}", manifest_json(&file, &manifest, &kid, verified));
            } else {
                print_manifest(&file, &manifest, &kid, verified);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { key, files } => {
            let key = key::load_verifying_key(&key)?;
            let mut failed = false;
            for file in files {
                match verify_one(&file, &key) {
                    Ok(summary) => println!("{}: ok, {summary}", file.display()),
                    Err(err) => {
                        eprintln!("{}: {err}", file.display());
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

fn verify_one(file: &Path, key: &ed25519_dalek::VerifyingKey) -> anyhow::Result<String> {
    let bytes = fs::read(file).map_err(|e| anyhow!("cannot read: {e}"))?;
    let verified =
        Bundle::parse(&bytes).and_then(|b| b.verify(std::slice::from_ref(key))).map_err(|e| anyhow!("{e}"))?;
    for (i, (entry, module)) in verified.modules().enumerate() {
        if let Some(info) = tern_image::inspect(module).info {
            if info.integrity == tern_image::Integrity::Invalid {
                bail!("module #{} ({}) fails its own integrity check", i + 1, describe(entry));
            }
        }
    }
    let m = &verified.manifest;
    Ok(format!(
        "{} modules, platform {}, security counter {}, signed by key {}",
        m.module_count(),
        m.platform_id,
        m.security_counter,
        hex::encode(key_id(key))
    ))
}

/// A module file read from disk with its manifest entry.
pub struct LoadedModule {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// What it says about itself (or what the command line said, for raw images).
    pub info: ModuleInfo,
    /// Its entry in a manifest or statement.
    pub entry: ModuleEntry,
    /// Its declared dependencies.
    pub dependencies: Vec<tern_image::Dependency>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.is_empty() {
        bail!("{}: empty file", path.display());
    }
    Ok(bytes)
}

/// Reads a module file given as `FILE[@ADDRESS[:FUNCTION:INDEX:VERSION]]`.
pub fn load_module(spec: &str) -> anyhow::Result<LoadedModule> {
    let (path, placement) = split_address(spec)?;
    let bytes = read(&path)?;
    let size = u32::try_from(bytes.len()).map_err(|_| anyhow!("{}: larger than 4 GiB", path.display()))?;
    let info = match (tern_image::inspect(&bytes).info, placement.raw) {
        (Some(info), None) if info.format != Format::Raw => info,
        (Some(info), Some(_)) if info.format != Format::Raw => bail!(
            "{}: this is a {} module that describes itself; drop the :FUNCTION:INDEX:VERSION",
            path.display(),
            info.format.name()
        ),
        (_, Some((function, index, version))) => ModuleInfo {
            format: Format::Raw,
            platform_id: 0,
            function,
            index,
            version,
            flags: 0,
            header_offset: 0,
            start_address: placement.address.unwrap_or_default(),
            end_address: placement.address.unwrap_or_default().saturating_add(size),
            dependencies: [None; tern_image::MAX_DEPENDENCIES],
            sha256: None,
            size,
            product_id: None,
            product_version: None,
            crc_ok: None,
            integrity: tern_image::Integrity::Unchecked,
        },
        (_, None) => bail!(
            "{}: raw image (no module header): describe it as FILE@ADDRESS:FUNCTION:INDEX:VERSION",
            path.display()
        ),
    };
    if info.integrity == tern_image::Integrity::Invalid {
        bail!("{}: the module fails its own integrity check; refusing to sign it", path.display());
    }
    let start_address = placement.address.unwrap_or(info.start_address);
    let entry = ModuleEntry {
        function: info.function,
        index: info.index,
        version: info.version,
        sha256: Sha256::digest(&bytes).into(),
        size,
        start_address,
        dependencies: info.dependencies,
        format: info.format,
    };
    let dependencies = info.dependencies().copied().collect();
    Ok(LoadedModule { path, bytes, info, entry, dependencies })
}

/// Where a module file goes and, for raw images, what it is.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Flash address of the file's first byte, when given.
    pub address: Option<u32>,
    /// Function, index and version of a raw image, when given.
    pub raw: Option<(ModuleFunction, u8, u32)>,
}

/// Parses `FILE`, `FILE@ADDRESS` or `FILE@ADDRESS:FUNCTION:INDEX:VERSION` (address decimal
/// or 0x-hex; function a name such as `user_part` or a Device OS code). A path containing
/// `@` with no valid placement after the last `@` is taken whole: Particle file names
/// often contain `@`.
pub fn split_address(spec: &str) -> anyhow::Result<(PathBuf, Placement)> {
    if let Some((path, placement)) = spec.rsplit_once('@') {
        let mut parts = placement.split(':');
        if let Some(address) = parts.next().and_then(parse_u32) {
            let rest: Vec<&str> = parts.collect();
            let raw = match rest.as_slice() {
                [] => None,
                [function, index, version] => {
                    let function = parse_function(function)
                        .ok_or_else(|| anyhow!("{spec}: unknown module function {function:?}"))?;
                    let index = index.parse().map_err(|_| anyhow!("{spec}: bad module index {index:?}"))?;
                    let version = parse_u32(version).ok_or_else(|| anyhow!("{spec}: bad version {version:?}"))?;
                    Some((function, index, version))
                }
                _ => bail!("{spec}: expected FILE@ADDRESS or FILE@ADDRESS:FUNCTION:INDEX:VERSION"),
            };
            return Ok((PathBuf::from(path), Placement { address: Some(address), raw }));
        }
        if placement.starts_with("0x") || placement.starts_with("0X") {
            bail!("{spec}: bad address in {placement:?}");
        }
    }
    Ok((PathBuf::from(spec), Placement::default()))
}

fn parse_function(text: &str) -> Option<ModuleFunction> {
    if let Ok(code) = text.parse::<u8>() {
        return Some(ModuleFunction::from_code(code));
    }
    (0..=9u8).map(ModuleFunction::from_code).find(|f| f.name() == text)
}

fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// Orders modules so that every module comes after the modules of the release it depends
/// on (see `tern_plan::install_order_by`; the device's contents are unknown here).
fn order_for_install(modules: &mut Vec<LoadedModule>) {
    tern_plan::install_order_by(&[], modules, |m| {
        (Slot { function: m.info.function, index: m.info.index }, m.info.version, &m.dependencies[..])
    });
}

fn common_platform(modules: &[LoadedModule]) -> anyhow::Result<u16> {
    let mut platform = None;
    for m in modules {
        if m.info.platform_id == 0 {
            continue;
        }
        match platform {
            None => platform = Some((m.info.platform_id, &m.path)),
            Some((p, first)) if p != m.info.platform_id => bail!(
                "{} is for platform {} but {} is for platform {p}; a release targets one platform",
                m.path.display(),
                m.info.platform_id,
                first.display()
            ),
            Some(_) => {}
        }
    }
    platform.map(|(p, _)| p).ok_or_else(|| anyhow!("no module declares a platform: pass --platform"))
}

fn describe(entry: &ModuleEntry) -> String {
    format!(
        "{} {} v{} @ {:#010x}, {} bytes",
        entry.function.name(),
        entry.index,
        entry.version,
        entry.start_address,
        entry.size
    )
}

fn print_manifest(file: &Path, m: &Manifest, kid: &[u8], verified: bool) {
    println!("{}", file.display());
    if !m.name().is_empty() {
        println!("  name:             {}", m.name());
    }
    println!("  platform:         {}", m.platform_id);
    println!("  product:          {}", if m.product_id == 0 { "any".to_string() } else { m.product_id.to_string() });
    println!("  security counter: {}", m.security_counter);
    println!("  created:          {} (Unix time)", m.created);
    println!(
        "  signed by key:    {}{}",
        hex::encode(kid),
        if verified { " (verified)" } else { " (signature NOT checked: pass --key)" }
    );
    println!("  modules, in install order:");
    for (i, e) in m.modules().enumerate() {
        println!("    {}. {}", i + 1, describe(e));
        println!("       file sha256 {}", hex::encode(e.sha256));
        for d in e.dependencies() {
            println!("       needs {} {} >= v{}", d.function.name(), d.index, d.version);
        }
    }
}

fn manifest_json(file: &Path, m: &Manifest, kid: &[u8], verified: bool) -> serde_json::Value {
    json!({
        "path": file.display().to_string(),
        "kind": "release",
        "name": m.name(),
        "platform_id": m.platform_id,
        "product_id": m.product_id,
        "security_counter": m.security_counter,
        "created": m.created,
        "key_id": hex::encode(kid),
        "signature_verified": verified,
        "modules": m.modules().map(|e| json!({
            "function_code": e.function.code(),
            "function": e.function.name(),
            "index": e.index,
            "version": e.version,
            "sha256": hex::encode(e.sha256),
            "size": e.size,
            "start_address": e.start_address,
            "format": e.format.name(),
            "dependencies": e.dependencies().map(|d| json!({
                "function_code": d.function.code(), "index": d.index, "version": d.version
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
