//! The `module_info` prefix and how Particle's reader finds it.

use super::read::{u16_le, u32_le, u8_at};

/// Size of the fixed part of the prefix (`module_info_t` in Device OS).
pub const PREFIX_SIZE: usize = 24;

/// The offsets Particle's reader tries first, in this order (binary-version-reader 3.1.3,
/// `HalModuleParser._findModulePrefixOffset`): the start of the file, then just past the
/// interrupt vector table of nRF52840 (Gen 3, 0x200), STM32F2xx (Gen 2, 0x184), Bluz (0xC0)
/// and STM32F1 (Core, 0x10C).
pub const PREFERRED_OFFSETS: [usize; 5] = [0, 0x200, 0x184, 0xC0, 0x10C];

/// The scan after the preferred offsets stops at this offset: a prefix further into the
/// file is not considered.
pub const MAX_SCANNED_OFFSET: usize = 8 * 1024;

/// The highest confidence score; a prefix scoring this is accepted without looking further.
pub const FULL_CONFIDENCE: u8 = 7;

/// Platform ids Particle's reader counts as known: every platform of
/// `@particle/device-constants` 4.2.1 (the version binary-version-reader 3.1.3 resolves to)
/// whose `generation` is above 0. Platform 0 (the Spark Core) is among them.
pub const KNOWN_PLATFORMS: [u16; 18] = [0, 6, 8, 10, 12, 13, 14, 15, 22, 23, 24, 25, 26, 28, 32, 35, 37, 38];

/// The highest module function code Particle's reader knows (9, asset).
const MAX_KNOWN_FUNCTION: u8 = 9;

/// The `flags` byte of the prefix (`module_info_flags_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// 0x01: the bootloader drops the prefix and suffix when it installs the module (radio
    /// stacks, assets).
    pub const DROP_MODULE_INFO: u8 = 0x01;
    /// 0x02: the module's contents are raw-Deflate compressed behind a
    /// [`CompressionHeader`](super::CompressionHeader).
    pub const COMPRESSED: u8 = 0x02;
    /// 0x04: another complete module follows this one in the same file.
    pub const COMBINED: u8 = 0x04;
    /// 0x08: the contents are encrypted.
    pub const ENCRYPTED: u8 = 0x08;
    /// 0x10: extensions follow the fixed 24-byte prefix, up to an END extension.
    pub const PREFIX_EXTENSIONS: u8 = 0x10;
    /// Every flag bit Particle defines.
    pub const KNOWN: u8 = 0x1f;

    /// Whether every bit of `flag` is set.
    pub const fn contains(self, flag: u8) -> bool {
        self.0 & flag == flag
    }

    /// Whether the module is compressed.
    pub const fn compressed(self) -> bool {
        self.contains(Self::COMPRESSED)
    }

    /// Whether another module follows this one in the same file.
    pub const fn combined(self) -> bool {
        self.contains(Self::COMBINED)
    }

    /// Whether the bootloader drops the prefix and suffix on install.
    pub const fn drop_module_info(self) -> bool {
        self.contains(Self::DROP_MODULE_INFO)
    }

    /// Whether extensions follow the fixed prefix.
    pub const fn prefix_extensions(self) -> bool {
        self.contains(Self::PREFIX_EXTENSIONS)
    }

    /// Whether bits outside [`Flags::KNOWN`] are set.
    pub const fn has_unknown_bits(self) -> bool {
        self.0 & !Self::KNOWN != 0
    }
}

/// A dependency slot of the prefix, exactly as stored (an empty slot has function 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DependencySlot {
    /// Function code of the required module (0: the slot is empty).
    pub function: u8,
    /// Index of the required module.
    pub index: u8,
    /// Minimum version of the required module.
    pub version: u16,
}

/// The fixed 24-byte `module_info` prefix, all fields little-endian.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | start address of the module |
/// | 4 | 4 | end address: the address of the CRC-32, one past the suffix |
/// | 8 | 1 | reserved (MCU target on Gen 3) |
/// | 9 | 1 | flags ([`Flags`]) |
/// | 10 | 2 | module version |
/// | 12 | 2 | platform id |
/// | 14 | 1 | module function |
/// | 15 | 1 | module index |
/// | 16 | 1 | dependency 1: function |
/// | 17 | 1 | dependency 1: index |
/// | 18 | 2 | dependency 1: minimum version |
/// | 20 | 1 | dependency 2: function |
/// | 21 | 1 | dependency 2: index |
/// | 22 | 2 | dependency 2: minimum version |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Load address of the first byte of the module.
    pub start_address: u32,
    /// Address of the CRC-32 (the module's size is `end - start + 4`).
    pub end_address: u32,
    /// The reserved byte, the MCU target on Gen 3 platforms.
    pub mcu_target: u8,
    /// Module flags.
    pub flags: Flags,
    /// Module version.
    pub version: u16,
    /// Platform id.
    pub platform_id: u16,
    /// Module function code.
    pub function: u8,
    /// Module index.
    pub index: u8,
    /// The two dependency slots.
    pub dependencies: [DependencySlot; 2],
}

impl Prefix {
    /// Reads the 24 bytes at `offset`, or `None` when they are not all there.
    pub fn read(bytes: &[u8], offset: usize) -> Option<Prefix> {
        let field = |at: usize| offset.checked_add(at);
        let slot = |at: usize| -> Option<DependencySlot> {
            Some(DependencySlot {
                function: u8_at(bytes, field(at)?)?,
                index: u8_at(bytes, field(at + 1)?)?,
                version: u16_le(bytes, field(at + 2)?)?,
            })
        };
        // Reading the last byte first makes a short buffer fail before any other work.
        u8_at(bytes, field(PREFIX_SIZE - 1)?)?;
        Some(Prefix {
            start_address: u32_le(bytes, field(0)?)?,
            end_address: u32_le(bytes, field(4)?)?,
            mcu_target: u8_at(bytes, field(8)?)?,
            flags: Flags(u8_at(bytes, field(9)?)?),
            version: u16_le(bytes, field(10)?)?,
            platform_id: u16_le(bytes, field(12)?)?,
            function: u8_at(bytes, field(14)?)?,
            index: u8_at(bytes, field(15)?)?,
            dependencies: [slot(16)?, slot(20)?],
        })
    }

    /// The module's length according to the prefix: `end - start` plus the CRC-32, or `None`
    /// when the end is not above the start.
    pub fn module_len(&self) -> Option<u64> {
        (self.end_address > self.start_address).then(|| u64::from(self.end_address - self.start_address) + 4)
    }
}

/// How confident Particle's reader is that `bytes` hold a prefix at `offset`, 0 to
/// [`FULL_CONFIDENCE`] (`HalModuleParser._validateModulePrefix`).
///
/// Score 0 (not a prefix) when the 24 bytes are not there, the end address is not above the
/// start address, the file is shorter than the module the prefix describes, the function is
/// 0, or an empty dependency slot has a non-zero index or version. Otherwise 1, plus one
/// each for: a known platform, a known function (1–9), a known function in each dependency
/// slot (0–9), a file exactly as long as the module, no unknown flag bits.
pub fn confidence(bytes: &[u8], offset: usize) -> u8 {
    // Most offsets of a scan fail on the addresses alone; check those before decoding all
    // 24 bytes (the answer is the same, only cheaper).
    let (Some(start), Some(end)) = (u32_le(bytes, offset), offset.checked_add(4).and_then(|at| u32_le(bytes, at)))
    else {
        return 0;
    };
    if end <= start || (bytes.len() as u64) < u64::from(end - start) + 4 {
        return 0;
    }
    let Some(prefix) = Prefix::read(bytes, offset) else { return 0 };
    let Some(module_len) = prefix.module_len() else { return 0 };
    let file_len = bytes.len() as u64;
    if file_len < module_len || prefix.function == 0 {
        return 0;
    }
    if prefix.dependencies.iter().any(|d| d.function == 0 && (d.index != 0 || d.version != 0)) {
        return 0;
    }
    let points = [
        KNOWN_PLATFORMS.contains(&prefix.platform_id),
        prefix.function <= MAX_KNOWN_FUNCTION,
        prefix.dependencies[0].function <= MAX_KNOWN_FUNCTION,
        prefix.dependencies[1].function <= MAX_KNOWN_FUNCTION,
        file_len == module_len,
        !prefix.flags.has_unknown_bits(),
    ];
    1 + points.iter().filter(|&&p| p).count() as u8
}

/// Where Particle's reader takes the prefix to be, and its confidence there.
///
/// The preferred offsets are tried in order, then every 4-byte-aligned offset from 4 up to
/// [`MAX_SCANNED_OFFSET`] (and no closer than 64 bytes to the end of the file). The first
/// offset with full confidence wins; otherwise the first offset with the highest score. A
/// score of 0 means no plausible prefix anywhere (the offset is then 0).
pub fn locate(bytes: &[u8]) -> (usize, u8) {
    let mut best = (0, 0);
    let mut consider = |offset: usize| -> bool {
        let score = confidence(bytes, offset);
        if score >= FULL_CONFIDENCE {
            best = (offset, score);
            return true;
        }
        if score > best.1 {
            best = (offset, score);
        }
        false
    };
    for offset in PREFERRED_OFFSETS {
        if consider(offset) {
            return best;
        }
    }
    // The scan leaves room after the prefix for the smallest suffix (36 bytes) and the CRC.
    let last = MAX_SCANNED_OFFSET.min(bytes.len().saturating_sub(PREFIX_SIZE + super::MIN_SUFFIX_SIZE + 4));
    for offset in (4..=last).step_by(4) {
        if !PREFERRED_OFFSETS.contains(&offset) && consider(offset) {
            return best;
        }
    }
    best
}
