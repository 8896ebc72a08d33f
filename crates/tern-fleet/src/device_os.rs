//! A synthetic Device OS: Particle-format releases Tern makes itself, so that the demo and
//! tests run on a machine without the firmware corpus.
//!
//! The modules are real Particle modules (written by [`tern_image::particle::write`]) laid
//! out from the device profile alone: one per bootloader, system part and radio stack slot
//! the profile has, linked at the slot's address, its prefix where Device OS puts it (after
//! the vector table — 0x184 bytes on the STM32F2xx, whose flash is mapped at 0x0800_0000,
//! 0x200 on the nRF52840 — except radio stacks, whose prefix is at 0 and which the
//! bootloader installs without it), sized to fit both the slot and the exchange area.
//!
//! Dependencies follow real Device OS releases: the radio stack needs the first release's
//! bootloader, system part 1 needs the radio stack and its release's bootloader, system part
//! *n* needs part *n − 1* and the bootloader of its release, an application needs the
//! highest system part of a release. Every release has the same radio stack, as Device OS
//! releases often do.
//!
//! The contents are not firmware but look like it to a compressor: Thumb instruction
//! halfwords with small registers and immediates, calls to a few hundred functions,
//! literal pools of addresses, and log strings, from a PRNG seeded by the module's identity
//! (the same module always has the same bytes).

use tern_device::profile::Profile;
use tern_image::model::{Dependency, Format, ModuleFunction};
use tern_image::particle::{self, prefix::Flags, NewModule};
use tern_sim::device::{entry, Behaviour, Image, MARKER};

/// The releases [`releases`] makes, oldest first: name, system part version, bootloader
/// version. The "-sim" names and the versions keep them apart from Particle's releases.
pub const RELEASES: [(&str, u32, u32); 2] = [("9.0.0-sim", 9000, 3000), ("9.1.0-sim", 9100, 3100)];

/// Version of the radio stack every release carries.
pub const RADIO_STACK_VERSION: u32 = 900;

/// One Device OS release for one platform.
#[derive(Clone, Debug)]
pub struct Release {
    /// The release's name (`9.0.0-sim`).
    pub name: &'static str,
    /// Its modules, in the order they install (dependencies first).
    pub modules: Vec<Image>,
}

impl Release {
    /// The release's module of this function and index.
    pub fn module(&self, function: ModuleFunction, index: u8) -> Option<&Image> {
        self.modules.iter().find(|m| m.entry.function == function && m.entry.index == index)
    }

    /// What an application built against this release requires: its highest system part.
    pub fn application_dependency(&self) -> Option<Dependency> {
        let part = self
            .modules
            .iter()
            .filter(|m| m.entry.function == ModuleFunction::SystemPart)
            .max_by_key(|m| m.entry.index)?;
        Some(Dependency { function: ModuleFunction::SystemPart, index: part.entry.index, version: part.entry.version })
    }
}

/// Bytes of vector table before the prefix of a bootloader or system part on `profile`'s
/// MCU (Device OS puts `module_info` right after it).
pub fn vector_table_size(profile: &Profile) -> usize {
    let stm32 = profile.devices.first().is_some_and(|d| d.base_address == 0x0800_0000);
    if stm32 {
        0x184
    } else {
        0x200
    }
}

/// The synthetic Device OS releases for `profile`, oldest first ([`RELEASES`]).
pub fn releases(profile: &'static Profile) -> Result<Vec<Release>, String> {
    let first_bootloader = RELEASES[0].2;
    let has = |function, index| profile.slot_for(function, index).is_some();
    let dep = |function, index, version| Dependency { function, index, version };
    let radio = if has(ModuleFunction::RadioStack, 0) {
        let needs = [dep(ModuleFunction::Bootloader, 0, first_bootloader)];
        Some(system_module(profile, RELEASES[0].0, ModuleFunction::RadioStack, 0, RADIO_STACK_VERSION, &needs)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (release, (name, version, bootloader)) in RELEASES.into_iter().enumerate() {
        let mut modules = Vec::new();
        if has(ModuleFunction::Bootloader, 0) {
            modules.push(system_module(profile, name, ModuleFunction::Bootloader, 0, bootloader, &[])?);
        }
        modules.extend(radio.clone());
        let parts = profile.slots.iter().filter(|s| s.function == ModuleFunction::SystemPart).count() as u8;
        for index in 1..=parts {
            let boot = dep(ModuleFunction::Bootloader, 0, bootloader);
            let previous = match (index, &radio) {
                (1, Some(r)) => Some(dep(ModuleFunction::RadioStack, 0, r.entry.version)),
                (1, None) => None,
                _ => Some(dep(ModuleFunction::SystemPart, index - 1, version)),
            };
            let needs: Vec<Dependency> = previous.into_iter().chain([boot]).collect();
            // Later releases grow a little, as Device OS does.
            let growth = 100 + release * 2;
            let module =
                system_module_sized(profile, name, ModuleFunction::SystemPart, index, version, &needs, growth)?;
            modules.push(module);
        }
        out.push(Release { name, modules });
    }
    Ok(out)
}

/// A Particle-format application for `profile`: `size` bytes of contents after the prefix,
/// starting with the behaviour marker the simulated device reads (within the first 64
/// bytes, right after the 24-byte prefix), requiring `needs`.
pub fn application(
    profile: &Profile,
    version: u32,
    needs: &[Dependency],
    behaviour: Behaviour,
    size: usize,
) -> Result<Image, String> {
    let index = profile.app_index();
    let slot = profile.app_slot().ok_or_else(|| format!("{}: no application slot", profile.name))?;
    let address =
        profile.slot_address(slot).ok_or_else(|| format!("{}: application slot outside flash", profile.name))?;
    let name = format!("{}-app@{version}-{}.bin", profile.name, behaviour.name());
    let mut contents = MARKER.to_vec();
    contents.extend_from_slice(format!("{};{name};", behaviour.name()).as_bytes());
    let seed = seed(profile.platform_id, ModuleFunction::UserPart, index, version) ^ behaviour as u64;
    Filler::new(seed, address, ram_top(profile)).fill(&mut contents, size);
    let product_version = u16::try_from(version).map_err(|_| format!("application version {version} above 65535"))?;
    let module = NewModule {
        platform_id: profile.platform_id,
        function: ModuleFunction::UserPart,
        index,
        version,
        start_address: address,
        prefix_offset: 0,
        mcu_target: 0,
        flags: Flags(0),
        dependencies: needs,
        product: Some((profile.platform_id, product_version)),
        contents: &contents,
    };
    image(&name, &module)
}

fn system_module(
    profile: &'static Profile,
    release: &str,
    function: ModuleFunction,
    index: u8,
    version: u32,
    needs: &[Dependency],
) -> Result<Image, String> {
    system_module_sized(profile, release, function, index, version, needs, 100)
}

/// A bootloader, system part or radio stack at its slot, `percent` of the usual size.
fn system_module_sized(
    profile: &'static Profile,
    release: &str,
    function: ModuleFunction,
    index: u8,
    version: u32,
    needs: &[Dependency],
    percent: usize,
) -> Result<Image, String> {
    let slot =
        profile.slot_for(function, index).ok_or_else(|| format!("{}: no {function:?} {index} slot", profile.name))?;
    let address = profile.slot_address(slot).ok_or_else(|| format!("{}: slot outside flash", profile.name))?;
    let radio = function == ModuleFunction::RadioStack;
    let (prefix_offset, flags, product, suffix) = if radio {
        (0, Flags(Flags::DROP_MODULE_INFO), None, 40)
    } else {
        (vector_table_size(profile), Flags(0), Some((0xffff, 0xffff)), 44)
    };
    // A module must fit its slot and, to be staged, the exchange area. Real ones fill about
    // three quarters of their slot (the Photon's system parts more).
    let room = profile.slots[slot].region.size.min(profile.exchange.size) as usize;
    let size = (room * 3 / 4 * percent / 100).min(room) & !3;
    let contents_len = size - particle::PREFIX_SIZE - suffix;
    let mut contents = Vec::with_capacity(contents_len);
    let mut filler = Filler::new(seed(profile.platform_id, function, index, version), address, ram_top(profile));
    if prefix_offset > 0 {
        filler.vector_table(&mut contents, prefix_offset, size as u32);
    }
    filler.fill(&mut contents, contents_len);
    let kind = match function {
        ModuleFunction::Bootloader => "bootloader".to_owned(),
        ModuleFunction::RadioStack => "softdevice".to_owned(),
        _ => format!("system-part{index}"),
    };
    let name = format!("{}-{kind}@{release}.bin", profile.name);
    let module = NewModule {
        platform_id: profile.platform_id,
        function,
        index,
        version,
        start_address: address,
        prefix_offset,
        mcu_target: 0,
        flags,
        dependencies: needs,
        product,
        contents: &contents,
    };
    image(&name, &module)
}

fn image(name: &str, module: &NewModule<'_>) -> Result<Image, String> {
    let bytes = particle::write(module).map_err(|e| format!("{name}: {e}"))?;
    let facts = entry(
        module.function,
        module.index,
        module.version,
        module.start_address,
        module.dependencies,
        Format::Particle,
    );
    Ok(Image::new(name, bytes, facts))
}

/// The top of RAM, the initial stack pointer of a vector table: 128 KiB on the STM32F205,
/// 256 KiB on the nRF52840.
fn ram_top(profile: &Profile) -> u32 {
    if vector_table_size(profile) == 0x184 {
        0x2002_0000
    } else {
        0x2004_0000
    }
}

fn seed(platform: u16, function: ModuleFunction, index: u8, version: u32) -> u64 {
    (u64::from(platform) << 48 | u64::from(function.code()) << 40 | u64::from(index) << 32 | u64::from(version))
        ^ 0x9e37_79b9_7f4a_7c15
}

/// Firmware-like bytes from a seeded xorshift generator.
struct Filler {
    state: u64,
    start: u32,
    ram_top: u32,
}

/// Words of the log strings.
const WORDS: [&str; 24] = [
    "cloud",
    "connect",
    "failed",
    "error",
    "timeout",
    "socket",
    "modem",
    "wifi",
    "ble",
    "handshake",
    "session",
    "retry",
    "publish",
    "subscribe",
    "update",
    "module",
    "flash",
    "invalid",
    "state",
    "ready",
    "%d",
    "%s",
    "0x%08x",
    "code",
];

impl Filler {
    fn new(seed: u64, start: u32, ram_top: u32) -> Self {
        Filler { state: seed | 1, start, ram_top }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// A number below `n`, skewed towards small values (registers, immediates and offsets
    /// in real code are mostly small).
    fn small(&mut self, n: u64) -> u64 {
        let a = self.next() % n;
        let b = self.next() % n;
        a.min(b)
    }

    /// A vector table of `len` bytes: the initial stack pointer, then handler addresses
    /// inside the module (Thumb bit set) or 0 for unused vectors.
    fn vector_table(&mut self, out: &mut Vec<u8>, len: usize, module_size: u32) {
        out.extend_from_slice(&self.ram_top.to_le_bytes());
        let handler = (self.start + 0x400 + (self.next() % u64::from(module_size / 2)) as u32) | 1;
        let default = (self.start + 0x300) | 1;
        while out.len() + 4 <= len {
            let word = match self.next() % 8 {
                0..=3 => default,
                4 => 0,
                5 => handler,
                _ => (self.start + 0x400 + (self.next() % u64::from(module_size / 2)) as u32) | 1,
            };
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.resize(len, 0);
    }

    /// Appends functions, literal pools and strings until `out` is `len` bytes long.
    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        let functions = 300;
        while out.len() < len {
            if self.next() % 8 == 0 {
                self.strings(out);
            } else {
                self.function(out, functions);
            }
        }
        out.truncate(len);
    }

    fn halfword(out: &mut Vec<u8>, h: u16) {
        out.extend_from_slice(&h.to_le_bytes());
    }

    fn function(&mut self, out: &mut Vec<u8>, functions: u64) {
        const PUSH: [u16; 4] = [0xb5f0, 0xb510, 0xb538, 0xb570];
        let frame = (self.next() % 4) as usize;
        Self::halfword(out, PUSH[frame]);
        let body = 6 + self.small(48);
        for _ in 0..body {
            let rd = self.small(8) as u16;
            let rn = self.small(8) as u16;
            let h = match self.next() % 16 {
                0 | 1 => 0x2000 | rd << 8 | self.small(64) as u16, // movs rd, #imm
                2 => 0x2800 | rd << 8 | self.small(32) as u16,     // cmp rd, #imm
                3 => 0x1c00 | (self.small(8) as u16) << 6 | rn << 3 | rd, // adds rd, rn, #imm3
                4 | 5 => 0x6800 | (self.small(16) as u16) << 6 | rn << 3 | rd, // ldr rd, [rn, #imm]
                6 => 0x6000 | (self.small(16) as u16) << 6 | rn << 3 | rd, // str rd, [rn, #imm]
                7 => 0x7800 | (self.small(8) as u16) << 6 | rn << 3 | rd, // ldrb rd, [rn, #imm]
                8 => 0x4600 | rn << 3 | rd,                        // mov rd, rn
                9 => 0x4800 | rd << 8 | self.small(32) as u16,     // ldr rd, [pc, #imm]
                10 | 11 => 0xd000 | (self.small(14) as u16) << 8 | self.small(24) as u16, // b<cond>
                12 | 13 => {
                    // bl to one of a few hundred functions: the same calls recur.
                    let target = (self.small(functions) * 0x5a) as u32 & 0x3f_fffe;
                    Self::halfword(out, 0xf000 | (target >> 12) as u16 & 0x7ff);
                    0xf800 | (target >> 1) as u16 & 0x7ff
                }
                14 => 0x4400 | rn << 3 | rd, // add rd, rn
                _ => 0x4770,                 // bx lr
            };
            Self::halfword(out, h);
        }
        const POP: [u16; 4] = [0xbdf0, 0xbd10, 0xbd38, 0xbd70];
        Self::halfword(out, POP[frame]);
        if out.len() % 4 != 0 {
            Self::halfword(out, 0xbf00); // nop
        }
        // The literal pool: addresses of data in RAM and of code and constants in flash.
        for _ in 0..self.small(5) {
            let word = match self.next() % 3 {
                0 => self.ram_top - 0x1_0000 + (self.small(0x400) as u32) * 4,
                1 => self.start + (self.small(0x4000) as u32) * 4,
                _ => self.small(0x100) as u32,
            };
            out.extend_from_slice(&word.to_le_bytes());
        }
    }

    fn strings(&mut self, out: &mut Vec<u8>) {
        for _ in 0..1 + self.small(4) {
            for w in 0..2 + self.small(5) {
                if w > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(WORDS[(self.next() % WORDS.len() as u64) as usize].as_bytes());
            }
            out.push(0);
        }
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_device::profile::PROFILES;

    /// Order-0 entropy of `bytes` in bits per byte.
    fn entropy(bytes: &[u8]) -> f64 {
        let mut counts = [0usize; 256];
        for &b in bytes {
            counts[usize::from(b)] += 1;
        }
        let n = bytes.len() as f64;
        counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).log2()).sum()
    }

    /// Every module of every release, on every profile, reads back as a Particle module at
    /// its slot's address with the facts its manifest entry states, fits its slot and the
    /// exchange area, and comes after what it needs.
    #[test]
    fn releases_are_particle_modules_at_their_slots() {
        for &profile in PROFILES {
            let releases = releases(profile).expect("releases for every profile");
            assert_eq!(releases.len(), RELEASES.len());
            for release in &releases {
                let mut installed: Vec<&Image> = Vec::new();
                for image in &release.modules {
                    let what = format!("{} {}", profile.name, image.name);
                    let module = particle::parse(&image.bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let info = &module.info;
                    let slot = profile.slot_for(info.function, info.index).expect("a slot for the module");
                    assert_eq!(Some(info.start_address), profile.slot_address(slot), "{what}");
                    assert_eq!(info.start_address, image.entry.start_address, "{what}");
                    assert_eq!(
                        (info.function, info.index, info.version),
                        (image.entry.function, image.entry.index, image.entry.version),
                        "{what}"
                    );
                    assert_eq!(info.platform_id, profile.platform_id, "{what}");
                    assert_eq!(
                        info.dependencies().collect::<Vec<_>>(),
                        image.entry.dependencies().collect::<Vec<_>>(),
                        "{what}"
                    );
                    assert_eq!(info.crc_ok, Some(true), "{what}");
                    assert!(module.sha256_matches_contents(), "{what}");
                    let expected_offset =
                        if info.function == ModuleFunction::RadioStack { 0 } else { vector_table_size(profile) };
                    assert_eq!(module.prefix_offset(), expected_offset, "{what}");
                    let size = image.bytes.len() as u32;
                    assert!(
                        size <= profile.slots[slot].region.size && size <= profile.exchange.size,
                        "{what}: {size} bytes"
                    );
                    assert!(
                        size >= profile.slots[slot].region.size.min(profile.exchange.size) / 2,
                        "{what}: only {size} bytes"
                    );
                    for need in info.dependencies() {
                        let met = installed.iter().any(|m| {
                            m.entry.function == need.function
                                && m.entry.index == need.index
                                && m.entry.version >= need.version
                        });
                        assert!(met, "{what}: needs {need:?}, not installed before it in {}", release.name);
                    }
                    installed.push(image);
                }
                let parts = profile.slots.iter().filter(|s| s.function == ModuleFunction::SystemPart).count();
                let expected = parts
                    + [ModuleFunction::Bootloader, ModuleFunction::RadioStack]
                        .iter()
                        .filter(|&&f| profile.slot_for(f, 0).is_some())
                        .count();
                assert_eq!(release.modules.len(), expected, "{} {}", profile.name, release.name);
            }
            // A newer release needs a newer system: its highest part is not met by the older one.
            let old = releases[0].application_dependency().expect("system parts");
            let new = releases[1].application_dependency().expect("system parts");
            assert!(new.version > old.version && new.index == old.index);
        }
    }

    #[test]
    fn contents_look_like_firmware_and_are_reproducible() {
        for &profile in PROFILES {
            let a = releases(profile).expect("releases");
            let b = releases(profile).expect("releases");
            for (x, y) in a.iter().flat_map(|r| &r.modules).zip(b.iter().flat_map(|r| &r.modules)) {
                assert_eq!(x, y, "the same module is made with the same bytes");
                // Real Device OS modules measure 5.5–7.5 bits per byte; zeros measure 0 and
                // random bytes 8.
                let e = entropy(&x.bytes);
                assert!((5.0..7.6).contains(&e), "{}: {e:.2} bits per byte", x.name);
            }
            let part1 = |r: &Release| r.module(ModuleFunction::SystemPart, 1).expect("part 1").bytes.clone();
            let (old, new) = (part1(&a[0]), part1(&a[1]));
            let same = old.iter().zip(&new).filter(|(p, q)| p == q).count();
            assert!(same < old.len() / 4, "{}: releases share {same} of {} bytes in place", profile.name, old.len());
        }
    }

    #[test]
    fn applications_carry_their_behaviour_after_the_prefix() {
        for &profile in PROFILES {
            let needs = releases(profile).expect("releases")[1].application_dependency().expect("system parts");
            for behaviour in [Behaviour::Healthy, Behaviour::Panic, Behaviour::Hang, Behaviour::NeverConfirms] {
                let app = application(profile, 7, &[needs], behaviour, 6000).expect("an application");
                let module = particle::parse(&app.bytes).expect("a Particle module");
                assert_eq!(
                    (module.info.function, module.info.index, module.info.version),
                    (ModuleFunction::UserPart, profile.app_index(), 7)
                );
                assert_eq!(module.info.dependencies().copied().collect::<Vec<_>>(), [needs]);
                assert_eq!(module.info.product_id, Some(profile.platform_id));
                assert_eq!(Behaviour::of_image(&app.bytes), behaviour, "{}", app.name);
                assert_eq!(app.bytes.len(), 6000 + particle::PREFIX_SIZE + 44);
            }
        }
        assert!(application(PROFILES[0], 70_000, &[], Behaviour::Healthy, 100).is_err());
    }
}
