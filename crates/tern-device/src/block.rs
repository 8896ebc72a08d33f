//! A block of module data in transit, and its compact binary frame.
//!
//! The device protocol (CBOR over MQTT, `docs/protocol.md`) carries blocks in its own
//! messages; this frame is the transport-independent form the agent consumes, used by
//! the simulator and by local links.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | frame version, `0x01` |
//! | 1 | 1 | module number within the offer |
//! | 2 | 4 | byte offset within the module (little-endian), a multiple of [`BLOCK_SIZE`] |
//! | 6 | n | data: [`BLOCK_SIZE`] bytes, or the module's remainder for its last block |

/// Size of a block in bytes: divides every sector size of the profiles, so a block never
/// straddles an erase sector.
pub const BLOCK_SIZE: u32 = 1024;

/// Frame version byte.
pub const FRAME_VERSION: u8 = 0x01;

/// One block of a staged module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block<'a> {
    /// Module number within the offer (install order).
    pub module: u8,
    /// Byte offset within the module.
    pub offset: u32,
    /// The bytes.
    pub data: &'a [u8],
}

/// Why a block frame could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the 6-byte header.
    Truncated,
    /// Unknown frame version.
    UnsupportedVersion(u8),
    /// More than [`BLOCK_SIZE`] bytes of data.
    TooLong,
}

impl<'a> Block<'a> {
    /// Decodes a frame. Never panics; a fuzz entry point.
    pub fn decode(frame: &'a [u8]) -> Result<Self, FrameError> {
        if frame.len() < 6 {
            return Err(FrameError::Truncated);
        }
        if frame[0] != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(frame[0]));
        }
        let data = &frame[6..];
        if data.len() > BLOCK_SIZE as usize {
            return Err(FrameError::TooLong);
        }
        Ok(Block { module: frame[1], offset: u32::from_le_bytes([frame[2], frame[3], frame[4], frame[5]]), data })
    }

    /// Encodes the frame header into `out[..6]` and returns the header length; the data
    /// follows it on the wire.
    pub fn encode_header(&self, out: &mut [u8; 6]) -> usize {
        out[0] = FRAME_VERSION;
        out[1] = self.module;
        out[2..6].copy_from_slice(&self.offset.to_le_bytes());
        6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(frame: &[u8], expected: Result<(u8, u32, usize), FrameError>) {
        assert_eq!(Block::decode(frame).map(|b| (b.module, b.offset, b.data.len())), expected);
    }

    #[test]
    fn frames() {
        let mut full = [0u8; 6 + 1024];
        full[..6].copy_from_slice(&[1, 2, 0, 4, 0, 0]);
        check(&full, Ok((2, 1024, 1024)));
        check(&full[..6], Ok((2, 1024, 0)));
        check(&full[..5], Err(FrameError::Truncated));
        check(&[], Err(FrameError::Truncated));
        check(&[2, 0, 0, 0, 0, 0], Err(FrameError::UnsupportedVersion(2)));
        let mut long = [0u8; 6 + 1025];
        long[0] = 1;
        check(&long, Err(FrameError::TooLong));
        let mut header = [0u8; 6];
        Block { module: 3, offset: 0x0102_0304, data: &[] }.encode_header(&mut header);
        check(&header, Ok((3, 0x0102_0304, 0)));
    }
}
