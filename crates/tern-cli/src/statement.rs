//! Signed module statements: one module's hash and metadata signed on its own, so a server
//! can compose an update from modules without holding any signing key.
//!
//! `tern module sign` writes `FILE.stmt` beside each module (a COSE_Sign1 document of kind
//! "module statement", see `tern_image::manifest`); `tern module verify` checks statements
//! against their modules.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use tern_image::manifest::build::Document;
use tern_image::manifest::{Kind, Manifest, SignedDocument};

use crate::release::{load_module, LoadedModule, SigningTarget};

/// The file a module's statement is written to by default: `FILE.stmt`.
pub fn default_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_owned();
    name.push(".stmt");
    PathBuf::from(name)
}

/// Signs a statement for the module at `spec` (`FILE[@ADDRESS[:FUNCTION:INDEX:VERSION]]`)
/// and returns the module's path and the statement bytes.
pub fn sign(spec: &str, key: &SigningKey, target: &SigningTarget) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let LoadedModule { path, info, entry, .. } = load_module(spec)?;
    let platform_id = match (info.platform_id, target.platform) {
        (_, Some(p)) => p,
        (0, None) => bail!("{}: the module declares no platform: pass --platform", path.display()),
        (p, None) => p,
    };
    let doc = Document {
        kind: Kind::ModuleStatement,
        platform_id,
        product_id: target.product_id,
        security_counter: target.security_counter,
        created: target.created(),
        modules: vec![entry],
        name: String::new(),
    };
    let signed = doc.sign(key).map_err(|e| anyhow!("{}: cannot sign: {e}", path.display()))?;
    Ok((path, signed))
}

/// Verifies `statement` for the module file `module` with `key`, returning the statement.
pub fn verify(module: &Path, statement: &Path, key: &VerifyingKey) -> anyhow::Result<Manifest> {
    let bytes = fs::read(statement).with_context(|| format!("{}: cannot read", statement.display()))?;
    let doc = SignedDocument::parse(&bytes)
        .and_then(|d| d.verify(std::slice::from_ref(key)))
        .map_err(|e| anyhow!("{}: {e}", statement.display()))?;
    if doc.kind != Kind::ModuleStatement {
        bail!("{}: a release manifest, not a module statement", statement.display());
    }
    let module_bytes = fs::read(module).with_context(|| format!("{}: cannot read", module.display()))?;
    let entry = doc.modules().next().ok_or_else(|| anyhow!("{}: lists no module", statement.display()))?;
    if entry.size as usize != module_bytes.len() || Sha256::digest(&module_bytes).as_slice() != entry.sha256 {
        bail!("{}: does not match the statement {} (hash or size differ)", module.display(), statement.display());
    }
    Ok(doc)
}
