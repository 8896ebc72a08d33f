//! MCUboot images: read, verify, and (with `alloc`) write and sign.
//!
//! An MCUboot image is a fixed header, the executable body, then a trailer of
//! type-length-value records (TLVs) in two areas: a *protected* area, covered by the
//! image hash and so by the signature, and an *unprotected* area holding the hash and the
//! signature themselves. Layout per MCUboot `docs/design.md` ("Image Format") and
//! `boot/bootutil/include/bootutil/image.h`; all fields little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `ih_magic` = [`IMAGE_MAGIC`] `0x96f3b83d` |
//! | 4 | 4 | `ih_load_addr` |
//! | 8 | 2 | `ih_hdr_size`: bytes before the body, at least [`HEADER_SIZE`] |
//! | 10 | 2 | `ih_protect_tlv_size`: bytes of the protected TLV area (0 when absent) |
//! | 12 | 4 | `ih_img_size`: bytes of the body |
//! | 16 | 4 | `ih_flags` (see [`flags`]) |
//! | 20 | 8 | `ih_ver`: major u8, minor u8, revision u16, build u32 |
//! | 28 | 4 | `_pad1` |
//! | 32 | `ih_hdr_size` − 32 | header padding |
//! | `ih_hdr_size` | `ih_img_size` | body |
//! | tlv offset | `ih_protect_tlv_size` | protected TLV area (info magic `0x6908`) |
//! | … | `it_tlv_tot` | unprotected TLV area (info magic `0x6907`) |
//!
//! Each TLV area starts with a 4-byte info record (`it_magic` u16, `it_tlv_tot` u16: the
//! size of the area *including* this record), followed by TLVs (`it_type` u16, `it_len`
//! u16, then `it_len` bytes). The SHA-256 TLV holds the hash of everything before the
//! unprotected area: header, body and protected TLVs. For ED25519, imgtool 2.5.0 (the
//! non-"pure" mode, its default) signs that 32-byte digest, not the image itself.
//!
//! Reading and verifying need neither `std` nor an allocator. [`parse`] + [`Image::verify`]
//! work on a slice; [`verify_source`] works over any [`ImageSource`] (a flash slot, a
//! file) with a 256-byte stack buffer, so a device never holds the image in RAM.
//!
//! # Mapping to [`ModuleInfo`]
//!
//! | `ModuleInfo` | from |
//! |---|---|
//! | `version` | `major << 24 \| minor << 16 \| revision` (build number dropped) |
//! | `platform_id`, `function`, `index` | the Tern module TLV when present ([`TernModule`]); otherwise 0, monolithic, 0 |
//! | `dependencies` | dependency TLVs: image id *n* → (monolithic, index *n*), minimum version packed as above |
//! | `flags` | the low 8 bits of `ih_flags` |
//! | `start_address` | `ih_load_addr` |
//! | `end_address` | `ih_load_addr` + header + body + protected TLVs (the hashed bytes) |
//! | `sha256` | the SHA-256 TLV |
//! | `integrity` | whether that hash matches (signatures need a key: [`Image::verify`]) |

use core::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::model::{Dependency, Format, Integrity, ModuleFunction, ModuleInfo, MAX_DEPENDENCIES};

#[cfg(feature = "alloc")]
mod write;
#[cfg(feature = "alloc")]
pub use write::{sign, KeyFormat, SignConfig, SignError, SlotConfig};

#[cfg(test)]
mod tests;

/// `IMAGE_MAGIC`, the first word of every MCUboot image header (little-endian).
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// Size of the fixed part of the header; `ih_hdr_size` may be larger (padding).
pub const HEADER_SIZE: usize = 32;
/// `IMAGE_TLV_INFO_MAGIC`: starts the unprotected TLV area.
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// `IMAGE_TLV_PROT_INFO_MAGIC`: starts the protected TLV area.
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
/// Size of a TLV area's info record and of a TLV's type/length record.
const TLV_HEADER_SIZE: u32 = 4;
/// The most dependency TLVs an image may carry here. MCUboot itself has no fixed limit,
/// but device code keeps them in a fixed array.
pub const MAX_IMAGE_DEPENDENCIES: usize = 8;
/// Length of a DER SubjectPublicKeyInfo holding an ED25519 key.
pub const ED25519_PUBLIC_KEY_DER_LEN: usize = 44;
/// The DER SubjectPublicKeyInfo prefix for an ED25519 key (RFC 8410): the 32 key bytes
/// follow it. imgtool hashes this form for the key hash TLV.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Header flag bits (`IMAGE_F_*` in MCUboot `image.h`).
pub mod flags {
    /// Position-independent code (unsupported by MCUboot).
    pub const PIC: u32 = 0x0000_0001;
    /// Body encrypted with AES-128.
    pub const ENCRYPTED_AES128: u32 = 0x0000_0004;
    /// Body encrypted with AES-256.
    pub const ENCRYPTED_AES256: u32 = 0x0000_0008;
    /// Not a bootable image (split image app).
    pub const NON_BOOTABLE: u32 = 0x0000_0010;
    /// Copy to RAM at `ih_load_addr` before running.
    pub const RAM_LOAD: u32 = 0x0000_0020;
    /// Built for the fixed flash address `ih_load_addr`.
    pub const ROM_FIXED: u32 = 0x0000_0100;
    /// Body compressed with LZMA1.
    pub const COMPRESSED_LZMA1: u32 = 0x0000_0200;
    /// Body compressed with LZMA2.
    pub const COMPRESSED_LZMA2: u32 = 0x0000_0400;
    /// Compressed body uses the ARM Thumb filter.
    pub const COMPRESSED_ARM_THUMB: u32 = 0x0000_0800;
}

/// TLV types (`IMAGE_TLV_*` in MCUboot `image.h`, `TLV_VALUES` in imgtool).
pub mod tlv {
    /// SHA-256 of the signer's public key (DER SubjectPublicKeyInfo), 32 bytes.
    pub const KEYHASH: u16 = 0x01;
    /// The signer's public key (DER SubjectPublicKeyInfo).
    pub const PUBKEY: u16 = 0x02;
    /// SHA-256 of header, body and protected TLVs, 32 bytes.
    pub const SHA256: u16 = 0x10;
    /// SHA-384 of the same (not read by Tern).
    pub const SHA384: u16 = 0x11;
    /// SHA-512 of the same (not read by Tern).
    pub const SHA512: u16 = 0x12;
    /// ED25519 signature over the SHA-256 TLV's digest, 64 bytes.
    pub const ED25519: u16 = 0x24;
    /// Marks a "pure" signature made over the image rather than its digest.
    pub const SIG_PURE: u16 = 0x25;
    /// A dependency on another image: id, flags, 2 padding bytes, minimum version; 12 bytes.
    pub const DEPENDENCY: u16 = 0x40;
    /// The security counter, u32.
    pub const SEC_CNT: u16 = 0x50;
    /// Tern's own protected TLV describing the module (see [`super::TernModule`]), in
    /// MCUboot's vendor range (`xxA0`–`xxFF`).
    pub const TERN_MODULE: u16 = 0x54a0;

    /// A short name for a TLV type, for listings.
    pub const fn name(kind: u16) -> &'static str {
        match kind {
            KEYHASH => "KEYHASH",
            PUBKEY => "PUBKEY",
            SHA256 => "SHA256",
            SHA384 => "SHA384",
            SHA512 => "SHA512",
            0x20 => "RSA2048",
            0x22 => "ECDSASIG",
            0x23 => "RSA3072",
            ED25519 => "ED25519",
            SIG_PURE => "SIG_PURE",
            0x30 => "ENCRSA2048",
            0x31 => "ENCKW",
            0x32 => "ENCEC256",
            0x33 => "ENCX25519",
            0x34 => "ENCX25519_SHA512",
            DEPENDENCY => "DEPENDENCY",
            SEC_CNT => "SEC_CNT",
            0x60 => "BOOT_RECORD",
            0x70 => "DECOMP_SIZE",
            0x71 => "DECOMP_SHA",
            0x72 => "DECOMP_SIGNATURE",
            0x73 => "COMP_DEC_SIZE",
            0x74 => "UUID_VID",
            0x75 => "UUID_CID",
            TERN_MODULE => "TERN_MODULE",
            _ => "unknown",
        }
    }
}

/// Why bytes could not be read or verified as an MCUboot image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the 32-byte header, and those there start like an image (an empty
    /// input is too short).
    TooShort,
    /// The bytes do not start with [`IMAGE_MAGIC`]: they are not an MCUboot image. Format
    /// detection relies on this being the only error for non-MCUboot input.
    BadMagic,
    /// `ih_hdr_size` is smaller than the 32-byte header.
    BadHeaderSize(u16),
    /// The header's sizes point past the end of the data (the image is truncated, or its
    /// sizes are wrong).
    Truncated,
    /// `ih_protect_tlv_size` disagrees with the protected TLV area actually present.
    ProtectedSizeMismatch,
    /// The unprotected TLV area does not start with `0x6907`.
    BadTlvInfoMagic,
    /// A TLV area's declared size is smaller than its own info record.
    BadTlvAreaSize,
    /// A TLV runs past the end of its area.
    TlvOverrun,
    /// A TLV that carries metadata Tern acts on (dependency, security counter, Tern
    /// module) sits in the unprotected area, where anyone could change it.
    UnprotectedTlv(u16),
    /// A TLV of this type has the wrong length.
    BadTlvLength(u16),
    /// A TLV of this type appears more than once but may appear only once.
    DuplicateTlv(u16),
    /// More than [`MAX_IMAGE_DEPENDENCIES`] dependency TLVs.
    TooManyDependencies,
    /// The Tern module TLV has an unknown layout version.
    BadTernModule,
    /// There is no SHA-256 TLV (the image may use SHA-384/512, which Tern does not read).
    MissingHash,
    /// The SHA-256 TLV does not match the image.
    HashMismatch,
    /// The image body is encrypted; its hash covers the plaintext, so it cannot be checked.
    Encrypted,
    /// The image carries a "pure" signature (over the image, not its digest), which Tern
    /// does not verify.
    PureSignature,
    /// A key was given but the image has no ED25519 signature.
    MissingSignature,
    /// The image's key hash or public key TLV names a different key than the one given.
    KeyMismatch,
    /// A key was given but the image has no key hash or public key TLV saying which key
    /// signed it (MCUboot needs one to pick the key).
    MissingKeyId,
    /// No ED25519 signature in the image verifies with the given key.
    BadSignature,
    /// The [`ImageSource`] failed to read.
    Read,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooShort => f.write_str("too short for an MCUboot header (32 bytes)"),
            Error::BadMagic => f.write_str("not an MCUboot image (bad header magic)"),
            Error::BadHeaderSize(size) => write!(f, "header size {size} is smaller than 32"),
            Error::Truncated => f.write_str("truncated: header sizes point past the end of the image"),
            Error::ProtectedSizeMismatch => f.write_str("protected TLV size in header does not match the TLV area"),
            Error::BadTlvInfoMagic => f.write_str("TLV area missing (bad TLV info magic)"),
            Error::BadTlvAreaSize => f.write_str("TLV area size is smaller than its info record"),
            Error::TlvOverrun => f.write_str("a TLV runs past the end of its area"),
            Error::UnprotectedTlv(kind) => {
                write!(f, "TLV {} (0x{kind:04x}) must be in the protected area", tlv::name(*kind))
            }
            Error::BadTlvLength(kind) => write!(f, "TLV {} (0x{kind:04x}) has the wrong length", tlv::name(*kind)),
            Error::DuplicateTlv(kind) => write!(f, "TLV {} (0x{kind:04x}) appears more than once", tlv::name(*kind)),
            Error::TooManyDependencies => write!(f, "more than {MAX_IMAGE_DEPENDENCIES} dependency TLVs"),
            Error::BadTernModule => f.write_str("unknown Tern module TLV layout"),
            Error::MissingHash => f.write_str("no SHA-256 TLV"),
            Error::HashMismatch => f.write_str("SHA-256 does not match the image (tampered or corrupt)"),
            Error::Encrypted => f.write_str("image is encrypted; its hash cannot be checked"),
            Error::PureSignature => f.write_str("pure ED25519 signatures are not supported"),
            Error::MissingSignature => f.write_str("image has no ED25519 signature"),
            Error::KeyMismatch => f.write_str("image was signed with a different key"),
            Error::MissingKeyId => f.write_str("image does not name its signing key (no key hash TLV)"),
            Error::BadSignature => f.write_str("ED25519 signature does not verify with the given key"),
            Error::Read => f.write_str("read error"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// An image version, `major.minor.revision+build` (`struct image_version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Revision.
    pub revision: u16,
    /// Build number; MCUboot ignores it when comparing versions unless configured to.
    pub build: u32,
}

impl Version {
    /// Tern's single-number version: `major << 24 | minor << 16 | revision`.
    pub const fn packed(self) -> u32 {
        (self.major as u32) << 24 | (self.minor as u32) << 16 | self.revision as u32
    }

    /// Decodes the 8-byte on-disk form.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Version {
            major: bytes[0],
            minor: bytes[1],
            revision: u16::from_le_bytes([bytes[2], bytes[3]]),
            build: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    /// The 8-byte on-disk form.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut out = [0; 8];
        out[0] = self.major;
        out[1] = self.minor;
        out[2..4].copy_from_slice(&self.revision.to_le_bytes());
        out[4..8].copy_from_slice(&self.build.to_le_bytes());
        out
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}+{}", self.major, self.minor, self.revision, self.build)
    }
}

/// A version string is not `MAJOR[.MINOR[.REVISION[+BUILD]]]` with each part in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseVersionError;

impl fmt::Display for ParseVersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("version must be MAJOR[.MINOR[.REVISION[+BUILD]]] (major, minor < 256, revision < 65536)")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ParseVersionError {}

impl core::str::FromStr for Version {
    type Err = ParseVersionError;

    /// Parses the form imgtool accepts: decimal parts without leading zeros, later parts
    /// optional, the build only after a revision.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        fn number<T: TryFrom<u64>>(part: &str) -> Result<T, ParseVersionError> {
            let leading_zero = part.len() > 1 && part.starts_with('0');
            if part.is_empty() || leading_zero || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseVersionError);
            }
            let value: u64 = part.parse().map_err(|_| ParseVersionError)?;
            T::try_from(value).map_err(|_| ParseVersionError)
        }
        let (dotted, build) = match text.split_once('+') {
            Some((dotted, build)) => (dotted, Some(build)),
            None => (text, None),
        };
        let mut parts = dotted.split('.');
        let major = number(parts.next().unwrap_or(""))?;
        let minor = parts.next().map(number).transpose()?;
        let revision = parts.next().map(number).transpose()?;
        if parts.next().is_some() || (build.is_some() && revision.is_none()) {
            return Err(ParseVersionError);
        }
        let build = build.map(number).transpose()?;
        Ok(Version { major, minor: minor.unwrap_or(0), revision: revision.unwrap_or(0), build: build.unwrap_or(0) })
    }
}

/// The fixed 32-byte image header (`struct image_header`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `ih_load_addr`: where the image runs from (RAM load or fixed ROM address), else 0.
    pub load_addr: u32,
    /// `ih_hdr_size`: bytes before the body.
    pub header_size: u16,
    /// `ih_protect_tlv_size`: bytes of the protected TLV area, 0 when there is none.
    pub protected_tlv_size: u16,
    /// `ih_img_size`: bytes of the body.
    pub image_size: u32,
    /// `ih_flags` (see [`flags`]).
    pub flags: u32,
    /// `ih_ver`.
    pub version: Version,
}

impl Header {
    /// Decodes a header from the first 32 bytes of `bytes`, checking the magic and that
    /// `ih_hdr_size` covers the fixed header.
    pub fn parse(bytes: &[u8]) -> Result<Header, Error> {
        let bytes: &[u8; HEADER_SIZE] =
            bytes.get(..HEADER_SIZE).and_then(|b| b.try_into().ok()).ok_or(Error::TooShort)?;
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if u32_at(0) != IMAGE_MAGIC {
            return Err(Error::BadMagic);
        }
        let mut version = [0; 8];
        version.copy_from_slice(&bytes[20..28]);
        let header = Header {
            load_addr: u32_at(4),
            header_size: u16_at(8),
            protected_tlv_size: u16_at(10),
            image_size: u32_at(12),
            flags: u32_at(16),
            version: Version::from_bytes(version),
        };
        if usize::from(header.header_size) < HEADER_SIZE {
            return Err(Error::BadHeaderSize(header.header_size));
        }
        Ok(header)
    }

    /// The 32-byte on-disk form (`_pad1` zero).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0; HEADER_SIZE];
        out[0..4].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.load_addr.to_le_bytes());
        out[8..10].copy_from_slice(&self.header_size.to_le_bytes());
        out[10..12].copy_from_slice(&self.protected_tlv_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.image_size.to_le_bytes());
        out[16..20].copy_from_slice(&self.flags.to_le_bytes());
        out[20..28].copy_from_slice(&self.version.to_bytes());
        out
    }
}

/// Where the parts of an image lie, as offsets from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The decoded header.
    pub header: Header,
    /// Offset of the TLV areas (`ih_hdr_size + ih_img_size`).
    pub tlv_offset: u32,
    /// Size of the protected TLV area including its info record; 0 when absent.
    pub protected_len: u32,
    /// Offset of the unprotected TLV area (`tlv_offset + protected_len`); also the number
    /// of bytes the SHA-256 covers.
    pub unprotected_offset: u32,
    /// Size of the unprotected TLV area including its info record.
    pub unprotected_len: u32,
}

impl Layout {
    /// One past the last byte of the TLV areas. Anything after it (slot padding, the swap
    /// trailer) belongs to the flash slot, not the image.
    pub fn end(&self) -> u32 {
        self.unprotected_offset + self.unprotected_len
    }

    /// The number of leading bytes the image hash covers.
    pub fn hashed_len(&self) -> u32 {
        self.unprotected_offset
    }

    /// Reads and checks the header and the two TLV info records, as MCUboot's
    /// `bootutil_tlv_iter_begin` does, plus bounds against the source size.
    pub fn read<S: ImageSource + ?Sized>(source: &mut S) -> Result<Layout, Error> {
        let size = u64::from(source.size());
        let mut raw = [0; HEADER_SIZE];
        if size < HEADER_SIZE as u64 {
            // Too short to be an image: say "too short" only when what is there starts
            // like one, so that format detection can treat `BadMagic` as "not MCUboot".
            let seen = &mut raw[..(size as usize).min(4)];
            source.read_at(0, seen)?;
            let magic = IMAGE_MAGIC.to_le_bytes();
            return Err(if *seen == magic[..seen.len()] { Error::TooShort } else { Error::BadMagic });
        }
        source.read_at(0, &mut raw)?;
        let header = Header::parse(&raw)?;
        let tlv_offset = u64::from(header.header_size) + u64::from(header.image_size);
        let (mut magic, mut total) = read_info(source, tlv_offset, size)?;
        let mut protected_len = 0u64;
        if magic == TLV_PROT_INFO_MAGIC {
            if total != header.protected_tlv_size {
                return Err(Error::ProtectedSizeMismatch);
            }
            if u32::from(total) < TLV_HEADER_SIZE {
                return Err(Error::BadTlvAreaSize);
            }
            protected_len = u64::from(total);
            (magic, total) = read_info(source, tlv_offset + protected_len, size)?;
        } else if header.protected_tlv_size != 0 {
            return Err(Error::ProtectedSizeMismatch);
        }
        if magic != TLV_INFO_MAGIC {
            return Err(Error::BadTlvInfoMagic);
        }
        if u32::from(total) < TLV_HEADER_SIZE {
            return Err(Error::BadTlvAreaSize);
        }
        let unprotected_offset = tlv_offset + protected_len;
        if unprotected_offset + u64::from(total) > size {
            return Err(Error::Truncated);
        }
        // Every offset is now below `size`, which is a u32.
        Ok(Layout {
            header,
            tlv_offset: tlv_offset as u32,
            protected_len: protected_len as u32,
            unprotected_offset: unprotected_offset as u32,
            unprotected_len: u32::from(total),
        })
    }
}

fn read_u32<S: ImageSource + ?Sized>(source: &mut S, offset: u32) -> Result<u32, Error> {
    let mut raw = [0; 4];
    source.read_at(offset, &mut raw)?;
    Ok(u32::from_le_bytes(raw))
}

/// Reads a TLV info record (magic, total) at `offset`, which must lie inside `size`.
fn read_info<S: ImageSource + ?Sized>(source: &mut S, offset: u64, size: u64) -> Result<(u16, u16), Error> {
    if offset + u64::from(TLV_HEADER_SIZE) > size {
        return Err(Error::Truncated);
    }
    let raw = read_u32(source, offset as u32)?;
    Ok((raw as u16, (raw >> 16) as u16))
}

/// The [`ImageSource`] could not read the bytes asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadError;

impl From<ReadError> for Error {
    fn from(_: ReadError) -> Self {
        Error::Read
    }
}

/// Random-access bytes holding an image: a flash slot, a file, a slice.
///
/// Verification reads the header, hashes the image in small chunks and reads TLVs one by
/// one, the way MCUboot reads a flash slot; nothing needs the whole image in memory. On a
/// device, implement this over the flash driver (for example `embedded-storage`'s
/// `ReadStorage`), with `size` the slot size.
///
/// ```
/// use tern_image::mcuboot::{verify_source, ImageSource, ReadError};
///
/// /// A slot of some flash device (here simulated by an array).
/// struct Slot<'a> { flash: &'a [u8; 1024], start: u32, size: u32 }
///
/// impl ImageSource for Slot<'_> {
///     fn size(&self) -> u32 {
///         self.size
///     }
///     fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ReadError> {
///         let at = (self.start + offset) as usize;
///         buf.copy_from_slice(self.flash.get(at..at + buf.len()).ok_or(ReadError)?);
///         Ok(())
///     }
/// }
///
/// let flash = [0xff; 1024];
/// let mut slot = Slot { flash: &flash, start: 512, size: 512 };
/// // Erased flash holds no image.
/// assert!(verify_source(&mut slot, None).is_err());
/// ```
pub trait ImageSource {
    /// The number of readable bytes. Reads are only made below this offset.
    fn size(&self) -> u32;
    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ReadError>;
}

impl ImageSource for &[u8] {
    fn size(&self) -> u32 {
        // Images are addressed with u32 offsets; anything beyond is not part of one.
        u32::try_from(self.len()).unwrap_or(u32::MAX)
    }

    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ReadError> {
        let start = offset as usize;
        let bytes = self.get(start..start.checked_add(buf.len()).ok_or(ReadError)?).ok_or(ReadError)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// One TLV record, located but not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlvEntry {
    /// The TLV type (see [`tlv`]).
    pub kind: u16,
    /// Offset of the value from the image's first byte.
    pub offset: u32,
    /// Length of the value.
    pub len: u16,
    /// Whether it lies in the protected (hashed and signed) area.
    pub protected: bool,
}

/// Walks the TLVs of both areas in order, checking that each lies inside its area.
#[derive(Clone, Debug)]
struct TlvCursor {
    pos: u32,
    area_end: u32,
    protected: bool,
    unprotected_offset: u32,
    unprotected_end: u32,
}

impl TlvCursor {
    fn new(layout: &Layout) -> Self {
        let unprotected = TlvCursor {
            pos: layout.unprotected_offset + TLV_HEADER_SIZE,
            area_end: layout.end(),
            protected: false,
            unprotected_offset: layout.unprotected_offset,
            unprotected_end: layout.end(),
        };
        if layout.protected_len == 0 {
            unprotected
        } else {
            TlvCursor {
                pos: layout.tlv_offset + TLV_HEADER_SIZE,
                area_end: layout.unprotected_offset,
                protected: true,
                ..unprotected
            }
        }
    }

    fn next<S: ImageSource + ?Sized>(&mut self, source: &mut S) -> Result<Option<TlvEntry>, Error> {
        if self.pos == self.area_end && self.protected {
            self.protected = false;
            self.pos = self.unprotected_offset + TLV_HEADER_SIZE;
            self.area_end = self.unprotected_end;
        }
        if self.pos == self.area_end {
            return Ok(None);
        }
        if u64::from(self.pos) + u64::from(TLV_HEADER_SIZE) > u64::from(self.area_end) {
            return Err(Error::TlvOverrun);
        }
        let raw = read_u32(source, self.pos)?;
        let (kind, len) = (raw as u16, (raw >> 16) as u16);
        let offset = self.pos + TLV_HEADER_SIZE;
        let end = u64::from(offset) + u64::from(len);
        if end > u64::from(self.area_end) {
            return Err(Error::TlvOverrun);
        }
        self.pos = end as u32;
        Ok(Some(TlvEntry { kind, offset, len, protected: self.protected }))
    }
}

/// A dependency TLV: this image needs image `image_id` at `min_version` or later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageDependency {
    /// The MCUboot image number depended on.
    pub image_id: u8,
    /// The byte after the id (`slot` in recent MCUboot: which slot the dependency refers
    /// to; imgtool 2.5.0 writes 0).
    pub flags: u8,
    /// The minimum version required.
    pub min_version: Version,
}

impl ImageDependency {
    /// Length of the TLV value.
    pub const LEN: usize = 12;

    fn from_bytes(raw: &[u8; Self::LEN]) -> Self {
        let mut version = [0; 8];
        version.copy_from_slice(&raw[4..12]);
        ImageDependency { image_id: raw[0], flags: raw[1], min_version: Version::from_bytes(version) }
    }

    /// The TLV value: id, flags, two zero bytes, version.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[0] = self.image_id;
        out[1] = self.flags;
        out[4..].copy_from_slice(&self.min_version.to_bytes());
        out
    }

    /// The dependency in Tern's model: MCUboot image *n* is the monolithic module with
    /// index *n*; the version is packed as for [`ModuleInfo::version`].
    pub fn to_dependency(&self) -> Dependency {
        Dependency { function: ModuleFunction::MonoFirmware, index: self.image_id, version: self.min_version.packed() }
    }
}

/// Tern's module TLV ([`tlv::TERN_MODULE`], protected): what the image is in Tern's model,
/// so that a Tern-signed image describes itself as fully as a Particle module does.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | layout version, [`TernModule::LAYOUT_VERSION`] |
/// | 1 | 1 | module function code (Device OS numbering, [`ModuleFunction::code`]) |
/// | 2 | 1 | module index |
/// | 3 | 1 | reserved, 0 |
/// | 4 | 2 | platform id, little-endian |
/// | 6 | 2 | reserved, 0 |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TernModule {
    /// Hardware platform identifier.
    pub platform_id: u16,
    /// What the module is for.
    pub function: ModuleFunction,
    /// Index among modules of the same function.
    pub index: u8,
}

impl TernModule {
    /// Length of the TLV value.
    pub const LEN: usize = 8;
    /// The only layout version written and read.
    pub const LAYOUT_VERSION: u8 = 1;

    fn from_bytes(raw: &[u8; Self::LEN]) -> Result<Self, Error> {
        if raw[0] != Self::LAYOUT_VERSION {
            return Err(Error::BadTernModule);
        }
        Ok(TernModule {
            function: ModuleFunction::from_code(raw[1]),
            index: raw[2],
            platform_id: u16::from_le_bytes([raw[4], raw[5]]),
        })
    }

    /// The TLV value.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[0] = Self::LAYOUT_VERSION;
        out[1] = self.function.code();
        out[2] = self.index;
        out[4..6].copy_from_slice(&self.platform_id.to_le_bytes());
        out
    }
}

/// The DER SubjectPublicKeyInfo form of an ED25519 public key (what imgtool embeds in a
/// PUBKEY TLV and hashes for the KEYHASH TLV).
pub fn public_key_der(key: &VerifyingKey) -> [u8; ED25519_PUBLIC_KEY_DER_LEN] {
    let mut out = [0; ED25519_PUBLIC_KEY_DER_LEN];
    out[..ED25519_SPKI_PREFIX.len()].copy_from_slice(&ED25519_SPKI_PREFIX);
    out[ED25519_SPKI_PREFIX.len()..].copy_from_slice(key.as_bytes());
    out
}

/// The KEYHASH TLV value for `key`: SHA-256 of [`public_key_der`].
pub fn key_hash(key: &VerifyingKey) -> [u8; 32] {
    Sha256::digest(public_key_der(key)).into()
}

/// What a TLV walk found: the metadata, and the verdict when a digest and key were given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Scan {
    sha256: Option<[u8; 32]>,
    security_counter: Option<u32>,
    tern_module: Option<TernModule>,
    dependencies: [Option<ImageDependency>; MAX_IMAGE_DEPENDENCIES],
    pure: bool,
    key_named: Option<bool>,
    signatures: u32,
    signature_ok: bool,
}

/// Reads exactly `N` bytes of a TLV value, checking its length.
fn read_value<const N: usize, S: ImageSource + ?Sized>(source: &mut S, entry: &TlvEntry) -> Result<[u8; N], Error> {
    if usize::from(entry.len) != N {
        return Err(Error::BadTlvLength(entry.kind));
    }
    let mut out = [0; N];
    source.read_at(entry.offset, &mut out)?;
    Ok(out)
}

/// Walks every TLV, decoding the ones Tern reads and rejecting malformed or misplaced
/// ones. With `check` = (computed digest, key), also matches the key hash and verifies the
/// ED25519 signatures against the digest.
fn scan<S: ImageSource + ?Sized>(
    source: &mut S,
    layout: &Layout,
    check: Option<(&[u8; 32], &VerifyingKey)>,
) -> Result<Scan, Error> {
    let mut found = Scan {
        sha256: None,
        security_counter: None,
        tern_module: None,
        dependencies: [None; MAX_IMAGE_DEPENDENCIES],
        pure: false,
        key_named: None,
        signatures: 0,
        signature_ok: false,
    };
    let mut dependency_count = 0;
    let mut cursor = TlvCursor::new(layout);
    while let Some(entry) = cursor.next(source)? {
        let must_be_protected = matches!(entry.kind, tlv::DEPENDENCY | tlv::SEC_CNT | tlv::TERN_MODULE);
        if must_be_protected && !entry.protected {
            return Err(Error::UnprotectedTlv(entry.kind));
        }
        match entry.kind {
            tlv::SHA256 => {
                let value = read_value::<32, S>(source, &entry)?;
                if found.sha256.replace(value).is_some() {
                    return Err(Error::DuplicateTlv(entry.kind));
                }
            }
            tlv::SEC_CNT => {
                let value = u32::from_le_bytes(read_value::<4, S>(source, &entry)?);
                if found.security_counter.replace(value).is_some() {
                    return Err(Error::DuplicateTlv(entry.kind));
                }
            }
            tlv::TERN_MODULE => {
                let value = TernModule::from_bytes(&read_value::<{ TernModule::LEN }, S>(source, &entry)?)?;
                if found.tern_module.replace(value).is_some() {
                    return Err(Error::DuplicateTlv(entry.kind));
                }
            }
            tlv::DEPENDENCY => {
                let raw = read_value::<{ ImageDependency::LEN }, S>(source, &entry)?;
                let slot = found.dependencies.get_mut(dependency_count).ok_or(Error::TooManyDependencies)?;
                *slot = Some(ImageDependency::from_bytes(&raw));
                dependency_count += 1;
            }
            tlv::SIG_PURE => found.pure = true,
            tlv::KEYHASH => {
                let value = read_value::<32, S>(source, &entry)?;
                if let Some((_, key)) = check {
                    let named = value == key_hash(key);
                    found.key_named = Some(found.key_named.unwrap_or(false) || named);
                }
            }
            tlv::PUBKEY => {
                // Other key types have other lengths: they simply do not name our key.
                if let Some((_, key)) = check {
                    let named = usize::from(entry.len) == ED25519_PUBLIC_KEY_DER_LEN
                        && read_value::<ED25519_PUBLIC_KEY_DER_LEN, S>(source, &entry)? == public_key_der(key);
                    found.key_named = Some(found.key_named.unwrap_or(false) || named);
                }
            }
            tlv::ED25519 => {
                let value = read_value::<64, S>(source, &entry)?;
                found.signatures += 1;
                if let Some((digest, key)) = check {
                    let signature = Signature::from_bytes(&value);
                    found.signature_ok |= key.verify_strict(digest, &signature).is_ok();
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Hashes the first `len` bytes of `source` in 256-byte chunks.
fn hash_prefix<S: ImageSource + ?Sized>(source: &mut S, len: u32) -> Result<[u8; 32], Error> {
    let mut hasher = Sha256::new();
    let mut chunk = [0u8; 256];
    let mut offset = 0u32;
    while offset < len {
        let n = (len - offset).min(chunk.len() as u32) as usize;
        source.read_at(offset, &mut chunk[..n])?;
        hasher.update(&chunk[..n]);
        offset += n as u32;
    }
    Ok(hasher.finalize().into())
}

/// The result of a successful verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Where the parts of the image lie (includes the header).
    pub layout: Layout,
    /// The image hash (stored and recomputed: they are equal).
    pub sha256: [u8; 32],
    /// Whether an ED25519 signature was verified (a key was given).
    pub signature_verified: bool,
    /// The security counter TLV, when present.
    pub security_counter: Option<u32>,
    /// The Tern module TLV, when present.
    pub tern_module: Option<TernModule>,
    /// The dependency TLVs in image order; empty slots are `None`.
    pub dependencies: [Option<ImageDependency>; MAX_IMAGE_DEPENDENCIES],
}

impl Verified {
    /// The declared dependencies, skipping empty slots.
    pub fn dependencies(&self) -> impl Iterator<Item = &ImageDependency> {
        self.dependencies.iter().flatten()
    }
}

/// Verifies an image read through `source` without holding it in memory: checks the
/// layout and every TLV, recomputes the SHA-256 and compares it with the SHA-256 TLV,
/// and with a `key` also checks that a key hash or public key TLV names that key and that
/// an ED25519 signature over the digest verifies with it (as MCUboot's
/// `bootutil_img_validate` does: it too needs the key TLV to choose a key).
pub fn verify_source<S: ImageSource + ?Sized>(source: &mut S, key: Option<&VerifyingKey>) -> Result<Verified, Error> {
    let layout = Layout::read(source)?;
    // A structural pass first, so a malformed trailer is reported as such rather than as
    // a hash mismatch.
    let structure = scan(source, &layout, None)?;
    if layout.header.flags & (flags::ENCRYPTED_AES128 | flags::ENCRYPTED_AES256) != 0 {
        return Err(Error::Encrypted);
    }
    let stored = structure.sha256.ok_or(Error::MissingHash)?;
    let digest = hash_prefix(source, layout.hashed_len())?;
    if digest != stored {
        return Err(Error::HashMismatch);
    }
    if let Some(key) = key {
        if structure.pure {
            return Err(Error::PureSignature);
        }
        let checked = scan(source, &layout, Some((&digest, key)))?;
        if checked.signatures == 0 {
            return Err(Error::MissingSignature);
        }
        match checked.key_named {
            None => return Err(Error::MissingKeyId),
            Some(false) => return Err(Error::KeyMismatch),
            Some(true) => {}
        }
        if !checked.signature_ok {
            return Err(Error::BadSignature);
        }
    }
    Ok(Verified {
        layout,
        sha256: digest,
        signature_verified: key.is_some(),
        security_counter: structure.security_counter,
        tern_module: structure.tern_module,
        dependencies: structure.dependencies,
    })
}

/// A parsed MCUboot image, borrowing the bytes it was read from.
///
/// Parsing checks the structure (header, both TLV areas, every TLV's bounds, the length
/// and placement of the TLVs Tern reads) but not the hash or signature: see
/// [`Image::verify`].
#[derive(Clone, Debug)]
pub struct Image<'a> {
    bytes: &'a [u8],
    layout: Layout,
    scan: Scan,
}

/// Parses `bytes` as an MCUboot image.
pub fn parse(bytes: &[u8]) -> Result<Image<'_>, Error> {
    let mut source = bytes;
    let layout = Layout::read(&mut source)?;
    let scan = scan(&mut source, &layout, None)?;
    Ok(Image { bytes, layout, scan })
}

impl<'a> Image<'a> {
    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.layout.header
    }

    /// Where the parts of the image lie.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The bytes the image was parsed from (including any slot padding after it).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The executable body (`ih_img_size` bytes after the header).
    pub fn body(&self) -> &'a [u8] {
        let start = usize::from(self.layout.header.header_size);
        &self.bytes[start..self.layout.tlv_offset as usize]
    }

    /// Every TLV of both areas, protected first, in file order.
    pub fn tlvs(&self) -> Tlvs<'a> {
        Tlvs { bytes: self.bytes, cursor: TlvCursor::new(&self.layout) }
    }

    /// The SHA-256 TLV, when present.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.scan.sha256
    }

    /// The SHA-256 of header, body and protected TLVs, recomputed.
    pub fn computed_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes[..self.layout.hashed_len() as usize]).into()
    }

    /// The security counter TLV, when present.
    pub fn security_counter(&self) -> Option<u32> {
        self.scan.security_counter
    }

    /// The Tern module TLV, when present.
    pub fn tern_module(&self) -> Option<TernModule> {
        self.scan.tern_module
    }

    /// The dependency TLVs in file order.
    pub fn dependencies(&self) -> impl Iterator<Item = &ImageDependency> {
        self.scan.dependencies.iter().flatten()
    }

    /// Checks the hash, and with a key the signature; see [`verify_source`].
    pub fn verify(&self, key: Option<&VerifyingKey>) -> Result<Verified, Error> {
        let mut source = self.bytes;
        verify_source(&mut source, key)
    }

    /// The format-independent description (see the module docs for the mapping).
    /// `integrity` reflects the SHA-256 only; signatures need a key.
    pub fn module_info(&self) -> ModuleInfo {
        let header = &self.layout.header;
        let module = self.scan.tern_module;
        let mut dependencies = [None; MAX_DEPENDENCIES];
        for (slot, dependency) in dependencies.iter_mut().zip(self.dependencies()) {
            *slot = Some(dependency.to_dependency());
        }
        let integrity = match self.scan.sha256 {
            None => Integrity::Unchecked,
            Some(_) if header.flags & (flags::ENCRYPTED_AES128 | flags::ENCRYPTED_AES256) != 0 => Integrity::Unchecked,
            Some(stored) if stored == self.computed_sha256() => Integrity::Valid,
            Some(_) => Integrity::Invalid,
        };
        ModuleInfo {
            format: Format::McuBoot,
            platform_id: module.map_or(0, |m| m.platform_id),
            function: module.map_or(ModuleFunction::MonoFirmware, |m| m.function),
            index: module.map_or(0, |m| m.index),
            version: header.version.packed(),
            flags: header.flags as u8,
            header_offset: 0,
            start_address: header.load_addr,
            end_address: header.load_addr.wrapping_add(self.layout.hashed_len()),
            dependencies,
            sha256: self.scan.sha256,
            size: u32::try_from(self.bytes.len()).unwrap_or(u32::MAX),
            product_id: None,
            product_version: None,
            crc_ok: None,
            integrity,
        }
    }
}

/// One TLV of a parsed [`Image`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The TLV type (see [`tlv`]).
    pub kind: u16,
    /// The value bytes.
    pub value: &'a [u8],
    /// Whether it lies in the protected (hashed and signed) area.
    pub protected: bool,
}

/// Iterator over the TLVs of a parsed [`Image`] (see [`Image::tlvs`]).
#[derive(Clone, Debug)]
pub struct Tlvs<'a> {
    bytes: &'a [u8],
    cursor: TlvCursor,
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        // The image was fully walked when parsed, so the walk cannot fail here.
        let mut source = self.bytes;
        let entry = self.cursor.next(&mut source).ok()??;
        let start = entry.offset as usize;
        let value = self.bytes.get(start..start + usize::from(entry.len))?;
        Some(Tlv { kind: entry.kind, value, protected: entry.protected })
    }
}
