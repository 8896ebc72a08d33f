//! Writing and signing MCUboot images, byte-for-byte as imgtool 2.5.0 lays them out.
//!
//! Given the same input, options and key, [`sign`] produces the same bytes as
//! `imgtool sign` (ED25519 signatures are deterministic), which the interop tests check.
//! The order of TLVs follows imgtool: protected area — security counter, dependencies,
//! Tern module (a custom TLV, which imgtool places last); unprotected area — SHA-256, key
//! hash or public key, ED25519 signature.

use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::{
    flags, key_hash, public_key_der, tlv, Header, ImageDependency, TernModule, Version, HEADER_SIZE, TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
};

/// How the signer's public key is named in the image (imgtool `--public-key-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyFormat {
    /// A KEYHASH TLV: SHA-256 of the DER public key (imgtool's default).
    #[default]
    Hash,
    /// A PUBKEY TLV holding the DER public key.
    Full,
}

/// The flash slot the image is built for: size check, and optional padding with the
/// swap trailer (imgtool `--slot-size`, `--pad`, `--confirm`, `--align`, `--max-sectors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotConfig {
    /// Size of the slot; the image plus the swap trailer must fit.
    pub slot_size: u32,
    /// Pad the output to `slot_size`, ending with the trailer magic.
    pub pad: bool,
    /// When padding, mark the image confirmed (`image_ok` = 1).
    pub confirm: bool,
    /// Flash write alignment: 1, 2, 4, 8, 16 or 32.
    pub align: u8,
    /// Sectors the swap status area allows for (imgtool's default is 128).
    pub max_sectors: u32,
}

impl Default for SlotConfig {
    fn default() -> Self {
        SlotConfig { slot_size: 0, pad: false, confirm: false, align: 1, max_sectors: 128 }
    }
}

/// What to put into a signed image besides the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignConfig {
    /// `ih_hdr_size`: at least 32.
    pub header_size: u16,
    /// Insert `header_size` bytes of `erased_val` before the input. Without it the input
    /// must already start with `header_size` zero bytes, which the header overwrites.
    pub pad_header: bool,
    /// The image version.
    pub version: Version,
    /// `ih_load_addr`; a non-zero address also sets [`flags::RAM_LOAD`], as imgtool does.
    pub load_addr: u32,
    /// Set [`flags::NON_BOOTABLE`].
    pub non_bootable: bool,
    /// A security counter TLV.
    pub security_counter: Option<u32>,
    /// Dependency TLVs.
    pub dependencies: Vec<ImageDependency>,
    /// A Tern module TLV.
    pub tern_module: Option<TernModule>,
    /// How the key is named.
    pub key_format: KeyFormat,
    /// The slot to check against and pad to.
    pub slot: Option<SlotConfig>,
    /// The value erased flash reads as (0xff or 0): used for header and slot padding.
    pub erased_val: u8,
}

impl Default for SignConfig {
    fn default() -> Self {
        SignConfig {
            header_size: HEADER_SIZE as u16,
            pad_header: false,
            version: Version::default(),
            load_addr: 0,
            non_bootable: false,
            security_counter: None,
            dependencies: Vec::new(),
            tern_module: None,
            key_format: KeyFormat::Hash,
            slot: None,
            erased_val: 0xff,
        }
    }
}

/// Why an image could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignError {
    /// `header_size` is below 32.
    HeaderTooSmall,
    /// Without `pad_header`, the input is shorter than the header or does not start with
    /// `header_size` zero bytes.
    HeaderAreaNotEmpty,
    /// The body is 4 GiB or more.
    TooLarge,
    /// The protected TLVs exceed the 64 KiB a u16 size can describe.
    TooManyTlvs,
    /// The slot alignment is not 1, 2, 4, 8, 16 or 32.
    BadAlign(u8),
    /// The image plus the swap trailer does not fit the slot.
    DoesNotFit {
        /// Bytes needed (image and trailer).
        needed: u64,
        /// The slot size.
        slot_size: u32,
    },
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignError::HeaderTooSmall => f.write_str("header size must be at least 32"),
            SignError::HeaderAreaNotEmpty => {
                f.write_str("input does not start with header-size zero bytes (use --pad-header)")
            }
            SignError::TooLarge => f.write_str("image too large"),
            SignError::TooManyTlvs => f.write_str("protected TLVs exceed 64 KiB"),
            SignError::BadAlign(align) => write!(f, "alignment {align} is not one of 1, 2, 4, 8, 16, 32"),
            SignError::DoesNotFit { needed, slot_size } => {
                write!(f, "image and trailer need {needed:#x} bytes, more than the slot size {slot_size:#x}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SignError {}

/// Appends TLVs to an area, then frames it with its info record.
struct TlvArea {
    magic: u16,
    records: Vec<u8>,
}

impl TlvArea {
    fn new(magic: u16) -> Self {
        TlvArea { magic, records: Vec::new() }
    }

    fn add(&mut self, kind: u16, value: &[u8]) {
        self.records.extend_from_slice(&kind.to_le_bytes());
        // Every value written here is at most 64 bytes.
        self.records.extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.records.extend_from_slice(value);
    }

    /// The framed area; imgtool omits an area with no TLVs altogether.
    fn finish(self) -> Result<Vec<u8>, SignError> {
        if self.records.is_empty() {
            return Ok(Vec::new());
        }
        let total = u16::try_from(self.records.len() + 4).map_err(|_| SignError::TooManyTlvs)?;
        let mut out = Vec::with_capacity(usize::from(total));
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(&self.records);
        Ok(out)
    }
}

/// The 16-byte trailer magic MCUboot looks for at the end of a slot.
fn boot_magic(max_align: u32) -> [u8; 16] {
    if max_align == 8 {
        [0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80]
    } else {
        // Larger write sizes record the alignment in the first two bytes of the magic.
        let mut magic =
            [0x00, 0x00, 0x2d, 0xe1, 0x5d, 0x29, 0x41, 0x0b, 0x8d, 0x77, 0x67, 0x9c, 0x11, 0x0f, 0x1f, 0x8a];
        magic[..2].copy_from_slice(&(max_align as u16).to_le_bytes());
        magic
    }
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// The swap trailer's geometry: its size, and where `image_ok` sits from the slot end.
struct Trailer {
    size: u64,
    max_align: u64,
    image_ok_from_end: u64,
}

impl Trailer {
    fn new(slot: &SlotConfig) -> Result<Trailer, SignError> {
        if !matches!(slot.align, 1 | 2 | 4 | 8 | 16 | 32) {
            return Err(SignError::BadAlign(slot.align));
        }
        let align = u64::from(slot.align);
        let max_align = align.max(8);
        let magic_size = align_up(16, max_align);
        // Swap status (three entries per sector), then image_ok, copy_done, swap_info and
        // swap_size, each in its own write unit, then the magic (MCUboot docs/design.md,
        // "Image Trailer").
        let size = u64::from(slot.max_sectors) * 3 * align + max_align * 4 + magic_size;
        Ok(Trailer { size, max_align, image_ok_from_end: magic_size + max_align })
    }
}

/// Builds an image from `input` and signs it with `key` (with no key: hash only).
pub fn sign(config: &SignConfig, input: &[u8], key: Option<&SigningKey>) -> Result<Vec<u8>, SignError> {
    let header_size = usize::from(config.header_size);
    if header_size < HEADER_SIZE {
        return Err(SignError::HeaderTooSmall);
    }
    let mut image = Vec::with_capacity(input.len() + header_size + 256);
    if config.pad_header {
        image.resize(header_size, config.erased_val);
        image.extend_from_slice(input);
    } else {
        if input.len() < header_size || input[..header_size].iter().any(|&b| b != 0) {
            return Err(SignError::HeaderAreaNotEmpty);
        }
        image.extend_from_slice(input);
    }

    let mut protected = TlvArea::new(TLV_PROT_INFO_MAGIC);
    if let Some(counter) = config.security_counter {
        protected.add(tlv::SEC_CNT, &counter.to_le_bytes());
    }
    for dependency in &config.dependencies {
        protected.add(tlv::DEPENDENCY, &dependency.to_bytes());
    }
    if let Some(module) = &config.tern_module {
        protected.add(tlv::TERN_MODULE, &module.to_bytes());
    }
    let protected = protected.finish()?;

    let mut header_flags = 0;
    if config.load_addr != 0 {
        header_flags |= flags::RAM_LOAD;
    }
    if config.non_bootable {
        header_flags |= flags::NON_BOOTABLE;
    }
    let header = Header {
        load_addr: config.load_addr,
        header_size: config.header_size,
        protected_tlv_size: u16::try_from(protected.len()).map_err(|_| SignError::TooManyTlvs)?,
        image_size: u32::try_from(image.len() - header_size).map_err(|_| SignError::TooLarge)?,
        flags: header_flags,
        version: config.version,
    };
    image[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
    image.extend_from_slice(&protected);

    let digest: [u8; 32] = Sha256::digest(&image).into();
    let mut unprotected = TlvArea::new(TLV_INFO_MAGIC);
    unprotected.add(tlv::SHA256, &digest);
    if let Some(key) = key {
        let public = key.verifying_key();
        match config.key_format {
            KeyFormat::Hash => unprotected.add(tlv::KEYHASH, &key_hash(&public)),
            KeyFormat::Full => unprotected.add(tlv::PUBKEY, &public_key_der(&public)),
        }
        // imgtool 2.5.0 signs the digest for ED25519 keys (its non-pure mode).
        unprotected.add(tlv::ED25519, &key.sign(&digest).to_bytes());
    }
    image.extend_from_slice(&unprotected.finish()?);

    if let Some(slot) = &config.slot {
        let trailer = Trailer::new(slot)?;
        let needed = image.len() as u64 + trailer.size;
        if needed > u64::from(slot.slot_size) {
            return Err(SignError::DoesNotFit { needed, slot_size: slot.slot_size });
        }
        if slot.pad || slot.confirm {
            let slot_size = slot.slot_size as usize;
            let magic = boot_magic(trailer.max_align as u32);
            image.resize(slot_size - magic.len(), config.erased_val);
            image.extend_from_slice(&magic);
            if slot.confirm {
                image[slot_size - trailer.image_ok_from_end as usize] = 0x01;
            }
        }
    }
    Ok(image)
}
