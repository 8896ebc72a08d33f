//! Platform profiles: flash devices, their geometry, and where every slot and area lives.
//!
//! A profile is `const` data. One is provided per Particle platform, each after Particle's
//! public Device OS memory maps, so that Device OS binaries install at the addresses they
//! were linked for (sources, in `github.com/particle-iot/device-os`, are cited on each):
//!
//! | profile | platform | MCU | flash |
//! |---|---|---|---|
//! | [`PHOTON`] (alias `stm32f2`) | 6 | STM32F205 | 1 MiB internal (4×16, 1×64, 7×128 KiB sectors) |
//! | [`P1`] | 8 | STM32F205 | the Photon's internal flash + 1 MiB SPI NOR |
//! | [`ELECTRON`] (also E-Series) | 10 | STM32F205 | 1 MiB internal, three system parts |
//! | [`ARGON`] (alias `nrf52840`) | 12 | nRF52840 | 1 MiB internal, 4 MiB SPI NOR, ESP32 NCP |
//! | [`BORON`] | 13 | nRF52840 | 1 MiB internal, 4 MiB SPI NOR |
//! | [`ESOMX`] | 15 | nRF52840 | as the Boron, Device OS ≥ 4 layout (256 KiB application) |
//! | [`BSOM`] | 23 | nRF52840 | 1 MiB internal, 4 MiB SPI NOR |
//! | [`TRACKER`] | 26 | nRF52840 | 1 MiB internal, 8 MiB SPI NOR, ESP32 NCP |
//!
//! Look a profile up with [`by_name`] (names and aliases) or [`by_platform`]. The tables
//! of every layout, and why Tern's own areas sit where they do, are in `docs/device.md`.

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
    /// Profile name: Particle's platform name ("photon", "argon", …).
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
    /// Whether the port copies the bootloader through an immutable first stage that
    /// finishes an interrupted copy by itself (Nordic's MBR on the nRF52840 can, given its
    /// parameter page and a copy source in internal flash). No profile has one today:
    /// Tern copies the bootloader itself, so on every profile the bootloader copy is the
    /// residual risk window described in `docs/device.md`.
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

    /// The application slot (the profile's one user-part slot: index 1, or index 2 where
    /// Device OS links applications as the larger user part 2).
    pub fn app_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.function == ModuleFunction::UserPart)
    }

    /// The module index applications are linked with on this platform (1 when the profile
    /// has no application slot).
    pub fn app_index(&self) -> u8 {
        self.app_slot().map_or(1, |s| self.slots[s].index)
    }

    /// The largest update one offer can stage: the size of the exchange area. Updates
    /// larger than this are installed in stages, one offer each.
    pub fn staging_capacity(&self) -> u32 {
        self.exchange.size
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
const MIB: u32 = 1024 * KIB;

const BOOT_POLICY: BootPolicy = BootPolicy { max_test_boots: 3, max_fault_resets: 5, test_watchdog_ms: 60_000 };

// ---------------------------------------------------------------------------------------
// Gen 2: STM32F205, 1 MiB internal flash.
// ---------------------------------------------------------------------------------------

/// The STM32F205's internal flash: 4×16 KiB, 1×64 KiB, 7×128 KiB sectors at 0x0800_0000
/// (Device OS `platform/MCU/STM32F2xx/SPARK_Firmware_Driver/inc/flash_mal.h`: the main
/// firmware begins "after 128KB (4 x 16K + 64K)", then 128 KiB pages).
const STM32F205_INTERNAL: FlashGeometry = FlashGeometry {
    name: "internal",
    base_address: 0x0800_0000,
    sectors: &[
        SectorRun { count: 4, size: 16 * KIB },
        SectorRun { count: 1, size: 64 * KIB },
        SectorRun { count: 7, size: 128 * KIB },
    ],
    write_size: 4,
};

/// Particle's DCT1 and DCT2 sectors (0x0800_4000, 0x0800_8000; `modules/photon/system-part2/linker.ld`).
const GEN2_STATE_BANKS: [Region; 2] = [region(0, 0x4000, 16 * KIB), region(0, 0x8000, 16 * KIB)];
/// Particle's first EEPROM-emulation sector (0x0800_C000).
const GEN2_PROGRESS: Region = region(0, 0xC000, 16 * KIB);
/// Particle's second EEPROM-emulation sector (0x0801_0000, 64 KiB).
const GEN2_FACTORY: Region = region(0, 0x1_0000, 64 * KIB);

const GEN2_BOOTLOADER: Slot =
    Slot { name: "bootloader", function: ModuleFunction::Bootloader, index: 0, region: region(0, 0, 16 * KIB) };

const PHOTON_SLOTS: &[Slot] = &[
    GEN2_BOOTLOADER,
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
    Slot { name: "application", function: ModuleFunction::UserPart, index: 1, region: region(0, 0xA_0000, 128 * KIB) },
];

/// The Photon (platform 6): STM32F205, 1 MiB internal flash, no external flash.
///
/// Slots as Device OS links them: bootloader at 0x0800_0000 (16 KiB), system part 1 at
/// 0x0802_0000 and system part 2 at 0x0806_0000 (256 KiB each), application at
/// 0x080A_0000 (128 KiB) — `modules/photon/system-part1/linker.ld`,
/// `modules/photon/system-part2/linker.ld`, `modules/photon/user-part/linker.ld`
/// (Device OS 1.5.2–2.3.1).
///
/// Tern's areas: the state banks in Particle's two DCT sectors, the progress markers and
/// the factory image (at most 64 KiB) in the two EEPROM-emulation sectors, and the
/// exchange area in the top 256 KiB, which Device OS uses as its OTA (0x080C_0000) and
/// factory-reset (0x080E_0000) regions (`flash_mal.h`). Internal flash is tight: one
/// offer stages at most 256 KiB, which holds either system part (or the bootloader and
/// system part 1) but not a whole Device OS release, so releases are installed in stages.
pub const PHOTON: Profile = Profile {
    name: "photon",
    platform_id: 6,
    devices: &[STM32F205_INTERNAL],
    slots: PHOTON_SLOTS,
    state_banks: GEN2_STATE_BANKS,
    progress: GEN2_PROGRESS,
    exchange: region(0, 0xC_0000, 256 * KIB),
    factory: GEN2_FACTORY,
    immutable_first_stage: false,
    boot: BOOT_POLICY,
};

/// The P1 (platform 8): the Photon's STM32F205 and module layout (Device OS builds the
/// P1 from `modules/photon/`), plus 1 MiB of SPI NOR in 4 KiB sectors
/// (`platform/MCU/STM32F2xx/SPARK_Firmware_Driver/inc/platform_config.h`: `sFLASH_PAGESIZE`
/// 0x1000, `sFLASH_PAGECOUNT` 256).
///
/// The external flash holds the exchange area (its upper 768 KiB; the lower 256 KiB are
/// left to Device OS), so one offer can stage a whole release — bootloader and both system
/// parts. The factory image takes Particle's factory-reset region at 0x080E_0000
/// (128 KiB); the state and progress areas are the Photon's.
pub const P1: Profile = Profile {
    name: "p1",
    platform_id: 8,
    devices: &[
        STM32F205_INTERNAL,
        FlashGeometry {
            name: "external",
            base_address: 0,
            sectors: &[SectorRun { count: 256, size: 4 * KIB }],
            write_size: 1,
        },
    ],
    slots: PHOTON_SLOTS,
    state_banks: GEN2_STATE_BANKS,
    progress: GEN2_PROGRESS,
    exchange: region(1, 0x4_0000, 768 * KIB),
    factory: region(0, 0xE_0000, 128 * KIB),
    immutable_first_stage: false,
    boot: BOOT_POLICY,
};

/// The Electron and E-Series (platform 10): STM32F205, 1 MiB internal flash, three
/// system parts of 128 KiB each.
///
/// Slots as Device OS links them: system part 1 at 0x0802_0000, system part 2 at
/// 0x0804_0000, system part 3 at 0x0806_0000, application at 0x0808_0000 (128 KiB) —
/// `modules/electron/system-part2/linker.ld` (module index 1),
/// `modules/electron/system-part3/linker.ld` (index 2),
/// `modules/electron/system-part1/linker.ld` (index 3: the directory names do not
/// match the module indexes, nor do Particle's release file names),
/// `modules/electron/user-part/linker.ld` and `modules/electron/modular.mk`.
///
/// Tern's areas as on the Photon, except the exchange area: the top 384 KiB, Device OS's
/// factory-reset (0x080A_0000) and OTA (0x080C_0000) regions (`flash_mal.h`, platform 10),
/// which stages all three system parts and the bootloader in one offer (a whole release is
/// about 340 KiB). The factory image is limited to 64 KiB.
pub const ELECTRON: Profile = Profile {
    name: "electron",
    platform_id: 10,
    devices: &[STM32F205_INTERNAL],
    slots: &[
        GEN2_BOOTLOADER,
        Slot {
            name: "system-part1",
            function: ModuleFunction::SystemPart,
            index: 1,
            region: region(0, 0x2_0000, 128 * KIB),
        },
        Slot {
            name: "system-part2",
            function: ModuleFunction::SystemPart,
            index: 2,
            region: region(0, 0x4_0000, 128 * KIB),
        },
        Slot {
            name: "system-part3",
            function: ModuleFunction::SystemPart,
            index: 3,
            region: region(0, 0x6_0000, 128 * KIB),
        },
        Slot {
            name: "application",
            function: ModuleFunction::UserPart,
            index: 1,
            region: region(0, 0x8_0000, 128 * KIB),
        },
    ],
    state_banks: GEN2_STATE_BANKS,
    progress: GEN2_PROGRESS,
    exchange: region(0, 0xA_0000, 384 * KIB),
    factory: GEN2_FACTORY,
    immutable_first_stage: false,
    boot: BOOT_POLICY,
};

// ---------------------------------------------------------------------------------------
// Gen 3: nRF52840, 1 MiB internal flash, SPI NOR.
// ---------------------------------------------------------------------------------------

/// The nRF52840's internal flash: 256 pages of 4 KiB at address 0
/// (`platform/MCU/nRF52840/inc/flash_mal.h`: `INTERNAL_FLASH_PAGE_SIZE`).
const NRF52840_INTERNAL: FlashGeometry = FlashGeometry {
    name: "internal",
    base_address: 0,
    sectors: &[SectorRun { count: 256, size: 4 * KIB }],
    write_size: 4,
};

/// External SPI NOR of `count` 4 KiB sectors, memory-mapped (XIP) at 0x1200_0000
/// (`flash_mal.h`: `EXTERNAL_FLASH_XIP_BASE`; `platform_config.h`: `sFLASH_PAGECOUNT`
/// 1024, 2048 on the Tracker).
const fn nrf52840_external(count: u32) -> FlashGeometry {
    FlashGeometry {
        name: "external",
        base_address: 0x1200_0000,
        sectors: match count {
            2048 => &[SectorRun { count: 2048, size: 4 * KIB }],
            _ => &[SectorRun { count: 1024, size: 4 * KIB }],
        },
        write_size: 1,
    }
}

/// The ESP32 network coprocessor's flash (4 MiB), as the NCP firmware module addresses
/// it (linked for offset 0). Device OS writes it through the coprocessor; Tern models it
/// as a third flash device, so a port routes device 2 to its NCP flasher.
const ESP32_NCP: FlashGeometry =
    FlashGeometry { name: "ncp", base_address: 0, sectors: &[SectorRun { count: 1024, size: 4 * KIB }], write_size: 1 };

const GEN3_RADIO_STACK: Slot =
    Slot { name: "radio-stack", function: ModuleFunction::RadioStack, index: 0, region: region(0, 0x1000, 0x2F000) };
const GEN3_BOOTLOADER: Slot =
    Slot { name: "bootloader", function: ModuleFunction::Bootloader, index: 0, region: region(0, 0xF_4000, 48 * KIB) };
/// Device OS ≤ 3.0: system part 1 from 0x3_0000 up to the 128 KiB application.
const GEN3_SYSTEM_PART1: Slot = Slot {
    name: "system-part1",
    function: ModuleFunction::SystemPart,
    index: 1,
    region: region(0, 0x3_0000, 0xA_4000),
};
const GEN3_APPLICATION: Slot =
    Slot { name: "application", function: ModuleFunction::UserPart, index: 1, region: region(0, 0xD_4000, 128 * KIB) };
const GEN3_ASSETS: Slot =
    Slot { name: "assets", function: ModuleFunction::Asset, index: 0, region: region(1, 0x30_0000, 1024 * KIB) };
const GEN3_NCP: Slot =
    Slot { name: "ncp", function: ModuleFunction::NcpFirmware, index: 0, region: region(2, 0, 4 * MIB) };

/// Tern's areas on the external flash of every Gen 3 profile: state banks, progress
/// markers, a 2 MiB exchange area (a whole release with its SoftDevice stages in one
/// offer), a 256 KiB factory image; the asset slot above them. The state banks are
/// 24 KiB each (12 records: one erase per 24 state changes per sector); bank A begins
/// where both 4 KiB banks of earlier layouts were, so a record those wrote still loads.
const GEN3_STATE_BANKS: [Region; 2] = [region(1, 0, 24 * KIB), region(1, 0x6000, 24 * KIB)];
const GEN3_PROGRESS: Region = region(1, 0xC000, 16 * KIB);
const GEN3_EXCHANGE: Region = region(1, 0x1_0000, 2048 * KIB);
const GEN3_FACTORY: Region = region(1, 0x21_0000, 256 * KIB);

/// Internal flash of every Gen 3 profile, from `build/arm/linker/nrf52840/platform_flash.ld`
/// (Device OS 5.x) and, for Device OS ≤ 3.0, `build/arm/linker/nrf52840/softdevice.ld`
/// (`APP_CODE_BASE` 192 K), `modules/<platform>/system-part1/linker.ld` (system part 1 of
/// 1M − 192K − 128K − 48K), `modules/<platform>/user-part/linker.ld` (application at
/// 0xD_4000, 128 KiB) and `build/arm/linker/linker_nrf52840_bootloader.ld` (bootloader in
/// the top 48 KiB): Nordic's MBR at 0 (not managed; it is the immutable first stage), the
/// SoftDevice (radio stack) from 0x1000, system part 1 from 0x3_0000, the application,
/// the bootloader at 0xF_4000.
const GEN3_SLOTS: &[Slot] = &[GEN3_RADIO_STACK, GEN3_SYSTEM_PART1, GEN3_APPLICATION, GEN3_BOOTLOADER, GEN3_ASSETS];
const GEN3_NCP_SLOTS: &[Slot] =
    &[GEN3_RADIO_STACK, GEN3_SYSTEM_PART1, GEN3_APPLICATION, GEN3_BOOTLOADER, GEN3_ASSETS, GEN3_NCP];

const fn gen3(
    name: &'static str,
    platform_id: u16,
    devices: &'static [FlashGeometry],
    slots: &'static [Slot],
) -> Profile {
    Profile {
        name,
        platform_id,
        devices,
        slots,
        state_banks: GEN3_STATE_BANKS,
        progress: GEN3_PROGRESS,
        exchange: GEN3_EXCHANGE,
        factory: GEN3_FACTORY,
        // Nordic's MBR could finish an interrupted bootloader copy, but only from internal
        // flash and with its parameter page; internal flash is fully allocated to Device
        // OS's modules and the bootloader is staged on the external NOR, so Tern copies it
        // itself and the window is residual risk, as on the STM32F2.
        immutable_first_stage: false,
        boot: BOOT_POLICY,
    }
}

/// The Argon (platform 12): nRF52840, 4 MiB SPI NOR, ESP32 Wi-Fi coprocessor whose
/// firmware is the NCP module (`modules/argon/`; layout in [`GEN3_SLOTS`]'s sources).
pub const ARGON: Profile = gen3("argon", 12, &[NRF52840_INTERNAL, nrf52840_external(1024), ESP32_NCP], GEN3_NCP_SLOTS);

/// The Boron (platform 13): nRF52840, 4 MiB SPI NOR, u-blox cellular modem (whose
/// firmware is not a Device OS module, so no NCP slot) — `modules/boron/`.
pub const BORON: Profile = gen3("boron", 13, &[NRF52840_INTERNAL, nrf52840_external(1024)], GEN3_SLOTS);

/// The B SoM (platform 23): the Boron's layout (`modules/bsom/` in Device OS 1.x–2.x).
pub const BSOM: Profile = gen3("bsom", 23, &[NRF52840_INTERNAL, nrf52840_external(1024)], GEN3_SLOTS);

/// The Tracker SoM / Tracker One (platform 26): nRF52840, 8 MiB SPI NOR
/// (`flash_mal.h`: `EXTERNAL_FLASH_XIP_LENGTH` 0x80_0000 for the Tracker), ESP32
/// coprocessor for Wi-Fi geolocation with its NCP module (`modules/tracker/`).
pub const TRACKER: Profile =
    gen3("tracker", 26, &[NRF52840_INTERNAL, nrf52840_external(2048), ESP32_NCP], GEN3_NCP_SLOTS);

/// The E SoM X / E404X (platform 15): despite the E-Series name, a Gen 3 device —
/// nRF52840 with a u-blox modem, built as a Boron (`build/platform-id.mk`: `PLATFORM_GEN=3`,
/// `PLATFORM_MCU=nRF52840`, `PLATFORM_NAME=boron`). It exists only since Device OS 4,
/// whose layout (`build/arm/linker/nrf52840/platform_flash.ld`, `modules/boron/modular.mk`:
/// `USER_FIRMWARE_IMAGE_LOCATION=0xB4000`, size 0x40000) links applications as user part
/// index 2 at 0xB_4000 (256 KiB) and ends system part 1 there.
pub const ESOMX: Profile = gen3(
    "esomx",
    15,
    &[NRF52840_INTERNAL, nrf52840_external(1024)],
    &[
        GEN3_RADIO_STACK,
        Slot {
            name: "system-part1",
            function: ModuleFunction::SystemPart,
            index: 1,
            region: region(0, 0x3_0000, 0x8_4000),
        },
        Slot {
            name: "application",
            function: ModuleFunction::UserPart,
            index: 2,
            region: region(0, 0xB_4000, 256 * KIB),
        },
        GEN3_BOOTLOADER,
        GEN3_ASSETS,
    ],
);

/// The generic STM32F2 profile: the Photon's (kept as a name for existing devices and scripts).
pub const STM32F2: Profile = PHOTON;

/// The generic nRF52840 profile: the Argon's (kept as a name for existing devices and scripts).
pub const NRF52840: Profile = ARGON;

/// Every profile, for lookup by name or platform.
pub const PROFILES: &[&Profile] = &[&PHOTON, &P1, &ELECTRON, &ARGON, &BORON, &ESOMX, &BSOM, &TRACKER];

/// Other names profiles answer to: the generic MCU names, and Particle's names of devices
/// that share a platform id.
pub const ALIASES: &[(&str, &Profile)] =
    &[("stm32f2", &PHOTON), ("nrf52840", &ARGON), ("e-series", &ELECTRON), ("eseries", &ELECTRON)];

/// Finds a profile by name or alias (ASCII case ignored).
pub fn by_name(name: &str) -> Option<&'static Profile> {
    PROFILES
        .iter()
        .copied()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .or_else(|| ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(name)).map(|(_, p)| *p))
}

/// Finds the profile of a Particle platform id.
pub fn by_platform(platform_id: u16) -> Option<&'static Profile> {
    PROFILES.iter().copied().find(|p| p.platform_id == platform_id)
}

/// Every name [`by_name`] accepts: profile names, then aliases.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROFILES.iter().map(|p| p.name).chain(ALIASES.iter().map(|(alias, _)| *alias))
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
        assert_eq!(ELECTRON.devices[0].covering(0xA_0000, 340 * KIB), Some((0xA_0000, 0x10_0000)));
    }

    #[test]
    fn profiles_check() {
        for p in PROFILES {
            assert_eq!(p.check(), Ok(()), "{}", p.name);
            assert!(p.app_slot().is_some(), "{}: no application slot", p.name);
            assert_eq!(by_platform(p.platform_id).map(|q| q.name), Some(p.name));
        }
        assert_eq!(by_name("nrf52840").map(|p| p.platform_id), Some(12));
        assert_eq!(by_name("esp32"), None);
        assert_eq!(by_platform(32), None);
    }

    /// Every name and alias resolves to the platform Particle numbers it with
    /// (Device OS `hal/shared/platforms.h`, `build/platform-id.mk`).
    #[test]
    fn lookup_by_name_and_platform() {
        let cases: &[(&str, Option<u16>)] = &[
            ("photon", Some(6)),
            ("stm32f2", Some(6)),
            ("P1", Some(8)),
            ("electron", Some(10)),
            ("e-series", Some(10)),
            ("argon", Some(12)),
            ("NRF52840", Some(12)),
            ("boron", Some(13)),
            ("esomx", Some(15)),
            ("bsom", Some(23)),
            ("tracker", Some(26)),
            ("xenon", None),
            ("", None),
        ];
        for (name, id) in cases {
            assert_eq!(by_name(name).map(|p| p.platform_id), *id, "{name}");
        }
        assert_eq!(names().count(), PROFILES.len() + ALIASES.len());
        assert_eq!(STM32F2, PHOTON);
        assert_eq!(NRF52840, ARGON);
    }

    /// Where each profile puts the slots the corpus-independent facts of Device OS name:
    /// (profile, function, index, CPU address, size).
    #[test]
    fn slots_at_device_os_addresses() {
        use ModuleFunction::*;
        let cases: &[(&Profile, ModuleFunction, u8, u32, u32)] = &[
            (&PHOTON, Bootloader, 0, 0x0800_0000, 16 * KIB),
            (&PHOTON, SystemPart, 2, 0x0806_0000, 256 * KIB),
            (&P1, UserPart, 1, 0x080A_0000, 128 * KIB),
            (&ELECTRON, SystemPart, 1, 0x0802_0000, 128 * KIB),
            (&ELECTRON, SystemPart, 2, 0x0804_0000, 128 * KIB),
            (&ELECTRON, SystemPart, 3, 0x0806_0000, 128 * KIB),
            (&ELECTRON, UserPart, 1, 0x0808_0000, 128 * KIB),
            (&BORON, RadioStack, 0, 0x1000, 0x2F000),
            (&BORON, SystemPart, 1, 0x3_0000, 0xA_4000),
            (&BSOM, UserPart, 1, 0xD_4000, 128 * KIB),
            (&TRACKER, Bootloader, 0, 0xF_4000, 48 * KIB),
            (&TRACKER, NcpFirmware, 0, 0, 4 * MIB),
            (&ARGON, Asset, 0, 0x1230_0000, MIB),
            (&ESOMX, UserPart, 2, 0xB_4000, 256 * KIB),
        ];
        for (p, function, index, address, size) in cases {
            let slot = p.slot_for(*function, *index).unwrap_or_else(|| panic!("{}: no {function:?} {index}", p.name));
            assert_eq!(p.slot_address(slot), Some(*address), "{} {function:?} {index}", p.name);
            assert_eq!(p.slots[slot].region.size, *size, "{} {function:?} {index}", p.name);
        }
        assert_eq!(ESOMX.app_index(), 2);
        assert_eq!(BORON.app_index(), 1);
        assert!(BORON.slot_for(NcpFirmware, 0).is_none());
        assert_eq!(TRACKER.devices[1].size(), 8 * MIB);
        // What one offer can stage decides how a release is split.
        assert_eq!(PHOTON.staging_capacity(), 256 * KIB);
        assert_eq!(ELECTRON.staging_capacity(), 384 * KIB);
        assert_eq!(P1.staging_capacity(), 768 * KIB);
    }
}
