//! The streaming patch applier (`no_std`, allocation-free, fixed RAM).
//!
//! Phases: header (collected into a fixed buffer, then checked against the old image's
//! length and SHA-256), the coder's leading bytes, the address map (entry by entry), then
//! the new image unit by unit. Payload bytes go through a small ring buffer; a step only
//! runs when the ring holds at least [`STEP_INPUT_MAX`] bytes (more than any one step can
//! consume) or the whole payload has arrived, so the decoder never has to stop halfway
//! through a symbol.

use sha2::{Digest, Sha256};

use crate::model::{code_signed, Choice, Cursor, Model, OldImage, StepError};
use crate::rc::{Decoder, Decoding, Source};
use crate::thumb::{Maps, MAX_EXTERNAL_MAP, MAX_MAP};
use crate::{Header, HEADER_LEN};

/// Payload ring buffer size.
const RING: usize = 512;
/// Most payload bytes one step can consume: a step codes at most 106 binary decisions
/// (a map entry 131) and each decision shifts in at most 2 bytes.
const STEP_INPUT_MAX: usize = 320;
/// Output is collected and written in pieces of this size.
const OUT_CHUNK: usize = 128;
/// Bytes of the old image hashed per read when checking the source.
const HASH_CHUNK: usize = 64;

/// RAM the applier needs: its state (this struct, which holds every buffer, the address
/// map and the model's probabilities) plus the on-stack scratch of the source check.
pub const APPLIER_RAM: usize = core::mem::size_of::<Applier>() + HASH_CHUNK;

// The budget for applying on a device: 16 KiB, every buffer included.
const _: () = assert!(APPLIER_RAM <= 16 * 1024);

/// Writes the new image sequentially into staging, and reads back what it wrote (the
/// new image's earlier bytes are a dictionary for its later ones).
pub trait NewImage {
    /// The writer's own error (a flash fault).
    type Error;
    /// Writes `data` at `offset` of the new image. Offsets only grow: each write starts
    /// where the previous one ended (after a resume: at the resume point).
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;
    /// Fills `buf` with the new image's bytes from `offset`. The applier only reads bytes
    /// already handed to [`NewImage::write`] (`offset + buf.len()` never exceeds the bytes
    /// written, counting after a resume the prefix written before the reset), so a writer
    /// that buffers a flash page must serve reads from that buffer too.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
}

#[cfg(feature = "std")]
impl NewImage for Vec<u8> {
    type Error = ();
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), ()> {
        let at = offset as usize;
        if self.len() < at {
            self.resize(at, 0);
        }
        self.truncate(at);
        self.extend_from_slice(data);
        Ok(())
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
        let at = offset as usize;
        buf.copy_from_slice(self.get(at..at + buf.len()).ok_or(())?);
        Ok(())
    }
}

/// Why a patch was refused. The old image is only ever read, so after any of these the
/// device still runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The patch ended before its header or payload did.
    Truncated,
    /// The patch is damaged or malformed (the reason says where).
    Corrupt(Corruption),
    /// The patch was made for another old image (length or SHA-256 differ).
    WrongSource,
    /// A resume marker that belongs to another patch.
    WrongProgress,
    /// The old image could not be read.
    ReadOld,
    /// The new image could not be written.
    WriteNew,
    /// The new image's written bytes could not be read back.
    ReadNew,
}

/// Where a corrupt patch went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The first four bytes are not "TDP1".
    Magic,
    /// An unknown payload version.
    Version,
    /// Unknown header flags or non-zero reserved bytes.
    Flags,
    /// Image lengths that do not fit the address space at the load address.
    Lengths,
    /// The coded data does not start with its zero byte.
    CoderStart,
    /// The address map is too long or out of order.
    AddressMap,
    /// A jump to an impossible reference.
    Jump,
    /// The coded data ended before the new image was complete.
    CodedDataEnds,
    /// Bytes beyond the payload length given in the header.
    TrailingData,
    /// The result does not hash to the new image's SHA-256 from the header.
    ResultHash,
}

impl core::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApplyError::Truncated => f.write_str("patch truncated: it ends before its payload does"),
            ApplyError::Corrupt(c) => write!(f, "patch corrupt: {c}"),
            ApplyError::WrongSource => {
                f.write_str("wrong source: the old image's length or SHA-256 is not the one the patch was made for")
            }
            ApplyError::WrongProgress => f.write_str("the resume marker belongs to another patch"),
            ApplyError::ReadOld => f.write_str("the old image could not be read"),
            ApplyError::WriteNew => f.write_str("the new image could not be written"),
            ApplyError::ReadNew => f.write_str("the new image's written bytes could not be read back"),
        }
    }
}

impl core::fmt::Display for Corruption {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Corruption::Magic => "not a Tern delta patch (bad magic)",
            Corruption::Version => "unsupported patch version",
            Corruption::Flags => "unknown header flags",
            Corruption::Lengths => "image lengths do not fit the address space",
            Corruption::CoderStart => "coded data does not start with 0",
            Corruption::AddressMap => "address map too long or out of order",
            Corruption::Jump => "jump to an impossible reference",
            Corruption::CodedDataEnds => "coded data ends before the new image is complete",
            Corruption::TrailingData => "data beyond the payload",
            Corruption::ResultHash => "the result does not match the new image's SHA-256",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ApplyError {}

/// A compact resume marker (8 bytes when persisted): how much of the new image is safely
/// written, and which patch it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the new image handed to [`NewImage::write`] (a prefix of the image).
    pub written: u32,
    /// The first 4 bytes of the new image's SHA-256 (identifies the patch).
    pub patch_id: [u8; 4],
}

impl Progress {
    /// The marker's persistent form.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.written.to_le_bytes());
        b[4..].copy_from_slice(&self.patch_id);
        b
    }

    /// Reads a persisted marker.
    pub fn from_bytes(b: [u8; 8]) -> Progress {
        Progress { written: u32::from_le_bytes([b[0], b[1], b[2], b[3]]), patch_id: [b[4], b[5], b[6], b[7]] }
    }
}

/// What [`Applier::feed`] reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// More patch bytes are needed.
    NeedMore,
    /// The new image is complete, written and matches its SHA-256.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Start,
    MapCount { external: bool },
    MapEntries { external: bool, left: u32, start: u32, shift: i32 },
    Data,
    Done,
}

struct Ring<'a> {
    buf: &'a [u8; RING],
    head: &'a mut usize,
    len: &'a mut usize,
}

impl Source for Ring<'_> {
    fn next(&mut self) -> Option<u8> {
        if *self.len == 0 {
            return None;
        }
        let b = self.buf[*self.head];
        *self.head = (*self.head + 1) % RING;
        *self.len -= 1;
        Some(b)
    }
}

/// The new image's bytes below the decoder's position: the output buffer not yet
/// written, and below it staging (read back through [`NewImage::read`]).
struct Written<'a, N> {
    out: &'a [u8],
    out_base: u32,
    new: &'a mut N,
}

impl<N: NewImage> OldImage for Written<'_, N> {
    type Error = N::Error;
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), N::Error> {
        // The model reads at most 4 bytes, all below the position (so inside what was
        // flushed plus `out`).
        let staged = (self.out_base.saturating_sub(offset) as usize).min(buf.len());
        if staged > 0 {
            self.new.read(offset, &mut buf[..staged])?;
        }
        for (i, b) in buf.iter_mut().enumerate().skip(staged) {
            *b = self.out[(offset + i as u32 - self.out_base) as usize];
        }
        Ok(())
    }
}

/// The streaming patch applier. Feed it the patch from its first byte, in chunks of any
/// size, with [`Applier::feed`]; call [`Applier::finish`] when the patch has ended.
pub struct Applier {
    phase: Phase,
    header_buf: [u8; HEADER_LEN],
    header_got: usize,
    header: Option<Header>,
    ring: [u8; RING],
    ring_head: usize,
    ring_len: usize,
    received: u32,
    dec: Decoder,
    model: Model,
    cursor: Cursor,
    maps: Maps,
    out: [u8; OUT_CHUNK],
    out_len: usize,
    out_base: u32,
    resume_from: Option<Progress>,
    sha: Sha256,
}

impl Default for Applier {
    fn default() -> Self {
        Self::new()
    }
}

impl Applier {
    /// An applier at the start of a patch.
    pub fn new() -> Self {
        Applier {
            phase: Phase::Header,
            header_buf: [0; HEADER_LEN],
            header_got: 0,
            header: None,
            ring: [0; RING],
            ring_head: 0,
            ring_len: 0,
            received: 0,
            dec: Decoder::new(),
            model: Model::default(),
            cursor: Cursor::default(),
            maps: Maps::default(),
            out: [0; OUT_CHUNK],
            out_len: 0,
            out_base: 0,
            resume_from: None,
            sha: Sha256::new(),
        }
    }

    /// An applier that restarts after a reset: feed it the same patch from its first byte
    /// again; the new image's first `progress.written` bytes (already in staging) are
    /// decoded and hashed but not written again.
    pub fn resume(progress: Progress) -> Self {
        let mut a = Self::new();
        a.resume_from = Some(progress);
        a
    }

    /// The header, once it has arrived and been checked.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The marker to persist: everything below `written` is in staging.
    pub fn progress(&self) -> Progress {
        let done = self.out_base.max(self.resume_from.map_or(0, |p| p.written));
        let patch_id = match (&self.header, &self.resume_from) {
            (Some(h), _) => [h.new_sha256[0], h.new_sha256[1], h.new_sha256[2], h.new_sha256[3]],
            (None, Some(p)) => p.patch_id,
            (None, None) => [0; 4],
        };
        Progress { written: done, patch_id }
    }

    /// Takes the next piece of the patch, produces what it can, and says whether the new
    /// image is complete.
    pub fn feed<O: OldImage, N: NewImage>(
        &mut self,
        mut chunk: &[u8],
        old: &mut O,
        new: &mut N,
    ) -> Result<Status, ApplyError> {
        if self.phase == Phase::Header {
            let take = chunk.len().min(HEADER_LEN - self.header_got);
            self.header_buf[self.header_got..self.header_got + take].copy_from_slice(&chunk[..take]);
            self.header_got += take;
            chunk = &chunk[take..];
            if self.header_got < HEADER_LEN {
                return Ok(Status::NeedMore);
            }
            let h = Header::parse(&self.header_buf)?;
            if let Some(p) = self.resume_from {
                if p.patch_id != h.new_sha256[..4] || p.written > h.new_len {
                    return Err(ApplyError::WrongProgress);
                }
            }
            check_source(&h, old)?;
            self.dec.rate = crate::rc::rate_for(h.old_len);
            self.header = Some(h);
            self.phase = Phase::Start;
        }
        let Some(h) = self.header else { return Err(ApplyError::Truncated) };
        loop {
            let room = (RING - self.ring_len).min((h.payload_len - self.received) as usize);
            let take = room.min(chunk.len());
            for &b in &chunk[..take] {
                self.ring[(self.ring_head + self.ring_len) % RING] = b;
                self.ring_len += 1;
            }
            self.received += take as u32;
            chunk = &chunk[take..];
            if !chunk.is_empty() && self.received == h.payload_len {
                return Err(ApplyError::Corrupt(Corruption::TrailingData));
            }
            // Either the image is complete, or the ring is below a step's worth of input
            // and has room again, so every round takes bytes or ends.
            self.run(&h, old, new)?;
            if chunk.is_empty() {
                break;
            }
        }
        Ok(if self.phase == Phase::Done { Status::Done } else { Status::NeedMore })
    }

    /// Ends the patch: `Ok` only if the new image is complete and verified.
    pub fn finish(&mut self) -> Result<(), ApplyError> {
        match self.phase {
            Phase::Done => Ok(()),
            _ => Err(ApplyError::Truncated),
        }
    }

    /// Runs steps while enough payload is buffered.
    fn run<O: OldImage, N: NewImage>(&mut self, h: &Header, old: &mut O, new: &mut N) -> Result<(), ApplyError> {
        let params = h.params();
        loop {
            if self.phase == Phase::Done {
                return Ok(());
            }
            let all_in = self.received == h.payload_len;
            if !all_in && self.ring_len < STEP_INPUT_MAX {
                return Ok(());
            }
            let mut src = Ring { buf: &self.ring, head: &mut self.ring_head, len: &mut self.ring_len };
            match self.phase {
                Phase::Start => match self.dec.start(&mut src) {
                    Ok(true) => self.phase = Phase::MapCount { external: false },
                    Ok(false) => return Err(ApplyError::Corrupt(Corruption::CodedDataEnds)),
                    Err(_) => return Err(ApplyError::Corrupt(Corruption::CoderStart)),
                },
                Phase::MapCount { external } => {
                    let mut d = Decoding { dec: &mut self.dec, src: &mut src, overrun: false };
                    let m = &mut self.model;
                    let (count, max) = if external {
                        (m.map_count.code(&mut d, 0), MAX_EXTERNAL_MAP)
                    } else {
                        (m.map_count.code(&mut d, 0), MAX_MAP)
                    };
                    if d.overrun {
                        return Err(ApplyError::Corrupt(Corruption::CodedDataEnds));
                    }
                    if count > max as u64 {
                        return Err(ApplyError::Corrupt(Corruption::AddressMap));
                    }
                    self.phase = match (count, external) {
                        (0, false) => Phase::MapCount { external: true },
                        (0, true) => Phase::Data,
                        _ => Phase::MapEntries { external, left: count as u32, start: 0, shift: 0 },
                    };
                }
                Phase::MapEntries { external, left, start, shift } => {
                    let mut d = Decoding { dec: &mut self.dec, src: &mut src, overrun: false };
                    let m = &mut self.model;
                    let (gap, dshift) = if external {
                        let gap = m.ext_start.code(&mut d, 0);
                        (gap, code_signed(&mut m.ext_sign, &mut m.ext_shift, &mut d, 0))
                    } else {
                        let gap = m.map_start.code(&mut d, 0);
                        (gap, code_signed(&mut m.map_sign, &mut m.map_shift, &mut d, 0))
                    };
                    if d.overrun {
                        return Err(ApplyError::Corrupt(Corruption::CodedDataEnds));
                    }
                    // The first entry's start is coded as is, later ones as the gap (>= 1).
                    let first = if external { self.maps.external.is_empty() } else { self.maps.image.is_empty() };
                    let next = u64::from(start) + gap + u64::from(!first);
                    let next_shift = i64::from(shift) + dshift;
                    let Ok(next_shift) = i32::try_from(next_shift) else {
                        return Err(ApplyError::Corrupt(Corruption::AddressMap));
                    };
                    let limit = if external { 1 << 32 } else { u64::from(h.old_len) };
                    let pushed = next < limit
                        && if external {
                            self.maps.external.push(next as u32, next_shift)
                        } else {
                            self.maps.image.push(next as u32, next_shift)
                        };
                    if !pushed {
                        return Err(ApplyError::Corrupt(Corruption::AddressMap));
                    }
                    self.phase = match (left, external) {
                        (1, false) => Phase::MapCount { external: true },
                        (1, true) => Phase::Data,
                        _ => Phase::MapEntries { external, left: left - 1, start: next as u32, shift: next_shift },
                    };
                }
                Phase::Data if self.cursor.n >= h.new_len => {
                    self.flush(new)?;
                    self.phase = Phase::Done;
                    if self.ring_len != 0 {
                        return Err(ApplyError::Corrupt(Corruption::TrailingData));
                    }
                    let digest: [u8; 32] = self.sha.clone().finalize().into();
                    if digest != h.new_sha256 {
                        return Err(ApplyError::Corrupt(Corruption::ResultHash));
                    }
                }
                Phase::Data => {
                    let mut d = Decoding { dec: &mut self.dec, src: &mut src, overrun: false };
                    let mut written = Written { out: &self.out[..self.out_len], out_base: self.out_base, new };
                    let unit = self
                        .model
                        .step(&mut self.cursor, &mut d, &params, &self.maps, old, &mut written, &Choice::default())
                        .map_err(|e| match e {
                            StepError::Read(_) => ApplyError::ReadOld,
                            StepError::ReadNew(_) => ApplyError::ReadNew,
                            StepError::BadJump => ApplyError::Corrupt(Corruption::Jump),
                        })?;
                    if d.overrun {
                        return Err(ApplyError::Corrupt(Corruption::CodedDataEnds));
                    }
                    // A unit never runs past the end: predictions are 4 bytes only when 4
                    // remain.
                    for &b in &unit.bytes[..unit.len] {
                        self.push_out(b, new)?;
                    }
                }
                Phase::Header | Phase::Done => return Ok(()),
            }
        }
    }

    fn push_out<N: NewImage>(&mut self, b: u8, new: &mut N) -> Result<(), ApplyError> {
        self.out[self.out_len] = b;
        self.out_len += 1;
        if self.out_len == OUT_CHUNK {
            self.flush(new)?;
        }
        Ok(())
    }

    fn flush<N: NewImage>(&mut self, new: &mut N) -> Result<(), ApplyError> {
        let data = &self.out[..self.out_len];
        self.sha.update(data);
        let skip = self.resume_from.map_or(0, |p| p.written);
        let end = self.out_base + self.out_len as u32;
        if end > skip {
            let from = skip.saturating_sub(self.out_base) as usize;
            new.write(self.out_base + from as u32, &data[from..]).map_err(|_| ApplyError::WriteNew)?;
        }
        self.out_base = end;
        self.out_len = 0;
        Ok(())
    }
}

/// Checks the old image's SHA-256 (over the header's old length) before anything is
/// produced.
fn check_source<O: OldImage>(h: &Header, old: &mut O) -> Result<(), ApplyError> {
    let mut sha = Sha256::new();
    let mut buf = [0u8; HASH_CHUNK];
    let mut at = 0u32;
    while at < h.old_len {
        let n = (h.old_len - at).min(HASH_CHUNK as u32) as usize;
        // A read beyond the installed image means it is shorter than the patch's source.
        old.read(at, &mut buf[..n]).map_err(|_| ApplyError::WrongSource)?;
        sha.update(&buf[..n]);
        at += n as u32;
    }
    let digest: [u8; 32] = sha.finalize().into();
    if digest != h.old_sha256 {
        return Err(ApplyError::WrongSource);
    }
    Ok(())
}

/// Applies a whole patch held in memory (host side: `tern delta apply`, tests).
#[cfg(feature = "std")]
pub fn apply_all(old: &[u8], patch: &[u8]) -> Result<Vec<u8>, ApplyError> {
    let mut a = Applier::new();
    let mut out = Vec::new();
    let mut o = old;
    a.feed(patch, &mut o, &mut out)?;
    a.finish()?;
    Ok(out)
}
