//! The patch payload's model: what is predicted and in which context each bit is coded.
//!
//! Written once against [`Coder`]: the generator runs it with an encoder and the choices
//! it made, the applier with a decoder, so both sides walk the same contexts by
//! construction. See `docs/delta.md` for the prose description.
//!
//! A *step* produces one unit of the new image: first a jump flag (and, after a 1, where
//! the reference moves: back to literal coding, to one of two recent references, or by a
//! coded distance), then the unit's bytes. With a reference `d`, the unit's prediction is
//! the old image at `n + d`, rewritten when it is a Thumb-2 long branch (4 bytes, the
//! target moved through the address map and re-encoded for the new address) or a
//! pointer into the image (4 bytes, moved through the map); otherwise it is one byte.
//! Each predicted byte costs an "as predicted" bit; a miss is coded as a literal in the
//! context of the predicted byte (LZMA's "matched literal" idea). Without a reference,
//! bytes are coded as literals in the context of the previous byte's top bits.

use crate::rc::{Coder, Cost, Prob, PROB_INIT};
use crate::thumb::{self, Maps};

/// What the model may predict (the patch header's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Load address of both images (the address of byte 0 when running).
    pub load: u32,
    /// Old image length.
    pub old_len: u32,
    /// New image length.
    pub new_len: u32,
    /// Predict `BL`/`B.W` targets through the address map.
    pub branches: bool,
    /// Predict aligned words pointing into the image through the address map.
    pub pointers: bool,
    /// Predict aligned words pointing outside the image through the external map.
    pub external: bool,
}

/// Reads the old (installed) image, typically straight from flash.
pub trait OldImage {
    /// The reader's own error (a flash fault).
    type Error;
    /// Fills `buf` with the old image's bytes from `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
}

impl OldImage for &[u8] {
    type Error = ();
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
        let start = offset as usize;
        let src = self.get(start..start + buf.len()).ok_or(())?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The kind of a predicted unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One byte copied from the old image.
    Plain = 0,
    /// A long branch whose target went through the address map.
    Branch = 1,
    /// A pointer into the image that went through the address map.
    Pointer = 2,
    /// One byte copied from the new image's own earlier bytes.
    Repeat = 3,
    /// A long branch copied from the new image's earlier bytes, re-encoded to reach the
    /// same target from its new address.
    RepeatBranch = 4,
}

/// "As predicted" contexts: per byte of the unit, the last 3 such bits and the parity.
const EQ_CONTEXTS: usize = 2 * 16 + 3 * 64;

impl Kind {
    /// Where its "as predicted" contexts start (1-byte kinds have 16, 4-byte kinds 64).
    fn eq_base(self) -> usize {
        match self {
            Kind::Plain => 0,
            Kind::Repeat => 16,
            Kind::Branch => 32,
            Kind::Pointer => 96,
            Kind::RepeatBranch => 160,
        }
    }

    /// The table its missed bytes are coded with (repeated branches share the branches').
    fn table(self) -> usize {
        match self {
            Kind::Plain => 0,
            Kind::Branch | Kind::RepeatBranch | Kind::Pointer => 1,
            Kind::Repeat => 0,
        }
    }
}

/// The prediction for the next unit.
#[derive(Clone, Copy, Debug)]
pub struct Prediction {
    /// What was recognised.
    pub kind: Kind,
    /// Unit length: 1 or 4 bytes.
    pub len: usize,
    /// Predicted bytes (only `len` are meaningful).
    pub bytes: [u8; 4],
}

fn translate(params: &Params, maps: &Maps, addr: i64) -> i64 {
    let x = addr - i64::from(params.load);
    if (0..i64::from(params.old_len)).contains(&x) {
        addr + i64::from(maps.image.shift_at(x as u32))
    } else {
        addr
    }
}

/// Predicts the unit at new offset `n` from old offset `o` (which must be inside the old
/// image).
pub fn predict<O: OldImage>(params: &Params, maps: &Maps, old: &mut O, o: u32, n: u32) -> Result<Prediction, O::Error> {
    let mut w = [0u8; 4];
    let k = (params.old_len - o).min(4) as usize;
    old.read(o, &mut w[..k])?;
    if k == 4 && params.new_len - n >= 4 {
        let addr = i64::from(params.load) + i64::from(o);
        let new_addr = i64::from(params.load) + i64::from(n);
        if params.branches && addr & 1 == 0 {
            let hw0 = u16::from_le_bytes([w[0], w[1]]);
            let hw1 = u16::from_le_bytes([w[2], w[3]]);
            if thumb::is_long_branch(hw0, hw1) {
                let target = addr + 4 + i64::from(thumb::branch_offset(hw0, hw1));
                // Only branches into the image itself: a "target" elsewhere is most often
                // data that happens to look like a branch, which is best left as it is.
                let inside = (0..i64::from(params.old_len)).contains(&(target - i64::from(params.load)));
                let moved = translate(params, maps, target);
                if let Some((a, b)) = thumb::with_offset(hw0, hw1, moved - (new_addr + 4)).filter(|_| inside) {
                    let [a0, a1] = a.to_le_bytes();
                    let [b0, b1] = b.to_le_bytes();
                    return Ok(Prediction { kind: Kind::Branch, len: 4, bytes: [a0, a1, b0, b1] });
                }
            }
        }
        if addr & 3 == 0 {
            let v = u32::from_le_bytes(w);
            let x = i64::from(v) - i64::from(params.load);
            let moved = if (0..i64::from(params.old_len)).contains(&x) {
                params.pointers.then(|| translate(params, maps, i64::from(v)))
            } else {
                // Outside the image only words the external map says moved are units:
                // everything else (constants, unmoved addresses) stays byte by byte.
                let shift = maps.external.shift_at(v);
                (params.external && shift != 0).then(|| i64::from(v) + i64::from(shift))
            };
            if let Some(m) = moved.and_then(|m| u32::try_from(m).ok()) {
                return Ok(Prediction { kind: Kind::Pointer, len: 4, bytes: m.to_le_bytes() });
            }
        }
    }
    Ok(Prediction { kind: Kind::Plain, len: 1, bytes: [w[0], 0, 0, 0] })
}

/// Predicts the unit at new offset `n` from the new image's own byte `dist` back (which
/// must be written: `1 <= dist <= n`). A long branch at least 4 bytes back is re-encoded
/// to reach the same target from `n`; anything else is the one byte.
pub fn predict_repeat<W: OldImage>(
    params: &Params,
    written: &mut W,
    dist: u32,
    n: u32,
) -> Result<Prediction, W::Error> {
    let p = n - dist;
    let mut w = [0u8; 4];
    let from = i64::from(params.load) + i64::from(p);
    let to = i64::from(params.load) + i64::from(n);
    if params.branches && dist >= 4 && from & 1 == 0 && to & 1 == 0 && params.new_len - n >= 4 {
        written.read(p, &mut w)?;
        let hw0 = u16::from_le_bytes([w[0], w[1]]);
        let hw1 = u16::from_le_bytes([w[2], w[3]]);
        if thumb::is_long_branch(hw0, hw1) {
            let target = from + 4 + i64::from(thumb::branch_offset(hw0, hw1));
            let inside = (0..i64::from(params.new_len)).contains(&(target - i64::from(params.load)));
            if let Some((a, b)) = thumb::with_offset(hw0, hw1, target - (to + 4)).filter(|_| inside) {
                let [a0, a1] = a.to_le_bytes();
                let [b0, b1] = b.to_le_bytes();
                return Ok(Prediction { kind: Kind::RepeatBranch, len: 4, bytes: [a0, a1, b0, b1] });
            }
        }
    } else {
        written.read(p, &mut w[..1])?;
    }
    Ok(Prediction { kind: Kind::Repeat, len: 1, bytes: [w[0], 0, 0, 0] })
}

/// An Elias-gamma style integer code with adaptive bits: the bit length in unary, then
/// the two leading mantissa bits in context, the rest at even odds.
#[derive(Clone, Debug)]
pub struct Gamma {
    len: [Prob; 33],
    mant: [[Prob; 3]; 33],
}

impl Default for Gamma {
    fn default() -> Self {
        Gamma { len: [PROB_INIT; 33], mant: [[PROB_INIT; 3]; 33] }
    }
}

impl Gamma {
    /// Codes `v`; returns the value coded (decoded: possibly up to 2^33 - 2 on corrupt
    /// input, which the caller rejects).
    pub fn code<C: Coder>(&mut self, c: &mut C, v: u64) -> u64 {
        let x = v.wrapping_add(1);
        let want_bits = 63 - x.max(1).leading_zeros();
        let mut nb = 0u32;
        while nb < 32 {
            if c.bit(&mut self.len[nb as usize], u32::from(nb < want_bits)) == 0 {
                break;
            }
            nb += 1;
        }
        let mut out = 1u64;
        let mut tree = 0usize;
        for i in (0..nb).rev() {
            let want = ((x >> i) & 1) as u32;
            let b = if nb - 1 - i < 2 {
                let b = c.bit(&mut self.mant[nb as usize][tree], want);
                tree = 1 + b as usize;
                b
            } else {
                c.even(want)
            };
            out = (out << 1) | u64::from(b);
        }
        out - 1
    }
}

/// Where a jump takes the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// No reference: literal bytes.
    Literal,
    /// New old-minus-new offset.
    Old(i64),
    /// The new image's own bytes this far back (at least 1).
    New(u32),
}

/// What the next unit is predicted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ref {
    /// The old image at `n + d`.
    Old(i64),
    /// The new image at `n - dist` (already written).
    New(u32),
}

/// Position and reference of the walk through the new image.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    /// Next new offset to produce.
    pub n: u32,
    /// The reference; `None` codes literals.
    pub r: Option<Ref>,
    pub(crate) rep: [i64; 2],
    pub(crate) nrep: [u32; 2],
    hist: u8,
    last_miss: bool,
    last_jump: bool,
    prev: u8,
}

/// One produced unit.
#[derive(Clone, Copy, Debug)]
pub struct Unit {
    /// The bytes (only `len` are meaningful).
    pub bytes: [u8; 4],
    /// 1..=4.
    pub len: usize,
}

/// Why a step could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepError<E, F> {
    /// The old image could not be read.
    Read(E),
    /// The new image's written bytes could not be read back.
    ReadNew(F),
    /// A coded jump distance was out of range.
    BadJump,
}

/// All adaptive probabilities of the payload.
#[derive(Clone, Debug)]
pub struct Model {
    jump: [Prob; 12],
    jump_kind: [[Prob; 3]; 6],
    sign: Prob,
    delta: Gamma,
    dist: Gamma,
    dist_low: [Prob; 3],
    pub(crate) map_count: Gamma,
    pub(crate) map_start: Gamma,
    pub(crate) map_sign: Prob,
    pub(crate) map_shift: Gamma,
    pub(crate) ext_start: Gamma,
    pub(crate) ext_sign: Prob,
    pub(crate) ext_shift: Gamma,
    eq: [Prob; EQ_CONTEXTS],
    matched: [[Prob; 0x300]; 2],
    plain: [[Prob; 0x100]; LIT_TABLES],
}

impl Default for Model {
    fn default() -> Self {
        Model {
            jump: [PROB_INIT; 12],
            jump_kind: [[PROB_INIT; 3]; 6],
            sign: PROB_INIT,
            delta: Gamma::default(),
            dist: Gamma::default(),
            dist_low: [PROB_INIT; 3],
            map_count: Gamma::default(),
            map_start: Gamma::default(),
            map_sign: PROB_INIT,
            map_shift: Gamma::default(),
            ext_start: Gamma::default(),
            ext_sign: PROB_INIT,
            ext_shift: Gamma::default(),
            eq: [PROB_INIT; EQ_CONTEXTS],
            matched: [[PROB_INIT; 0x300]; 2],
            plain: [[PROB_INIT; 0x100]; LIT_TABLES],
        }
    }
}

/// What the generator wants coded in a step (the applier passes `Choice::default()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Choice {
    /// `Some` to move the reference first.
    pub jump: Option<Target>,
    /// The new image's next bytes (zero-padded past its end).
    pub bytes: [u8; 4],
}

fn tree_byte<C: Coder>(probs: &mut [Prob; 0x100], c: &mut C, byte: u8) -> u8 {
    let mut sym = 1usize;
    for i in (0..8).rev() {
        let b = c.bit_at(&mut probs[sym], u32::from((byte >> i) & 1), lit_rate(c));
        sym = (sym << 1) | b as usize;
    }
    sym as u8
}

fn matched_byte<C: Coder>(probs: &mut [Prob; 0x300], c: &mut C, predicted: u8, byte: u8) -> u8 {
    let mut sym = 1usize;
    let mut same = true;
    for i in (0..8).rev() {
        let want = u32::from((byte >> i) & 1);
        let b = if same {
            let mbit = usize::from((predicted >> i) & 1);
            let b = c.bit_at(&mut probs[0x100 + (mbit << 8) + sym], want, lit_rate(c));
            same = b as usize == mbit;
            b
        } else {
            c.bit_at(&mut probs[sym], want, lit_rate(c))
        };
        sym = (sym << 1) | b as usize;
    }
    sym as u8
}

impl Model {
    /// Bits the literal `byte` at new offset `n` after `prev` would cost now, with
    /// `bits(p, bit)` the price of one coded bit (the generator's estimate).
    #[cfg(feature = "std")]
    pub(crate) fn literal_price(&self, n: u32, prev: u8, byte: u8, bits: impl Fn(Prob, u32) -> f64) -> f64 {
        let probs = &self.plain[literal_table(n, prev)];
        let mut sym = 1usize;
        let mut sum = 0.0;
        for i in (0..8).rev() {
            let b = u32::from((byte >> i) & 1);
            sum += bits(probs[sym], b);
            sym = (sym << 1) | b as usize;
        }
        sum
    }
}

/// Signed-magnitude coding on top of a gamma code.
pub(crate) fn code_signed<C: Coder>(sign: &mut Prob, g: &mut Gamma, c: &mut C, v: i64) -> i64 {
    let mag = g.code(c, v.unsigned_abs());
    if mag == 0 {
        return 0;
    }
    let neg = c.bit(sign, u32::from(v < 0));
    if neg == 1 {
        -(mag as i64)
    } else {
        mag as i64
    }
}

/// Moves `left` (the reference being left, if of this kind) to the front of `reps` and
/// removes `taken` (the one being taken) from them.
fn update_reps<T: Copy + PartialEq + Default>(reps: &mut [T; 2], left: Option<T>, taken: Option<T>) {
    let mut out = [T::default(); 2];
    let mut k = 0;
    for r in left.into_iter().chain(*reps) {
        if Some(r) != taken && !out[..k].contains(&r) && k < 2 {
            out[k] = r;
            k += 1;
        }
    }
    if k == 2 {
        *reps = out;
    } else if k == 1 {
        *reps = [out[0], reps[0]];
    }
}

/// Jump-kind probabilities (each in three contexts: the current reference is none, old,
/// new).
const TO_LITERAL: usize = 0;
const TO_NEW: usize = 1;
const OLD_REP0: usize = 2;
const OLD_REP1: usize = 3;
const NEW_REP0: usize = 4;
const NEW_REP1: usize = 5;

impl Model {
    /// Runs one step at `cur.n` (which must be below `params.new_len`). `written` reads
    /// the new image's bytes below `cur.n`.
    #[allow(clippy::too_many_arguments)]
    pub fn step<C: Coder, O: OldImage, W: OldImage>(
        &mut self,
        cur: &mut Cursor,
        c: &mut C,
        params: &Params,
        maps: &Maps,
        old: &mut O,
        written: &mut W,
        choice: &Choice,
    ) -> Result<Unit, StepError<O::Error, W::Error>> {
        c.account(Cost::Jump);
        let rk = match cur.r {
            None => 0,
            Some(Ref::Old(_)) => 1,
            Some(Ref::New(_)) => 2,
        };
        let ctx = usize::from(cur.last_miss) + rk * 2 + usize::from(cur.last_jump) * 6;
        let jump = c.bit(&mut self.jump[ctx], u32::from(choice.jump.is_some())) == 1;
        cur.last_jump = jump;
        if jump {
            let want = choice.jump.unwrap_or(Target::Literal);
            let to_literal = c.bit(&mut self.jump_kind[TO_LITERAL][rk], u32::from(want == Target::Literal)) == 1;
            let new_r = if to_literal {
                None
            } else {
                // Old or new: coded only when both are possible.
                let to_new = match (params.old_len > 0, cur.n > 0) {
                    (true, true) => {
                        c.bit(&mut self.jump_kind[TO_NEW][rk], u32::from(matches!(want, Target::New(_)))) == 1
                    }
                    (false, true) => true,
                    (true, false) => false,
                    (false, false) => return Err(StepError::BadJump),
                };
                if to_new {
                    let t = match want {
                        Target::New(t) => t,
                        _ => 0,
                    };
                    let dist = if c.bit(&mut self.jump_kind[NEW_REP0][rk], u32::from(t == cur.nrep[0])) == 1 {
                        cur.nrep[0]
                    } else if c.bit(&mut self.jump_kind[NEW_REP1][rk], u32::from(t == cur.nrep[1])) == 1 {
                        cur.nrep[1]
                    } else {
                        // dist - 1: the bits above the lowest two as an integer, those two
                        // in a small tree (Thumb code repeats at halfword and word
                        // distances).
                        let v = u64::from(t).wrapping_sub(1);
                        let high = self.dist.code(c, v >> 2);
                        let b1 = c.bit(&mut self.dist_low[0], ((v >> 1) & 1) as u32);
                        let b0 = c.bit(&mut self.dist_low[1 + b1 as usize], (v & 1) as u32);
                        let v = high << 2 | u64::from(b1 << 1 | b0);
                        u32::try_from(v + 1).map_err(|_| StepError::BadJump)?
                    };
                    if dist == 0 || dist > cur.n {
                        return Err(StepError::BadJump);
                    }
                    Some(Ref::New(dist))
                } else {
                    let t = match want {
                        Target::Old(t) => t,
                        _ => 0,
                    };
                    if c.bit(&mut self.jump_kind[OLD_REP0][rk], u32::from(t == cur.rep[0])) == 1 {
                        Some(Ref::Old(cur.rep[0]))
                    } else if c.bit(&mut self.jump_kind[OLD_REP1][rk], u32::from(t == cur.rep[1])) == 1 {
                        Some(Ref::Old(cur.rep[1]))
                    } else {
                        let base = match cur.r {
                            Some(Ref::Old(d)) => d,
                            _ => cur.rep[0],
                        };
                        let delta = code_signed(&mut self.sign, &mut self.delta, c, t.wrapping_sub(base));
                        let t = base.checked_add(delta).ok_or(StepError::BadJump)?;
                        if t.unsigned_abs() > 1 << 32 {
                            return Err(StepError::BadJump);
                        }
                        Some(Ref::Old(t))
                    }
                }
            };
            // Recent references: the one left behind goes first, the one taken is removed.
            let old_of = |r: Option<Ref>| match r {
                Some(Ref::Old(d)) => Some(d),
                _ => None,
            };
            let new_of = |r: Option<Ref>| match r {
                Some(Ref::New(d)) => Some(d),
                _ => None,
            };
            update_reps(&mut cur.rep, old_of(cur.r), old_of(new_r));
            update_reps(&mut cur.nrep, new_of(cur.r), new_of(new_r));
            cur.r = new_r;
        }

        let mut unit = Unit { bytes: [0; 4], len: 1 };
        let pred = match cur.r {
            None => {
                c.account(Cost::Literal);
                let b = tree_byte(&mut self.plain[literal_table(cur.n, cur.prev)], c, choice.bytes[0]);
                unit.bytes[0] = b;
                cur.prev = b;
                cur.hist = 0;
                cur.last_miss = true;
                cur.n += 1;
                return Ok(unit);
            }
            Some(Ref::Old(d)) => {
                let o = i64::from(cur.n) + d;
                if (0..i64::from(params.old_len)).contains(&o) {
                    predict(params, maps, old, o as u32, cur.n).map_err(StepError::Read)?
                } else {
                    Prediction { kind: Kind::Plain, len: 1, bytes: [0; 4] }
                }
            }
            Some(Ref::New(dist)) => predict_repeat(params, written, dist, cur.n).map_err(StepError::ReadNew)?,
        };
        let base = pred.kind.eq_base();
        let table = pred.kind.table();
        let mut miss = false;
        for i in 0..pred.len {
            let ctx = base + (i * 8 + usize::from(cur.hist)) * 2 + (cur.n as usize & 1);
            let want = choice.bytes[i];
            c.account(Cost::Predicted);
            let eq = c.bit(&mut self.eq[ctx], u32::from(want == pred.bytes[i])) == 1;
            c.account(Cost::Missed);
            let b = if eq { pred.bytes[i] } else { matched_byte(&mut self.matched[table], c, pred.bytes[i], want) };
            miss |= !eq;
            cur.hist = ((cur.hist << 1) | u8::from(eq)) & 7;
            unit.bytes[i] = b;
            cur.prev = b;
        }
        unit.len = pred.len;
        cur.last_miss = miss;
        cur.n += pred.len as u32;
        Ok(unit)
    }
}

/// Literal trees: at even offsets (the low byte of a Thumb halfword) by the previous
/// byte's top 2 bits, at odd offsets (the high byte, which holds the opcode) by its top
/// 3 bits.
const LIT_TABLES: usize = 12;

/// The literal tree for new offset `n` after byte `prev`.
pub(crate) fn literal_table(n: u32, prev: u8) -> usize {
    if n & 1 == 0 {
        usize::from(prev >> 6)
    } else {
        4 + usize::from(prev >> 5)
    }
}
/// The literal trees' adaptation rate: one step slower than the other bits' (1/16 in a
/// delta, 1/32 in a patch from nothing).
fn lit_rate<C: Coder>(c: &C) -> u32 {
    c.rate() + 1
}
