//! The format-independent description of a firmware module.
//!
//! Every parser in this crate (Particle, MCUboot, raw) produces a [`ModuleInfo`];
//! everything above this crate (device agent, server, CLI) reasons only in these terms.

/// Which on-disk format a module was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A Particle Device OS module (`module_info` prefix, suffix with SHA-256 and CRC-32).
    Particle,
    /// An MCUboot image (header, payload, TLV trailer).
    McuBoot,
    /// Bytes with no recognised header; metadata comes from elsewhere.
    Raw,
}

impl Format {
    /// The lowercase name used in JSON output and on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Particle => "particle",
            Format::McuBoot => "mcuboot",
            Format::Raw => "raw",
        }
    }
}

/// What a module is for, numbered as Device OS numbers `module_function`.
///
/// The numbering is Particle's (`module_function_t` in Device OS `module_info.h`), which
/// this project adopts for every format so that one dependency rule works everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleFunction {
    /// 0: no function (an empty dependency slot).
    None,
    /// 1: a resource blob.
    Resource,
    /// 2: the bootloader.
    Bootloader,
    /// 3: a monolithic firmware image (system and application linked together).
    MonoFirmware,
    /// 4: a part of the system (operating system) firmware.
    SystemPart,
    /// 5: the user application.
    UserPart,
    /// 6: a settings block.
    Settings,
    /// 7: network co-processor firmware.
    NcpFirmware,
    /// 8: the radio stack (for example a Nordic SoftDevice).
    RadioStack,
    /// 9: an asset (a file the application uses, shipped as a module).
    Asset,
    /// Any other code; kept so that unknown modules round-trip.
    Other(u8),
}

impl ModuleFunction {
    /// Decodes Device OS's numeric function code.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => ModuleFunction::None,
            1 => ModuleFunction::Resource,
            2 => ModuleFunction::Bootloader,
            3 => ModuleFunction::MonoFirmware,
            4 => ModuleFunction::SystemPart,
            5 => ModuleFunction::UserPart,
            6 => ModuleFunction::Settings,
            7 => ModuleFunction::NcpFirmware,
            8 => ModuleFunction::RadioStack,
            9 => ModuleFunction::Asset,
            other => ModuleFunction::Other(other),
        }
    }

    /// The numeric function code (inverse of [`ModuleFunction::from_code`]).
    pub const fn code(self) -> u8 {
        match self {
            ModuleFunction::None => 0,
            ModuleFunction::Resource => 1,
            ModuleFunction::Bootloader => 2,
            ModuleFunction::MonoFirmware => 3,
            ModuleFunction::SystemPart => 4,
            ModuleFunction::UserPart => 5,
            ModuleFunction::Settings => 6,
            ModuleFunction::NcpFirmware => 7,
            ModuleFunction::RadioStack => 8,
            ModuleFunction::Asset => 9,
            ModuleFunction::Other(code) => code,
        }
    }

    /// A short lowercase name, stable for JSON output and logs.
    pub const fn name(self) -> &'static str {
        match self {
            ModuleFunction::None => "none",
            ModuleFunction::Resource => "resource",
            ModuleFunction::Bootloader => "bootloader",
            ModuleFunction::MonoFirmware => "monolithic",
            ModuleFunction::SystemPart => "system_part",
            ModuleFunction::UserPart => "user_part",
            ModuleFunction::Settings => "settings",
            ModuleFunction::NcpFirmware => "ncp_firmware",
            ModuleFunction::RadioStack => "radio_stack",
            ModuleFunction::Asset => "asset",
            ModuleFunction::Other(_) => "unknown",
        }
    }
}

/// A requirement one module places on another installed module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dependency {
    /// The function of the module required.
    pub function: ModuleFunction,
    /// Its index (for example 1 for system part 1).
    pub index: u8,
    /// The minimum version required.
    pub version: u32,
}

impl Dependency {
    /// Whether `module` (function, index, version) satisfies this requirement.
    pub fn is_satisfied_by(&self, function: ModuleFunction, index: u8, version: u32) -> bool {
        self.function == function && self.index == index && version >= self.version
    }
}

/// Result of checking a module's own integrity data (CRC, hash, signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// The module carries integrity data and it matches the contents.
    Valid,
    /// The module carries integrity data and it does not match.
    Invalid,
    /// The format carries no integrity data that could be checked.
    Unchecked,
}

/// At most this many dependencies are kept per module (Particle modules declare two).
pub const MAX_DEPENDENCIES: usize = 4;

/// Everything Tern knows about one module, independent of its format.
///
/// Fields that a format does not carry are `None` or zero; see each format's module docs
/// for how its fields map here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The format the module was read from.
    pub format: Format,
    /// Hardware platform identifier (Particle platform id; 0 when unknown).
    pub platform_id: u16,
    /// What the module is for.
    pub function: ModuleFunction,
    /// Index among modules of the same function (system part 1, 2, …).
    pub index: u8,
    /// Monotonic version number. Particle: `module_version`; MCUboot:
    /// `major << 24 | minor << 16 | revision`.
    pub version: u32,
    /// Format-specific flag bits as stored (Particle `flags` byte).
    pub flags: u8,
    /// Offset of the metadata header from the start of the file.
    pub header_offset: u32,
    /// Load address of the first byte of the module.
    pub start_address: u32,
    /// Address one past the last byte covered by the module's integrity data, as the
    /// format states it (Particle: `module_end_address`, the CRC's own address).
    pub end_address: u32,
    /// Declared dependencies; empty slots are `None`.
    pub dependencies: [Option<Dependency>; MAX_DEPENDENCIES],
    /// SHA-256 as stored in the module (Particle suffix, MCUboot hash TLV).
    pub sha256: Option<[u8; 32]>,
    /// Total length of the file in bytes.
    pub size: u32,
    /// Product identifier from the suffix, when present.
    pub product_id: Option<u16>,
    /// Product firmware version from the suffix, when present.
    pub product_version: Option<u16>,
    /// Result of the stored CRC-32 check: `None` when the format has no CRC.
    pub crc_ok: Option<bool>,
    /// Overall integrity verdict.
    pub integrity: Integrity,
}

impl ModuleInfo {
    /// The declared dependencies, skipping empty slots.
    pub fn dependencies(&self) -> impl Iterator<Item = &Dependency> {
        self.dependencies.iter().flatten()
    }
}
