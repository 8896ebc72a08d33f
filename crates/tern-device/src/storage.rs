//! Flash access: one or two `embedded-storage` NOR flash devices behind one small trait.
//!
//! The device core never touches flash in any other way. A profile names each flash
//! device by a number (0 = internal, 1 = external); [`Storage`] routes an operation to it.
//! The helpers in this module (hashing, copying, checking for the erased value) read and
//! write through fixed-size stack buffers, so nothing here allocates.

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use sha2::{Digest, Sha256};

use crate::profile::Profile;

/// Size of the stack buffer used to stream flash contents (hashing, copying, comparing).
pub const IO_CHUNK: usize = 512;

/// Why a flash operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashError {
    /// The profile or a caller named a flash device that does not exist.
    NoSuchDevice(u8),
    /// The driver refused the operation: address or length not aligned.
    NotAligned,
    /// The driver refused the operation: outside the device.
    OutOfBounds,
    /// Any other driver failure (including loss of power in the simulator).
    Other,
}

impl FlashError {
    fn from_kind(kind: NorFlashErrorKind) -> Self {
        match kind {
            NorFlashErrorKind::NotAligned => FlashError::NotAligned,
            NorFlashErrorKind::OutOfBounds => FlashError::OutOfBounds,
            _ => FlashError::Other,
        }
    }
}

/// Flash operations on the devices of a profile, addressed by device number and byte
/// offset within that device.
pub trait Storage {
    /// Reads `buf.len()` bytes at `offset` of device `dev`.
    fn read(&mut self, dev: u8, offset: u32, buf: &mut [u8]) -> Result<(), FlashError>;
    /// Programs `data` at `offset`; both must be aligned to the device's write size.
    fn write(&mut self, dev: u8, offset: u32, data: &[u8]) -> Result<(), FlashError>;
    /// Erases `[from, to)`, which must start and end on sector boundaries.
    fn erase(&mut self, dev: u8, from: u32, to: u32) -> Result<(), FlashError>;
}

/// A single NOR flash device (device number 0).
pub struct OneFlash<F>(pub F);

impl<F: NorFlash> Storage for OneFlash<F> {
    fn read(&mut self, dev: u8, offset: u32, buf: &mut [u8]) -> Result<(), FlashError> {
        match dev {
            0 => self.0.read(offset, buf).map_err(|e| FlashError::from_kind(e.kind())),
            other => Err(FlashError::NoSuchDevice(other)),
        }
    }
    fn write(&mut self, dev: u8, offset: u32, data: &[u8]) -> Result<(), FlashError> {
        match dev {
            0 => self.0.write(offset, data).map_err(|e| FlashError::from_kind(e.kind())),
            other => Err(FlashError::NoSuchDevice(other)),
        }
    }
    fn erase(&mut self, dev: u8, from: u32, to: u32) -> Result<(), FlashError> {
        match dev {
            0 => self.0.erase(from, to).map_err(|e| FlashError::from_kind(e.kind())),
            other => Err(FlashError::NoSuchDevice(other)),
        }
    }
}

/// Two NOR flash devices: internal (device 0) and external, e.g. SPI NOR (device 1).
pub struct TwoFlashes<A, B> {
    /// Device 0, the MCU's internal flash.
    pub internal: A,
    /// Device 1, an external flash.
    pub external: B,
}

impl<A: NorFlash, B: NorFlash> Storage for TwoFlashes<A, B> {
    fn read(&mut self, dev: u8, offset: u32, buf: &mut [u8]) -> Result<(), FlashError> {
        match dev {
            0 => self.internal.read(offset, buf).map_err(|e| FlashError::from_kind(e.kind())),
            1 => self.external.read(offset, buf).map_err(|e| FlashError::from_kind(e.kind())),
            other => Err(FlashError::NoSuchDevice(other)),
        }
    }
    fn write(&mut self, dev: u8, offset: u32, data: &[u8]) -> Result<(), FlashError> {
        match dev {
            0 => self.internal.write(offset, data).map_err(|e| FlashError::from_kind(e.kind())),
            1 => self.external.write(offset, data).map_err(|e| FlashError::from_kind(e.kind())),
            other => Err(FlashError::NoSuchDevice(other)),
        }
    }
    fn erase(&mut self, dev: u8, from: u32, to: u32) -> Result<(), FlashError> {
        match dev {
            0 => self.internal.erase(from, to).map_err(|e| FlashError::from_kind(e.kind())),
            1 => self.external.erase(from, to).map_err(|e| FlashError::from_kind(e.kind())),
            other => Err(FlashError::NoSuchDevice(other)),
        }
    }
}

/// A place in flash: device number and byte offset within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Flash device number in the profile.
    pub dev: u8,
    /// Byte offset within that device.
    pub offset: u32,
}

/// SHA-256 of `len` bytes at `at`, streamed through a stack buffer.
pub fn hash<S: Storage>(s: &mut S, at: Loc, len: u32) -> Result<[u8; 32], FlashError> {
    let mut hasher = Sha256::new();
    let mut buf = [0u8; IO_CHUNK];
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(IO_CHUNK as u32) as usize;
        s.read(at.dev, at.offset + done, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        done += n as u32;
    }
    Ok(hasher.finalize().into())
}

/// Whether `len` bytes at `at` all hold the erased value `0xFF`.
pub fn is_erased<S: Storage>(s: &mut S, at: Loc, len: u32) -> Result<bool, FlashError> {
    let mut buf = [0u8; IO_CHUNK];
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(IO_CHUNK as u32) as usize;
        s.read(at.dev, at.offset + done, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0xFF) {
            return Ok(false);
        }
        done += n as u32;
    }
    Ok(true)
}

/// Whether the bytes at `at` equal `data`.
pub fn equals<S: Storage>(s: &mut S, at: Loc, data: &[u8]) -> Result<bool, FlashError> {
    let mut buf = [0u8; IO_CHUNK];
    for (i, chunk) in data.chunks(IO_CHUNK).enumerate() {
        let n = chunk.len();
        s.read(at.dev, at.offset + (i * IO_CHUNK) as u32, &mut buf[..n])?;
        if buf[..n] != *chunk {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Programs `data` at `at` (which must be write-aligned and erased), padding the tail
/// with `0xFF` up to the device's write size.
pub fn program<S: Storage>(s: &mut S, profile: &Profile, at: Loc, data: &[u8]) -> Result<(), FlashError> {
    let write_size = profile.device(at.dev).ok_or(FlashError::NoSuchDevice(at.dev))?.write_size as usize;
    let whole = data.len() - data.len() % write_size;
    if whole > 0 {
        s.write(at.dev, at.offset, &data[..whole])?;
    }
    if whole < data.len() {
        // Write sizes in profiles are at most 16 bytes.
        let mut tail = [0xFFu8; 16];
        let rest = &data[whole..];
        tail[..rest.len()].copy_from_slice(rest);
        s.write(at.dev, at.offset + whole as u32, &tail[..write_size.min(16)])?;
    }
    Ok(())
}

/// Erases the sectors that cover `len` bytes from `at` (rounded out to sector bounds), and
/// reads them back: an erase that reported success but left bits at 0 (a failing erase)
/// is an error ([`FlashError::Other`]) like one the driver reports, so the caller resets
/// and redoes its step instead of trusting bits it never wrote (progress markers that read
/// as received blocks, for instance).
pub fn erase_covering<S: Storage>(s: &mut S, profile: &Profile, at: Loc, len: u32) -> Result<(), FlashError> {
    if len == 0 {
        return Ok(());
    }
    let device = profile.device(at.dev).ok_or(FlashError::NoSuchDevice(at.dev))?;
    let (from, to) = device.covering(at.offset, len).ok_or(FlashError::OutOfBounds)?;
    s.erase(at.dev, from, to)?;
    if !is_erased(s, Loc { dev: at.dev, offset: from }, to - from)? {
        return Err(FlashError::Other);
    }
    Ok(())
}

/// Copies `len` bytes from `from` to `to` (erased, write-aligned) through a stack buffer.
pub fn copy<S: Storage>(s: &mut S, profile: &Profile, from: Loc, to: Loc, len: u32) -> Result<(), FlashError> {
    let mut buf = [0u8; IO_CHUNK];
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(IO_CHUNK as u32) as usize;
        s.read(from.dev, from.offset + done, &mut buf[..n])?;
        program(s, profile, Loc { dev: to.dev, offset: to.offset + done }, &buf[..n])?;
        done += n as u32;
    }
    Ok(())
}
