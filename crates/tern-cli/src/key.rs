//! `tern key …` and key files.
//!
//! Keys are ED25519, stored as PEM: private keys in PKCS#8 (`BEGIN PRIVATE KEY`), public
//! keys in SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`). That is what `imgtool keygen -t
//! ed25519` writes and `openssl` reads, so keys move freely between these tools.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::KeypairBytes;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Commands on signing keys.
#[derive(Subcommand)]
pub enum Command {
    /// Generate an ED25519 signing key (PKCS#8 PEM) and its public key.
    Generate {
        /// Where to write the private key. The public key goes beside it as `<FILE>.pub`
        /// unless `--public` says otherwise.
        #[arg(short, long)]
        output: PathBuf,
        /// Where to write the public key (SubjectPublicKeyInfo PEM).
        #[arg(long)]
        public: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key (PEM) and key id of a private or public key file.
    Show {
        /// A private or public key file.
        file: PathBuf,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Generate { output, public, force } => {
            let public = public.unwrap_or_else(|| {
                let mut name = output.clone().into_os_string();
                name.push(".pub");
                PathBuf::from(name)
            });
            for path in [&output, &public] {
                if path.exists() && !force {
                    bail!("{}: already exists (use --force to overwrite)", path.display());
                }
            }
            let key = SigningKey::generate(&mut rand_core::OsRng);
            // PKCS#8 v1 (no embedded public key): the form imgtool and OpenSSL read.
            let private_pem = KeypairBytes { secret_key: key.to_bytes(), public_key: None }
                .to_pkcs8_pem(LineEnding::LF)
                .context("encoding the private key")?;
            write_private(&output, private_pem.as_bytes())?;
            let public_pem =
                key.verifying_key().to_public_key_pem(LineEnding::LF).context("encoding the public key")?;
            fs::write(&public, public_pem).with_context(|| format!("{}: cannot write", public.display()))?;
            println!("private key: {}", output.display());
            println!("public key:  {}", public.display());
            println!("key id:      {}", hex::encode(tern_image::manifest::key_id(&key.verifying_key())));
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { file } => {
            let key = load_verifying_key(&file)?;
            print!("{}", key.to_public_key_pem(LineEnding::LF).context("encoding the public key")?);
            println!("key id: {}", hex::encode(tern_image::manifest::key_id(&key)));
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    file.write_all(bytes).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not a PEM key file (not text)", path.display()))
}

/// Loads an ED25519 private key from a PKCS#8 PEM file.
pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = read_text(path)?;
    SigningKey::from_pkcs8_pem(&text)
        .map_err(|err| anyhow::anyhow!("{}: not an ED25519 private key in PKCS#8 PEM ({err})", path.display()))
}

/// Loads an ED25519 public key from a PEM file holding either the public key or the
/// private key (whose public half is then used).
pub fn load_verifying_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let text = read_text(path)?;
    if let Ok(key) = VerifyingKey::from_public_key_pem(&text) {
        return Ok(key);
    }
    if let Ok(key) = SigningKey::from_pkcs8_pem(&text) {
        return Ok(key.verifying_key());
    }
    bail!("{}: not an ED25519 public or private key in PEM", path.display())
}
