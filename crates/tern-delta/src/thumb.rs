//! ARM Thumb-2 instruction forms the model predicts, and the address map.
//!
//! Long branches (`BL` and `B.W`, encoding T4) carry a 25-bit PC-relative offset split
//! over both halfwords (ARMv7-M Architecture Reference Manual, A7.7.18 `BL` and A7.7.12
//! `B` T4): `S:I1:I2:imm10:imm11:0` with `I1 = NOT(J1 XOR S)` and `I2 = NOT(J2 XOR S)`.
//! When a function moves, every call to it changes in those bits; the address map says
//! where each old address went, so the applier can predict the new encoding.

/// Whether the two halfwords are a `BL` or a `B.W` (T4) instruction.
pub fn is_long_branch(hw0: u16, hw1: u16) -> bool {
    hw0 & 0xF800 == 0xF000 && (hw1 & 0xD000 == 0xD000 || hw1 & 0xD000 == 0x9000)
}

/// The branch offset (relative to the instruction's address + 4) of a long branch.
pub fn branch_offset(hw0: u16, hw1: u16) -> i32 {
    let s = u32::from((hw0 >> 10) & 1);
    let imm10 = u32::from(hw0 & 0x3FF);
    let j1 = u32::from((hw1 >> 13) & 1);
    let j2 = u32::from((hw1 >> 11) & 1);
    let imm11 = u32::from(hw1 & 0x7FF);
    let i1 = 1 ^ (j1 ^ s);
    let i2 = 1 ^ (j2 ^ s);
    let raw = (s << 24) | (i1 << 23) | (i2 << 22) | (imm10 << 12) | (imm11 << 1);
    // Sign-extend from 25 bits.
    ((raw << 7) as i32) >> 7
}

/// Re-encodes a long branch (keeping its kind, `BL` or `B.W`) with a new offset; `None`
/// when the offset is odd or out of the instruction's ±16 MiB reach.
pub fn with_offset(hw0: u16, hw1: u16, offset: i64) -> Option<(u16, u16)> {
    if offset & 1 != 0 || !(-(1 << 24)..(1 << 24)).contains(&offset) {
        return None;
    }
    let off = offset as u32;
    let s = (off >> 24) & 1;
    let i1 = (off >> 23) & 1;
    let i2 = (off >> 22) & 1;
    let imm10 = (off >> 12) & 0x3FF;
    let imm11 = (off >> 1) & 0x7FF;
    let j1 = (1 ^ i1) ^ s;
    let j2 = (1 ^ i2) ^ s;
    let new0 = (hw0 & 0xF800) as u32 | (s << 10) | imm10;
    let new1 = (hw1 & 0xD000) as u32 | (j1 << 13) | (j2 << 11) | imm11;
    Some((new0 as u16, new1 as u16))
}

/// Most entries the image's address map may have (the applier keeps it in RAM).
pub const MAX_MAP: usize = 256;
/// Most entries the map of addresses outside the image may have.
pub const MAX_EXTERNAL_MAP: usize = 64;

/// Where the old image's bytes went: a step function over old offsets. Entry `i` says
/// that old offsets from `start[i]` up to the next entry's start moved by `shift[i]`
/// bytes in the new image; offsets before the first entry did not move.
///
/// The image's map is keyed by offsets into the old image; the external map (addresses
/// outside the image: RAM, other modules) by absolute addresses.
#[derive(Clone, Debug)]
pub struct AddressMap<const N: usize = MAX_MAP> {
    pub(crate) start: [u32; N],
    pub(crate) shift: [i32; N],
    pub(crate) len: usize,
}

impl<const N: usize> Default for AddressMap<N> {
    fn default() -> Self {
        AddressMap { start: [0; N], shift: [0; N], len: 0 }
    }
}

/// Both maps the model predicts through.
#[derive(Clone, Debug, Default)]
pub struct Maps {
    /// Moves inside the image (offsets).
    pub image: AddressMap<MAX_MAP>,
    /// Moves of addresses outside the image (absolute).
    pub external: AddressMap<MAX_EXTERNAL_MAP>,
}

impl<const N: usize> AddressMap<N> {
    /// Adds an entry; entries must come in strictly increasing order of start. Returns
    /// false (and adds nothing) when that order is broken or the map is full.
    pub fn push(&mut self, start: u32, shift: i32) -> bool {
        if self.len == N || (self.len > 0 && start <= self.start[self.len - 1]) {
            return false;
        }
        self.start[self.len] = start;
        self.shift[self.len] = shift;
        self.len += 1;
        true
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map has no entries (nothing moved).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, in order: (old offset, shift).
    pub fn entries(&self) -> impl Iterator<Item = (u32, i32)> + '_ {
        self.start[..self.len].iter().copied().zip(self.shift[..self.len].iter().copied())
    }

    /// How far the old offset `x` moved.
    pub fn shift_at(&self, x: u32) -> i32 {
        // Last entry whose start is <= x.
        let n = self.start[..self.len].partition_point(|&s| s <= x);
        if n == 0 {
            0
        } else {
            self.shift[n - 1]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodings worked out by hand from the ARMv7-M manual's field layout.
    #[test]
    fn long_branch_fields() {
        // BL +0 (to the instruction after): S=0, I1=I2=0 so J1=J2=1, imm=0.
        let cases: [(u16, u16, i32); 5] = [
            (0xF000, 0xF800, 0),
            // BL -4: all ones sign-extended: S=1, I1=I2=1 -> J1=J2=1, imm10=0x3FF, imm11=0x7FE.
            (0xF7FF, 0xFFFE, -4),
            // BL +0x1000: imm10=1.
            (0xF001, 0xF800, 0x1000),
            // B.W +2: hw1 pattern 10x1.
            (0xF000, 0xB801, 2),
            // BL +0x400000 (I2=1 -> J2=0 with S=0).
            (0xF000, 0xF000, 0x400000),
        ];
        for (hw0, hw1, off) in cases {
            assert!(is_long_branch(hw0, hw1), "{hw0:04x} {hw1:04x}");
            assert_eq!(branch_offset(hw0, hw1), off, "{hw0:04x} {hw1:04x}");
            assert_eq!(with_offset(hw0, hw1, i64::from(off)), Some((hw0, hw1)));
        }
        assert!(!is_long_branch(0xF000, 0x8000)); // B.W T3 (conditional) is not predicted
        assert!(!is_long_branch(0xE000, 0xF800));
        assert_eq!(with_offset(0xF000, 0xF800, 3), None);
        assert_eq!(with_offset(0xF000, 0xF800, 1 << 24), None);
        assert!(with_offset(0xF000, 0xF800, -(1 << 24)).is_some());
    }

    #[test]
    fn map_is_a_step_function() {
        let mut m = AddressMap::<4>::default();
        assert!(m.push(100, 8));
        assert!(m.push(200, -4));
        assert!(!m.push(200, 0));
        assert_eq!(
            [m.shift_at(0), m.shift_at(99), m.shift_at(100), m.shift_at(199), m.shift_at(5000)],
            [0, 0, 8, 8, -4]
        );
    }
}
