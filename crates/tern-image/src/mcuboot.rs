//! MCUboot images.
//!
//! (Being written: see issue 2. The public surface below is the contract other modules use.)

use crate::model::ModuleInfo;

/// `IMAGE_MAGIC`, the first word of every MCUboot image header (little-endian).
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;

/// Why bytes could not be read as an MCUboot image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The header magic is not [`IMAGE_MAGIC`].
    BadMagic,
}

/// A parsed MCUboot image, borrowing the bytes it was read from.
#[derive(Clone, Debug)]
pub struct Image<'a> {
    bytes: &'a [u8],
}

impl Image<'_> {
    /// The format-independent description.
    pub fn module_info(&self) -> ModuleInfo {
        let _ = self.bytes;
        unimplemented_info()
    }
}

fn unimplemented_info() -> ModuleInfo {
    ModuleInfo {
        format: crate::Format::McuBoot,
        platform_id: 0,
        function: crate::ModuleFunction::None,
        index: 0,
        version: 0,
        flags: 0,
        header_offset: 0,
        start_address: 0,
        end_address: 0,
        dependencies: [None; crate::MAX_DEPENDENCIES],
        sha256: None,
        size: 0,
        product_id: None,
        product_version: None,
        crc_ok: None,
        integrity: crate::Integrity::Unchecked,
    }
}

/// Parses `bytes` as an MCUboot image.
pub fn parse(bytes: &[u8]) -> Result<Image<'_>, Error> {
    let _ = bytes;
    Err(Error::BadMagic)
}
