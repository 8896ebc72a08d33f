//! Unit tests: parsing edge cases on hand-built images, verification verdicts, the
//! writer's layout rules. Interoperability with imgtool is tested in `tern-cli`'s
//! integration tests, against the real tool.

use super::*;
use assembly::*;
use ed25519_dalek::SigningKey;

/// Hand assembly of images whose TLVs are chosen freely (hash and signature not valid).
mod assembly {
    use super::*;

    pub const BODY_LEN: usize = 40;

    pub fn tlv_area(magic: u16, tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut records = Vec::new();
        for (kind, value) in tlvs {
            records.extend_from_slice(&kind.to_le_bytes());
            records.extend_from_slice(&(value.len() as u16).to_le_bytes());
            records.extend_from_slice(value);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&magic.to_le_bytes());
        out.extend_from_slice(&((records.len() + 4) as u16).to_le_bytes());
        out.extend_from_slice(&records);
        out
    }

    /// Header (32 bytes) + body + a protected area when `protected` is `Some` + an
    /// unprotected area, with consistent sizes.
    pub fn assemble(protected: Option<&[(u16, &[u8])]>, unprotected: &[(u16, &[u8])]) -> Vec<u8> {
        let protected = protected.map(|tlvs| tlv_area(TLV_PROT_INFO_MAGIC, tlvs)).unwrap_or_default();
        let header = Header {
            load_addr: 0,
            header_size: 32,
            protected_tlv_size: protected.len() as u16,
            image_size: BODY_LEN as u32,
            flags: 0,
            version: Version { major: 1, minor: 2, revision: 3, build: 4 },
        };
        let mut out = header.to_bytes().to_vec();
        out.extend((0..BODY_LEN).map(|i| i as u8));
        out.extend_from_slice(&protected);
        out.extend_from_slice(&tlv_area(TLV_INFO_MAGIC, unprotected));
        out
    }

    pub fn set_u16(bytes: &mut [u8], at: usize, value: u16) {
        bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_u32(bytes: &mut [u8], at: usize, value: u32) {
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn dependency(image_id: u8, major: u8) -> ImageDependency {
    ImageDependency { image_id, flags: 0, min_version: Version { major, minor: 1, revision: 2, build: 3 } }
}

/// A signed image with every TLV Tern writes: 32-byte header, 40-byte body, protected
/// area of 40 bytes at 72, unprotected area of 144 bytes at 112, 256 bytes in all.
fn signed_image(config_change: impl FnOnce(&mut SignConfig)) -> Vec<u8> {
    let mut config = SignConfig {
        pad_header: true,
        version: Version { major: 1, minor: 2, revision: 3, build: 4 },
        security_counter: Some(7),
        dependencies: vec![dependency(1, 2)],
        tern_module: Some(TernModule { platform_id: 32, function: ModuleFunction::SystemPart, index: 1 }),
        ..SignConfig::default()
    };
    config_change(&mut config);
    let body: Vec<u8> = (0..BODY_LEN as u8).collect();
    sign(&config, &body, Some(&key(1))).expect("valid config")
}

fn check_parse(name: &str, bytes: &[u8], expected: Result<(), Error>) {
    assert_eq!(parse(bytes).map(|_| ()), expected, "case {name:?}: image {}", hex::encode(bytes));
}

#[test]
fn structural_edge_cases() {
    let sha = [0u8; 32];
    let good = assemble(Some(&[(tlv::SEC_CNT, &[1, 0, 0, 0])]), &[(tlv::SHA256, &sha)]);
    // header 32 + body 40: protected info at 72 (12 bytes), unprotected info at 84.
    let (prot, unprot) = (72, 84);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        f(&mut bytes);
        bytes
    };
    let nine_deps: Vec<(u16, &[u8])> = (0..9).map(|_| (tlv::DEPENDENCY, &[0u8; 12][..])).collect();
    let cases: Vec<(&str, Vec<u8>, Result<(), Error>)> = vec![
        ("well formed", good.clone(), Ok(())),
        ("empty", vec![], Err(Error::TooShort)),
        ("31 bytes", good[..31].to_vec(), Err(Error::TooShort)),
        ("short garbage", vec![1, 2, 3, 4, 5], Err(Error::BadMagic)),
        ("one byte of garbage", vec![1], Err(Error::BadMagic)),
        ("two bytes of magic", vec![0x3d, 0xb8], Err(Error::TooShort)),
        ("magic only", vec![0x3d, 0xb8, 0xf3, 0x96], Err(Error::TooShort)),
        ("bad magic", edit(&|b| b[0] ^= 1), Err(Error::BadMagic)),
        ("header size 0", edit(&|b| set_u16(b, 8, 0)), Err(Error::BadHeaderSize(0))),
        ("header size 31", edit(&|b| set_u16(b, 8, 31)), Err(Error::BadHeaderSize(31))),
        ("header size max", edit(&|b| set_u16(b, 8, u16::MAX)), Err(Error::Truncated)),
        ("image size max", edit(&|b| set_u32(b, 12, u32::MAX)), Err(Error::Truncated)),
        ("image size one more", edit(&|b| set_u32(b, 12, BODY_LEN as u32 + 1)), Err(Error::ProtectedSizeMismatch)),
        (
            "image size one more, no protected area",
            {
                let mut b = assemble(None, &[(tlv::SHA256, &sha)]);
                set_u32(&mut b, 12, BODY_LEN as u32 + 1);
                b
            },
            Err(Error::BadTlvInfoMagic),
        ),
        ("cut inside TLVs", good[..good.len() - 1].to_vec(), Err(Error::Truncated)),
        ("cut at TLV offset", good[..prot].to_vec(), Err(Error::Truncated)),
        ("header protected size differs", edit(&|b| set_u16(b, 10, 16)), Err(Error::ProtectedSizeMismatch)),
        (
            "protected area size 3",
            edit(&|b| {
                set_u16(b, 10, 3);
                set_u16(b, prot + 2, 3);
            }),
            Err(Error::BadTlvAreaSize),
        ),
        (
            "protected area size huge",
            edit(&|b| {
                set_u16(b, 10, u16::MAX);
                set_u16(b, prot + 2, u16::MAX);
            }),
            Err(Error::Truncated),
        ),
        ("protected TLV too long", edit(&|b| set_u16(b, prot + 6, 5)), Err(Error::TlvOverrun)),
        ("protected TLV len max", edit(&|b| set_u16(b, prot + 6, u16::MAX)), Err(Error::TlvOverrun)),
        ("unprotected magic", edit(&|b| b[unprot] ^= 0x10), Err(Error::BadTlvInfoMagic)),
        ("unprotected size 0", edit(&|b| set_u16(b, unprot + 2, 0)), Err(Error::BadTlvAreaSize)),
        ("unprotected size max", edit(&|b| set_u16(b, unprot + 2, u16::MAX)), Err(Error::Truncated)),
        ("unprotected TLV len max", edit(&|b| set_u16(b, unprot + 6, u16::MAX)), Err(Error::TlvOverrun)),
        (
            "unprotected TLV shorter than 32",
            edit(&|b| set_u16(b, unprot + 6, 31)),
            Err(Error::BadTlvLength(tlv::SHA256)),
        ),
        (
            "half a TLV header at the end",
            edit(&|b| {
                set_u16(b, unprot + 2, 36 + 4 + 2);
                b.extend_from_slice(&[0x10, 0]);
            }),
            Err(Error::TlvOverrun),
        ),
        ("slot padding after the image", edit(&|b| b.extend_from_slice(&[0xff; 100])), Ok(())),
        ("no protected area, header says none", assemble(None, &[(tlv::SHA256, &sha)]), Ok(())),
        (
            "no protected area, header says 8",
            {
                let mut b = assemble(None, &[(tlv::SHA256, &sha)]);
                set_u16(&mut b, 10, 8);
                b
            },
            Err(Error::ProtectedSizeMismatch),
        ),
        ("empty unprotected area", assemble(None, &[]), Ok(())),
        (
            "security counter len 3",
            assemble(Some(&[(tlv::SEC_CNT, &[1, 2, 3])]), &[]),
            Err(Error::BadTlvLength(tlv::SEC_CNT)),
        ),
        (
            "security counter unprotected",
            assemble(None, &[(tlv::SEC_CNT, &[1, 0, 0, 0])]),
            Err(Error::UnprotectedTlv(tlv::SEC_CNT)),
        ),
        (
            "dependency unprotected",
            assemble(None, &[(tlv::DEPENDENCY, &[0; 12])]),
            Err(Error::UnprotectedTlv(tlv::DEPENDENCY)),
        ),
        (
            "tern module unprotected",
            assemble(None, &[(tlv::TERN_MODULE, &[1, 4, 1, 0, 6, 0, 0, 0])]),
            Err(Error::UnprotectedTlv(tlv::TERN_MODULE)),
        ),
        (
            "tern module layout 2",
            assemble(Some(&[(tlv::TERN_MODULE, &[2, 4, 1, 0, 6, 0, 0, 0])]), &[]),
            Err(Error::BadTernModule),
        ),
        (
            "tern module len 7",
            assemble(Some(&[(tlv::TERN_MODULE, &[1, 4, 1, 0, 6, 0, 0])]), &[]),
            Err(Error::BadTlvLength(tlv::TERN_MODULE)),
        ),
        (
            "dependency len 11",
            assemble(Some(&[(tlv::DEPENDENCY, &[0; 11])]), &[]),
            Err(Error::BadTlvLength(tlv::DEPENDENCY)),
        ),
        (
            "two security counters",
            assemble(Some(&[(tlv::SEC_CNT, &[1, 0, 0, 0]), (tlv::SEC_CNT, &[2, 0, 0, 0])]), &[]),
            Err(Error::DuplicateTlv(tlv::SEC_CNT)),
        ),
        (
            "two hashes",
            assemble(None, &[(tlv::SHA256, &sha), (tlv::SHA256, &sha)]),
            Err(Error::DuplicateTlv(tlv::SHA256)),
        ),
        ("hash len 31", assemble(None, &[(tlv::SHA256, &sha[..31])]), Err(Error::BadTlvLength(tlv::SHA256))),
        ("key hash len 20", assemble(None, &[(tlv::KEYHASH, &sha[..20])]), Err(Error::BadTlvLength(tlv::KEYHASH))),
        ("signature len 63", assemble(None, &[(tlv::ED25519, &[0; 63])]), Err(Error::BadTlvLength(tlv::ED25519))),
        ("eight dependencies", assemble(Some(&nine_deps[..8]), &[]), Ok(())),
        ("nine dependencies", assemble(Some(&nine_deps), &[]), Err(Error::TooManyDependencies)),
        (
            "unknown TLVs are skipped",
            assemble(Some(&[(0x00a0, &[1, 2, 3])]), &[(0x7777, &[]), (0x60, &[9; 9])]),
            Ok(()),
        ),
    ];
    for (name, bytes, expected) in cases {
        check_parse(name, &bytes, expected);
    }
}

#[test]
fn version_strings() {
    let v = |major, minor, revision, build| Ok(Version { major, minor, revision, build });
    let cases = [
        ("0", v(0, 0, 0, 0)),
        ("1", v(1, 0, 0, 0)),
        ("1.2", v(1, 2, 0, 0)),
        ("1.2.3", v(1, 2, 3, 0)),
        ("1.2.3+4", v(1, 2, 3, 4)),
        ("255.255.65535+4294967295", v(255, 255, 65535, u32::MAX)),
        ("256", Err(ParseVersionError)),
        ("1.256", Err(ParseVersionError)),
        ("1.2.65536", Err(ParseVersionError)),
        ("1.2.3+4294967296", Err(ParseVersionError)),
        ("01", Err(ParseVersionError)),
        ("1.2+3", Err(ParseVersionError)),
        ("1.2.3.4", Err(ParseVersionError)),
        ("", Err(ParseVersionError)),
        ("1..2", Err(ParseVersionError)),
        ("+1", Err(ParseVersionError)),
        ("1.2.3+", Err(ParseVersionError)),
        ("-1", Err(ParseVersionError)),
        ("v1", Err(ParseVersionError)),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<Version>(), expected, "{text:?}");
        if let Ok(version) = expected {
            if text.contains('+') {
                assert_eq!(version.to_string(), text);
            }
        }
    }
}

#[test]
fn reads_what_it_writes() {
    let bytes = signed_image(|_| {});
    assert_eq!(bytes.len(), 256);
    let image = parse(&bytes).expect("parses");
    let layout = image.layout();
    assert_eq!((layout.tlv_offset, layout.protected_len, layout.unprotected_offset, layout.end()), (72, 40, 112, 256));
    assert_eq!(image.body(), (0..40).collect::<Vec<u8>>());
    assert_eq!(image.security_counter(), Some(7));
    assert_eq!(image.dependencies().copied().collect::<Vec<_>>(), vec![dependency(1, 2)]);
    let kinds: Vec<(u16, usize, bool)> = image.tlvs().map(|t| (t.kind, t.value.len(), t.protected)).collect();
    assert_eq!(
        kinds,
        vec![
            (tlv::SEC_CNT, 4, true),
            (tlv::DEPENDENCY, 12, true),
            (tlv::TERN_MODULE, 8, true),
            (tlv::SHA256, 32, false),
            (tlv::KEYHASH, 32, false),
            (tlv::ED25519, 64, false),
        ]
    );
    let info = image.module_info();
    assert_eq!(info.format, Format::McuBoot);
    assert_eq!((info.platform_id, info.function, info.index), (32, ModuleFunction::SystemPart, 1));
    assert_eq!(info.version, 0x0102_0003);
    assert_eq!(
        info.dependencies().copied().collect::<Vec<_>>(),
        vec![Dependency { function: ModuleFunction::MonoFirmware, index: 1, version: 0x0201_0002 }]
    );
    assert_eq!((info.start_address, info.end_address, info.size), (0, 112, 256));
    assert_eq!(info.sha256, Some(Sha256::digest(&bytes[..112]).into()));
    assert_eq!(info.integrity, Integrity::Valid);

    let verified = image.verify(Some(&key(1).verifying_key())).expect("verifies");
    assert!(verified.signature_verified);
    assert_eq!(verified.security_counter, Some(7));
    assert_eq!(verified.tern_module, image.tern_module());
    assert_eq!(verified.dependencies().count(), 1);
    assert!(!image.verify(None).expect("hash verifies").signature_verified);
}

#[test]
fn without_tern_module_an_image_is_monolithic() {
    let bytes = signed_image(|c| {
        c.tern_module = None;
        c.load_addr = 0x2000_0000;
    });
    let info = parse(&bytes).expect("parses").module_info();
    assert_eq!((info.platform_id, info.function, info.index), (0, ModuleFunction::MonoFirmware, 0));
    assert_eq!(info.flags, flags::RAM_LOAD as u8);
    assert_eq!((info.start_address, info.end_address), (0x2000_0000, 0x2000_0000 + 32 + 40 + 4 + 8 + 16));
}

#[test]
fn verification_verdicts() {
    let good = signed_image(|_| {});
    let right = key(1).verifying_key();
    let wrong = key(2).verifying_key();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        f(&mut bytes);
        bytes
    };
    // Unprotected area at 112: info, SHA256 (TLV at 116), KEYHASH (at 152), ED25519 (at 188).
    type Case<'a> = (&'a str, Vec<u8>, Option<VerifyingKey>, Result<(), Error>);
    let cases: Vec<Case> = vec![
        ("right key", good.clone(), Some(right), Ok(())),
        ("hash only", good.clone(), None, Ok(())),
        ("wrong key", good.clone(), Some(wrong), Err(Error::KeyMismatch)),
        (
            "full public key, wrong key",
            signed_image(|c| c.key_format = KeyFormat::Full),
            Some(wrong),
            Err(Error::KeyMismatch),
        ),
        ("full public key, right key", signed_image(|c| c.key_format = KeyFormat::Full), Some(right), Ok(())),
        ("no key TLV, wrong key", edit(&|b| set_u16(b, 152, 0x00a1)), Some(wrong), Err(Error::MissingKeyId)),
        ("no key TLV, right key", edit(&|b| set_u16(b, 152, 0x00a1)), Some(right), Err(Error::MissingKeyId)),
        (
            "signed by another key",
            {
                let other = sign(&SignConfig { pad_header: true, ..SignConfig::default() }, &[1, 2, 3], Some(&key(2)))
                    .expect("signs");
                let mut b = other;
                // Claim key 1 in the (unprotected) key hash; the signature is still key 2's.
                let at = b.len() - 64 - 4 - 32;
                b[at..at + 32].copy_from_slice(&key_hash(&right));
                b
            },
            Some(right),
            Err(Error::BadSignature),
        ),
        ("signature flipped", edit(&|b| b[255] ^= 1), Some(right), Err(Error::BadSignature)),
        ("signature TLV renamed", edit(&|b| set_u16(b, 188, 0x00a2)), Some(right), Err(Error::MissingSignature)),
        ("hash TLV renamed", edit(&|b| set_u16(b, 116, 0x00a3)), None, Err(Error::MissingHash)),
        ("body byte", edit(&|b| b[40] ^= 1), None, Err(Error::HashMismatch)),
        ("encrypted flag", edit(&|b| b[16] |= flags::ENCRYPTED_AES128 as u8), Some(right), Err(Error::Encrypted)),
        ("pure signature", edit(&|b| set_u16(b, 152, tlv::SIG_PURE)), Some(right), Err(Error::PureSignature)),
    ];
    for (name, bytes, key, expected) in cases {
        let image = parse(&bytes).unwrap_or_else(|e| panic!("case {name:?} parses: {e}"));
        assert_eq!(image.verify(key.as_ref()).map(|_| ()), expected, "case {name:?}");
    }
    let unsigned = sign(&SignConfig { pad_header: true, ..SignConfig::default() }, &[1, 2, 3], None).expect("signs");
    assert_eq!(parse(&unsigned).and_then(|i| i.verify(Some(&right))).map(|_| ()), Err(Error::MissingSignature));
    assert_eq!(parse(&unsigned).and_then(|i| i.verify(None)).map(|_| ()), Ok(()));
}

#[test]
fn every_tampered_byte_is_detected() {
    let good = signed_image(|_| {});
    let key = key(1).verifying_key();
    for at in 0..good.len() {
        for mask in 1..=0xffu8 {
            let mut bad = good.clone();
            bad[at] ^= mask;
            let result = parse(&bad).and_then(|image| image.verify(Some(&key)));
            assert!(result.is_err(), "byte {at} ^ {mask:#x} went undetected");
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let good = signed_image(|_| {});
    for len in 0..good.len() {
        assert!(parse(&good[..len]).is_err(), "accepted {len} of {} bytes", good.len());
    }
}

/// A flash-like source: reads at most 256 bytes at once and counts what it reads.
struct Flash<'a> {
    bytes: &'a [u8],
    largest_read: usize,
    fail_at: Option<u32>,
}

impl ImageSource for Flash<'_> {
    fn size(&self) -> u32 {
        self.bytes.len() as u32
    }

    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ReadError> {
        self.largest_read = self.largest_read.max(buf.len());
        if self.fail_at.is_some_and(|at| (offset..offset + buf.len() as u32).contains(&at)) {
            return Err(ReadError);
        }
        let mut bytes = self.bytes;
        bytes.read_at(offset, buf)
    }
}

#[test]
fn streaming_verification_reads_small_chunks() {
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let config =
        SignConfig { pad_header: true, header_size: 0x200, security_counter: Some(3), ..SignConfig::default() };
    let bytes = sign(&config, &body, Some(&key(5))).expect("signs");
    let mut flash = Flash { bytes: &bytes, largest_read: 0, fail_at: None };
    let verified = verify_source(&mut flash, Some(&key(5).verifying_key())).expect("verifies");
    assert_eq!(verified.security_counter, Some(3));
    assert!(flash.largest_read <= 256, "largest read {}", flash.largest_read);
    assert_eq!(Ok(verified), parse(&bytes).and_then(|image| image.verify(Some(&key(5).verifying_key()))));

    let mut failing = Flash { bytes: &bytes, largest_read: 0, fail_at: Some(1000) };
    assert_eq!(verify_source(&mut failing, None), Err(Error::Read));
}

#[test]
fn writer_rules() {
    let body = [7u8; 64];
    let check = |config: SignConfig, input: &[u8], expected: Result<usize, SignError>| {
        assert_eq!(sign(&config, input, None).map(|image| image.len()), expected, "{config:?}");
    };
    let slot = |slot_size, pad, align| Some(SlotConfig { slot_size, pad, align, ..SlotConfig::default() });
    let base = SignConfig::default;
    // Unsigned, no protected TLVs: header 32 + body + 4 + 36.
    check(SignConfig { pad_header: true, ..base() }, &body, Ok(32 + 64 + 40));
    check(base(), &body, Err(SignError::HeaderAreaNotEmpty));
    check(base(), &[0; 31], Err(SignError::HeaderAreaNotEmpty));
    let mut zero_header = vec![0u8; 32];
    zero_header.extend_from_slice(&body);
    check(base(), &zero_header, Ok(32 + 64 + 40));
    check(SignConfig { header_size: 31, pad_header: true, ..base() }, &body, Err(SignError::HeaderTooSmall));
    // Trailer with align 1 and 128 sectors: 384 + 32 + 16 = 432 bytes.
    check(SignConfig { pad_header: true, slot: slot(136 + 432, false, 1), ..base() }, &body, Ok(136));
    check(
        SignConfig { pad_header: true, slot: slot(135 + 432, false, 1), ..base() },
        &body,
        Err(SignError::DoesNotFit { needed: 136 + 432, slot_size: 135 + 432 }),
    );
    check(SignConfig { pad_header: true, slot: slot(4096, true, 1), ..base() }, &body, Ok(4096));
    check(SignConfig { pad_header: true, slot: slot(4096, true, 3), ..base() }, &body, Err(SignError::BadAlign(3)));

    let padded = sign(
        &SignConfig {
            pad_header: true,
            slot: Some(SlotConfig { slot_size: 4096, confirm: true, align: 4, ..SlotConfig::default() }),
            ..base()
        },
        &body,
        None,
    )
    .expect("signs");
    assert_eq!(padded[4096 - 16..], boot_magic_for_test());
    // image_ok sits one max-align unit (8) before the 16-byte magic.
    assert_eq!(padded[4096 - 24], 0x01);
    assert!(padded[136..4096 - 24].iter().all(|&b| b == 0xff));
    assert_eq!(parse(&padded).expect("parses").layout().end(), 136);
}

fn boot_magic_for_test() -> [u8; 16] {
    [0x77, 0xc2, 0x95, 0xf3, 0x60, 0xd2, 0xef, 0x7f, 0x35, 0x52, 0x50, 0x0f, 0x2c, 0xb6, 0x79, 0x80]
}
