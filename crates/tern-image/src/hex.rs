//! Intel HEX output: modules placed at their flash addresses in one file, the form
//! contract manufacturers' programmers take.
//!
//! Records written (Intel HEX-86/32, as specified in Intel's "Hexadecimal Object File
//! Format Specification", rev. A, 1988):
//!
//! | type | name | when |
//! |---|---|---|
//! | `00` | data | up to [`BYTES_PER_RECORD`] bytes each, never crossing a 64 KiB boundary |
//! | `04` | extended linear address | before the first data record of each 64 KiB window |
//! | `01` | end of file | last line |
//!
//! Lines end in `\n`, which every reader accepts.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// Data bytes per data record (16, the most common choice).
pub const BYTES_PER_RECORD: usize = 16;

/// Bytes to place at an address.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Address of the first byte.
    pub address: u32,
    /// The bytes.
    pub bytes: &'a [u8],
    /// A name for error messages (a file name, a module name).
    pub label: &'a str,
}

/// Why segments could not be written as Intel HEX.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Two segments cover the same address.
    Overlap {
        /// The earlier segment's label.
        first: String,
        /// The later segment's label.
        second: String,
        /// The first address both cover.
        address: u32,
    },
    /// A segment runs past the 4 GiB address space.
    BeyondAddressSpace {
        /// The segment's label.
        label: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Overlap { first, second, address } => {
                write!(f, "{second} overlaps {first} at address {address:#010x}")
            }
            Error::BeyondAddressSpace { label } => write!(f, "{label} runs past the 32-bit address space"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// Writes `segments` as one Intel HEX text, in address order.
pub fn write(segments: &[Segment<'_>]) -> Result<String, Error> {
    let mut sorted: Vec<&Segment<'_>> = segments.iter().filter(|s| !s.bytes.is_empty()).collect();
    sorted.sort_by_key(|s| s.address);
    let mut end_of_previous: Option<(u64, &str)> = None;
    for s in &sorted {
        let end = u64::from(s.address) + s.bytes.len() as u64;
        if end > 1 << 32 {
            return Err(Error::BeyondAddressSpace { label: s.label.into() });
        }
        if let Some((prev_end, prev_label)) = end_of_previous {
            if u64::from(s.address) < prev_end {
                return Err(Error::Overlap { first: prev_label.into(), second: s.label.into(), address: s.address });
            }
        }
        end_of_previous = Some((end, s.label));
    }

    let mut out = String::new();
    let mut window: Option<u16> = None;
    for s in sorted {
        let mut address = u64::from(s.address);
        let mut rest = s.bytes;
        while !rest.is_empty() {
            let upper = (address >> 16) as u16;
            if window != Some(upper) {
                record(&mut out, 0, 0x04, &upper.to_be_bytes());
                window = Some(upper);
            }
            // Stay inside the current 64 KiB window: a record's 16-bit offset cannot wrap.
            let room = 0x1_0000 - (address & 0xffff) as usize;
            let n = rest.len().min(BYTES_PER_RECORD).min(room);
            let (chunk, tail) = rest.split_at(n);
            record(&mut out, address as u16, 0x00, chunk);
            address += n as u64;
            rest = tail;
        }
    }
    record(&mut out, 0, 0x01, &[]);
    Ok(out)
}

fn record(out: &mut String, offset: u16, kind: u8, data: &[u8]) {
    let [hi, lo] = offset.to_be_bytes();
    let mut sum = (data.len() as u8).wrapping_add(hi).wrapping_add(lo).wrapping_add(kind);
    // Writing to a String cannot fail.
    let _ = write!(out, ":{:02X}{offset:04X}{kind:02X}", data.len());
    for b in data {
        sum = sum.wrapping_add(*b);
        let _ = write!(out, "{b:02X}");
    }
    let _ = writeln!(out, "{:02X}", sum.wrapping_neg());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(segments: &[Segment<'_>], expected: &str) {
        assert_eq!(write(segments).unwrap(), expected);
    }

    #[test]
    fn records() {
        // The data record is the example in Intel's specification (`:0300300002337A1E`).
        check(
            &[Segment { address: 0x0000_0030, bytes: &[0x02, 0x33, 0x7A], label: "a" }],
            ":020000040000FA\n:0300300002337A1E\n:00000001FF\n",
        );
        // A segment crossing a 64 KiB window gets a new 04 record mid-way.
        check(
            &[Segment { address: 0x0801_FFFF, bytes: &[0xAA, 0xBB], label: "b" }],
            ":020000040801F1\n:01FFFF00AA57\n:020000040802F0\n:01000000BB44\n:00000001FF\n",
        );
    }

    #[test]
    fn overlap_is_an_error() {
        let err = write(&[
            Segment { address: 0x100, bytes: &[0; 32], label: "boot" },
            Segment { address: 0x110, bytes: &[0; 4], label: "app" },
        ])
        .unwrap_err();
        assert_eq!(err, Error::Overlap { first: "boot".into(), second: "app".into(), address: 0x110 });
    }

    #[test]
    fn beyond_address_space_is_an_error() {
        let err = write(&[Segment { address: 0xFFFF_FFF0, bytes: &[0; 32], label: "x" }]).unwrap_err();
        assert_eq!(err, Error::BeyondAddressSpace { label: "x".into() });
    }
}
