//! Writing Particle modules: the layout [`parse`](super::parse) reads, produced from typed
//! fields (needs the `alloc` feature).
//!
//! The writer makes plain modules — a prefix without extensions, uncompressed contents and
//! a suffix without extensions — which is how Device OS builds bootloaders, system parts,
//! radio stacks and applications:
//!
//! | part | bytes |
//! |---|---|
//! | contents before the prefix | `contents[..prefix_offset]` (the vector table, when the MCU needs it first) |
//! | prefix | 24 bytes ([`Prefix`](super::Prefix)); the end address is the CRC's address |
//! | contents after the prefix | `contents[prefix_offset..]` |
//! | product id, product version | `u16` LE each, only with [`NewModule::product`] (suffix size 40, else 36) |
//! | reserved | `u16` 0 |
//! | SHA-256 | of every byte before it (the rule binary-version-reader follows when it writes) |
//! | suffix size | `u16` LE: 40 with product data, 36 without |
//! | CRC-32 | of every byte before it, **big-endian** |
//!
//! The writer reads its output back with the reader's own prefix search and refuses to
//! return a module whose prefix would be found anywhere but where it was written.

use alloc::vec::Vec;
use core::fmt;

use sha2::{Digest, Sha256};

use super::prefix::{self, Flags, PREFIX_SIZE};
use super::{CRC32, MIN_SUFFIX_SIZE, PRODUCT_SUFFIX_SIZE};
use crate::model::{Dependency, ModuleFunction};

/// A module to write: what its prefix and suffix state, and its contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewModule<'a> {
    /// Platform id (6 Photon, 10 Electron, 12 Argon, 13 Boron, …).
    pub platform_id: u16,
    /// What the module is; not [`ModuleFunction::None`].
    pub function: ModuleFunction,
    /// Index among modules of the same function.
    pub index: u8,
    /// Module version (the prefix holds 16 bits).
    pub version: u32,
    /// Load address of the module's first byte.
    pub start_address: u32,
    /// Where the prefix goes: 0, or past the vector table (0x184 on STM32F2xx, 0x200 on
    /// nRF52840). Must be one of the offsets Particle's reader tries.
    pub prefix_offset: usize,
    /// The reserved prefix byte (the MCU target on Gen 3; 0 in Device OS releases).
    pub mcu_target: u8,
    /// Prefix flags: only [`Flags::DROP_MODULE_INFO`] (radio stacks, assets) or none; the
    /// other flags need structure this writer does not make.
    pub flags: Flags,
    /// Required modules, at most two (the prefix's two slots), each version 16 bits.
    pub dependencies: &'a [Dependency],
    /// Product id and product version for the suffix (`0xFFFF, 0xFFFF` in Device OS
    /// system modules); `None` writes the short suffix without them (SoftDevices).
    pub product: Option<(u16, u16)>,
    /// The module's contents, without prefix and suffix.
    pub contents: &'a [u8],
}

/// Why a module could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The function is [`ModuleFunction::None`] (code 0), which marks an empty slot.
    NoFunction,
    /// The module version does not fit the prefix's 16 bits.
    VersionTooLarge(u32),
    /// More than two dependencies.
    TooManyDependencies(usize),
    /// A dependency's function is [`ModuleFunction::None`] or its version does not fit 16
    /// bits.
    BadDependency(Dependency),
    /// Flags other than DROP_MODULE_INFO were asked for.
    UnsupportedFlags(u8),
    /// The prefix offset lies past the end of the contents.
    PrefixOffsetPastContents {
        /// The prefix offset asked for.
        prefix_offset: usize,
        /// The contents' length.
        len: usize,
    },
    /// The module would end past the 32-bit address space.
    AddressOverflow,
    /// Particle's reader would take the prefix to be at another offset (or nowhere: `None`).
    PrefixNotFoundBack {
        /// The offset the prefix was written at.
        written: usize,
        /// Where the reader finds one instead.
        found: Option<usize>,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WriteError::NoFunction => f.write_str("a module needs a function (code 0 marks an empty slot)"),
            WriteError::VersionTooLarge(v) => write!(f, "module version {v} does not fit 16 bits"),
            WriteError::TooManyDependencies(n) => write!(f, "{n} dependencies; a Particle prefix holds two"),
            WriteError::BadDependency(d) => write!(
                f,
                "dependency {} {} v{} cannot be stored (no function, or a version above 16 bits)",
                d.function.name(),
                d.index,
                d.version
            ),
            WriteError::UnsupportedFlags(flags) => {
                write!(f, "flags {flags:#04x}: only DROP_MODULE_INFO (0x01) can be written")
            }
            WriteError::PrefixOffsetPastContents { prefix_offset, len } => {
                write!(f, "prefix offset {prefix_offset:#x} is past the {len} bytes of contents")
            }
            WriteError::AddressOverflow => f.write_str("the module would end past the 32-bit address space"),
            WriteError::PrefixNotFoundBack { written, found: Some(found) } => {
                write!(f, "prefix written at {written:#x} but Particle's reader would find one at {found:#x}")
            }
            WriteError::PrefixNotFoundBack { written, found: None } => {
                write!(f, "prefix written at {written:#x} but Particle's reader would find none")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WriteError {}

/// Writes `module` as a Particle module file.
pub fn write(module: &NewModule<'_>) -> Result<Vec<u8>, WriteError> {
    if module.function == ModuleFunction::None {
        return Err(WriteError::NoFunction);
    }
    let version = u16::try_from(module.version).map_err(|_| WriteError::VersionTooLarge(module.version))?;
    if module.dependencies.len() > 2 {
        return Err(WriteError::TooManyDependencies(module.dependencies.len()));
    }
    if module.flags.0 & !Flags::DROP_MODULE_INFO != 0 {
        return Err(WriteError::UnsupportedFlags(module.flags.0));
    }
    let (contents, at) = (module.contents, module.prefix_offset);
    if at > contents.len() {
        return Err(WriteError::PrefixOffsetPastContents { prefix_offset: at, len: contents.len() });
    }
    let mut slots = [[0u8; 4]; 2];
    for (slot, dep) in slots.iter_mut().zip(module.dependencies) {
        let version = u16::try_from(dep.version).ok().filter(|_| dep.function != ModuleFunction::None);
        let version = version.ok_or(WriteError::BadDependency(*dep))?;
        let [lo, hi] = version.to_le_bytes();
        *slot = [dep.function.code(), dep.index, lo, hi];
    }

    let suffix_size = if module.product.is_some() { PRODUCT_SUFFIX_SIZE } else { MIN_SUFFIX_SIZE };
    let len = contents.len() + PREFIX_SIZE + suffix_size + 4;
    // The end address is the CRC's address: the start plus everything before the CRC.
    let end_address = u32::try_from(len - 4)
        .ok()
        .and_then(|before_crc| module.start_address.checked_add(before_crc))
        .ok_or(WriteError::AddressOverflow)?;

    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&contents[..at]);
    out.extend_from_slice(&module.start_address.to_le_bytes());
    out.extend_from_slice(&end_address.to_le_bytes());
    out.push(module.mcu_target);
    out.push(module.flags.0);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&module.platform_id.to_le_bytes());
    out.push(module.function.code());
    out.push(module.index);
    out.extend_from_slice(&slots[0]);
    out.extend_from_slice(&slots[1]);
    out.extend_from_slice(&contents[at..]);
    if let Some((id, product_version)) = module.product {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&product_version.to_le_bytes());
    }
    out.extend_from_slice(&[0, 0]); // reserved
    let sha: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sha);
    // Both suffix sizes are below 256, so the cast is exact.
    out.extend_from_slice(&(suffix_size as u16).to_le_bytes());
    let crc = CRC32.checksum(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(out.len(), len);

    let (found, score) = prefix::locate(&out);
    if score == 0 || found != at {
        return Err(WriteError::PrefixNotFoundBack { written: at, found: (score > 0).then_some(found) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{parse, prefix::PREFERRED_OFFSETS, Module};
    use super::*;
    use crate::model::{Format, Integrity};
    use alloc::vec;

    const DEP_PART1: Dependency = Dependency { function: ModuleFunction::SystemPart, index: 1, version: 3000 };
    const DEP_BOOT: Dependency = Dependency { function: ModuleFunction::Bootloader, index: 0, version: 1100 };

    fn module<'a>(contents: &'a [u8], dependencies: &'a [Dependency]) -> NewModule<'a> {
        NewModule {
            platform_id: 12,
            function: ModuleFunction::SystemPart,
            index: 1,
            version: 3000,
            start_address: 0x0003_0000,
            prefix_offset: 0x200,
            mcu_target: 0,
            flags: Flags(0),
            dependencies,
            product: Some((0xffff, 0xffff)),
            contents,
        }
    }

    /// Writes `m`, reads it back and checks every field the reader reports against what was
    /// asked for, and that the contents come back around the prefix and suffix.
    fn check_round_trip(m: &NewModule<'_>) -> Vec<u8> {
        let bytes = write(m).unwrap_or_else(|e| panic!("{m:?}: {e}"));
        let read: Module<'_> = parse(&bytes).unwrap_or_else(|e| panic!("written module does not parse: {e}"));
        let info = &read.info;
        assert_eq!(info.format, Format::Particle);
        assert_eq!(info.platform_id, m.platform_id);
        assert_eq!(info.function, m.function);
        assert_eq!((info.index, info.version, info.flags), (m.index, m.version, m.flags.0));
        assert_eq!(info.header_offset as usize, m.prefix_offset);
        assert_eq!(info.start_address, m.start_address);
        assert_eq!(u64::from(info.end_address - info.start_address) + 4, bytes.len() as u64);
        assert_eq!(info.dependencies().copied().collect::<Vec<_>>(), m.dependencies);
        assert_eq!((info.product_id, info.product_version), (m.product.map(|p| p.0), m.product.map(|p| p.1)));
        assert_eq!((info.crc_ok, info.integrity), (Some(true), Integrity::Valid));
        assert_eq!(info.size as usize, bytes.len());
        assert_eq!(read.prefix().mcu_target, m.mcu_target);
        assert!(read.sha256_matches_contents());
        assert_eq!(read.prefix_extensions().count() + read.suffix_extensions().count(), 0);
        let suffix = usize::from(read.suffix().size) + 4;
        assert_eq!(suffix, if m.product.is_some() { 44 } else { 40 });
        let mut contents = bytes[..m.prefix_offset].to_vec();
        contents.extend_from_slice(&bytes[m.prefix_offset + PREFIX_SIZE..bytes.len() - suffix]);
        assert_eq!(contents, m.contents);
        bytes
    }

    /// (what, function, index, prefix offset, flags, dependencies, product)
    type Case<'a> = (&'a str, ModuleFunction, u8, usize, u8, &'a [Dependency], Option<(u16, u16)>);

    #[test]
    fn each_kind_of_module_reads_back_as_written() {
        let code: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let both = [DEP_PART1, DEP_BOOT];
        let cases: [Case<'_>; 6] = [
            ("Gen 2 bootloader", ModuleFunction::Bootloader, 0, 0x184, 0, &[], Some((0xffff, 0xffff))),
            ("Gen 2 system part", ModuleFunction::SystemPart, 2, 0x184, 0, &both, Some((0xffff, 0xffff))),
            ("Gen 3 system part", ModuleFunction::SystemPart, 1, 0x200, 0, &both[1..], Some((0xffff, 0xffff))),
            ("SoftDevice", ModuleFunction::RadioStack, 0, 0, Flags::DROP_MODULE_INFO, &both[1..], None),
            ("application", ModuleFunction::UserPart, 1, 0, 0, &both[..1], Some((12, 7))),
            ("asset", ModuleFunction::Asset, 0, 0, Flags::DROP_MODULE_INFO, &[], Some((0, 0))),
        ];
        for (what, function, index, prefix_offset, flags, dependencies, product) in cases {
            let m = NewModule {
                function,
                index,
                prefix_offset,
                flags: Flags(flags),
                product,
                ..module(&code, dependencies)
            };
            let bytes = check_round_trip(&m);
            assert_eq!(bytes.len(), code.len() + PREFIX_SIZE + if product.is_some() { 44 } else { 40 }, "{what}");
        }
    }

    /// Seeded random modules of every shape the writer accepts: each is read back as
    /// written, or refused because the reader would find its prefix elsewhere.
    #[test]
    fn random_modules_read_back_as_written() {
        let mut x = 0x5eed_0000_d00d_f00du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut written, mut refused) = (0, 0);
        for _ in 0..1500 {
            let len = (next() % 2500) as usize;
            let contents: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let offsets: Vec<usize> = PREFERRED_OFFSETS.iter().copied().filter(|&o| o <= len).collect();
            let prefix_offset = offsets[(next() % offsets.len() as u64) as usize];
            let function = ModuleFunction::from_code(1 + (next() % 9) as u8);
            let dep = |r: u64| Dependency {
                function: ModuleFunction::from_code(1 + (r % 9) as u8),
                index: (r >> 8) as u8,
                version: u32::from((r >> 16) as u16),
            };
            let deps = [dep(next()), dep(next())];
            let r = next();
            let m = NewModule {
                platform_id: [6, 10, 12, 13, 26, 32][(r % 6) as usize],
                function,
                index: (r >> 8) as u8,
                version: u32::from((r >> 16) as u16),
                start_address: (next() as u32) & 0x0fff_fffc,
                prefix_offset,
                mcu_target: (r >> 32) as u8,
                flags: Flags(((r >> 40) & 1) as u8),
                dependencies: &deps[..(r >> 48) as usize % 3],
                product: (r >> 50 & 1 == 1).then_some(((r >> 51) as u16, (r >> 3) as u16)),
                contents: &contents,
            };
            match write(&m) {
                Ok(_) => {
                    check_round_trip(&m);
                    written += 1;
                }
                Err(WriteError::PrefixNotFoundBack { .. }) => refused += 1,
                Err(e) => panic!("{m:?}: {e}"),
            }
        }
        assert!(written >= 1490, "{written} written, {refused} refused");
    }

    #[test]
    fn what_cannot_be_written_is_refused() {
        let code = [0u8; 100];
        let three = [DEP_BOOT; 3];
        let none = [Dependency { function: ModuleFunction::None, index: 0, version: 1 }];
        let wide = [Dependency { version: 70_000, ..DEP_BOOT }];
        let base = NewModule { prefix_offset: 0, ..module(&code, &[]) };
        let cases = [
            (NewModule { function: ModuleFunction::None, ..base }, WriteError::NoFunction),
            (NewModule { version: 65_536, ..base }, WriteError::VersionTooLarge(65_536)),
            (NewModule { dependencies: &three, ..base }, WriteError::TooManyDependencies(3)),
            (NewModule { dependencies: &none, ..base }, WriteError::BadDependency(none[0])),
            (NewModule { dependencies: &wide, ..base }, WriteError::BadDependency(wide[0])),
            (NewModule { flags: Flags(Flags::COMPRESSED), ..base }, WriteError::UnsupportedFlags(0x02)),
            (
                NewModule { prefix_offset: 0x184, ..base },
                WriteError::PrefixOffsetPastContents { prefix_offset: 0x184, len: 100 },
            ),
            (NewModule { start_address: u32::MAX - 100, ..base }, WriteError::AddressOverflow),
            (NewModule { prefix_offset: 6, ..base }, WriteError::PrefixNotFoundBack { written: 6, found: None }),
        ];
        for (m, expected) in cases {
            assert_eq!(write(&m), Err(expected), "{m:?}");
        }
        // A plausible prefix at an offset the reader tries first, describing the whole file,
        // wins over the one written at 0x200.
        let mut contents = vec![0u8; 0x200];
        let file_len = (0x200 + PREFIX_SIZE + 44) as u32;
        contents[4..8].copy_from_slice(&(file_len - 4).to_le_bytes());
        contents[12..16].copy_from_slice(&[12, 0, 5, 1]);
        let outer = NewModule { contents: &contents, ..module(&[], &[]) };
        assert_eq!(write(&outer), Err(WriteError::PrefixNotFoundBack { written: 0x200, found: Some(0) }));
    }

    /// Real Device OS modules that follow the plain layout come out of the writer byte for
    /// byte, from their contents and the fields the reader found.
    #[test]
    fn real_plain_modules_are_rewritten_byte_for_byte() {
        let mut rewritten = 0;
        for path in tern_testkit::corpus_files("particle/releases") {
            let bytes = std::fs::read(&path).expect("corpus file is readable");
            let Ok(read) = parse(&bytes) else { continue };
            let suffix_size = usize::from(read.suffix().size);
            let plain = read.info.flags & !Flags::DROP_MODULE_INFO == 0
                && (suffix_size == MIN_SUFFIX_SIZE || suffix_size == PRODUCT_SUFFIX_SIZE)
                && read.suffix().reserved == 0
                && read.prefix().module_len() == Some(bytes.len() as u64)
                && read.sha256_matches_contents();
            if !plain {
                continue;
            }
            let at = read.prefix_offset();
            let mut contents = bytes[..at].to_vec();
            contents.extend_from_slice(&bytes[at + PREFIX_SIZE..bytes.len() - suffix_size - 4]);
            let deps: Vec<Dependency> = read.info.dependencies().copied().collect();
            let m = NewModule {
                platform_id: read.info.platform_id,
                function: read.info.function,
                index: read.info.index,
                version: read.info.version,
                start_address: read.info.start_address,
                prefix_offset: at,
                mcu_target: read.prefix().mcu_target,
                flags: Flags(read.info.flags),
                dependencies: &deps,
                product: read.info.product_id.zip(read.info.product_version),
                contents: &contents,
            };
            let out = write(&m).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(out == bytes, "{}: rewritten module differs", path.display());
            rewritten += 1;
        }
        eprintln!("{rewritten} real modules rewritten byte for byte");
        assert!(rewritten >= 50, "only {rewritten} real modules rewritten");
    }
}
