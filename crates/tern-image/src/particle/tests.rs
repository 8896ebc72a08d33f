//! Edge cases of the Particle reader on crafted modules, and robustness on real ones.
//! (Agreement with Particle's own reader is tested in `tern-cli/tests/it/particle_oracle.rs`.)

use sha2::{Digest, Sha256};

use super::*;

/// One extension: type, length (header included), payload.
fn ext(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = kind.to_le_bytes().to_vec();
    out.extend_from_slice(&((payload.len() + 4) as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A module to build, field by field.
#[derive(Clone)]
struct Spec {
    /// Bytes before the prefix (a vector table).
    prefix_offset: usize,
    start_address: u32,
    flags: u8,
    version: u16,
    platform_id: u16,
    function: u8,
    index: u8,
    dependencies: [(u8, u8, u16); 2],
    prefix_extensions: Vec<u8>,
    body: Vec<u8>,
    suffix_extensions: Vec<u8>,
    product: Option<(u16, u16)>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            prefix_offset: 0,
            start_address: 0x000d_4000,
            flags: 0,
            version: 6,
            platform_id: 12,
            function: 5,
            index: 1,
            dependencies: [(4, 1, 4100), (0, 0, 0)],
            prefix_extensions: Vec::new(),
            body: (0..200u8).collect(),
            suffix_extensions: Vec::new(),
            product: Some((12, 3)),
        }
    }
}

/// Lays the module out as Device OS does: prefix (with end address), contents, suffix with
/// the SHA-256 of everything before it, big-endian CRC-32 of everything before it.
fn build(spec: &Spec) -> Vec<u8> {
    let mut out = vec![0u8; spec.prefix_offset];
    out.extend_from_slice(&spec.start_address.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // end address, filled in below
    out.push(0);
    out.push(spec.flags);
    out.extend_from_slice(&spec.version.to_le_bytes());
    out.extend_from_slice(&spec.platform_id.to_le_bytes());
    out.push(spec.function);
    out.push(spec.index);
    for (function, index, version) in spec.dependencies {
        out.push(function);
        out.push(index);
        out.extend_from_slice(&version.to_le_bytes());
    }
    out.extend_from_slice(&spec.prefix_extensions);
    out.extend_from_slice(&spec.body);
    out.extend_from_slice(&spec.suffix_extensions);
    let mut suffix_size = MIN_SUFFIX_SIZE + spec.suffix_extensions.len();
    if let Some((id, version)) = spec.product {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        suffix_size += 4;
    }
    out.extend_from_slice(&[0, 0]); // reserved
    let end = spec.start_address + (out.len() + 32 + 2) as u32;
    out[spec.prefix_offset + 4..spec.prefix_offset + 8].copy_from_slice(&end.to_le_bytes());
    let sha: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sha);
    out.extend_from_slice(&(suffix_size as u16).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    fix_crc(&mut out);
    out
}

/// Rewrites the last 4 bytes as the CRC-32 of the others, after a deliberate change.
fn fix_crc(bytes: &mut Vec<u8>) {
    bytes.truncate(bytes.len() - 4);
    let crc = CRC32.checksum(bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
}

fn corpus_module(name: &str) -> Vec<u8> {
    let path = tern_testkit::corpus().join("particle/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn crafted_module_reads_back_field_by_field() {
    let spec = Spec::default();
    let bytes = build(&spec);
    let module = parse(&bytes).expect("a well-formed module");
    let info = &module.info;
    assert_eq!(info.format, Format::Particle);
    assert_eq!(info.platform_id, 12);
    assert_eq!(info.function, ModuleFunction::UserPart);
    assert_eq!((info.index, info.version, info.flags), (1, 6, 0));
    assert_eq!(info.header_offset, 0);
    assert_eq!(info.start_address, 0x000d_4000);
    assert_eq!(u64::from(info.end_address - info.start_address) + 4, bytes.len() as u64);
    let deps: Vec<_> = info.dependencies().copied().collect();
    assert_eq!(deps, [Dependency { function: ModuleFunction::SystemPart, index: 1, version: 4100 }]);
    assert_eq!(info.sha256.as_ref().map(|s| &s[..]), Some(&bytes[bytes.len() - 38..bytes.len() - 6]));
    assert_eq!((info.product_id, info.product_version), (Some(12), Some(3)));
    assert_eq!((info.crc_ok, info.integrity), (Some(true), Integrity::Valid));
    assert_eq!(info.size as usize, bytes.len());
    assert_eq!(module.confidence(), prefix::FULL_CONFIDENCE);
    assert!(module.sha256_matches_contents());
    assert_eq!(module.prefix_extensions().count(), 0);
    assert_eq!(module.suffix_extensions().count(), 0);
    assert_eq!(module.compression(), None);
}

#[test]
fn prefix_is_found_where_particle_puts_it() {
    // (bytes before the prefix, expected offset): the preferred offsets, then scanned ones.
    let cases = [(0, 0), (0x200, 0x200), (0x184, 0x184), (0xc0, 0xc0), (0x10c, 0x10c), (0x20, 0x20), (0x1ffc, 0x1ffc)];
    for (before, expected) in cases {
        let bytes = build(&Spec { prefix_offset: before, body: vec![0x5a; 9000], ..Spec::default() });
        let module = parse(&bytes).unwrap_or_else(|e| panic!("prefix at {before:#x}: {e}"));
        assert_eq!(module.prefix_offset(), expected, "prefix at {before:#x}");
        assert_eq!(module.info.header_offset as usize, expected);
    }
    // Beyond 8 KiB nobody looks, and a prefix at an unaligned offset is not found either
    // (a low-confidence false match elsewhere may be, as for Particle's reader).
    for before in [0x2004, 0x21] {
        let bytes = build(&Spec { prefix_offset: before, body: vec![0x5a; 9000], ..Spec::default() });
        let found = parse(&bytes).map(|m| m.prefix_offset());
        assert!(found != Ok(before), "prefix at {before:#x} found: {found:?}");
    }
}

#[test]
fn false_prefixes_are_rejected() {
    let good = build(&Spec::default());
    let end_address = u32::from_le_bytes(good[4..8].try_into().expect("4 bytes"));
    // (what, byte offset in the prefix, bytes written there)
    let cases: [(&str, usize, Vec<u8>); 6] = [
        ("end equals start", 4, 0x000d_4000u32.to_le_bytes().to_vec()),
        ("end below start", 4, 0x000d_3000u32.to_le_bytes().to_vec()),
        ("module longer than the file", 4, (end_address + 1).to_le_bytes().to_vec()),
        ("function 0", 14, vec![0]),
        ("empty dependency with an index", 20, vec![0, 1, 0, 0]),
        ("empty dependency with a version", 20, vec![0, 0, 1, 0]),
    ];
    for (what, at, patch) in cases {
        let mut bytes = good.clone();
        bytes[at..at + patch.len()].copy_from_slice(&patch);
        fix_crc(&mut bytes);
        assert_eq!(parse(&bytes).map(|m| m.info), Err(Error::NoPrefix), "{what}");
    }
}

#[test]
fn confidence_scores_each_sanity_check() {
    let spec = Spec { body: vec![0; 300], ..Spec::default() };
    let check = |what: &str, spec: &Spec, padding: usize, expected: u8| {
        let mut bytes = build(spec);
        bytes.extend(std::iter::repeat_n(0u8, padding));
        assert_eq!(prefix::confidence(&bytes, spec.prefix_offset), expected, "{what}");
    };
    check("everything known, exact size", &spec, 0, 7);
    check("unknown platform", &Spec { platform_id: 103, ..spec.clone() }, 0, 6);
    check("unknown function", &Spec { function: 10, ..spec.clone() }, 0, 6);
    check("unknown dependency function", &Spec { dependencies: [(11, 1, 1), (0, 0, 0)], ..spec.clone() }, 0, 6);
    check("both dependencies unknown", &Spec { dependencies: [(11, 1, 1), (12, 1, 1)], ..spec.clone() }, 0, 5);
    check("padded file", &spec, 16, 6);
    check("unknown flag", &Spec { flags: 0x20, ..spec.clone() }, 0, 6);
    check("platform 0 (Core) is known", &Spec { platform_id: 0, ..spec.clone() }, 0, 7);
    check(
        "nothing known",
        &Spec { platform_id: 999, function: 200, dependencies: [(99, 0, 0), (98, 0, 0)], flags: 0x80, ..spec },
        5,
        1,
    );
}

#[test]
fn full_confidence_beats_an_earlier_partial_match_and_ties_go_to_the_first() {
    // A padded module scores 6 at 0x200; with nothing better anywhere, it is the one found.
    let inner = build(&Spec { prefix_offset: 0x200, ..Spec::default() });
    let mut bytes = inner.clone();
    bytes.extend_from_slice(&[0xff; 64]);
    fix_crc(&mut bytes);
    assert_eq!(parse(&bytes).map(|m| (m.prefix_offset(), m.confidence())), Ok((0x200, 6)));

    // Unknown platform at 0 (score 6) versus a fully known prefix at 0x184 (score 7).
    let mut two = build(&Spec { prefix_offset: 0x184, ..Spec::default() });
    let mut at_zero = two[0x184..0x184 + PREFIX_SIZE].to_vec();
    at_zero[12..14].copy_from_slice(&999u16.to_le_bytes());
    at_zero[0..4].copy_from_slice(&0u32.to_le_bytes());
    let end = two.len() as u32 - 4;
    at_zero[4..8].copy_from_slice(&end.to_le_bytes());
    two[..PREFIX_SIZE].copy_from_slice(&at_zero);
    // Offset 0 now describes the whole file too, but its platform is unknown: 0x184 wins.
    let module = parse(&two).expect("parses");
    assert_eq!((module.prefix_offset(), module.confidence()), (0x184, 7));
    // With the platform known at 0 as well, the first candidate in Particle's order wins.
    two[12..14].copy_from_slice(&12u16.to_le_bytes());
    assert_eq!(parse(&two).map(|m| m.prefix_offset()), Ok(0));
}

#[test]
fn crc_mismatch_is_reported_not_an_error() {
    let good = build(&Spec::default());
    for at in [0, 30, good.len() / 2, good.len() - 5, good.len() - 1] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x80;
        let module = parse(&bytes).expect("still a module");
        assert_eq!(module.info.crc_ok, Some(false), "byte {at}");
        assert_eq!(module.info.integrity, Integrity::Invalid, "byte {at}");
        assert_ne!(module.stored_crc(), module.computed_crc(), "byte {at}");
    }
    // The CRC is stored big-endian: the same value little-endian is a mismatch.
    let mut little = good.clone();
    let n = little.len();
    little[n - 4..].reverse();
    assert_eq!(parse(&little).map(|m| m.info.crc_ok), Ok(Some(false)));
}

#[test]
fn product_fields_need_a_40_byte_suffix() {
    let with = build(&Spec::default());
    let without = build(&Spec { product: None, ..Spec::default() });
    let product = |bytes: &[u8]| parse(bytes).map(|m| (m.info.product_id, m.info.product_version, m.suffix().size));
    assert_eq!(product(&with), Ok((Some(12), Some(3), 40)));
    assert_eq!(product(&without), Ok((None, None, 36)));
}

#[test]
fn prefix_extensions_are_read_up_to_end() {
    let location = ext(0x0002, &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    let spec = Spec {
        flags: Flags::PREFIX_EXTENSIONS,
        prefix_extensions: [location.clone(), ext(0x0000, &[])].concat(),
        ..Spec::default()
    };
    let bytes = build(&spec);
    let module = parse(&bytes).expect("parses");
    assert_eq!(module.prefix_size(), PREFIX_SIZE + 16 + 4);
    let found: Vec<_> = module.prefix_extensions().map(|e| (e.offset(), e.kind(), e.data())).collect();
    assert_eq!(
        found,
        [
            (
                24,
                ExtensionKind::DynamicLocation,
                ExtensionData::DynamicLocation {
                    module_start_address: 1,
                    dynalib_load_address: 2,
                    dynalib_start_address: 3
                }
            ),
            (40, ExtensionKind::End, ExtensionData::End),
        ]
    );

    // (what, extensions after the prefix, expected error)
    let cases = [
        ("no END", location.clone(), Error::UnterminatedPrefixExtensions { prefix_offset: 0 }),
        ("erased flash (type 0xffff)", vec![0xff; 8], Error::UnterminatedPrefixExtensions { prefix_offset: 0 }),
        ("zero length", [location, vec![0x11, 0, 0, 0]].concat(), Error::ZeroLengthExtension { offset: 40 }),
        ("END of length 0", vec![0, 0, 0, 0], Error::ZeroLengthExtension { offset: 24 }),
    ];
    for (what, extensions, error) in cases {
        let bytes = build(&Spec { prefix_extensions: extensions, body: vec![0x77; 200], ..spec.clone() });
        assert_eq!(parse(&bytes).map(|m| m.info), Err(error), "{what}");
    }
}

#[test]
fn suffix_extensions_are_walked_and_checked() {
    let name = ext(0x0011, b"tinker");
    let asset = ext(0x0012, &[[0u8, 3].as_slice(), &[0xaa, 0xbb, 0xcc], b"cat.jpg"].concat());
    let spec = Spec { suffix_extensions: [name, asset, ext(0x0000, &[0])].concat(), ..Spec::default() };
    let bytes = build(&spec);
    let module = parse(&bytes).expect("parses");
    let data: Vec<_> = module.suffix_extensions().map(|e| e.data()).collect();
    assert_eq!(
        data,
        [
            ExtensionData::Name(b"tinker"),
            ExtensionData::AssetDependency { hash_type: 0, hash: &[0xaa, 0xbb, 0xcc], name: b"cat.jpg" },
            ExtensionData::End,
        ]
    );
    assert_eq!(module.info.product_id, Some(12));

    let broken = Spec { suffix_extensions: [ext(0x0011, b"x"), vec![0x11, 0, 0, 0]].concat(), ..Spec::default() };
    let bytes = build(&broken);
    let offset = bytes.len() - 4 - 40 - 9;
    assert_eq!(parse(&bytes).map(|m| m.info), Err(Error::ZeroLengthExtension { offset: offset + 5 }));
}

#[test]
fn compression_header_is_read_and_checked() {
    let header = |size: u16, method: u8, bits: u8| {
        [size.to_le_bytes().as_slice(), &[method, bits], &5000u32.to_le_bytes(), &[0x42; 100]].concat()
    };
    let check = |body: Vec<u8>, expected: Result<(u16, u8, u8, u32), CompressionError>| {
        let bytes = build(&Spec { flags: Flags::COMPRESSED, body, ..Spec::default() });
        let module = parse(&bytes).expect("a compressed module is still a module");
        let got = module
            .compression()
            .expect("flag set")
            .map(|h| (h.header_size, h.method, h.window_bits, h.uncompressed_size));
        assert_eq!(got, expected);
    };
    check(header(8, 0, 0), Ok((8, 0, 0, 5000)));
    check(header(8, 0, 15), Ok((8, 0, 15, 5000)));
    check(header(12, 0, 9), Ok((12, 0, 9, 5000)));
    check(header(4, 0, 0), Err(CompressionError::HeaderTooSmall(4)));
    check(header(8, 1, 0), Err(CompressionError::UnknownMethod(1)));
    check(header(8, 0, 7), Err(CompressionError::BadWindowBits(7)));
    check(header(8, 0, 16), Err(CompressionError::BadWindowBits(16)));
    check(header(0x4000, 0, 0), Err(CompressionError::Truncated));
    check(vec![8, 0, 0], Err(CompressionError::Truncated));
}

#[test]
fn combined_files_split_into_their_modules() {
    let first = build(&Spec { flags: Flags::COMBINED, function: 4, index: 1, ..Spec::default() });
    let second = build(&Spec { prefix_offset: 0x200, function: 4, index: 2, ..Spec::default() });
    let last_combined = build(&Spec { flags: Flags::COMBINED, index: 3, ..Spec::default() });
    let split = |parts: &[&[u8]]| -> Vec<Result<(usize, u8, u8), Error>> {
        let bytes = parts.concat();
        split_combined(&bytes).map(|r| r.map(|(at, m)| (at, m.info.function.code(), m.info.index))).collect()
    };
    assert_eq!(split(&[&first, &second]), [Ok((0, 4, 1)), Ok((first.len(), 4, 2))]);
    assert_eq!(split(&[&second]), [Ok((0, 4, 2))]);
    let end = first.len() + second.len();
    assert_eq!(
        split(&[&first, &second, &[0xff; 8]]),
        [Ok((0, 4, 1)), Ok((first.len(), 4, 2)), Err(Error::CombinedEndMismatch { offset: end })]
    );
    let end = first.len() + last_combined.len();
    assert_eq!(
        split(&[&first, &last_combined]),
        [Ok((0, 4, 1)), Ok((first.len(), 5, 3)), Err(Error::CombinedEndMismatch { offset: end })]
    );
    assert_eq!(split(&[&first, &second[..100]]), [Ok((0, 4, 1)), Err(Error::NoPrefix)]);
    assert_eq!(split(&[&first, &[0; 10]]), [Ok((0, 4, 1)), Err(Error::CombinedPartTruncated { offset: first.len() })]);
}

#[test]
fn a_prefix_without_room_for_a_suffix_is_too_short() {
    // start 0, end 28: a 32-byte module, long enough for its prefix but not for a suffix.
    let mut bytes = vec![0u8; 32];
    bytes[4..8].copy_from_slice(&28u32.to_le_bytes());
    bytes[12] = 12;
    bytes[14] = 5;
    assert_eq!(parse(&bytes).map(|m| m.info), Err(Error::TooShort { len: 32 }));
}

#[test]
fn every_truncation_of_real_modules_is_handled() {
    for name in ["040_user-part.bin", "tracker-user-part-extensions.bin"] {
        let bytes = corpus_module(name);
        let whole = parse(&bytes).expect("the real module parses").info;
        assert_eq!(whole.crc_ok, Some(true));
        // No cut, at the end or at the start, may read as an intact module.
        for len in 0..bytes.len() {
            let head = parse(&bytes[..len]).map(|m| m.info.crc_ok);
            assert_ne!(head, Ok(Some(true)), "{name} cut to its first {len} bytes reads as intact");
        }
        // Cutting the start costs a full prefix scan each time; every 3rd cut is enough.
        for cut in (1..bytes.len()).step_by(3) {
            let tail = parse(&bytes[cut..]).map(|m| m.info.crc_ok);
            assert_ne!(tail, Ok(Some(true)), "{name} without its first {cut} bytes reads as intact");
        }
    }
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let real = corpus_module("p2-user-part.bin");
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let len = (next() % 600) as usize;
        let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = parse(&noise);
        let mut mutated = real.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % mutated.len();
            mutated[at] = next() as u8;
        }
        if let Ok(module) = parse(&mutated) {
            let _ = (module.prefix_extensions().count(), module.suffix_extensions().count(), module.compression());
            for e in module.prefix_extensions().chain(module.suffix_extensions()) {
                let _ = e.data();
            }
        }
        let _ = split_combined(&mutated).count();
    }
}
