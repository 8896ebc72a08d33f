//! Platform profiles: flash devices, their geometry, and where every slot and area lives.
//!
//! A profile is `const` data. Two are provided, modelled on Particle's real hardware so
//! that Device OS binaries install at the addresses they were linked for:
//!
//! - [`STM32F2`]: the Photon (platform 6, STM32F205, 1 MiB internal flash with uneven
//!   sectors 4×16 KiB, 1×64 KiB, 7×128 KiB).
//! - [`NRF52840`]: the Argon (platform 12, nRF52840, 1 MiB internal flash in 4 KiB pages,
//!   plus 4 MiB of external SPI NOR in 4 KiB sectors).
//!
//! The tables of both layouts are in `docs/device.md`.

use tern_image::model::ModuleFunction;

/// `count` consecutive sectors of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRun {
    /// How many sectors.
    pub count: u32,
    /// Size of each, in bytes.
    pub size: u32,
}

/// One flash device: its sectors (uneven sizes allowed), write size and CPU address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashGeometry {
    /// A short name for reports ("internal", "external").
    pub name: &'static str,
    /// The CPU address of offset 0 (0 for a device that is not memory-mapped).
    pub base_address: u32,
    /// Sectors from offset 0 upwards.
    pub sectors: &'static [SectorRun],
    /// Programming granularity in bytes (a power of two, at most 16).
    pub write_size: u32,
}

impl FlashGeometry {
    /// Total size in bytes.
    pub const fn size(&self) -> u32 {
        let mut total = 0;
        let mut i = 0;
        while i < self.sectors.len() {
            total += self.sectors[i].count * self.sectors[i].size;
            i += 1;
        }
        total
    }

    /// The sector containing `offset`: its start and size.
    pub fn sector_at(&self, offset: u32) -> Option<(u32, u32)> {
        let mut start = 0u32;
        for run in self.sectors {
            let run_len = run.count * run.size;
            if offset < start + run_len {
                let k = (offset - start) / run.size;
                return Some((start + k * run.size, run.size));
            }
            start += run_len;
        }
        None
    }

    /// The smallest sector-aligned range `[from, to)` covering `len` bytes from `offset`.
    pub fn covering(&self, offset: u32, len: u32) -> Option<(u32, u32)> {
        let last = offset.checked_add(len.max(1))? - 1;
        let (from, _) = self.sector_at(offset)?;
        let (last_start, last_size) = self.sector_at(last)?;
        Some((from, last_start + last_size))
    }

    /// Whether `offset` is a sector boundary (or the end of the device).
    pub fn is_boundary(&self, offset: u32) -> bool {
        offset == self.size() || self.sector_at(offset).is_some_and(|(start, _)| start == offset)
    }
}

/// A byte range on one flash device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Flash device number (index into [`Profile::devices`]).
    pub dev: u8,
    /// Offset of the first byte within the device.
    pub offset: u32,
    /// Length in bytes.
    pub size: u32,
}

impl Region {
    /// The end offset (one past the last byte).
    pub const fn end(&self) -> u32 {
        self.offset + self.size
    }
}

/// Where a module of one function and index is installed and executed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// A short name for reports.
    pub name: &'static str,
    /// The module function the slot holds.
    pub function: ModuleFunction,
    /// The module index the slot holds.
    pub index: u8,
    /// The flash range; modules are placed at its start.
    pub region: Region,
}

/// Limits of the boot manager's test-boot and fault accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPolicy {
    /// An application in test state is rolled back after this many boots without a
    /// confirmation.
    pub max_test_boots: u8,
    /// A confirmed application is rolled back after this many consecutive panic or
    /// watchdog resets.
    pub max_fault_resets: u8,
    /// Watchdog timeout armed for a test boot: an application that neither confirms nor
    /// feeds it is reset.
    pub test_watchdog_ms: u32,
}

/// A platform's flash map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Profile name ("stm32f2", "nrf52840").
    pub name: &'static str,
    /// The platform id updates must target.
    pub platform_id: u16,
    /// Flash devices, numbered by position.
    pub devices: &'static [FlashGeometry],
    /// Module slots.
    pub slots: &'static [Slot],
    /// The two banks of the device state record (each whole sectors).
    pub state_banks: [Region; 2],
    /// Block-progress markers of a transfer.
    pub progress: Region,
    /// The exchange area: staged modules of an update first, then rollback copies.
    pub exchange: Region,
    /// The factory application image.
    pub factory: Region,
    /// Whether an immutable first stage runs before the bootloader and can finish an
    /// interrupted bootloader copy (Nordic's MBR on the nRF52840). Without one, the
    /// bootloader copy is the residual risk window described in `docs/device.md`.
    pub immutable_first_stage: bool,
    /// Test-boot and fault limits.
    pub boot: BootPolicy,
}

/// The most slots a profile may have (the state record has room for this many).
pub const MAX_SLOTS: usize = 6;

impl Profile {
    /// The geometry of device `dev`.
    pub fn device(&self, dev: u8) -> Option<&FlashGeometry> {
        self.devices.get(dev as usize)
    }

    /// The slot that holds modules of this function and index.
    pub fn slot_for(&self, function: ModuleFunction, index: u8) -> Option<usize> {
        self.slots.iter().position(|s| s.function == function && s.index == index)
    }

    /// The application slot (function user part, index 1).
    pub fn app_slot(&self) -> Option<usize> {
        self.slot_for(ModuleFunction::UserPart, 1)
    }

    /// The CPU address of a slot's first byte.
    pub fn slot_address(&self, slot: usize) -> Option<u32> {
        let s = self.slots.get(slot)?;
        Some(self.device(s.region.dev)?.base_address + s.region.offset)
    }

    /// Checks the profile's own consistency: regions inside their devices, starting and
    /// ending on sector boundaries, not overlapping, at most [`MAX_SLOTS`] slots.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.slots.len() > MAX_SLOTS {
            return Err("too many slots");
        }
        let mut regions = [Region { dev: 0, offset: 0, size: 0 }; MAX_SLOTS + 5];
        regions[0] = self.state_banks[0];
        regions[1] = self.state_banks[1];
        regions[2] = self.progress;
        regions[3] = self.exchange;
        regions[4] = self.factory;
        for (i, slot) in self.slots.iter().enumerate() {
            regions[5 + i] = slot.region;
        }
        let regions = &regions[..5 + self.slots.len()];
        for dev in self.devices {
            // The stack buffers in `storage` pad tails to at most 16 bytes and stream in
            // 512-byte chunks.
            if !dev.write_size.is_power_of_two() || dev.write_size > 16 {
                return Err("write size must be a power of two of at most 16 bytes");
            }
        }
        for (i, r) in regions.iter().enumerate() {
            let dev = self.device(r.dev).ok_or("region on a missing device")?;
            if r.size == 0 || r.end() > dev.size() {
                return Err("region outside its device");
            }
            if !dev.is_boundary(r.offset) || !dev.is_boundary(r.end()) {
                return Err("region not on sector boundaries");
            }
            for other in &regions[i + 1..] {
                if other.dev == r.dev && other.offset < r.end() && r.offset < other.end() {
                    return Err("regions overlap");
                }
            }
        }
        Ok(())
    }
}

const fn region(dev: u8, offset: u32, size: u32) -> Region {
    Region { dev, offset, size }
}

const KIB: u32 = 1024;

/// STM32F2-class profile after Particle's Photon memory map (platform 6).
///
/// Particle's DCT and EEPROM-emulation sectors (1–4) hold Tern's state and factory image;
/// the 256 KiB at the top is the exchange area, large enough to stage either system part.
pub const STM32F2: Profile = Profile {
    name: "stm32f2",
    platform_id: 6,
    devices: &[FlashGeometry {
        name: "internal",
        base_address: 0x0800_0000,
        sectors: &[
            SectorRun { count: 4, size: 16 * KIB },
            SectorRun { count: 1, size: 64 * KIB },
            SectorRun { count: 7, size: 128 * KIB },
        ],
        write_size: 4,
    }],
    slots: &[
        Slot { name: "bootloader", function: ModuleFunction::Bootloader, index: 0, region: region(0, 0, 16 * KIB) },
        Slot {
            name: "system-part1",
            function: ModuleFunction::SystemPart,
            index: 1,
            region: region(0, 0x2_0000, 256 * KIB),
        },
        Slot {
            name: "system-part2",
            function: ModuleFunction::SystemPart,
            index: 2,
            region: region(0, 0x6_0000, 256 * KIB),
        },
        Slot {
            name: "application",
            function: ModuleFunction::UserPart,
            index: 1,
            region: region(0, 0xA_0000, 128 * KIB),
        },
    ],
    state_banks: [region(0, 0x4000, 16 * KIB), region(0, 0x8000, 16 * KIB)],
    progress: region(0, 0xC000, 16 * KIB),
    exchange: region(0, 0xC_0000, 256 * KIB),
    factory: region(0, 0x1_0000, 64 * KIB),
    immutable_first_stage: false,
    boot: BootPolicy { max_test_boots: 3, max_fault_resets: 5, test_watchdog_ms: 60_000 },
};

/// nRF52840-class profile after Particle's Argon memory map (platform 12).
///
/// Internal flash holds Nordic's MBR (not managed), the SoftDevice radio stack, system
/// part 1, the application and the bootloader at their Device OS addresses; the external
/// SPI NOR holds Tern's state, the exchange area, the factory image and the asset slot.
pub const NRF52840: Profile = Profile {
    name: "nrf52840",
    platform_id: 12,
    devices: &[
        FlashGeometry {
            name: "internal",
            base_address: 0,
            sectors: &[SectorRun { count: 256, size: 4 * KIB }],
            write_size: 4,
        },
        FlashGeometry {
            name: "external",
            base_address: 0x1200_0000,
            sectors: &[SectorRun { count: 1024, size: 4 * KIB }],
            write_size: 1,
        },
    ],
    slots: &[
        Slot {
            name: "radio-stack",
            function: ModuleFunction::RadioStack,
            index: 0,
            region: region(0, 0x1000, 0x2F000),
        },
        Slot {
            name: "system-part1",
            function: ModuleFunction::SystemPart,
            index: 1,
            region: region(0, 0x3_0000, 0xA_4000),
        },
        Slot {
            name: "application",
            function: ModuleFunction::UserPart,
            index: 1,
            region: region(0, 0xD_4000, 128 * KIB),
        },
        Slot {
            name: "bootloader",
            function: ModuleFunction::Bootloader,
            index: 0,
            region: region(0, 0xF_4000, 48 * KIB),
        },
        Slot { name: "assets", function: ModuleFunction::Asset, index: 0, region: region(1, 0x30_0000, 1024 * KIB) },
    ],
    state_banks: [region(1, 0, 4 * KIB), region(1, 0x1000, 4 * KIB)],
    progress: region(1, 0x2000, 16 * KIB),
    exchange: region(1, 0x1_0000, 2048 * KIB),
    factory: region(1, 0x21_0000, 256 * KIB),
    immutable_first_stage: true,
    boot: BootPolicy { max_test_boots: 3, max_fault_resets: 5, test_watchdog_ms: 60_000 },
};

/// Every profile, for lookup by name.
pub const PROFILES: &[&Profile] = &[&STM32F2, &NRF52840];

/// Finds a profile by name.
pub fn by_name(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().copied().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(offset: u32, len: u32, expected: Option<(u32, u32)>) {
        assert_eq!(STM32F2.devices[0].covering(offset, len), expected, "{offset:#x}+{len:#x}");
    }

    #[test]
    fn covering_uneven_sectors() {
        check(0, 1, Some((0, 0x4000)));
        check(0x3FFF, 2, Some((0, 0x8000)));
        check(0x1_0000, 0x1_0000, Some((0x1_0000, 0x2_0000)));
        check(0x1_FFFF, 2, Some((0x1_0000, 0x4_0000)));
        check(0xF_FFFF, 1, Some((0xE_0000, 0x10_0000)));
        check(0xF_FFFF, 2, None);
        check(u32::MAX, 2, None);
        assert_eq!(STM32F2.devices[0].size(), 1024 * 1024);
        assert_eq!(NRF52840.devices[1].size(), 4 * 1024 * 1024);
    }

    #[test]
    fn profiles_check() {
        for p in PROFILES {
            assert_eq!(p.check(), Ok(()), "{}", p.name);
        }
        assert_eq!(by_name("nrf52840").map(|p| p.platform_id), Some(12));
        assert_eq!(by_name("esp32"), None);
    }
}
