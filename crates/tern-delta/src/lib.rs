//! Delta updates for ARM Thumb-2 firmware images.
//!
//! - [`make`] (std, the server side): the patch from an old image to a new one;
//!   [`compress`]: a full image compressed, as the patch from an empty old image.
//! - [`Applier`] (`no_std`, no allocation, no `unsafe`): applies a patch as it arrives, in
//!   chunks of any size, reading the old image through [`OldImage`] (flash) and writing
//!   the new one sequentially through [`NewImage`] (staging), in a fixed RAM budget
//!   ([`APPLIER_RAM`]). It checks the old image's length and SHA-256 before producing
//!   anything and the new image's SHA-256 at the end; [`Applier::progress`] is a compact
//!   marker from which [`Applier::resume`] restarts after a reset.
//!
//! The patch format is documented in `docs/delta.md`: a fixed header ([`Header`]) and a
//! range-coded payload holding an address map (where the old image's code and data moved)
//! and the new image as a walk over the old one in which branch targets and pointers into
//! the image are predicted through that map, and over the new image's own earlier bytes
//! (repeats, read back from staging through [`NewImage::read`]).
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

mod apply;
mod flash;
pub mod fuzzing;
#[cfg(feature = "std")]
mod infer;
#[cfg(feature = "std")]
mod make;
pub mod model;
pub mod rc;
pub mod thumb;

#[cfg(feature = "std")]
pub use apply::apply_all;
pub use apply::{Applier, ApplyError, Corruption, NewImage, Progress, Status, APPLIER_RAM};
pub use flash::{FlashImage, FlashReadError};
#[cfg(feature = "std")]
pub use infer::infer_load_address;
#[cfg(feature = "std")]
pub use make::{compress, make, Config};
pub use model::OldImage;

/// First bytes of every patch: "TDP" and the format generation.
pub const MAGIC: [u8; 4] = *b"TDP1";
/// The payload format version this crate writes and reads.
pub const VERSION: u8 = 2;
/// Header flag: long branches are predicted through the address map.
pub const FLAG_BRANCHES: u8 = 0x01;
/// Header flag: pointers into the image are predicted through the address map.
pub const FLAG_POINTERS: u8 = 0x02;
/// Header flag: pointers outside the image (RAM, other modules) are predicted through
/// the external map.
pub const FLAG_EXTERNAL: u8 = 0x04;
/// Header length in bytes.
pub const HEADER_LEN: usize = 88;

/// The patch header (fixed layout, little-endian, see `docs/delta.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`FLAG_BRANCHES`] | [`FLAG_POINTERS`] | [`FLAG_EXTERNAL`].
    pub flags: u8,
    /// Address of byte 0 of both images when they run.
    pub load_address: u32,
    /// Length of the image the patch applies to.
    pub old_len: u32,
    /// SHA-256 of the image the patch applies to.
    pub old_sha256: [u8; 32],
    /// Length of the image the patch produces.
    pub new_len: u32,
    /// SHA-256 of the image the patch produces.
    pub new_sha256: [u8; 32],
    /// Length of the range-coded payload that follows the header.
    pub payload_len: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl Header {
    /// Serializes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.flags;
        b[8..12].copy_from_slice(&self.load_address.to_le_bytes());
        b[12..16].copy_from_slice(&self.old_len.to_le_bytes());
        b[16..48].copy_from_slice(&self.old_sha256);
        b[48..52].copy_from_slice(&self.new_len.to_le_bytes());
        b[52..84].copy_from_slice(&self.new_sha256);
        b[84..88].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Parses a header (the first [`HEADER_LEN`] bytes of a patch).
    pub fn parse(b: &[u8]) -> Result<Header, ApplyError> {
        if b.len() < HEADER_LEN {
            return Err(ApplyError::Truncated);
        }
        if b[0..4] != MAGIC {
            return Err(ApplyError::Corrupt(Corruption::Magic));
        }
        if b[4] != VERSION {
            return Err(ApplyError::Corrupt(Corruption::Version));
        }
        if b[5] & !(FLAG_BRANCHES | FLAG_POINTERS | FLAG_EXTERNAL) != 0 || b[6] != 0 || b[7] != 0 {
            return Err(ApplyError::Corrupt(Corruption::Flags));
        }
        let mut old_sha256 = [0u8; 32];
        old_sha256.copy_from_slice(&b[16..48]);
        let mut new_sha256 = [0u8; 32];
        new_sha256.copy_from_slice(&b[52..84]);
        let h = Header {
            flags: b[5],
            load_address: le32(b, 8),
            old_len: le32(b, 12),
            old_sha256,
            new_len: le32(b, 48),
            new_sha256,
            payload_len: le32(b, 84),
        };
        // Both images must fit the 32-bit address space at their load address.
        if u64::from(h.load_address) + u64::from(h.old_len) > 1 << 32
            || u64::from(h.load_address) + u64::from(h.new_len) > 1 << 32
        {
            return Err(ApplyError::Corrupt(Corruption::Lengths));
        }
        Ok(h)
    }

    /// Total patch length: header and payload.
    pub fn patch_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    pub(crate) fn params(&self) -> model::Params {
        model::Params {
            load: self.load_address,
            old_len: self.old_len,
            new_len: self.new_len,
            branches: self.flags & FLAG_BRANCHES != 0,
            pointers: self.flags & FLAG_POINTERS != 0,
            external: self.flags & FLAG_EXTERNAL != 0,
        }
    }
}
