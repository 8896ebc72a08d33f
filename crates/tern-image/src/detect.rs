//! Format auto-detection: one entry point that reads any supported module.
//!
//! The order is fixed and cheap first: an MCUboot image is recognised by its magic number
//! (`crate::mcuboot::parse`); then a Particle module by its `module_info` prefix
//! ([`crate::particle::parse`], which rejects false matches); anything else is `raw`, bytes
//! without metadata. An MCUboot header is checked first because Particle's prefix has no
//! magic number and is found by scoring, while MCUboot's magic is unambiguous.
//!
//! The result is an [`Inspection`]: the [`ModuleInfo`] when a format recognised the bytes,
//! plus the [`Problem`]s found. It needs no allocation.

use core::fmt;

use crate::model::{Format, Integrity, ModuleInfo};
use crate::{mcuboot, particle};

/// At most this many problems are kept per inspection.
pub const MAX_PROBLEMS: usize = 4;

/// Something that makes a file invalid as a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The file is empty.
    Empty,
    /// No supported format recognised the bytes.
    Unrecognised,
    /// The MCUboot magic is there but the image could not be read.
    McuBoot(mcuboot::Error),
    /// The Particle prefix is there (or no prefix is) but the module could not be read.
    Particle(particle::Error),
    /// The stored CRC-32 does not match the contents.
    CrcMismatch {
        /// The CRC stored in the module.
        stored: u32,
        /// The CRC computed over the contents.
        computed: u32,
    },
    /// The module's integrity data (hash, signature) does not match its contents.
    IntegrityMismatch,
    /// The COMPRESSED flag is set but the compression header is unusable.
    Compression(particle::CompressionError),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => f.write_str("empty file"),
            Problem::Unrecognised => f.write_str("not a recognised module (no MCUboot header, no Particle prefix)"),
            // `mcuboot::Error` is only guaranteed to be `Debug` by the shared contract.
            Problem::McuBoot(err) => write!(f, "invalid MCUboot image: {err:?}"),
            Problem::Particle(err) => write!(f, "invalid Particle module: {err}"),
            Problem::CrcMismatch { stored, computed } => {
                write!(f, "CRC-32 mismatch: stored {stored:08x}, computed {computed:08x}")
            }
            Problem::IntegrityMismatch => f.write_str("integrity check failed (hash or signature does not match)"),
            Problem::Compression(err) => write!(f, "invalid compressed module: {err}"),
        }
    }
}

/// A short list of problems with a fixed capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    items: [Option<Problem>; MAX_PROBLEMS],
}

impl Problems {
    /// Adds a problem; beyond [`MAX_PROBLEMS`] further ones are dropped (the first ones
    /// already make the file invalid).
    pub fn push(&mut self, problem: Problem) {
        if let Some(free) = self.items.iter_mut().find(|slot| slot.is_none()) {
            *free = Some(problem);
        }
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.items.iter().flatten()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.iter().count()
    }
}

/// What [`inspect`] learned about a file.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The format recognised ([`Format::Raw`] when none was, or the file is empty).
    pub format: Format,
    /// The module's description, when its format could be read.
    pub info: Option<ModuleInfo>,
    /// Why the file is not a valid module (empty when it is).
    pub problems: Problems,
    /// Length of the file.
    pub size: usize,
    /// Whether the SHA-256 stored in the module ([`ModuleInfo::sha256`]) is the hash of
    /// the bytes it covers (Particle: every byte before it, the rule most modules follow;
    /// MCUboot: header and image); `None` when the module stores none. Information, not
    /// validity: some real Particle modules store a hash of something else.
    pub stored_sha256_matches: Option<bool>,
}

impl Inspection {
    /// Whether the bytes are a module of a supported format whose integrity data checks.
    pub fn is_valid(&self) -> bool {
        self.info.is_some() && self.problems.is_empty()
    }
}

/// Reads `bytes` as whichever supported format they are in.
pub fn inspect(bytes: &[u8]) -> Inspection {
    let mut inspection = Inspection {
        format: Format::Raw,
        info: None,
        problems: Problems::default(),
        size: bytes.len(),
        stored_sha256_matches: None,
    };
    if bytes.is_empty() {
        inspection.problems.push(Problem::Empty);
        return inspection;
    }
    match mcuboot::parse(bytes) {
        Ok(image) => {
            inspection.format = Format::McuBoot;
            let info = image.module_info();
            inspection.stored_sha256_matches = image.sha256().map(|stored| stored == image.computed_sha256());
            note_integrity(&mut inspection.problems, &info);
            inspection.info = Some(info);
            return inspection;
        }
        Err(mcuboot::Error::BadMagic) => {}
        #[allow(unreachable_patterns)] // other variants arrive with the MCUboot reader
        Err(err) => {
            inspection.format = Format::McuBoot;
            inspection.problems.push(Problem::McuBoot(err));
            return inspection;
        }
    }
    match particle::parse(bytes) {
        Ok(module) => {
            inspection.format = Format::Particle;
            if let Some(Err(err)) = module.compression() {
                inspection.problems.push(Problem::Compression(err));
            }
            // A combined file's last 4 bytes are the CRC of its last module only, so the
            // whole-file CRC Particle's reader reports fails even when every module is
            // intact; such a file is valid when each of its modules checks.
            let combined_intact = module.prefix().flags.combined() && combined_modules_intact(bytes);
            if module.info.crc_ok == Some(false) && !combined_intact {
                let (stored, computed) = (module.stored_crc(), module.computed_crc());
                inspection.problems.push(Problem::CrcMismatch { stored, computed });
            }
            inspection.stored_sha256_matches = Some(module.sha256_matches_contents());
            inspection.info = Some(module.info);
        }
        Err(particle::Error::NoPrefix) => inspection.problems.push(Problem::Unrecognised),
        Err(err) => {
            inspection.format = Format::Particle;
            inspection.problems.push(Problem::Particle(err));
        }
    }
    inspection
}

/// Whether `bytes` split into at least two Particle modules that each pass their CRC and
/// end exactly at the end of the file.
fn combined_modules_intact(bytes: &[u8]) -> bool {
    let mut count = 0;
    for part in particle::split_combined(bytes) {
        match part {
            Ok((_, module)) if module.info.crc_ok == Some(true) => count += 1,
            _ => return false,
        }
    }
    count >= 2
}

/// Records integrity failures stated in a format-independent description.
fn note_integrity(problems: &mut Problems, info: &ModuleInfo) {
    if info.integrity == Integrity::Invalid || info.crc_ok == Some(false) {
        problems.push(Problem::IntegrityMismatch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::particle::{CompressionError, Error as ParticleError};

    /// A committed fuzz seed (crafted files, see `fuzz/corpus/particle`).
    fn seed(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/particle").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// What `inspect` must conclude: format, and the kind of the first problem (if any).
    fn check(name: &str, format: Format, first_problem: Option<fn(&Problem) -> bool>) {
        let bytes = seed(name);
        let inspection = inspect(&bytes);
        assert_eq!(inspection.format, format, "{name}");
        assert_eq!(inspection.size, bytes.len(), "{name}");
        match first_problem {
            None => assert!(inspection.is_valid(), "{name}: {:?}", inspection.problems),
            Some(is_expected) => {
                assert!(!inspection.is_valid(), "{name}");
                let first = inspection.problems.iter().next().expect("a problem");
                assert!(is_expected(first), "{name}: {first:?}");
            }
        }
    }

    #[test]
    fn seeds_are_detected_and_judged() {
        type Case = (&'static str, Format, Option<fn(&Problem) -> bool>);
        let cases: [Case; 12] = [
            ("minimal.bin", Format::Particle, None),
            ("vector-0x200.bin", Format::Particle, None),
            ("scanned-0x20.bin", Format::Particle, None),
            ("suffix-extensions.bin", Format::Particle, None),
            ("combined.bin", Format::Particle, None),
            ("empty.bin", Format::Raw, Some(|p| *p == Problem::Empty)),
            ("crc-bad.bin", Format::Particle, Some(|p| matches!(p, Problem::CrcMismatch { .. }))),
            ("padded.bin", Format::Particle, Some(|p| matches!(p, Problem::CrcMismatch { .. }))),
            ("combined-missing-next.bin", Format::Particle, None),
            (
                "compressed-bad-method.bin",
                Format::Particle,
                Some(|p| *p == Problem::Compression(CompressionError::UnknownMethod(1))),
            ),
            (
                "prefix-extensions-unterminated.bin",
                Format::Particle,
                Some(|p| matches!(p, Problem::Particle(ParticleError::UnterminatedPrefixExtensions { .. }))),
            ),
            (
                "too-short-for-suffix.bin",
                Format::Particle,
                Some(|p| matches!(p, Problem::Particle(ParticleError::TooShort { .. }))),
            ),
        ];
        for (name, format, problem) in cases {
            check(name, format, problem);
        }
    }

    #[test]
    fn bytes_without_a_header_are_raw() {
        for bytes in [&b"x"[..], &[0u8; 4096], b"not a firmware module, just text"] {
            let inspection = inspect(bytes);
            assert_eq!((inspection.format, inspection.info), (Format::Raw, None));
            assert_eq!(inspection.problems.iter().collect::<Vec<_>>(), [&Problem::Unrecognised]);
        }
    }

    #[test]
    fn problems_keep_the_first_few() {
        let mut problems = Problems::default();
        assert!(problems.is_empty());
        for _ in 0..MAX_PROBLEMS + 2 {
            problems.push(Problem::Empty);
        }
        assert_eq!(problems.len(), MAX_PROBLEMS);
    }
}
