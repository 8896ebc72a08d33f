//! Particle Device OS modules, read exactly as Particle's own reader reads them.
//!
//! The reference is the `HalModuleParser` of the npm package `binary-version-reader` 3.1.3,
//! which Particle's tools use; the test suite compares this module with it on every Particle
//! binary in the corpus (`tern-cli/tests/it/particle_oracle.rs`, `scripts/compare-particle.sh`).
//!
//! # File layout
//!
//! | part | where | notes |
//! |---|---|---|
//! | vector table | `0 .. prefix offset` | only when the MCU needs it at the start |
//! | prefix ([`Prefix`]) | 24 bytes at the prefix offset | `module_info_t` |
//! | prefix extensions | after the prefix, up to an END extension | only with flag 0x10 |
//! | compression header ([`CompressionHeader`]) | after the prefix (and its extensions) | only with flag 0x02 |
//! | contents | | |
//! | suffix extensions | from `len − 4 − suffix size` | only when the suffix size is above 40 |
//! | product id, product version | `u16` LE each at `len − 44`, `len − 42` | only when the suffix size is 40 or more |
//! | reserved | `u16` at `len − 40` | |
//! | SHA-256 | 32 bytes at `len − 38` | as stored; not checked (see below) |
//! | suffix size | `u16` LE at `len − 6` | the suffix's size without the CRC |
//! | CRC-32 | 4 bytes at `len − 4`, **big-endian** | CRC-32 (ISO-HDLC, as zlib) of `0 .. len − 4` |
//!
//! The suffix is read from the end of the *file*, and the CRC covers the whole file but its
//! last 4 bytes, even when the prefix describes a shorter module (padded or combined
//! files): that is what Particle's reader reports, so it is what [`ModuleInfo`] holds.
//!
//! # Finding the prefix
//!
//! The prefix has no magic number. Each candidate offset gets a confidence score
//! ([`prefix::confidence`], 0–7); the offsets tried are 0, 0x200, 0x184, 0xC0, 0x10C, then
//! every multiple of 4 up to 8 KiB ([`prefix::locate`]). The first candidate scoring 7 wins,
//! else the first with the highest score. (P2 bootloaders have their prefix at 0x20, which
//! the scan reaches.) A score of 0 everywhere means the bytes are not a
//! Particle module ([`Error::NoPrefix`]): Particle's reader would go on to read garbage at
//! offset 0, this parser rejects the false match instead.
//!
//! # What is rejected
//!
//! Exactly what makes Particle's reader throw, besides [`Error::NoPrefix`]: files shorter
//! than 44 bytes, a prefix-extension chain without an END extension, and an extension of
//! length 0. A wrong CRC is not an error: [`ModuleInfo::crc_ok`] says so.
//!
//! The stored SHA-256 is reported, not checked: real modules from Particle (radio stacks,
//! NCP firmware) store a hash of something other than the bytes before it;
//! [`Module::sha256_matches_contents`] checks it for those that follow the usual rule.
//!
//! Combined files (flag 0x04, several modules back to back) are read by [`parse`] as one
//! module, the way Particle's reader reads them; [`split_combined`] reads their modules one
//! by one.
//!
//! Parsing allocates nothing and never panics. With the `alloc` feature, [`write`] makes
//! plain modules (no extensions, compression or combination) that this reader and
//! Particle's read back field for field.

mod combined;
mod extension;
pub mod prefix;
mod read;
#[cfg(test)]
mod tests;
#[cfg(feature = "alloc")]
mod write;

use core::fmt;

use sha2::{Digest, Sha256};

use crate::model::{Dependency, Format, Integrity, ModuleFunction, ModuleInfo, MAX_DEPENDENCIES};

pub use combined::{split_combined, CombinedModules};
pub use extension::{Extension, ExtensionData, ExtensionKind, Extensions};
pub use prefix::{DependencySlot, Flags, Prefix, PREFIX_SIZE};

#[cfg(feature = "alloc")]
pub use write::{write, NewModule, WriteError};

use extension::{Chain, ChainSpan};
use read::{array_at, u16_le, u32_le, u8_at};

/// Size of the smallest suffix (`module_info_suffix_t`: reserved, SHA-256, suffix size).
pub const MIN_SUFFIX_SIZE: usize = 36;

/// Suffix size from which the product id and version are present (the smallest suffix
/// plus those two `u16`s).
pub const PRODUCT_SUFFIX_SIZE: usize = MIN_SUFFIX_SIZE + 4;

/// The shortest file Particle's reader can read a suffix from: product id, version,
/// smallest suffix and CRC-32.
pub const MIN_FILE_LEN: usize = PRODUCT_SUFFIX_SIZE + 4;

/// Size of the compression header Device OS writes (`compressed_module_header`).
pub const COMPRESSION_HEADER_SIZE: u16 = 8;

/// The CRC-32 Particle uses (the zlib/Ethernet polynomial, reflected, final XOR).
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Why bytes could not be read as a Particle module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No `module_info` prefix at any offset Particle's reader tries (this includes empty
    /// files and files too short to hold a prefix).
    NoPrefix,
    /// A prefix was found but the file is too short to hold a suffix.
    TooShort {
        /// The file's length.
        len: usize,
    },
    /// The prefix has flag 0x10 but its extensions do not end with an END extension.
    UnterminatedPrefixExtensions {
        /// Offset of the prefix.
        prefix_offset: usize,
    },
    /// An extension (in the prefix or the suffix) declares a length of 0.
    ZeroLengthExtension {
        /// Offset of the extension in the file.
        offset: usize,
    },
    /// A module of a combined file extends past the end of the file.
    CombinedPartTruncated {
        /// Offset of that module in the file.
        offset: usize,
    },
    /// The last module of a combined file still has the COMBINED flag, or bytes follow the
    /// module without it.
    CombinedEndMismatch {
        /// Offset where the last module ends.
        offset: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoPrefix => f.write_str("no Particle module_info prefix at any offset Particle's reader tries"),
            Error::TooShort { len } => {
                write!(f, "{len} bytes is too short for a Particle module suffix (at least {MIN_FILE_LEN})")
            }
            Error::UnterminatedPrefixExtensions { prefix_offset } => {
                write!(f, "prefix extensions after the prefix at {prefix_offset:#x} do not end with an END extension")
            }
            Error::ZeroLengthExtension { offset } => write!(f, "extension at {offset:#x} has length 0"),
            Error::CombinedPartTruncated { offset } => {
                write!(f, "combined module at {offset:#x} extends past the end of the file")
            }
            Error::CombinedEndMismatch { offset } => {
                write!(f, "combined modules end at {offset:#x}, which does not match the end of the file")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// The fixed suffix at the end of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Suffix {
    /// Product id (`u16` at `len − 44`), when the suffix size is at least
    /// [`PRODUCT_SUFFIX_SIZE`].
    pub product_id: Option<u16>,
    /// Product firmware version (`u16` at `len − 42`), under the same condition.
    pub product_version: Option<u16>,
    /// The reserved `u16` at `len − 40`.
    pub reserved: u16,
    /// The SHA-256 as stored.
    pub sha256: [u8; 32],
    /// The stored suffix size.
    pub size: u16,
}

impl Suffix {
    /// Reads the suffix at the end of `bytes`, or `None` when they are shorter than
    /// [`MIN_FILE_LEN`].
    pub fn read(bytes: &[u8]) -> Option<Suffix> {
        let from_end = |n: usize| bytes.len().checked_sub(n);
        let size = u16_le(bytes, from_end(6)?)?;
        let has_product = usize::from(size) >= PRODUCT_SUFFIX_SIZE;
        let product_id = u16_le(bytes, from_end(44)?)?;
        let product_version = u16_le(bytes, from_end(42)?)?;
        Some(Suffix {
            product_id: has_product.then_some(product_id),
            product_version: has_product.then_some(product_version),
            reserved: u16_le(bytes, from_end(40)?)?,
            sha256: array_at(bytes, from_end(38)?)?,
            size,
        })
    }
}

/// The header in front of compressed contents (flag 0x02), little-endian.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 2 | header size (8; larger headers have fields this version does not know) |
/// | 2 | 1 | method: 0 is raw Deflate |
/// | 3 | 1 | window bits: 0 (default) or 8–15 |
/// | 4 | 4 | size of the uncompressed data |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompressionHeader {
    /// Offset of the header in the file.
    pub offset: usize,
    /// Stored header size.
    pub header_size: u16,
    /// Compression method (0: raw Deflate).
    pub method: u8,
    /// Deflate window bits (0: the default).
    pub window_bits: u8,
    /// Size of the data once decompressed.
    pub uncompressed_size: u32,
}

/// What is wrong with a compression header (after binary-version-reader's
/// `decompressModule`, which refuses the same things).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionError {
    /// The header does not fit between the prefix and the suffix.
    Truncated,
    /// The stored header size is below 8.
    HeaderTooSmall(u16),
    /// The method is not 0 (raw Deflate).
    UnknownMethod(u8),
    /// The window bits are neither 0 nor 8–15.
    BadWindowBits(u8),
}

impl fmt::Display for CompressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CompressionError::Truncated => f.write_str("compression header does not fit in the module"),
            CompressionError::HeaderTooSmall(size) => write!(f, "compression header size {size} is below 8"),
            CompressionError::UnknownMethod(method) => write!(f, "unknown compression method {method}"),
            CompressionError::BadWindowBits(bits) => write!(f, "invalid deflate window bits {bits}"),
        }
    }
}

/// A parsed Particle module, borrowing the bytes it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    /// The format-independent description.
    pub info: ModuleInfo,
    bytes: &'a [u8],
    prefix: Prefix,
    prefix_offset: usize,
    prefix_size: usize,
    confidence: u8,
    suffix: Suffix,
    stored_crc: u32,
    computed_crc: u32,
}

/// Parses `bytes` (a whole file) as a Particle module.
pub fn parse(bytes: &[u8]) -> Result<Module<'_>, Error> {
    let (prefix_offset, confidence) = prefix::locate(bytes);
    if confidence == 0 {
        return Err(Error::NoPrefix);
    }
    let prefix = Prefix::read(bytes, prefix_offset).ok_or(Error::NoPrefix)?;

    let prefix_size = if prefix.flags.prefix_extensions() {
        let span = ChainSpan { base: prefix_offset, start: PREFIX_SIZE, min_start: 0 };
        let mut chain = Chain::new(bytes, span);
        let mut last = None;
        for extension in chain.by_ref() {
            last = Some(extension?.kind());
        }
        if last != Some(ExtensionKind::End) {
            return Err(Error::UnterminatedPrefixExtensions { prefix_offset });
        }
        chain.position()
    } else {
        PREFIX_SIZE
    };

    let suffix = Suffix::read(bytes).ok_or(Error::TooShort { len: bytes.len() })?;
    if let Some(span) = suffix_chain_span(bytes.len(), suffix.size) {
        for extension in Chain::new(bytes, span) {
            extension?;
        }
    }

    let too_short = Error::TooShort { len: bytes.len() };
    let crc_at = bytes.len().checked_sub(4).ok_or(too_short)?;
    let stored_crc = u32::from_be_bytes(array_at(bytes, crc_at).ok_or(too_short)?);
    let computed_crc = CRC32.checksum(bytes.get(..crc_at).unwrap_or(&[]));
    let crc_ok = stored_crc == computed_crc;

    let mut dependencies = [None; MAX_DEPENDENCIES];
    for (slot, dep) in dependencies.iter_mut().zip(prefix.dependencies.iter().filter(|d| d.function != 0)) {
        *slot = Some(Dependency {
            function: ModuleFunction::from_code(dep.function),
            index: dep.index,
            version: u32::from(dep.version),
        });
    }
    let info = ModuleInfo {
        format: Format::Particle,
        platform_id: prefix.platform_id,
        function: ModuleFunction::from_code(prefix.function),
        index: prefix.index,
        version: u32::from(prefix.version),
        flags: prefix.flags.0,
        // The prefix offset is at most 8 KiB (see `prefix::locate`).
        header_offset: u32::try_from(prefix_offset).unwrap_or(u32::MAX),
        start_address: prefix.start_address,
        end_address: prefix.end_address,
        dependencies,
        sha256: Some(suffix.sha256),
        size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        product_id: suffix.product_id,
        product_version: suffix.product_version,
        crc_ok: Some(crc_ok),
        integrity: if crc_ok { Integrity::Valid } else { Integrity::Invalid },
    };
    Ok(Module { info, bytes, prefix, prefix_offset, prefix_size, confidence, suffix, stored_crc, computed_crc })
}

/// Where the suffix extensions start: `suffix size` bytes before the CRC, when the suffix is
/// larger than the base suffix with product data.
fn suffix_chain_span(len: usize, suffix_size: u16) -> Option<ChainSpan> {
    if usize::from(suffix_size) <= PRODUCT_SUFFIX_SIZE {
        return None;
    }
    let start = len.checked_sub(4 + usize::from(suffix_size))?;
    Some(ChainSpan { base: 0, start, min_start: 1 })
}

impl<'a> Module<'a> {
    /// The bytes the module was read from.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The fixed prefix.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// Offset of the prefix in the file.
    pub fn prefix_offset(&self) -> usize {
        self.prefix_offset
    }

    /// Size of the prefix with its extensions (24 without).
    pub fn prefix_size(&self) -> usize {
        self.prefix_size
    }

    /// Confidence in the prefix, 1 to [`prefix::FULL_CONFIDENCE`] (see
    /// [`prefix::confidence`]). Below full confidence for padded or combined files,
    /// unknown platforms, functions or flags.
    pub fn confidence(&self) -> u8 {
        self.confidence
    }

    /// The suffix.
    pub fn suffix(&self) -> &Suffix {
        &self.suffix
    }

    /// The prefix extensions (none unless flag 0x10 is set), END included.
    pub fn prefix_extensions(&self) -> Extensions<'a> {
        let span = ChainSpan { base: self.prefix_offset, start: PREFIX_SIZE, min_start: 0 };
        Extensions::new(self.prefix.flags.prefix_extensions().then(|| Chain::new(self.bytes, span)))
    }

    /// The suffix extensions (none unless the suffix size is above 40), END included.
    pub fn suffix_extensions(&self) -> Extensions<'a> {
        let chain = suffix_chain_span(self.bytes.len(), self.suffix.size).map(|span| Chain::new(self.bytes, span));
        Extensions::new(chain)
    }

    /// The compression header, when the COMPRESSED flag is set.
    pub fn compression(&self) -> Option<Result<CompressionHeader, CompressionError>> {
        self.prefix.flags.compressed().then(|| self.read_compression())
    }

    fn read_compression(&self) -> Result<CompressionHeader, CompressionError> {
        let offset = self.prefix_offset + self.prefix_size;
        let suffix_start = self.bytes.len().saturating_sub(usize::from(self.suffix.size) + 4);
        if offset + usize::from(COMPRESSION_HEADER_SIZE) > suffix_start {
            return Err(CompressionError::Truncated);
        }
        let field = |at: usize| u8_at(self.bytes, offset + at).ok_or(CompressionError::Truncated);
        let header = CompressionHeader {
            offset,
            header_size: u16_le(self.bytes, offset).ok_or(CompressionError::Truncated)?,
            method: field(2)?,
            window_bits: field(3)?,
            uncompressed_size: u32_le(self.bytes, offset + 4).ok_or(CompressionError::Truncated)?,
        };
        if header.header_size < COMPRESSION_HEADER_SIZE {
            return Err(CompressionError::HeaderTooSmall(header.header_size));
        }
        if offset + usize::from(header.header_size) > suffix_start {
            return Err(CompressionError::Truncated);
        }
        if header.method != 0 {
            return Err(CompressionError::UnknownMethod(header.method));
        }
        if header.window_bits != 0 && !(8..=15).contains(&header.window_bits) {
            return Err(CompressionError::BadWindowBits(header.window_bits));
        }
        Ok(header)
    }

    /// The CRC-32 stored in the last 4 bytes (big-endian).
    pub fn stored_crc(&self) -> u32 {
        self.stored_crc
    }

    /// The CRC-32 of everything before the last 4 bytes.
    pub fn computed_crc(&self) -> u32 {
        self.computed_crc
    }

    /// Whether the stored SHA-256 is the SHA-256 of every byte before it (the rule
    /// binary-version-reader uses when it writes modules). Many real modules follow it, some
    /// do not, so this is information, not a validity check.
    pub fn sha256_matches_contents(&self) -> bool {
        let hashed = self.bytes.get(..self.bytes.len().saturating_sub(38)).unwrap_or(&[]);
        Sha256::digest(hashed).as_slice() == self.suffix.sha256
    }
}
