//! Entry points shared by the fuzz target (`fuzz/fuzz_targets/delta.rs`) and the test that
//! replays its committed corpus under plain `cargo test`. The only failure is a panic.

use crate::{Applier, Header, NewImage, HEADER_LEN};

/// The old image the fuzzed patches apply to: a few hundred bytes with Thumb-2 long
/// branches and pointers into itself, so the model's predictions are exercised.
pub const FUZZ_OLD: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = match i % 16 {
            0 => 0x00,
            1 => 0xF0,
            2 => 0x10,
            3 => 0xF8, // BL +0x20
            4 => 0x41,
            5 => 0x00,
            6 => 0x00,
            7 => 0x08, // pointer 0x08000041 (load address below)
            _ => (i * 7) as u8,
        };
        i += 1;
    }
    b
};

/// Largest new image the fuzzed patches may claim.
const MAX_NEW: u32 = 1 << 16;

/// Load address of [`FUZZ_OLD`] in synthesized headers.
pub const FUZZ_LOAD: u32 = 0x0800_0000;

/// Staging for the fuzzed new image: it keeps what was written, for reading back.
struct Sink<'a> {
    bytes: &'a mut [u8],
    written: u32,
}

impl NewImage for Sink<'_> {
    type Error = ();
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), ()> {
        // Writes must be sequential.
        assert_eq!(offset, self.written, "applier wrote out of order");
        let at = offset as usize;
        self.bytes.get_mut(at..at + data.len()).ok_or(())?.copy_from_slice(data);
        self.written += data.len() as u32;
        Ok(())
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
        // Only what was written may be read back.
        let end = offset as usize + buf.len();
        assert!(end <= self.written as usize, "applier read {end} past the {} bytes written", self.written);
        buf.copy_from_slice(&self.bytes[offset as usize..end]);
        Ok(())
    }
}

/// Feeds `data` to the applier. With the first byte's low bit clear, `data[1..]` is a
/// whole patch; with it set, a valid header for [`FUZZ_OLD`] is synthesized (new length
/// from `data[2..4]`, flags from `data[1]`) and the rest is the payload, so the fuzzer
/// reaches the decoder without having to find a SHA-256. Bits 1..7 of the first byte
/// choose the chunk size the patch is fed in.
pub fn apply(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let chunk = usize::from(mode >> 1) + 1;
    let mut patch = [0u8; 4096];
    let patch: &[u8] = if mode & 1 == 0 {
        // A device checks the new length against its staging area before applying; so
        // does the fuzzer (a patch claiming gigabytes would only cost time).
        if Header::parse(rest).is_ok_and(|h| h.new_len > MAX_NEW) {
            return;
        }
        rest
    } else {
        if rest.len() < 3 {
            return;
        }
        let payload = &rest[3..];
        if payload.len() > patch.len() - HEADER_LEN {
            return;
        }
        let h = Header {
            flags: rest[0] & 3,
            load_address: FUZZ_LOAD,
            old_len: FUZZ_OLD.len() as u32,
            old_sha256: sha256(&FUZZ_OLD),
            new_len: u32::from(u16::from_le_bytes([rest[1], rest[2]])),
            new_sha256: [0; 32],
            payload_len: payload.len() as u32,
        };
        patch[..HEADER_LEN].copy_from_slice(&h.to_bytes());
        patch[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        &patch[..HEADER_LEN + payload.len()]
    };
    let mut a = Applier::new();
    let mut old: &[u8] = &FUZZ_OLD;
    let mut store = [0u8; MAX_NEW as usize];
    let mut sink = Sink { bytes: &mut store, written: 0 };
    for piece in patch.chunks(chunk) {
        if a.feed(piece, &mut old, &mut sink).is_err() {
            return;
        }
        // The resume marker never claims more than was written.
        assert_eq!(a.progress().written, sink.written);
    }
    let _ = a.finish();
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Hand-made seeds for the corpus: real patches from [`FUZZ_OLD`] (whole, in small
/// chunks, as a bare payload behind a synthesized header) and a patch to an empty image.
#[cfg(feature = "std")]
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::{make, Config};
    // The new image: 6 bytes inserted near the start (everything after moves), one
    // pointer changed.
    let mut new = FUZZ_OLD[..20].to_vec();
    new.extend_from_slice(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06]);
    new.extend_from_slice(&FUZZ_OLD[20..]);
    new[100] ^= 0x10;
    let config = Config { load_address: Some(FUZZ_LOAD), ..Config::default() };
    let patch = make(&FUZZ_OLD, &new, &config);
    let empty = make(&FUZZ_OLD, &[], &config);
    // A patch from nothing: the image repeats its own bytes (and branches).
    let compressed = make(&[], &new, &config);
    let with_mode = |mode: u8, body: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(body);
        v
    };
    let mut payload_only = vec![0x01, patch[5], new.len() as u8, (new.len() >> 8) as u8];
    payload_only.extend_from_slice(&patch[HEADER_LEN..]);
    vec![
        ("patch-whole", with_mode(0xFE, &patch)),
        ("patch-chunks-17", with_mode(16 << 1, &patch)),
        ("patch-bytewise", with_mode(0, &patch)),
        ("payload-only", payload_only),
        ("patch-to-empty", with_mode(0xFE, &empty)),
        ("from-nothing", with_mode(0xFE, &compressed)),
        ("from-nothing-chunks-5", with_mode(4 << 1, &compressed)),
    ]
}
