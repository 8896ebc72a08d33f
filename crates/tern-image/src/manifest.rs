//! Signed release manifests and signed module statements.
//!
//! A *release manifest* lists the modules of a release by hash, with their metadata, the
//! platform and product it targets, a monotonic security counter and its creation time.
//! A *module statement* is the same document with exactly one module: it lets a server
//! compose an update from modules that were signed one by one, without holding any key.
//!
//! # Envelope
//!
//! Both are carried in a COSE_Sign1 structure (RFC 9052 §4.2), algorithm EdDSA (-8):
//!
//! | CBOR item | contents |
//! |---|---|
//! | tag 18 | COSE_Sign1 (required) |
//! | `[0]` protected, bstr | `{1: -8}` encoded, exactly `a1 01 27` |
//! | `[1]` unprotected, map | `{4: kid}`, kid = first 8 bytes of SHA-256 of the public key |
//! | `[2]` payload, bstr | the document below |
//! | `[3]` signature, bstr | 64-byte ED25519 signature over `Sig_structure` |
//!
//! `Sig_structure = ["Signature1", protected, h'', payload]`. Verification streams that
//! structure through the verifier, so no buffer is needed: this works on a device without
//! allocation.
//!
//! # Document (payload)
//!
//! Deterministically encoded CBOR (RFC 8949 §4.2.1: shortest integers, definite lengths,
//! integer map keys in ascending order). Decoding rejects keys out of order or repeated.
//!
//! | key | name | type |
//! |---|---|---|
//! | 0 | format version | uint, [`DOCUMENT_VERSION`] |
//! | 1 | kind | uint: 1 release, 2 module statement |
//! | 2 | platform id | uint (u16) |
//! | 3 | product id | uint (u32); 0 = any product |
//! | 4 | security counter | uint (u64), must never decrease on a device |
//! | 5 | created | uint, seconds since the Unix epoch |
//! | 6 | modules | array of module entries (exactly one for a statement) |
//! | 7 | name | tstr, optional, at most [`MAX_NAME_LEN`] bytes |
//!
//! Module entry, a map:
//!
//! | key | name | type |
//! |---|---|---|
//! | 0 | function | uint, Device OS function code (see [`ModuleFunction`]) |
//! | 1 | index | uint (u8) |
//! | 2 | version | uint (u32) |
//! | 3 | sha256 | bstr(32), SHA-256 of the module file's bytes exactly as delivered |
//! | 4 | size | uint (u32), length of the module file |
//! | 5 | start address | uint (u32), where the module is placed in flash |
//! | 6 | dependencies | array of `[function, index, version]`, at most [`MAX_DEPENDENCIES`] |
//! | 7 | format | uint: 0 Particle, 1 MCUboot, 2 raw |

use core::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use minicbor::Decoder;
use sha2::{Digest, Sha256};

use crate::model::{Dependency, Format, ModuleFunction, MAX_DEPENDENCIES};

/// The version of the document layout written by this crate.
pub const DOCUMENT_VERSION: u32 = 1;
/// The longest release name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// The most modules one document may list.
pub const MAX_MODULES: usize = 16;
/// COSE tag for COSE_Sign1.
const COSE_SIGN1_TAG: u64 = 18;
/// The protected header: `{1: -8}` (alg: EdDSA).
const PROTECTED_HEADER: [u8; 3] = [0xa1, 0x01, 0x27];
/// COSE header label for the key id.
const HEADER_KID: u64 = 4;
/// Length of a key id.
pub const KID_LEN: usize = 8;

/// What a signed document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A release manifest listing every module of a release.
    Release,
    /// A statement about a single module.
    ModuleStatement,
}

impl Kind {
    /// The numeric code stored in the document.
    pub const fn code(self) -> u8 {
        match self {
            Kind::Release => 1,
            Kind::ModuleStatement => 2,
        }
    }
}

/// Why a signed document was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not well-formed CBOR of the expected shape; the field names what
    /// was being read when decoding failed.
    Malformed(&'static str),
    /// The COSE protected header is not exactly `{1: -8}` (EdDSA).
    UnsupportedAlgorithm,
    /// No trusted key has the document's key id.
    UnknownKey,
    /// The signature does not verify with the trusted key.
    BadSignature,
    /// The document's format version is not one this crate reads.
    UnsupportedVersion(u32),
    /// A map key appears out of ascending order or twice.
    NonCanonical,
    /// A required field is missing.
    Missing(&'static str),
    /// A value is out of range for its field.
    OutOfRange(&'static str),
    /// More modules or dependencies than this crate accepts.
    TooMany(&'static str),
    /// A module statement does not list exactly one module.
    NotOneModule,
    /// Bytes follow the end of the document.
    TrailingBytes,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(what) => write!(f, "malformed CBOR while reading {what}"),
            Error::UnsupportedAlgorithm => f.write_str("unsupported COSE algorithm (expected EdDSA)"),
            Error::UnknownKey => f.write_str("signed by a key that is not trusted"),
            Error::BadSignature => f.write_str("signature does not verify"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported document version {v}"),
            Error::NonCanonical => f.write_str("map keys out of order or repeated"),
            Error::Missing(what) => write!(f, "missing field: {what}"),
            Error::OutOfRange(what) => write!(f, "value out of range: {what}"),
            Error::TooMany(what) => write!(f, "too many {what}"),
            Error::NotOneModule => f.write_str("a module statement must list exactly one module"),
            Error::TrailingBytes => f.write_str("trailing bytes after the document"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// The key id of a public key: the first 8 bytes of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> [u8; KID_LEN] {
    let digest = Sha256::digest(key.as_bytes());
    let mut kid = [0u8; KID_LEN];
    kid.copy_from_slice(&digest[..KID_LEN]);
    kid
}

/// One module as listed in a signed document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleEntry {
    /// What the module is for.
    pub function: ModuleFunction,
    /// Index among modules of the same function.
    pub index: u8,
    /// Version number.
    pub version: u32,
    /// SHA-256 of the module file's bytes.
    pub sha256: [u8; 32],
    /// Length of the module file.
    pub size: u32,
    /// Flash address of the module's first byte.
    pub start_address: u32,
    /// Declared dependencies.
    pub dependencies: [Option<Dependency>; MAX_DEPENDENCIES],
    /// The module's format.
    pub format: Format,
}

impl ModuleEntry {
    /// The declared dependencies, skipping empty slots.
    pub fn dependencies(&self) -> impl Iterator<Item = &Dependency> {
        self.dependencies.iter().flatten()
    }
}

/// A decoded, verified document (release manifest or module statement).
///
/// Borrows nothing: every field is decoded into fixed-size storage, so a device can keep
/// it on the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Release or module statement.
    pub kind: Kind,
    /// Target platform.
    pub platform_id: u16,
    /// Target product, 0 for any.
    pub product_id: u32,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    modules: [Option<ModuleEntry>; MAX_MODULES],
    module_count: usize,
    name: [u8; MAX_NAME_LEN],
    name_len: usize,
}

impl Manifest {
    /// The modules, in the order the document lists them (the install order).
    pub fn modules(&self) -> impl ExactSizeIterator<Item = &ModuleEntry> + '_ {
        self.modules[..self.module_count].iter().map(|m| m.as_ref().expect("first module_count slots are filled"))
    }

    /// The number of modules listed.
    pub fn module_count(&self) -> usize {
        self.module_count
    }

    /// The release name, empty when the document has none.
    pub fn name(&self) -> &str {
        // Only valid UTF-8 (checked by the decoder) is ever stored here.
        core::str::from_utf8(&self.name[..self.name_len]).unwrap_or("")
    }

    /// Finds the listed module with this hash.
    pub fn module_by_hash(&self, sha256: &[u8; 32]) -> Option<&ModuleEntry> {
        self.modules().find(|m| &m.sha256 == sha256)
    }
}

/// A COSE_Sign1 envelope, parsed but not yet verified.
#[derive(Clone, Copy, Debug)]
pub struct SignedDocument<'a> {
    /// Key id from the unprotected header.
    pub kid: [u8; KID_LEN],
    /// The signed payload (the CBOR document).
    pub payload: &'a [u8],
    signature: [u8; 64],
}

fn malformed(what: &'static str) -> impl Fn(minicbor::decode::Error) -> Error {
    move |_| Error::Malformed(what)
}

impl<'a> SignedDocument<'a> {
    /// Parses the envelope. Does not check the signature: call [`SignedDocument::verify`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut d = Decoder::new(bytes);
        let tag = d.tag().map_err(malformed("COSE_Sign1 tag"))?;
        if tag.as_u64() != COSE_SIGN1_TAG {
            return Err(Error::Malformed("COSE_Sign1 tag"));
        }
        if d.array().map_err(malformed("COSE_Sign1 array"))? != Some(4) {
            return Err(Error::Malformed("COSE_Sign1 array"));
        }
        let protected = d.bytes().map_err(malformed("protected header"))?;
        if protected != PROTECTED_HEADER {
            return Err(Error::UnsupportedAlgorithm);
        }
        let entries =
            d.map().map_err(malformed("unprotected header"))?.ok_or(Error::Malformed("unprotected header"))?;
        let mut kid = None;
        for _ in 0..entries {
            let label = d.u64().map_err(malformed("header label"))?;
            if label == HEADER_KID {
                let bytes = d.bytes().map_err(malformed("kid"))?;
                let kid_bytes: [u8; KID_LEN] = bytes.try_into().map_err(|_| Error::OutOfRange("kid"))?;
                if kid.replace(kid_bytes).is_some() {
                    return Err(Error::NonCanonical);
                }
            } else {
                d.skip().map_err(malformed("header value"))?;
            }
        }
        let kid = kid.ok_or(Error::Missing("kid"))?;
        let payload = d.bytes().map_err(malformed("payload"))?;
        let signature: [u8; 64] =
            d.bytes().map_err(malformed("signature"))?.try_into().map_err(|_| Error::OutOfRange("signature"))?;
        if d.position() != bytes.len() {
            return Err(Error::TrailingBytes);
        }
        Ok(SignedDocument { kid, payload, signature })
    }

    /// Verifies the signature with whichever of `trusted` has the document's key id, then
    /// decodes the payload. Nothing is returned from an unverified document.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<Manifest, Error> {
        let key = trusted.iter().find(|k| key_id(k) == self.kid).ok_or(Error::UnknownKey)?;
        let signature = Signature::from_bytes(&self.signature);
        let mut verifier = key.verify_stream(&signature).map_err(|_| Error::BadSignature)?;
        let mut head = [0u8; 9];
        let head_len = bstr_head(self.payload.len() as u64, &mut head);
        verifier.update(SIG_STRUCTURE_PREFIX);
        verifier.update(&head[..head_len]);
        verifier.update(self.payload);
        verifier.finalize_and_verify().map_err(|_| Error::BadSignature)?;
        decode_document(self.payload)
    }
}

/// The fixed start of `Sig_structure`: `["Signature1", h'a10127', h'', ` — the payload's
/// byte-string head and the payload itself follow.
const SIG_STRUCTURE_PREFIX: &[u8] =
    &[0x84, 0x6a, b'S', b'i', b'g', b'n', b'a', b't', b'u', b'r', b'e', b'1', 0x43, 0xa1, 0x01, 0x27, 0x40];

/// Writes the CBOR head of a byte string of `len` bytes (major type 2), shortest form.
fn bstr_head(len: u64, out: &mut [u8; 9]) -> usize {
    const MAJOR: u8 = 0x40;
    if len < 24 {
        out[0] = MAJOR | len as u8;
        1
    } else if len <= u64::from(u8::MAX) {
        out[0] = MAJOR | 24;
        out[1] = len as u8;
        2
    } else if len <= u64::from(u16::MAX) {
        out[0] = MAJOR | 25;
        out[1..3].copy_from_slice(&(len as u16).to_be_bytes());
        3
    } else if len <= u64::from(u32::MAX) {
        out[0] = MAJOR | 26;
        out[1..5].copy_from_slice(&(len as u32).to_be_bytes());
        5
    } else {
        out[0] = MAJOR | 27;
        out[1..9].copy_from_slice(&len.to_be_bytes());
        9
    }
}

/// Reads map keys in strictly ascending order.
struct Keys {
    last: Option<u64>,
}

impl Keys {
    fn next(&mut self, d: &mut Decoder<'_>, what: &'static str) -> Result<u64, Error> {
        let key = d.u64().map_err(malformed(what))?;
        if self.last.is_some_and(|last| key <= last) {
            return Err(Error::NonCanonical);
        }
        self.last = Some(key);
        Ok(key)
    }
}

fn definite_map(d: &mut Decoder<'_>, what: &'static str) -> Result<u64, Error> {
    d.map().map_err(malformed(what))?.ok_or(Error::Malformed(what))
}

fn definite_array(d: &mut Decoder<'_>, what: &'static str) -> Result<u64, Error> {
    d.array().map_err(malformed(what))?.ok_or(Error::Malformed(what))
}

/// Decodes an (already verified) document payload.
pub fn decode_document(payload: &[u8]) -> Result<Manifest, Error> {
    let mut d = Decoder::new(payload);
    let fields = definite_map(&mut d, "document")?;
    let mut keys = Keys { last: None };
    let mut version = None;
    let mut kind = None;
    let mut platform_id = None;
    let mut product_id = None;
    let mut security_counter = None;
    let mut created = None;
    let mut modules = [None; MAX_MODULES];
    let mut module_count = None;
    let mut name = [0u8; MAX_NAME_LEN];
    let mut name_len = 0;
    for _ in 0..fields {
        match keys.next(&mut d, "document key")? {
            0 => version = Some(d.u32().map_err(malformed("version"))?),
            1 => {
                kind = Some(match d.u8().map_err(malformed("kind"))? {
                    1 => Kind::Release,
                    2 => Kind::ModuleStatement,
                    _ => return Err(Error::OutOfRange("kind")),
                })
            }
            2 => platform_id = Some(d.u16().map_err(malformed("platform id"))?),
            3 => product_id = Some(d.u32().map_err(malformed("product id"))?),
            4 => security_counter = Some(d.u64().map_err(malformed("security counter"))?),
            5 => created = Some(d.u64().map_err(malformed("created"))?),
            6 => {
                let count = definite_array(&mut d, "modules")?;
                if count > MAX_MODULES as u64 {
                    return Err(Error::TooMany("modules"));
                }
                for slot in modules.iter_mut().take(count as usize) {
                    *slot = Some(decode_entry(&mut d)?);
                }
                module_count = Some(count as usize);
            }
            7 => {
                let text = d.str().map_err(malformed("name"))?;
                if text.len() > MAX_NAME_LEN {
                    return Err(Error::OutOfRange("name"));
                }
                name[..text.len()].copy_from_slice(text.as_bytes());
                name_len = text.len();
            }
            _ => return Err(Error::OutOfRange("document key")),
        }
    }
    if d.position() != payload.len() {
        return Err(Error::TrailingBytes);
    }
    let version = version.ok_or(Error::Missing("version"))?;
    if version != DOCUMENT_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let kind = kind.ok_or(Error::Missing("kind"))?;
    let module_count = module_count.ok_or(Error::Missing("modules"))?;
    if kind == Kind::ModuleStatement && module_count != 1 {
        return Err(Error::NotOneModule);
    }
    Ok(Manifest {
        kind,
        platform_id: platform_id.ok_or(Error::Missing("platform id"))?,
        product_id: product_id.ok_or(Error::Missing("product id"))?,
        security_counter: security_counter.ok_or(Error::Missing("security counter"))?,
        created: created.ok_or(Error::Missing("created"))?,
        modules,
        module_count,
        name,
        name_len,
    })
}

fn decode_entry(d: &mut Decoder<'_>) -> Result<ModuleEntry, Error> {
    let fields = definite_map(d, "module entry")?;
    let mut keys = Keys { last: None };
    let mut function = None;
    let mut index = None;
    let mut version = None;
    let mut sha256 = None;
    let mut size = None;
    let mut start_address = None;
    let mut dependencies = [None; MAX_DEPENDENCIES];
    let mut format = None;
    for _ in 0..fields {
        match keys.next(d, "module key")? {
            0 => function = Some(ModuleFunction::from_code(d.u8().map_err(malformed("function"))?)),
            1 => index = Some(d.u8().map_err(malformed("index"))?),
            2 => version = Some(d.u32().map_err(malformed("module version"))?),
            3 => {
                let bytes = d.bytes().map_err(malformed("sha256"))?;
                sha256 = Some(<[u8; 32]>::try_from(bytes).map_err(|_| Error::OutOfRange("sha256"))?);
            }
            4 => size = Some(d.u32().map_err(malformed("size"))?),
            5 => start_address = Some(d.u32().map_err(malformed("start address"))?),
            6 => {
                let count = definite_array(d, "dependencies")?;
                if count > MAX_DEPENDENCIES as u64 {
                    return Err(Error::TooMany("dependencies"));
                }
                for slot in dependencies.iter_mut().take(count as usize) {
                    if definite_array(d, "dependency")? != 3 {
                        return Err(Error::Malformed("dependency"));
                    }
                    *slot = Some(Dependency {
                        function: ModuleFunction::from_code(d.u8().map_err(malformed("dependency function"))?),
                        index: d.u8().map_err(malformed("dependency index"))?,
                        version: d.u32().map_err(malformed("dependency version"))?,
                    });
                }
            }
            7 => {
                format = Some(match d.u8().map_err(malformed("format"))? {
                    0 => Format::Particle,
                    1 => Format::McuBoot,
                    2 => Format::Raw,
                    _ => return Err(Error::OutOfRange("format")),
                })
            }
            _ => return Err(Error::OutOfRange("module key")),
        }
    }
    Ok(ModuleEntry {
        function: function.ok_or(Error::Missing("function"))?,
        index: index.ok_or(Error::Missing("index"))?,
        version: version.ok_or(Error::Missing("module version"))?,
        sha256: sha256.ok_or(Error::Missing("sha256"))?,
        size: size.ok_or(Error::Missing("size"))?,
        start_address: start_address.ok_or(Error::Missing("start address"))?,
        dependencies,
        format: format.ok_or(Error::Missing("format"))?,
    })
}

/// Builds and signs documents (needs `alloc`).
#[cfg(feature = "alloc")]
pub mod build {
    use alloc::string::String;
    use alloc::vec::Vec;

    use ed25519_dalek::{Signer, SigningKey};
    use minicbor::Encoder;

    use super::*;

    /// The unsigned contents of a document.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Document {
        /// Release or module statement.
        pub kind: Kind,
        /// Target platform.
        pub platform_id: u16,
        /// Target product, 0 for any.
        pub product_id: u32,
        /// Anti-rollback counter.
        pub security_counter: u64,
        /// Creation time, seconds since the Unix epoch.
        pub created: u64,
        /// Modules in install order.
        pub modules: Vec<ModuleEntry>,
        /// Optional release name.
        pub name: String,
    }

    fn infallible<E>(_: minicbor::encode::Error<E>) -> Error {
        // Writing into a Vec cannot fail.
        Error::Malformed("encoder")
    }

    impl Document {
        /// Encodes the document deterministically. Fails if it breaks a limit a device
        /// would enforce (module count, name length, statement with several modules).
        pub fn encode(&self) -> Result<Vec<u8>, Error> {
            if self.modules.len() > MAX_MODULES {
                return Err(Error::TooMany("modules"));
            }
            if self.name.len() > MAX_NAME_LEN {
                return Err(Error::OutOfRange("name"));
            }
            if self.kind == Kind::ModuleStatement && self.modules.len() != 1 {
                return Err(Error::NotOneModule);
            }
            let mut e = Encoder::new(Vec::new());
            let fields = if self.name.is_empty() { 7 } else { 8 };
            e.map(fields).map_err(infallible)?;
            e.u8(0).and_then(|e| e.u32(DOCUMENT_VERSION)).map_err(infallible)?;
            e.u8(1).and_then(|e| e.u8(self.kind.code())).map_err(infallible)?;
            e.u8(2).and_then(|e| e.u16(self.platform_id)).map_err(infallible)?;
            e.u8(3).and_then(|e| e.u32(self.product_id)).map_err(infallible)?;
            e.u8(4).and_then(|e| e.u64(self.security_counter)).map_err(infallible)?;
            e.u8(5).and_then(|e| e.u64(self.created)).map_err(infallible)?;
            e.u8(6).and_then(|e| e.array(self.modules.len() as u64)).map_err(infallible)?;
            for m in &self.modules {
                encode_entry(&mut e, m)?;
            }
            if !self.name.is_empty() {
                e.u8(7).and_then(|e| e.str(&self.name)).map_err(infallible)?;
            }
            Ok(e.into_writer())
        }

        /// Encodes and signs the document, returning the COSE_Sign1 bytes.
        pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, Error> {
            let payload = self.encode()?;
            Ok(sign_payload(&payload, key))
        }
    }

    fn encode_entry(e: &mut Encoder<Vec<u8>>, m: &ModuleEntry) -> Result<(), Error> {
        let deps: Vec<&Dependency> = m.dependencies().collect();
        e.map(8).map_err(infallible)?;
        e.u8(0).and_then(|e| e.u8(m.function.code())).map_err(infallible)?;
        e.u8(1).and_then(|e| e.u8(m.index)).map_err(infallible)?;
        e.u8(2).and_then(|e| e.u32(m.version)).map_err(infallible)?;
        e.u8(3).and_then(|e| e.bytes(&m.sha256)).map_err(infallible)?;
        e.u8(4).and_then(|e| e.u32(m.size)).map_err(infallible)?;
        e.u8(5).and_then(|e| e.u32(m.start_address)).map_err(infallible)?;
        e.u8(6).and_then(|e| e.array(deps.len() as u64)).map_err(infallible)?;
        for dep in deps {
            e.array(3)
                .and_then(|e| e.u8(dep.function.code()))
                .and_then(|e| e.u8(dep.index))
                .and_then(|e| e.u32(dep.version))
                .map_err(infallible)?;
        }
        let format = match m.format {
            Format::Particle => 0,
            Format::McuBoot => 1,
            Format::Raw => 2,
        };
        e.u8(7).and_then(|e| e.u8(format)).map_err(infallible)?;
        Ok(())
    }

    /// Wraps an encoded document in a COSE_Sign1 envelope signed with `key`.
    pub fn sign_payload(payload: &[u8], key: &SigningKey) -> Vec<u8> {
        let mut head = [0u8; 9];
        let head_len = bstr_head(payload.len() as u64, &mut head);
        let mut to_sign = Vec::with_capacity(SIG_STRUCTURE_PREFIX.len() + head_len + payload.len());
        to_sign.extend_from_slice(SIG_STRUCTURE_PREFIX);
        to_sign.extend_from_slice(&head[..head_len]);
        to_sign.extend_from_slice(payload);
        let signature = key.sign(&to_sign);

        let mut e = Encoder::new(Vec::new());
        // Writing into a Vec cannot fail, so the results are ignored.
        let _ = e
            .tag(minicbor::data::Tag::new(COSE_SIGN1_TAG))
            .and_then(|e| e.array(4))
            .and_then(|e| e.bytes(&PROTECTED_HEADER))
            .and_then(|e| e.map(1))
            .and_then(|e| e.u64(HEADER_KID))
            .and_then(|e| e.bytes(&key_id(&key.verifying_key())))
            .and_then(|e| e.bytes(payload))
            .and_then(|e| e.bytes(&signature.to_bytes()));
        e.into_writer()
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::build::Document;
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn entry(function: ModuleFunction, index: u8, version: u32) -> ModuleEntry {
        ModuleEntry {
            function,
            index,
            version,
            sha256: [index.wrapping_add(version as u8); 32],
            size: 1000,
            start_address: 0x8020000,
            dependencies: [
                Some(Dependency { function: ModuleFunction::SystemPart, index: 1, version: 3000 }),
                None,
                None,
                None,
            ],
            format: Format::Particle,
        }
    }

    fn release() -> Document {
        Document {
            kind: Kind::Release,
            platform_id: 6,
            product_id: 0,
            security_counter: 7,
            created: 1_790_000_000,
            modules: vec![entry(ModuleFunction::SystemPart, 1, 3000), entry(ModuleFunction::UserPart, 1, 6)],
            name: "field release".into(),
        }
    }

    #[test]
    fn round_trip_and_determinism() {
        let doc = release();
        let signed = doc.sign(&key(1)).unwrap();
        assert_eq!(signed, doc.sign(&key(1)).unwrap(), "ED25519 signing and the encoding are deterministic");
        let parsed = SignedDocument::parse(&signed).unwrap();
        let manifest = parsed.verify(&[key(2).verifying_key(), key(1).verifying_key()]).unwrap();
        assert_eq!(manifest.kind, Kind::Release);
        assert_eq!(manifest.platform_id, 6);
        assert_eq!(manifest.security_counter, 7);
        assert_eq!(manifest.name(), "field release");
        assert_eq!(manifest.modules().copied().collect::<Vec<_>>(), doc.modules);
    }

    #[test]
    fn every_tampered_byte_is_rejected() {
        let signed = release().sign(&key(1)).unwrap();
        let trusted = [key(1).verifying_key()];
        for i in 0..signed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = signed.clone();
                bad[i] ^= bit;
                let result = SignedDocument::parse(&bad).and_then(|d| d.verify(&trusted));
                assert!(result.is_err(), "flipping bit {bit:#x} of byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn untrusted_key_is_rejected() {
        let signed = release().sign(&key(1)).unwrap();
        let doc = SignedDocument::parse(&signed).unwrap();
        assert_eq!(doc.verify(&[key(2).verifying_key()]), Err(Error::UnknownKey));
    }

    #[test]
    fn statement_must_have_one_module() {
        let mut doc = release();
        doc.kind = Kind::ModuleStatement;
        assert_eq!(doc.encode(), Err(Error::NotOneModule));
        doc.modules.truncate(1);
        let signed = doc.sign(&key(3)).unwrap();
        let m = SignedDocument::parse(&signed).unwrap().verify(&[key(3).verifying_key()]).unwrap();
        assert_eq!(m.module_count(), 1);
    }

    #[test]
    fn truncations_never_panic_and_fail() {
        let signed = release().sign(&key(1)).unwrap();
        for len in 0..signed.len() {
            assert!(SignedDocument::parse(&signed[..len]).is_err(), "truncated at {len} accepted");
        }
    }

    #[test]
    fn keys_out_of_order_are_rejected() {
        // {1: 1, 0: 1}
        assert_eq!(decode_document(&[0xa2, 0x01, 0x01, 0x00, 0x01]), Err(Error::NonCanonical));
        // {0: 1, 0: 1}
        assert_eq!(decode_document(&[0xa2, 0x00, 0x01, 0x00, 0x01]), Err(Error::NonCanonical));
    }
}
