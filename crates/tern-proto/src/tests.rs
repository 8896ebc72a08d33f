//! Codec and topic tests: round trips, hand-derived encodings, malformed input.

extern crate std;

use std::vec;
use std::vec::Vec;

use tern_image::{Dependency, Integrity, ModuleFunction};

use crate::*;

fn hash(byte: u8) -> Sha256 {
    [byte; 32]
}

fn installed(function: ModuleFunction, index: u8, version: u32, byte: u8) -> InstalledModule {
    InstalledModule {
        function,
        index,
        version,
        sha256: hash(byte),
        size: 0x0004_1000 + u32::from(byte),
        integrity: Integrity::Valid,
        dependencies_met: true,
    }
}

/// One message of every kind, with optional fields both present and absent.
fn samples() -> Vec<Message<'static>> {
    let photon = [
        installed(ModuleFunction::Bootloader, 0, 1200, 1),
        installed(ModuleFunction::SystemPart, 1, 1512, 2),
        installed(ModuleFunction::SystemPart, 2, 1512, 3),
        InstalledModule {
            dependencies_met: false,
            integrity: Integrity::Unchecked,
            ..installed(ModuleFunction::UserPart, 1, 6, 4)
        },
    ];
    let result =
        UpdateResult { attempt: 7, outcome: Outcome::RolledBack, reason: Reason::AppFailedTestBoot, module: Some(2) };
    vec![
        Message::Describe(Describe {
            platform: 6,
            boot_reason: BootReason::Normal,
            safe_mode: None,
            unmet: None,
            confirmed: true,
            modules: List::from_slice(&photon[..3]).unwrap(),
            capacity: None,
            security_counter: None,
            last_result: None,
        }),
        Message::Describe(Describe {
            platform: 12,
            boot_reason: BootReason::SafeMode,
            safe_mode: Some(SafeModeCause::UnmetDependency),
            unmet: Some(Dependency { function: ModuleFunction::SystemPart, index: 1, version: 4100 }),
            confirmed: false,
            modules: List::from_slice(&photon).unwrap(),
            capacity: Some(Capacity {
                staging_bytes: 256 * 1024,
                max_modules: 4,
                block_size: 1024,
                patches: true,
                link: Some(LinkCapacity { max_block: 4096, compact_topics: true }),
            }),
            security_counter: Some(u64::MAX),
            last_result: Some(result),
        }),
        Message::Describe(Describe {
            platform: 0xffff,
            boot_reason: BootReason::Other(200),
            safe_mode: None,
            unmet: None,
            confirmed: false,
            modules: List::new(),
            capacity: None,
            security_counter: None,
            last_result: None,
        }),
        Message::UpdateOffer(UpdateOffer {
            attempt: u64::MAX,
            signed: List::from_slice(&[&[0xd2, 0x84, 0x43, 0xa1, 0x01, 0x27][..], &[0xd2, 0x84][..]]).unwrap(),
            modules: List::from_slice(&[
                OfferedModule {
                    function: ModuleFunction::SystemPart,
                    index: 1,
                    version: 4100,
                    size: 600_000,
                    sha256: hash(9),
                    transfer: Transfer::Patch { source: Some(hash(11)), length: 17_000 },
                },
                OfferedModule {
                    function: ModuleFunction::UserPart,
                    index: 1,
                    version: 6,
                    size: 4_321,
                    sha256: hash(10),
                    transfer: Transfer::Patch { source: None, length: 3_000 },
                },
                OfferedModule {
                    function: ModuleFunction::UserPart,
                    index: 2,
                    version: 7,
                    size: 4_000,
                    sha256: hash(12),
                    transfer: Transfer::Raw,
                },
            ])
            .unwrap(),
            air_bytes: 640_000,
            window: 4,
            max_block: 4096,
            max_request: Some(16_384),
        }),
        Message::BlockRequest(BlockRequest { attempt: 1, module: 0, offset: 0, length: 4096 }),
        Message::BlockRequest(BlockRequest { attempt: 1 << 40, module: 11, offset: u32::MAX, length: 1 }),
        Message::Block(Block { attempt: 1, module: 1, offset: 8192, data: &[0xde, 0xad, 0xbe, 0xef] }),
        Message::Block(Block { attempt: 2, module: 0, offset: 0, data: &[] }),
        Message::Progress(Progress { attempt: 3, phase: Phase::Downloading, bytes_done: 12_288, bytes_total: 604_321 }),
        Message::Progress(Progress { attempt: 3, phase: Phase::Rebooting, bytes_done: 604_321, bytes_total: 604_321 }),
        Message::Result(result),
        Message::Result(UpdateResult { attempt: 4, outcome: Outcome::Confirmed, reason: Reason::None, module: None }),
        Message::Result(UpdateResult {
            attempt: 5,
            outcome: Outcome::Failed,
            reason: Reason::Other(999),
            module: None,
        }),
        Message::Command(Command { id: 1, action: Action::Reboot, attempt: None }),
        Message::Command(Command { id: u32::MAX, action: Action::CancelUpdate, attempt: Some(7) }),
    ]
}

fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.encoded_len()];
    let written = message.encode(&mut buf).expect("buffer sized by encoded_len");
    assert_eq!(written, buf.len(), "encoded_len is exact for {message:?}");
    buf
}

#[test]
fn every_sample_round_trips_and_re_encodes_identically() {
    let samples = samples();
    for kind in MessageKind::ALL {
        assert!(samples.iter().any(|m| m.kind() == kind), "no sample of {kind:?}");
    }
    for message in &samples {
        let bytes = encode(message);
        let decoded = Message::decode(&bytes).unwrap_or_else(|e| panic!("{message:?}: {e}"));
        assert_eq!(&decoded, message);
        assert_eq!(encode(&decoded), bytes, "encoding is deterministic");
    }
}

#[test]
fn encode_into_a_short_buffer_fails_cleanly() {
    for message in samples() {
        let len = message.encoded_len();
        let mut buf = vec![0u8; len - 1];
        assert_eq!(message.encode(&mut buf), Err(EncodeError::BufferTooSmall));
    }
}

/// Encodings worked out by hand from RFC 8949 (major types and shortest-form rules), so
/// the codec is checked against the specification rather than against itself.
#[test]
fn encodings_match_hand_derived_bytes() {
    fn check(message: Message<'_>, expected: &[u8]) {
        assert_eq!(encode(&message), expected, "{message:?}");
        assert_eq!(Message::decode(expected), Ok(message));
    }
    // [1, 7, {0: 1, 1: 0}]
    check(
        Message::Command(Command { id: 1, action: Action::Reboot, attempt: None }),
        &[0x83, 0x01, 0x07, 0xa2, 0x00, 0x01, 0x01, 0x00],
    );
    // [1, 7, {0: 500, 1: 3, 2: 24}]: 500 = 0x19 01f4, 24 = 0x18 18.
    check(
        Message::Command(Command { id: 500, action: Action::CancelUpdate, attempt: Some(24) }),
        &[0x83, 0x01, 0x07, 0xa3, 0x00, 0x19, 0x01, 0xf4, 0x01, 0x03, 0x02, 0x18, 0x18],
    );
    // [1, 3, {0: 2, 1: 1, 2: 65536, 3: 4096}]: 65536 = 0x1a 00010000, 4096 = 0x19 1000.
    check(
        Message::BlockRequest(BlockRequest { attempt: 2, module: 1, offset: 65536, length: 4096 }),
        &[0x83, 0x01, 0x03, 0xa4, 0x00, 0x02, 0x01, 0x01, 0x02, 0x1a, 0x00, 0x01, 0x00, 0x00, 0x03, 0x19, 0x10, 0x00],
    );
    // [1, 4, {0: 2, 1: 0, 2: 0, 3: h'AB'}]
    check(
        Message::Block(Block { attempt: 2, module: 0, offset: 0, data: &[0xab] }),
        &[0x83, 0x01, 0x04, 0xa4, 0x00, 0x02, 0x01, 0x00, 0x02, 0x00, 0x03, 0x41, 0xab],
    );
    // [1, 1, {0: 6, 1: 0, 4: true, 5: [], 7: [1024, 4, 1024, false, 4096, true]}]: the
    // link elements travel as the fifth and sixth, after an explicit `false` for patches.
    let link = LinkCapacity { max_block: 4096, compact_topics: true };
    let capacity = Capacity { staging_bytes: 1024, max_modules: 4, block_size: 1024, patches: false, link: Some(link) };
    check(
        Message::Describe(Describe {
            platform: 6,
            boot_reason: BootReason::Normal,
            safe_mode: None,
            unmet: None,
            confirmed: true,
            modules: List::new(),
            last_result: None,
            capacity: Some(capacity),
            security_counter: None,
        }),
        &[
            0x83, 0x01, 0x01, 0xa5, 0x00, 0x06, 0x01, 0x00, 0x04, 0xf5, 0x05, 0x80, 0x07, 0x86, 0x19, 0x04, 0x00, 0x04,
            0x19, 0x04, 0x00, 0xf4, 0x19, 0x10, 0x00, 0xf5,
        ],
    );
    // [1, 2, {0: 1, 1: [h'AA'], 2: [], 3: 3, 4: 4, 5: 1024, 6: 16384}]: 16384 = 0x19 4000.
    check(
        Message::UpdateOffer(UpdateOffer {
            attempt: 1,
            signed: List::from_slice(&[&[0xaa][..]]).unwrap(),
            modules: List::new(),
            air_bytes: 3,
            window: 4,
            max_block: 1024,
            max_request: Some(16_384),
        }),
        &[
            0x83, 0x01, 0x02, 0xa7, 0x00, 0x01, 0x01, 0x81, 0x41, 0xaa, 0x02, 0x80, 0x03, 0x03, 0x04, 0x04, 0x05, 0x19,
            0x04, 0x00, 0x06, 0x19, 0x40, 0x00,
        ],
    );
}

/// The capacity array of a Describe `[1, 1, {0: 6, 1: 0, 4: true, 5: [], 7: capacity}]`
/// in its older and newer lengths.
#[test]
fn capacity_lengths() {
    fn check(capacity: &[u8], expected: Result<Capacity, DecodeError>) {
        let mut bytes = vec![0x83, 0x01, 0x01, 0xa5, 0x00, 0x06, 0x01, 0x00, 0x04, 0xf5, 0x05, 0x80, 0x07];
        bytes.extend_from_slice(capacity);
        let decoded = Message::decode(&bytes).map(|m| match m {
            Message::Describe(d) => d.capacity.expect("capacity present"),
            other => panic!("not a describe: {other:?}"),
        });
        assert_eq!(decoded, expected, "{capacity:02x?}");
    }
    let base = Capacity { staging_bytes: 1, max_modules: 2, block_size: 3, patches: false, link: None };
    check(&[0x83, 0x01, 0x02, 0x03], Ok(base));
    check(&[0x84, 0x01, 0x02, 0x03, 0xf5], Ok(Capacity { patches: true, ..base }));
    let link = Some(LinkCapacity { max_block: 8, compact_topics: false });
    check(&[0x86, 0x01, 0x02, 0x03, 0xf5, 0x08, 0xf4], Ok(Capacity { patches: true, link, ..base }));
    // Elements a newer device adds after the sixth are skipped.
    check(&[0x87, 0x01, 0x02, 0x03, 0xf4, 0x08, 0xf4, 0x61, b'x'], Ok(Capacity { link, ..base }));
    // The link's two elements travel together; fewer than three is no capacity.
    check(&[0x85, 0x01, 0x02, 0x03, 0xf5, 0x08], Err(DecodeError::Malformed("capacity")));
    check(&[0x82, 0x01, 0x02], Err(DecodeError::Malformed("capacity")));
    check(&[0x86, 0x01, 0x02, 0x03, 0xf5, 0x08, 0x00], Err(DecodeError::Malformed("capacity")));
}

#[test]
fn malformed_messages_give_specific_errors() {
    fn check(bytes: &[u8], expected: DecodeError) {
        assert_eq!(Message::decode(bytes), Err(expected), "{bytes:02x?}");
    }
    check(&[], DecodeError::Malformed("envelope"));
    check(&[0xa0], DecodeError::Malformed("envelope"));
    check(&[0x82, 0x01, 0x07], DecodeError::Malformed("envelope"));
    check(&[0x9f, 0x01, 0x07, 0xa0, 0xff], DecodeError::IndefiniteLength);
    check(&[0x83, 0x02, 0x07, 0xa0], DecodeError::UnsupportedVersion(2));
    check(&[0x83, 0x00, 0x07, 0xa0], DecodeError::UnsupportedVersion(0));
    check(&[0x83, 0x01, 0x09, 0xa0], DecodeError::UnknownKind(9));
    check(&[0x83, 0x01, 0x00, 0xa0], DecodeError::UnknownKind(0));
    check(&[0x83, 0x01, 0x07, 0xa0], DecodeError::Missing("command id"));
    check(&[0x83, 0x01, 0x07, 0xa1, 0x00, 0x01], DecodeError::Missing("action"));
    check(&[0x83, 0x01, 0x03, 0xa0], DecodeError::Missing("attempt"));
    // Keys out of order, and a key repeated.
    check(&[0x83, 0x01, 0x07, 0xa2, 0x01, 0x00, 0x00, 0x01], DecodeError::NonCanonical);
    check(&[0x83, 0x01, 0x07, 0xa2, 0x00, 0x01, 0x00, 0x01], DecodeError::NonCanonical);
    check(&[0x83, 0x01, 0x07, 0xbf, 0x00, 0x01, 0x01, 0x00, 0xff], DecodeError::IndefiniteLength);
    // A command id that does not fit u32; a text string where a uint belongs.
    check(
        &[0x83, 0x01, 0x07, 0xa2, 0x00, 0x1b, 0, 0, 0, 1, 0, 0, 0, 0, 0x01, 0x00],
        DecodeError::Malformed("command id"),
    );
    check(&[0x83, 0x01, 0x07, 0xa2, 0x00, 0x61, b'x', 0x01, 0x00], DecodeError::Malformed("command id"));
    // A valid command followed by one more byte.
    check(&[0x83, 0x01, 0x07, 0xa2, 0x00, 0x01, 0x01, 0x00, 0x00], DecodeError::TrailingBytes);
    // A describe whose module hash is 2 bytes long.
    check(
        &[0x83, 0x01, 0x01, 0xa4, 0x00, 0x06, 0x01, 0x00, 0x04, 0xf5, 0x05, 0x81, 0xa1, 0x03, 0x42, 0x00, 0x00],
        DecodeError::OutOfRange("module sha256"),
    );
    // A describe with an integrity code that does not exist.
    check(
        &[0x83, 0x01, 0x01, 0xa4, 0x00, 0x06, 0x01, 0x00, 0x04, 0xf5, 0x05, 0x81, 0xa1, 0x05, 0x07],
        DecodeError::OutOfRange("integrity"),
    );
}

/// An offer's key 1 is an array of signed documents (byte strings), non-empty, at most
/// [`MAX_MODULES`]. The bytes are written out by hand from RFC 8949: an offer
/// `{0: 1, 1: [docs…], 2: [], 3: 3, 4: 4, 5: 1024}` in the envelope `[1, 2, body]`.
#[test]
fn offers_carry_a_list_of_signed_documents() {
    fn offer_bytes(signed: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x83, 0x01, 0x02, 0xa6, 0x00, 0x01, 0x01];
        bytes.extend_from_slice(signed);
        bytes.extend_from_slice(&[0x02, 0x80, 0x03, 0x03, 0x04, 0x04, 0x05, 0x19, 0x04, 0x00]);
        bytes
    }
    fn check(signed: &[u8], expected: Result<&[&[u8]], DecodeError>) {
        let bytes = offer_bytes(signed);
        let decoded = Message::decode(&bytes);
        match expected {
            Ok(documents) => {
                let offer = UpdateOffer {
                    attempt: 1,
                    signed: List::from_slice(documents).unwrap(),
                    modules: List::new(),
                    air_bytes: 3,
                    window: 4,
                    max_block: 1024,
                    max_request: None,
                };
                assert_eq!(decoded, Ok(Message::UpdateOffer(offer)), "{signed:02x?}");
                // Canonical: what decodes re-encodes to exactly the same bytes.
                assert_eq!(encode(&Message::UpdateOffer(offer)), bytes, "{signed:02x?}");
            }
            Err(e) => assert_eq!(decoded, Err(e), "{signed:02x?}"),
        }
    }
    // n one-byte documents h'00', h'01', …: array header 0x80 + n, then 0x41 k each.
    let docs = |n: u8| -> Vec<u8> {
        let mut out = vec![0x80 + n];
        for k in 0..n {
            out.extend_from_slice(&[0x41, k]);
        }
        out
    };
    let values: Vec<[u8; 1]> = (0..13u8).map(|k| [k]).collect();
    let slices: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
    check(&docs(1), Ok(&slices[..1]));
    // A release manifest's worth, and a statement per module up to the limit.
    check(&[0x82, 0x41, 0xaa, 0x42, 0xbb, 0xcc], Ok(&[&[0xaa], &[0xbb, 0xcc]]));
    check(&docs(MAX_MODULES as u8), Ok(&slices[..MAX_MODULES]));
    check(&docs(MAX_MODULES as u8 + 1), Err(DecodeError::TooMany("signed")));
    check(&docs(0), Err(DecodeError::Malformed("signed")));
    // One bare byte string (not in an array), a text string inside, an indefinite array.
    check(&[0x41, 0xaa], Err(DecodeError::Malformed("signed")));
    check(&[0x81, 0x61, b'x'], Err(DecodeError::Malformed("signed")));
    check(&[0x9f, 0x41, 0xaa, 0xff], Err(DecodeError::IndefiniteLength));
    // An offer built with no document encodes, but no peer accepts it.
    let empty = UpdateOffer {
        attempt: 1,
        signed: List::new(),
        modules: List::new(),
        air_bytes: 3,
        window: 4,
        max_block: 1024,
        max_request: None,
    };
    let bytes = encode(&Message::UpdateOffer(empty));
    assert_eq!(bytes, offer_bytes(&[0x80]));
    assert_eq!(Message::decode(&bytes), Err(DecodeError::Malformed("signed")));
}

#[test]
fn too_many_modules_is_refused_not_truncated() {
    let mut bytes = vec![0x83, 0x01, 0x01, 0xa4, 0x00, 0x06, 0x01, 0x00, 0x04, 0xf5, 0x05];
    let count = MAX_MODULES + 1;
    bytes.push(0x80 | count as u8);
    let one = encode(&Message::Describe(Describe {
        platform: 6,
        boot_reason: BootReason::Normal,
        safe_mode: None,
        unmet: None,
        confirmed: true,
        modules: List::from_slice(&[installed(ModuleFunction::Asset, 1, 1, 1)]).unwrap(),
        capacity: None,
        security_counter: None,
        last_result: None,
    }));
    // The single module's map is everything after the `0x05 0x81` (key 5, array of 1).
    let module_start = one.windows(2).position(|w| w == [0x05, 0x81]).unwrap() + 2;
    for _ in 0..count {
        bytes.extend_from_slice(&one[module_start..]);
    }
    assert_eq!(Message::decode(&bytes), Err(DecodeError::TooMany("modules")));
}

#[test]
fn unknown_keys_are_skipped_for_forward_compatibility() {
    // [1, 3, {0: 2, 1: 1, 2: 0, 3: 16, 9: [1, "new"]}]
    let bytes = [
        0x83, 0x01, 0x03, 0xa5, 0x00, 0x02, 0x01, 0x01, 0x02, 0x00, 0x03, 0x10, 0x09, 0x82, 0x01, 0x63, b'n', b'e',
        b'w',
    ];
    assert_eq!(
        Message::decode(&bytes),
        Ok(Message::BlockRequest(BlockRequest { attempt: 2, module: 1, offset: 0, length: 16 }))
    );
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    for message in samples() {
        let bytes = encode(&message);
        for len in 0..bytes.len() {
            assert!(Message::decode(&bytes[..len]).is_err(), "{message:?} truncated to {len} decoded");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                let _ = Message::decode(&flipped);
            }
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    // xorshift64: deterministic, so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut decoded = 0;
    for _ in 0..20_000 {
        let len = (next() % 96) as usize;
        // Start most inputs with a plausible envelope so the body decoders get exercised.
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if bytes.len() >= 3 && next() % 4 != 0 {
            bytes[0] = 0x83;
            bytes[1] = 0x01;
            bytes[2] = 1 + (next() % 7) as u8;
        }
        if Message::decode(&bytes).is_ok() {
            decoded += 1;
        }
    }
    // Random bytes almost never form a complete message; the point is that none panicked.
    assert!(decoded < 20_000);
}

#[test]
fn topics_parse_and_print() {
    fn check(topic: &str, expected: Option<(&str, Direction, MessageKind, TopicForm)>) {
        let parsed = Topic::parse(topic).map(|t| (t.device, t.direction, t.kind, t.form));
        assert_eq!(parsed, expected, "{topic}");
        if let Some((device, _, kind, form)) = expected {
            let printed = Topic::with_form(device, kind, form);
            assert_eq!(std::format!("{printed}"), topic);
            assert_eq!(printed.len(), topic.len(), "{topic}");
        }
    }
    let long = TopicForm::Long;
    check("tern/v1/d/dev-1/up/describe", Some(("dev-1", Direction::Up, MessageKind::Describe, long)));
    check("tern/v1/d/dev-1/up/block-request", Some(("dev-1", Direction::Up, MessageKind::BlockRequest, long)));
    check("tern/v1/d/dev-1/up/progress", Some(("dev-1", Direction::Up, MessageKind::Progress, long)));
    check("tern/v1/d/dev-1/up/result", Some(("dev-1", Direction::Up, MessageKind::Result, long)));
    check("tern/v1/d/A.b_9/down/offer", Some(("A.b_9", Direction::Down, MessageKind::UpdateOffer, long)));
    check("tern/v1/d/x/down/block", Some(("x", Direction::Down, MessageKind::Block, long)));
    check("tern/v1/d/x/down/command", Some(("x", Direction::Down, MessageKind::Command, long)));
    // The compact form: `t/{device}/{u|d}/{code}`, the code as one decimal digit.
    let compact = TopicForm::Compact;
    check("t/dev-1/u/1", Some(("dev-1", Direction::Up, MessageKind::Describe, compact)));
    check("t/dev-1/u/3", Some(("dev-1", Direction::Up, MessageKind::BlockRequest, compact)));
    check("t/dev-1/u/5", Some(("dev-1", Direction::Up, MessageKind::Progress, compact)));
    check("t/dev-1/u/6", Some(("dev-1", Direction::Up, MessageKind::Result, compact)));
    check("t/A.b_9/d/2", Some(("A.b_9", Direction::Down, MessageKind::UpdateOffer, compact)));
    check("t/x/d/4", Some(("x", Direction::Down, MessageKind::Block, compact)));
    check("t/x/d/7", Some(("x", Direction::Down, MessageKind::Command, compact)));
    // Wrong direction for the kind, wildcards, extra or missing levels, bad ids.
    check("tern/v1/d/x/up/offer", None);
    check("tern/v1/d/x/down/describe", None);
    check("tern/v1/d/+/up/describe", None);
    check("tern/v1/d/#", None);
    check("tern/v1/d/x/up/describe/extra", None);
    check("tern/v1/d/x/up", None);
    check("tern/v1/d//up/describe", None);
    check("tern/v2/d/x/up/describe", None);
    check("tern/v1/d/a b/up/describe", None);
    // Compact topics take only their own spellings: no names, no long directions, no
    // codes of other widths, unknown codes or kinds against their direction.
    check("t/x/d/2/extra", None);
    check("t/x/u/2", None);
    check("t/x/d/1", None);
    check("t/x/u/block-request", None);
    check("t/x/up/3", None);
    check("t/x/u/03", None);
    check("t/x/u/0", None);
    check("t/x/u/8", None);
    check("t/x/u/+", None);
    check("t/+/u/1", None);
    check("t//u/1", None);
    check("t/x/u/", None);
    // The subscription filters of a device's downlinks.
    assert_eq!(std::format!("{}", Topic::downlink_filter("dev-1", long)), "tern/v1/d/dev-1/down/#");
    assert_eq!(std::format!("{}", Topic::downlink_filter("dev-1", compact)), "t/dev-1/d/#");
}

#[test]
fn device_ids() {
    fn check(id: &str, valid: bool) {
        assert_eq!(is_valid_device_id(id), valid, "{id:?}");
    }
    check("sensor-17", true);
    check("e00fce68b1c6a0e8c4a7d9b3", true);
    check(&"a".repeat(64), true);
    check(&"a".repeat(65), false);
    check("", false);
    check("a/b", false);
    check("+", false);
    check("#", false);
    check("é", false);
}

/// Replays the committed fuzz corpus (`fuzz/corpus/proto*/`) through the fuzz entry points.
#[test]
fn replay_fuzz_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 2] = [("proto", crate::fuzzing::decode), ("proto_attempt", crate::fuzzing::attempt)];
    let mut replayed = 0;
    for (name, target) in targets {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else { continue };
        for entry in entries {
            let data = std::fs::read(entry.expect("readable entry").path()).expect("readable corpus file");
            target(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no proto fuzz corpus under {}", root.display());
}

/// Writes the seed corpus: every sample message, for both targets. Run by hand with
/// `TERN_WRITE_PROTO_SEEDS=1 cargo test -p tern-proto write_seed_corpus`.
#[test]
fn write_seed_corpus() {
    if std::env::var_os("TERN_WRITE_PROTO_SEEDS").is_none() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for dir in ["proto", "proto_attempt"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (i, message) in samples().iter().enumerate() {
        let bytes = encode(message);
        std::fs::write(root.join("proto").join(std::format!("sample-{i:02}")), &bytes).unwrap();
        if bytes.len() < 256 {
            let mut chunk = vec![1, bytes.len() as u8];
            chunk.extend_from_slice(&bytes);
            std::fs::write(root.join("proto_attempt").join(std::format!("sample-{i:02}")), &chunk).unwrap();
        }
    }
}
