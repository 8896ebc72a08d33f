//! `tern module …`: read module files.
//!
//! `tern module inspect FILE... [--json]` prints one record per file, in the order given:
//! a table row, or with `--json` one JSON object per line (schema in `docs/cli.md`). Every
//! file that cannot be read or is not a valid module also gets one line on stderr,
//! `error: FILE: problem`, and makes the exit status 1; the other files are still reported.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::statement;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tern_image::{inspect, Inspection, ModuleInfo};

/// Commands on module files.
#[derive(Subcommand)]
pub enum Command {
    /// Show what module files contain (format detected: Particle, MCUboot, raw).
    ///
    /// Two SHA-256s per file: the file sha256 (every byte of the file: the module's
    /// identity in the catalog and on devices) and the stored sha256 (the hash the module
    /// carries itself) with whether it matches. See docs/cli.md, "Which SHA-256".
    ///
    /// Exits with status 1 when any file cannot be read or is not a valid module (each such
    /// file also gets one `error:` line on stderr).
    Inspect {
        /// Module files to read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object per file (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sign a statement for each module: its SHA-256 and metadata, signed on its own, so
    /// a server can compose updates from signed modules without holding the key.
    ///
    /// Writes `FILE.stmt` beside each module.
    Sign {
        /// Signing key (PKCS#8 PEM).
        #[arg(short, long)]
        key: PathBuf,
        /// Module files: `FILE`, `FILE@ADDRESS` or, for raw images,
        /// `FILE@ADDRESS:FUNCTION:INDEX:VERSION`.
        #[arg(required = true)]
        modules: Vec<String>,
        #[command(flatten)]
        target: crate::release::SigningTarget,
    },
    /// Upload module files to the server's catalog (after `tern login`).
    ///
    /// Each module gets a signed statement (what devices verify): `FILE.stmt` beside it if
    /// present (`tern module sign`), else one signed now with `--key`. Modules without a
    /// statement stay in the catalog but are never offered to devices.
    Upload {
        /// Module files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Private key to sign statements with (PEM, `tern key generate`).
        #[arg(long, env = "TERN_KEY", value_name = "KEY")]
        key: Option<PathBuf>,
        /// What statements signed with --key target (a module that declares no platform,
        /// such as an asset, needs --platform).
        #[command(flatten)]
        target: crate::release::SigningTarget,
    },
    /// List the server's module catalog.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify modules against their statements (`FILE.stmt` unless `--statement`).
    Verify {
        /// Public (or private) key the statements must be signed with.
        #[arg(short, long)]
        key: PathBuf,
        /// Module files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Statement file (only with a single module).
        #[arg(long)]
        statement: Option<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Inspect { files, json } => Ok(inspect_files(&files, json)),
        Command::Upload { files, key, target } => crate::ops::module_upload(&files, key.as_deref(), &target),
        Command::List { json } => crate::ops::module_list(json),
        Command::Sign { key, modules, target } => {
            let key = crate::key::load_signing_key(&key)?;
            for spec in &modules {
                let (path, bytes) = statement::sign(spec, &key, &target)?;
                let out = statement::default_path(&path);
                std::fs::write(&out, bytes).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", out.display()))?;
                println!("{}: signed statement {}", path.display(), out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { key, files, statement: explicit } => {
            if explicit.is_some() && files.len() != 1 {
                anyhow::bail!("--statement goes with exactly one module file");
            }
            let key = crate::key::load_verifying_key(&key)?;
            let mut failed = false;
            for file in &files {
                let stmt = explicit.clone().unwrap_or_else(|| statement::default_path(file));
                match statement::verify(file, &stmt, &key) {
                    Ok(doc) => {
                        let m = doc.modules().next().expect("a verified statement lists exactly one module");
                        println!(
                            "{}: ok, {} {} v{}, platform {}, security counter {}",
                            file.display(),
                            m.function.name(),
                            m.index,
                            m.version,
                            doc.platform_id,
                            doc.security_counter
                        );
                    }
                    Err(err) => {
                        eprintln!("error: {err:#}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

/// One file's result: what was read, or why nothing could be.
struct Report {
    path: String,
    outcome: Result<Inspection, String>,
    /// The file sha256: SHA-256 of every byte of the file (see `docs/cli.md`).
    file_sha256: Option<[u8; 32]>,
}

impl Report {
    fn read(path: &Path) -> Report {
        let path_name = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => Report {
                path: path_name,
                outcome: Ok(inspect(&bytes)),
                file_sha256: Some(Sha256::digest(&bytes).into()),
            },
            Err(err) => Report { path: path_name, outcome: Err(format!("cannot read: {err}")), file_sha256: None },
        }
    }

    fn stored_sha256_matches(&self) -> Option<bool> {
        self.outcome.as_ref().ok().and_then(|i| i.stored_sha256_matches)
    }

    /// The problems as sentences, empty for a valid module.
    fn errors(&self) -> Vec<String> {
        match &self.outcome {
            Ok(inspection) => inspection.problems.iter().map(ToString::to_string).collect(),
            Err(err) => vec![err.clone()],
        }
    }

    fn is_valid(&self) -> bool {
        self.outcome.as_ref().is_ok_and(Inspection::is_valid)
    }

    fn info(&self) -> Option<&ModuleInfo> {
        self.outcome.as_ref().ok().and_then(|inspection| inspection.info.as_ref())
    }
}

fn inspect_files(files: &[PathBuf], json: bool) -> ExitCode {
    let reports: Vec<Report> = files.iter().map(|path| Report::read(path)).collect();
    if json {
        for report in &reports {
            // Serialising plain strings, numbers and lists cannot fail.
            let line = serde_json::to_string(&JsonRecord::from(report)).unwrap_or_default();
            println!("{line}");
        }
    } else {
        print_table(&reports);
    }
    let mut all_valid = true;
    for report in reports.iter().filter(|r| !r.is_valid()) {
        all_valid = false;
        eprintln!("error: {}: {}", report.path, report.errors().join("; "));
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The JSON Lines record, fields in schema order (see `docs/cli.md`).
#[derive(Serialize)]
struct JsonRecord {
    path: String,
    format: Option<&'static str>,
    valid: bool,
    errors: Vec<String>,
    crc_ok: Option<bool>,
    platform_id: Option<u16>,
    function_code: Option<u8>,
    function: Option<&'static str>,
    index: Option<u8>,
    version: Option<u32>,
    flags: Option<u8>,
    prefix_offset: Option<u32>,
    start_address: Option<u32>,
    end_address: Option<u32>,
    dependencies: Vec<JsonDependency>,
    /// The stored sha256 under its first name (kept for existing readers).
    sha256: Option<String>,
    file_sha256: Option<String>,
    stored_sha256: Option<String>,
    stored_sha256_matches: Option<bool>,
    size: Option<usize>,
    product_id: Option<u16>,
    product_version: Option<u16>,
}

#[derive(Serialize)]
struct JsonDependency {
    function_code: u8,
    index: u8,
    version: u32,
}

impl From<&Report> for JsonRecord {
    fn from(report: &Report) -> Self {
        let inspection = report.outcome.as_ref().ok();
        let info = report.info();
        JsonRecord {
            path: report.path.clone(),
            format: inspection.map(|i| i.format.name()),
            valid: report.is_valid(),
            errors: report.errors(),
            crc_ok: info.and_then(|i| i.crc_ok),
            platform_id: info.map(|i| i.platform_id),
            function_code: info.map(|i| i.function.code()),
            function: info.map(|i| i.function.name()),
            index: info.map(|i| i.index),
            version: info.map(|i| i.version),
            flags: info.map(|i| i.flags),
            prefix_offset: info.map(|i| i.header_offset),
            start_address: info.map(|i| i.start_address),
            end_address: info.map(|i| i.end_address),
            dependencies: info
                .map(|i| {
                    i.dependencies()
                        .map(|d| JsonDependency {
                            function_code: d.function.code(),
                            index: d.index,
                            version: d.version,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            sha256: info.and_then(|i| i.sha256).map(hex::encode),
            file_sha256: report.file_sha256.map(hex::encode),
            stored_sha256: info.and_then(|i| i.sha256).map(hex::encode),
            stored_sha256_matches: report.stored_sha256_matches(),
            size: inspection.map(|i| i.size),
            product_id: info.and_then(|i| i.product_id),
            product_version: info.and_then(|i| i.product_version),
        }
    }
}

const TABLE_HEADER: [&str; 12] = [
    "FILE",
    "FORMAT",
    "PLATFORM",
    "FUNCTION",
    "INDEX",
    "VERSION",
    "ADDRESSES",
    "SIZE",
    "CRC",
    "FILE SHA256",
    "STORED SHA256",
    "STATUS",
];

/// How many hex digits of a SHA-256 a table shows.
const SHORT_HASH: usize = 16;

/// The first [`SHORT_HASH`] hex digits of `hash`.
pub(crate) fn short_hash(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..SHORT_HASH / 2])
}

/// One table row per file; columns padded to the widest cell, the last one left ragged.
fn print_table(reports: &[Report]) {
    let rows: Vec<[String; 12]> = reports.iter().map(table_row).collect();
    let mut widths = TABLE_HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = TABLE_HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn table_row(report: &Report) -> [String; 12] {
    let dash = || "-".to_string();
    let status =
        if report.is_valid() { "valid".to_string() } else { format!("invalid: {}", report.errors().join("; ")) };
    let format = report.outcome.as_ref().map_or_else(|_| dash(), |i| i.format.name().to_string());
    let size = report.outcome.as_ref().map_or_else(|_| dash(), |i| i.size.to_string());
    let file_sha256 = report.file_sha256.as_ref().map_or_else(dash, short_hash);
    let Some(info) = report.info() else {
        let d = dash;
        return [report.path.clone(), format, d(), d(), d(), d(), d(), size, d(), file_sha256, d(), status];
    };
    let stored_sha256 = match (info.sha256, report.stored_sha256_matches()) {
        (Some(hash), Some(true)) => format!("{} matches", short_hash(&hash)),
        (Some(hash), Some(false)) => format!("{} differs", short_hash(&hash)),
        (Some(hash), None) => short_hash(&hash),
        (None, _) => dash(),
    };
    let crc = match info.crc_ok {
        Some(true) => "ok".to_string(),
        Some(false) => "BAD".to_string(),
        None => dash(),
    };
    [
        report.path.clone(),
        format,
        info.platform_id.to_string(),
        format!("{} ({})", info.function.name(), info.function.code()),
        info.index.to_string(),
        info.version.to_string(),
        format!("{:#010x}-{:#010x}", info.start_address, info.end_address),
        size,
        crc,
        file_sha256,
        stored_sha256,
        status,
    ]
}
