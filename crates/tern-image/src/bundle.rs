//! Release bundles: one file holding a signed release manifest and its modules.
//!
//! # Layout
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 8 | magic `TERNBDL1` (`54 45 52 4e 42 44 4c 31`) |
//! | 0x08 | 4 | `m`, length of the signed manifest, little-endian |
//! | 0x0c | `m` | the signed manifest (COSE_Sign1, see [`crate::manifest`]) |
//! | 0x0c + `m` | Σ sizes | the modules, concatenated in manifest order, each exactly the `size` its manifest entry states |
//!
//! The same layout with a module statement instead of a release manifest, and its one
//! module, is a *signed module*: how `tern module upload` hands a module and its statement
//! to the server in one request ([`write_signed_module`]). [`Bundle::verify`] accepts only
//! releases.
//!
//! Nothing follows the last module. The manifest carries each module's length and SHA-256,
//! so the bundle needs no index of its own, and a reader can stream it: verify the
//! manifest, then hash each module as it passes. Reading needs no allocation; writing
//! needs `alloc`.

use core::fmt;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use crate::manifest::{self, Kind, Manifest, ModuleEntry, SignedDocument};

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"TERNBDL1";
const HEADER_LEN: usize = 12;

/// Why a bundle was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The file does not start with [`MAGIC`].
    BadMagic,
    /// The file ends before the part named.
    Truncated(&'static str),
    /// The manifest is malformed, untrusted or its signature fails.
    Manifest(manifest::Error),
    /// The signed document is a module statement, not a release manifest.
    NotARelease,
    /// A signed module must carry a module statement, not a release manifest.
    NotAStatement,
    /// Module `index` (0-based, manifest order) does not hash to its manifest entry.
    ModuleHash {
        /// Position of the module in the manifest.
        index: usize,
    },
    /// Bytes follow the last module.
    TrailingBytes,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic => f.write_str("not a Tern bundle (bad magic)"),
            Error::Truncated(what) => write!(f, "truncated bundle: {what} is cut short"),
            Error::Manifest(err) => write!(f, "manifest: {err}"),
            Error::NotARelease => f.write_str("the signed document is a module statement, not a release manifest"),
            Error::NotAStatement => f.write_str("the signed document is a release manifest, not a module statement"),
            Error::ModuleHash { index } => {
                write!(f, "module #{} does not match its SHA-256 in the manifest", index + 1)
            }
            Error::TrailingBytes => f.write_str("unexpected bytes after the last module"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// A bundle split into its parts but not yet verified.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    /// The signed manifest bytes.
    pub signed_manifest: &'a [u8],
    /// All module bytes, concatenated.
    modules: &'a [u8],
}

/// A bundle whose manifest signature and every module hash have been checked.
#[derive(Clone, Debug)]
pub struct VerifiedBundle<'a> {
    /// The verified manifest.
    pub manifest: Manifest,
    modules: &'a [u8],
}

impl<'a> Bundle<'a> {
    /// Splits `bytes` into the signed manifest and the module area.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = bytes.get(..HEADER_LEN).ok_or(Error::Truncated("header"))?;
        if header[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let rest = &bytes[HEADER_LEN..];
        if rest.len() < len {
            return Err(Error::Truncated("manifest"));
        }
        let (signed_manifest, modules) = rest.split_at(len);
        Ok(Bundle { signed_manifest, modules })
    }

    /// Parses the manifest without checking its signature (for display only: nothing it
    /// says may be trusted).
    pub fn unverified_manifest(&self) -> Result<Manifest, Error> {
        let doc = SignedDocument::parse(self.signed_manifest).map_err(Error::Manifest)?;
        manifest::decode_document(doc.payload).map_err(Error::Manifest)
    }

    /// The key id the manifest claims to be signed with.
    pub fn key_id(&self) -> Result<[u8; manifest::KID_LEN], Error> {
        Ok(SignedDocument::parse(self.signed_manifest).map_err(Error::Manifest)?.kid)
    }

    /// Checks that the module area holds exactly the modules `manifest` lists, each with
    /// its SHA-256. Says nothing about who made the manifest: see [`Bundle::verify`].
    pub fn check_modules(&self, manifest: &Manifest) -> Result<(), Error> {
        let mut rest = self.modules;
        for (index, entry) in manifest.modules().enumerate() {
            let size = entry.size as usize;
            if rest.len() < size {
                return Err(Error::Truncated("module"));
            }
            let (module, tail) = rest.split_at(size);
            if Sha256::digest(module).as_slice() != entry.sha256 {
                return Err(Error::ModuleHash { index });
            }
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(())
    }

    /// Verifies the manifest against `trusted` keys and every module against its hash.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<VerifiedBundle<'a>, Error> {
        let doc = SignedDocument::parse(self.signed_manifest).map_err(Error::Manifest)?;
        let manifest = doc.verify(trusted).map_err(Error::Manifest)?;
        if manifest.kind != Kind::Release {
            return Err(Error::NotARelease);
        }
        self.check_modules(&manifest)?;
        Ok(VerifiedBundle { manifest, modules: self.modules })
    }
}

impl<'a> VerifiedBundle<'a> {
    /// Each module's manifest entry with its bytes, in install order.
    pub fn modules(&self) -> impl Iterator<Item = (&ModuleEntry, &'a [u8])> + '_ {
        let mut offset = 0usize;
        let all = self.modules;
        self.manifest.modules().map(move |entry| {
            let start = offset;
            offset += entry.size as usize;
            // `verify` checked that every entry's bytes are present.
            (entry, &all[start..offset])
        })
    }
}

/// Writes a bundle from a signed release manifest and its modules in manifest order.
///
/// The modules are checked against the manifest (count, sizes, hashes) so that a bundle
/// that would fail verification is never written.
#[cfg(feature = "alloc")]
pub fn write(signed_manifest: &[u8], modules: &[&[u8]]) -> Result<alloc::vec::Vec<u8>, Error> {
    write_kind(Kind::Release, signed_manifest, modules)
}

/// Writes a signed module: a module statement and its one module, in the bundle layout.
#[cfg(feature = "alloc")]
pub fn write_signed_module(statement: &[u8], module: &[u8]) -> Result<alloc::vec::Vec<u8>, Error> {
    write_kind(Kind::ModuleStatement, statement, &[module])
}

#[cfg(feature = "alloc")]
fn write_kind(kind: Kind, signed_manifest: &[u8], modules: &[&[u8]]) -> Result<alloc::vec::Vec<u8>, Error> {
    let doc = SignedDocument::parse(signed_manifest).map_err(Error::Manifest)?;
    let manifest = manifest::decode_document(doc.payload).map_err(Error::Manifest)?;
    if manifest.kind != kind {
        return Err(if kind == Kind::Release { Error::NotARelease } else { Error::NotAStatement });
    }
    if manifest.module_count() != modules.len() {
        return Err(Error::Manifest(manifest::Error::OutOfRange("module count")));
    }
    for (index, (entry, module)) in manifest.modules().zip(modules).enumerate() {
        if module.len() != entry.size as usize || Sha256::digest(module).as_slice() != entry.sha256 {
            return Err(Error::ModuleHash { index });
        }
    }
    let len = u32::try_from(signed_manifest.len()).map_err(|_| Error::Truncated("manifest"))?;
    let total = HEADER_LEN + signed_manifest.len() + modules.iter().map(|m| m.len()).sum::<usize>();
    let mut out = alloc::vec::Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(signed_manifest);
    for module in modules {
        out.extend_from_slice(module);
    }
    Ok(out)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::manifest::build::Document;
    use crate::model::{Format, ModuleFunction, MAX_DEPENDENCIES};
    use ed25519_dalek::SigningKey;

    fn sample() -> (SigningKey, Vec<u8>, Vec<Vec<u8>>) {
        let key = SigningKey::from_bytes(&[9; 32]);
        let modules: Vec<Vec<u8>> = vec![(0..300u32).map(|i| i as u8).collect(), vec![0xa5; 77]];
        let entries = modules
            .iter()
            .enumerate()
            .map(|(i, bytes)| ModuleEntry {
                function: ModuleFunction::SystemPart,
                index: i as u8 + 1,
                version: 100,
                sha256: Sha256::digest(bytes).into(),
                size: bytes.len() as u32,
                start_address: 0x1000 * (i as u32 + 1),
                dependencies: [None; MAX_DEPENDENCIES],
                format: Format::Raw,
            })
            .collect();
        let doc = Document {
            kind: Kind::Release,
            platform_id: 12,
            product_id: 0,
            security_counter: 1,
            created: 0,
            modules: entries,
            name: String::new(),
        };
        let signed = doc.sign(&key).unwrap();
        let refs: Vec<&[u8]> = modules.iter().map(|m| m.as_slice()).collect();
        let bundle = write(&signed, &refs).unwrap();
        (key, bundle, modules)
    }

    #[test]
    fn round_trip() {
        let (key, bundle, modules) = sample();
        let verified = Bundle::parse(&bundle).unwrap().verify(&[key.verifying_key()]).unwrap();
        let got: Vec<&[u8]> = verified.modules().map(|(_, b)| b).collect();
        assert_eq!(got, modules.iter().map(|m| m.as_slice()).collect::<Vec<_>>());
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let (key, bundle, _) = sample();
        let trusted = [key.verifying_key()];
        for i in 0..bundle.len() {
            let mut bad = bundle.clone();
            bad[i] ^= 0x10;
            assert!(Bundle::parse(&bad).and_then(|b| b.verify(&trusted)).is_err(), "byte {i} tampered unnoticed");
        }
    }

    #[test]
    fn truncated_and_extended_bundles_fail() {
        let (key, bundle, _) = sample();
        let trusted = [key.verifying_key()];
        for len in 0..bundle.len() {
            assert!(Bundle::parse(&bundle[..len]).and_then(|b| b.verify(&trusted)).is_err(), "cut at {len}");
        }
        let mut longer = bundle.clone();
        longer.push(0);
        assert_eq!(Bundle::parse(&longer).and_then(|b| b.verify(&trusted)).err(), Some(Error::TrailingBytes));
    }

    #[test]
    fn write_refuses_modules_that_do_not_match() {
        let (key, bundle, modules) = sample();
        let parsed = Bundle::parse(&bundle).unwrap();
        let _ = key;
        let mut wrong = modules[1].clone();
        wrong[0] ^= 1;
        assert_eq!(write(parsed.signed_manifest, &[&modules[0], &wrong]).err(), Some(Error::ModuleHash { index: 1 }));
    }
}
