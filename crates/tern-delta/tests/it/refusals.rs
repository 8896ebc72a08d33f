//! Truncated, corrupted and wrong-source patches are refused with their reason.

use tern_delta::{make, Applier, ApplyError, Config, Corruption, Status, HEADER_LEN};

use crate::corpus::{load_of, pairs};

/// A small real pair and its patch.
fn fixture() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (_, old, new) = pairs()
        .into_iter()
        .find(|(name, _, _)| name.contains("photon_bootloader"))
        .expect("the Photon bootloader pair");
    let patch = make(&old, &new, &Config { load_address: Some(load_of(&new)), ..Config::default() });
    (old, new, patch)
}

/// Applies `patch` to `old` in 100-byte chunks; the first error, or `finish`'s verdict.
fn apply(old: &[u8], patch: &[u8]) -> Result<Vec<u8>, ApplyError> {
    let mut a = Applier::new();
    let mut out = Vec::new();
    let mut o = old;
    for chunk in patch.chunks(100) {
        a.feed(chunk, &mut o, &mut out)?;
    }
    a.finish()?;
    Ok(out)
}

#[test]
fn the_fixture_applies() {
    let (old, new, patch) = fixture();
    assert_eq!(apply(&old, &patch), Ok(new));
}

#[test]
fn truncated_patches_are_refused() {
    let (old, _, patch) = fixture();
    for len in [0, 1, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 3, HEADER_LEN + 40, patch.len() / 2, patch.len() - 1] {
        assert_eq!(apply(&old, &patch[..len]), Err(ApplyError::Truncated), "patch cut to {len} bytes");
    }
}

#[test]
fn corrupt_patches_are_refused_with_their_reason() {
    let (old, _, patch) = fixture();
    let with = |at: usize, byte: u8| {
        let mut p = patch.clone();
        p[at] = byte;
        p
    };
    let mut longer = patch.clone();
    longer.push(0);
    let cases: Vec<(&str, Vec<u8>, Corruption)> = vec![
        ("magic", with(0, b'X'), Corruption::Magic),
        ("version", with(4, 9), Corruption::Version),
        ("unknown flag", with(5, patch[5] | 0x80), Corruption::Flags),
        ("reserved byte", with(7, 1), Corruption::Flags),
        ("new SHA-256", with(60, patch[60] ^ 1), Corruption::ResultHash),
        ("coder start", with(HEADER_LEN, 1), Corruption::CoderStart),
        ("byte after the payload", longer, Corruption::TrailingData),
    ];
    for (what, p, reason) in cases {
        assert_eq!(apply(&old, &p), Err(ApplyError::Corrupt(reason)), "{what}");
    }
}

#[test]
fn flipped_payload_bits_never_produce_an_image() {
    let (old, new, patch) = fixture();
    // Every 7th payload byte, one bit each: whatever the decoder makes of it, nothing but
    // the new image may pass. (A flip in the coder's last bytes can leave every decoded
    // symbol unchanged; then the result is the new image and is accepted.)
    let (mut refused, mut harmless) = (0, 0);
    for at in (HEADER_LEN + 1..patch.len()).step_by(7) {
        let mut p = patch.clone();
        p[at] ^= 1 << (at % 8);
        match apply(&old, &p) {
            Err(ApplyError::Corrupt(_)) => refused += 1,
            Ok(image) => {
                assert!(image == new, "flip at {at} produced a different image");
                assert!(at + 5 >= patch.len(), "flip at {at} (of {}) changed nothing", patch.len());
                harmless += 1;
            }
            Err(e) => panic!("flip at {at}: {e}"),
        }
    }
    assert!(refused > 10 && harmless <= 1, "{refused} refused, {harmless} harmless");
}

#[test]
fn wrong_sources_are_refused_before_anything_is_written() {
    let (old, new, patch) = fixture();
    let mut flipped = old.clone();
    flipped[1000] ^= 0x40;
    let cases: [(&str, &[u8]); 4] =
        [("another image", &new), ("one byte changed", &flipped), ("shorter", &old[..old.len() - 1]), ("empty", &[])];
    for (what, source) in cases {
        let mut a = Applier::new();
        let mut out = Vec::new();
        let mut o = source;
        assert_eq!(a.feed(&patch, &mut o, &mut out), Err(ApplyError::WrongSource), "{what}");
        assert!(out.is_empty(), "{what}: nothing may be written");
    }
    // A longer source is fine as long as the patch's source is its prefix: the device's
    // slot may be larger than the module.
    let mut longer = old.clone();
    longer.extend_from_slice(&[0xFF; 64]);
    let mut a = Applier::new();
    let mut out = Vec::new();
    let mut o: &[u8] = &longer;
    assert_eq!(a.feed(&patch, &mut o, &mut out), Ok(Status::Done));
    assert_eq!(out, new);
}
