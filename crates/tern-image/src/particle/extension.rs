//! Module info extensions: typed records after the prefix (flag 0x10) or before the suffix.
//!
//! Every extension starts with a 4-byte header, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | type ([`ExtensionKind`]) |
//! | 2 | 2 | length of the whole extension, header included |
//! | 4 | length − 4 | payload |
//!
//! A chain is walked the way binary-version-reader 3.1.3 walks it (`_readExtension` and its
//! callers): it stops before a type of 0xFFFF or an extension running past the end of the
//! data, after an END extension, or when the next header would start inside the last 40
//! bytes of the data (the base suffix and CRC); a length of 0 is an error. Lengths below 4
//! are not rejected (the next header then overlaps this one), because Particle's reader
//! does not reject them either.

use super::read::{array_at, u16_le, u32_le, u8_at};
use super::Error;

/// Bytes at the end of the data that an extension header may not start in: the smallest
/// suffix (36) and the CRC-32 (4).
const TAIL: usize = super::MIN_SUFFIX_SIZE + 4;

/// The extension types Device OS defines (`module_info_extension_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtensionKind {
    /// 0x0000: ends a chain.
    End,
    /// 0x0001: product id and version.
    ProductData,
    /// 0x0002: where a relocatable module and its dynalib live.
    DynamicLocation,
    /// 0x0003: an extra dependency.
    Dependency,
    /// 0x0010: a hash of the module.
    Hash,
    /// 0x0011: a name.
    Name,
    /// 0x0012: an asset the module needs (hash and name).
    AssetDependency,
    /// 0x0013: the security mode (protected bootloaders), with an optional certificate.
    SecurityMode,
    /// 0x0014: what kind of asset this module is.
    AssetType,
    /// Any other type; skipped by its length.
    Other(u16),
}

impl ExtensionKind {
    /// Decodes a type code.
    pub const fn from_code(code: u16) -> Self {
        match code {
            0x0000 => ExtensionKind::End,
            0x0001 => ExtensionKind::ProductData,
            0x0002 => ExtensionKind::DynamicLocation,
            0x0003 => ExtensionKind::Dependency,
            0x0010 => ExtensionKind::Hash,
            0x0011 => ExtensionKind::Name,
            0x0012 => ExtensionKind::AssetDependency,
            0x0013 => ExtensionKind::SecurityMode,
            0x0014 => ExtensionKind::AssetType,
            other => ExtensionKind::Other(other),
        }
    }

    /// The type code.
    pub const fn code(self) -> u16 {
        match self {
            ExtensionKind::End => 0x0000,
            ExtensionKind::ProductData => 0x0001,
            ExtensionKind::DynamicLocation => 0x0002,
            ExtensionKind::Dependency => 0x0003,
            ExtensionKind::Hash => 0x0010,
            ExtensionKind::Name => 0x0011,
            ExtensionKind::AssetDependency => 0x0012,
            ExtensionKind::SecurityMode => 0x0013,
            ExtensionKind::AssetType => 0x0014,
            ExtensionKind::Other(code) => code,
        }
    }
}

/// The type code that stops a chain without being part of it (erased flash).
const INVALID_KIND: u16 = 0xffff;

/// One extension, borrowing the module bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    offset: usize,
    kind: ExtensionKind,
    length: u16,
    bytes: &'a [u8],
}

/// The decoded payload of an extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtensionData<'a> {
    /// END: no payload (any bytes are padding).
    End,
    /// PRODUCT_DATA: the product id is the `u16` at payload offset 2 (the two bytes before
    /// it are 0xFFFF in modules Particle's tools build), the version the `u16` after it.
    ProductData {
        /// Product id.
        product_id: u16,
        /// Product firmware version.
        product_version: u16,
    },
    /// DYNAMIC_LOCATION: three addresses.
    DynamicLocation {
        /// Where the module starts.
        module_start_address: u32,
        /// Where the dynalib table is loaded.
        dynalib_load_address: u32,
        /// Where the dynalib table starts.
        dynalib_start_address: u32,
    },
    /// DEPENDENCY: a module required, and the target it applies to.
    Dependency {
        /// Function code of the required module.
        function: u8,
        /// Its index.
        index: u8,
        /// Its minimum version.
        version: u16,
        /// The target (MCU) the requirement applies to.
        target_id: u32,
    },
    /// HASH: a hash of the module (type 0 is SHA-256).
    Hash {
        /// Hash algorithm (0: SHA-256).
        hash_type: u8,
        /// The hash bytes (the rest of the extension).
        hash: &'a [u8],
    },
    /// NAME: a name, normally UTF-8.
    Name(&'a [u8]),
    /// ASSET_DEPENDENCY: an asset by hash and name.
    AssetDependency {
        /// Hash algorithm (0: SHA-256).
        hash_type: u8,
        /// The hash, as long as its stored length byte says.
        hash: &'a [u8],
        /// The asset's name, normally UTF-8.
        name: &'a [u8],
    },
    /// SECURITY_MODE: 0 none, 1 protected; then an optional certificate.
    SecurityMode {
        /// The mode.
        mode: u8,
        /// The certificate (empty when absent).
        certificate: &'a [u8],
    },
    /// ASSET_TYPE: 0 default, 1 application environment variables, 2 snapshot.
    AssetType(u8),
    /// A type this crate does not decode.
    Unknown,
    /// A known type whose payload is too short for its fields.
    Malformed,
}

impl<'a> Extension<'a> {
    /// Offset of the extension's header in the file.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The extension's type.
    pub fn kind(&self) -> ExtensionKind {
        self.kind
    }

    /// The stored length (of the whole extension, header included).
    pub fn len(&self) -> u16 {
        self.length
    }

    /// Whether the stored length is 0 (never true for an extension a chain yields).
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// The whole extension, header included (shorter than the header if its length is).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The bytes after the 4-byte header.
    pub fn payload(&self) -> &'a [u8] {
        self.bytes.get(4..).unwrap_or(&[])
    }

    /// The payload decoded according to the type.
    pub fn data(&self) -> ExtensionData<'a> {
        self.decode().unwrap_or(ExtensionData::Malformed)
    }

    fn decode(&self) -> Option<ExtensionData<'a>> {
        let p = self.payload();
        let rest = |from: usize| p.get(from..);
        Some(match self.kind {
            ExtensionKind::End => ExtensionData::End,
            ExtensionKind::ProductData => {
                ExtensionData::ProductData { product_id: u16_le(p, 2)?, product_version: u16_le(p, 4)? }
            }
            ExtensionKind::DynamicLocation => ExtensionData::DynamicLocation {
                module_start_address: u32_le(p, 0)?,
                dynalib_load_address: u32_le(p, 4)?,
                dynalib_start_address: u32_le(p, 8)?,
            },
            ExtensionKind::Dependency => ExtensionData::Dependency {
                function: u8_at(p, 0)?,
                index: u8_at(p, 1)?,
                version: u16_le(p, 2)?,
                target_id: u32_le(p, 4)?,
            },
            ExtensionKind::Hash => ExtensionData::Hash { hash_type: u8_at(p, 0)?, hash: rest(2)? },
            ExtensionKind::Name => ExtensionData::Name(p),
            ExtensionKind::AssetDependency => {
                let [hash_type, hash_len] = array_at::<2>(p, 0)?;
                let hash_end = 2 + usize::from(hash_len);
                ExtensionData::AssetDependency { hash_type, hash: p.get(2..hash_end)?, name: rest(hash_end)? }
            }
            ExtensionKind::SecurityMode => ExtensionData::SecurityMode { mode: u8_at(p, 0)?, certificate: rest(1)? },
            ExtensionKind::AssetType => ExtensionData::AssetType(u8_at(p, 0)?),
            ExtensionKind::Other(_) => ExtensionData::Unknown,
        })
    }
}

/// Where a chain of extensions lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChainSpan {
    /// Offset in the file of the data the chain is walked in (the prefix offset for prefix
    /// extensions, 0 for suffix extensions).
    pub base: usize,
    /// Offset of the first header, relative to `base`.
    pub start: usize,
    /// The lowest relative offset a header may start at (1 for the suffix chain: Particle's
    /// reader never reads a suffix extension at offset 0).
    pub min_start: usize,
}

/// Walks a chain of extensions, yielding an error (once, then nothing) for a zero length.
#[derive(Clone, Debug)]
pub(crate) struct Chain<'a> {
    data: &'a [u8],
    base: usize,
    pos: usize,
    min_start: usize,
    done: bool,
}

impl<'a> Chain<'a> {
    /// A chain over `file[span.base..]`.
    pub fn new(file: &'a [u8], span: ChainSpan) -> Self {
        let data = file.get(span.base..).unwrap_or(&[]);
        Chain { data, base: span.base, pos: span.start, min_start: span.min_start, done: false }
    }

    /// The offset (relative to the base) just past the last extension yielded.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Chain<'a> {
    type Item = Result<Extension<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos < self.min_start || self.pos >= self.data.len().saturating_sub(TAIL) {
            return None;
        }
        let at = self.pos;
        let (kind, length) = (u16_le(self.data, at)?, u16_le(self.data, at + 2)?);
        let end = at + usize::from(length);
        if kind == INVALID_KIND || end > self.data.len() {
            self.done = true;
            return None;
        }
        let offset = self.base + at;
        if length == 0 {
            self.done = true;
            return Some(Err(Error::ZeroLengthExtension { offset }));
        }
        let kind = ExtensionKind::from_code(kind);
        self.pos = end;
        self.done = kind == ExtensionKind::End;
        Some(Ok(Extension { offset, kind, length, bytes: self.data.get(at..end)? }))
    }
}

/// The extensions of a chain that [`parse`](super::parse) accepted.
#[derive(Clone, Debug)]
pub struct Extensions<'a> {
    chain: Option<Chain<'a>>,
}

impl<'a> Extensions<'a> {
    pub(crate) fn new(chain: Option<Chain<'a>>) -> Self {
        Extensions { chain }
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Extension<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // Parsing walked this chain already and rejected the module on any error, so an
        // error here cannot happen; stopping is the safe reading if it somehow did.
        self.chain.as_mut()?.next()?.ok()
    }
}
