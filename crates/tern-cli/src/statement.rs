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
use tern_image::ModuleFunction;

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
    let LoadedModule { path, info, mut entry, .. } = load_module(spec)?;
    let platform_id = match (info.platform_id, target.platform) {
        (_, Some(p)) => p,
        (0, None) => bail!("{}: the module declares no platform: pass --platform", path.display()),
        (p, None) => p,
    };
    if entry.function == ModuleFunction::Asset {
        let given = crate::release::split_address(spec)?.1.address;
        entry.start_address = asset_address(&path, platform_id, entry.index, given)?;
    }
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

/// Where an asset is installed on `platform_id`. An asset's own prefix holds no flash
/// address (Device OS keeps assets apart from the code), so the address is the platform
/// profile's asset slot, as the device's CPU sees it (the profile's `slot_address`: on the
/// Argon the external flash is mapped at 0x12000000, so its asset slot at offset 0x300000
/// is 0x12300000). An address given as `FILE@ADDRESS` must be that one; a platform Tern
/// has no profile for takes the given address as it is.
fn asset_address(path: &Path, platform_id: u16, index: u8, given: Option<u32>) -> anyhow::Result<u32> {
    let slot = tern_device::profile::PROFILES
        .iter()
        .filter(|p| p.platform_id == platform_id)
        .find_map(|p| Some((p, p.slot_for(ModuleFunction::Asset, index)?)));
    match (slot, given) {
        (Some((profile, slot)), given) => {
            let def = &profile.slots[slot];
            let address = profile.slot_address(slot).expect("a profile's slots are on its devices");
            match given {
                Some(given) if given != address => bail!(
                    "{}@{given:#x}: platform {platform_id} installs assets at {address:#x} (slot {:?}: {} flash \
                     offset {:#x}); drop the @ADDRESS or give {address:#x}",
                    path.display(),
                    def.name,
                    profile.device(def.region.dev).map_or("?", |d| d.name),
                    def.region.offset
                ),
                _ => Ok(address),
            }
        }
        (None, Some(given)) => Ok(given),
        (None, None) => bail!(
            "{}: an asset carries no install address and Tern has no profile with an asset slot for platform \
             {platform_id}: give it as FILE@ADDRESS",
            path.display()
        ),
    }
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
