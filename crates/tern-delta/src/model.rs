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
}

/// Position and reference of the walk through the new image.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    /// Next new offset to produce.
    pub n: u32,
    /// The reference: old offset = n + d; `None` codes literals.
    pub d: Option<i64>,
    pub(crate) rep: [i64; 2],
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
pub enum StepError<E> {
    /// The old image could not be read.
    Read(E),
    /// A coded jump distance was out of range.
    BadJump,
}

/// All adaptive probabilities of the payload.
#[derive(Clone, Debug)]
pub struct Model {
    jump: [Prob; 8],
    jump_kind: [Prob; 6],
    sign: Prob,
    delta: Gamma,
    pub(crate) map_count: Gamma,
    pub(crate) map_start: Gamma,
    pub(crate) map_sign: Prob,
    pub(crate) map_shift: Gamma,
    pub(crate) ext_start: Gamma,
    pub(crate) ext_sign: Prob,
    pub(crate) ext_shift: Gamma,
    eq: [Prob; 3 * 4 * 8 * 2],
    matched: [[Prob; 0x300]; 3],
    plain: [[Prob; 0x100]; 8],
}

impl Default for Model {
    fn default() -> Self {
        Model {
            jump: [PROB_INIT; 8],
            jump_kind: [PROB_INIT; 6],
            sign: PROB_INIT,
            delta: Gamma::default(),
            map_count: Gamma::default(),
            map_start: Gamma::default(),
            map_sign: PROB_INIT,
            map_shift: Gamma::default(),
            ext_start: Gamma::default(),
            ext_sign: PROB_INIT,
            ext_shift: Gamma::default(),
            eq: [PROB_INIT; 3 * 4 * 8 * 2],
            matched: [[PROB_INIT; 0x300]; 3],
            plain: [[PROB_INIT; 0x100]; 8],
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
        let b = c.bit(&mut probs[sym], u32::from((byte >> i) & 1));
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
            let b = c.bit(&mut probs[0x100 + (mbit << 8) + sym], want);
            same = b as usize == mbit;
            b
        } else {
            c.bit(&mut probs[sym], want)
        };
        sym = (sym << 1) | b as usize;
    }
    sym as u8
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

impl Model {
    /// Runs one step at `cur.n` (which must be below `params.new_len`).
    pub fn step<C: Coder, O: OldImage>(
        &mut self,
        cur: &mut Cursor,
        c: &mut C,
        params: &Params,
        maps: &Maps,
        old: &mut O,
        choice: &Choice,
    ) -> Result<Unit, StepError<O::Error>> {
        c.account(Cost::Jump);
        let ctx = usize::from(cur.last_miss) | usize::from(cur.d.is_none()) << 1 | usize::from(cur.last_jump) << 2;
        let jump = c.bit(&mut self.jump[ctx], u32::from(choice.jump.is_some())) == 1;
        cur.last_jump = jump;
        if jump {
            let lit_ctx = usize::from(cur.d.is_none()) * 3;
            let want = choice.jump.unwrap_or(Target::Literal);
            let to_literal = c.bit(&mut self.jump_kind[lit_ctx], u32::from(want == Target::Literal)) == 1;
            let new_d = if to_literal {
                None
            } else {
                let t = match want {
                    Target::Old(t) => t,
                    Target::Literal => 0,
                };
                if c.bit(&mut self.jump_kind[lit_ctx + 1], u32::from(t == cur.rep[0])) == 1 {
                    Some(cur.rep[0])
                } else if c.bit(&mut self.jump_kind[lit_ctx + 2], u32::from(t == cur.rep[1])) == 1 {
                    Some(cur.rep[1])
                } else {
                    let base = cur.d.unwrap_or(cur.rep[0]);
                    let delta = code_signed(&mut self.sign, &mut self.delta, c, t.wrapping_sub(base));
                    let t = base.checked_add(delta).ok_or(StepError::BadJump)?;
                    if t.unsigned_abs() > 1 << 32 {
                        return Err(StepError::BadJump);
                    }
                    Some(t)
                }
            };
            // Recent references: the one left behind goes first, the one taken is removed.
            let mut reps = [0i64; 3];
            let mut k = 0;
            for r in cur.d.into_iter().chain(cur.rep) {
                if Some(r) != new_d && !reps[..k].contains(&r) && k < 2 {
                    reps[k] = r;
                    k += 1;
                }
            }
            if k == 2 {
                cur.rep = [reps[0], reps[1]];
            } else if k == 1 {
                cur.rep = [reps[0], cur.rep[0]];
            }
            cur.d = new_d;
        }

        let mut unit = Unit { bytes: [0; 4], len: 1 };
        let Some(d) = cur.d else {
            c.account(Cost::Literal);
            let b =
                tree_byte(&mut self.plain[(cur.n as usize & 1) << 2 | usize::from(cur.prev >> 6)], c, choice.bytes[0]);
            unit.bytes[0] = b;
            cur.prev = b;
            cur.hist = 0;
            cur.last_miss = true;
            cur.n += 1;
            return Ok(unit);
        };
        let o = i64::from(cur.n) + d;
        let pred = if (0..i64::from(params.old_len)).contains(&o) {
            predict(params, maps, old, o as u32, cur.n).map_err(StepError::Read)?
        } else {
            Prediction { kind: Kind::Plain, len: 1, bytes: [0; 4] }
        };
        let kind = pred.kind as usize;
        let mut miss = false;
        for i in 0..pred.len {
            let ctx = ((kind * 4 + i) * 8 + usize::from(cur.hist)) * 2 + (cur.n as usize & 1);
            let want = choice.bytes[i];
            c.account(Cost::Predicted);
            let eq = c.bit(&mut self.eq[ctx], u32::from(want == pred.bytes[i])) == 1;
            c.account(Cost::Missed);
            let b = if eq { pred.bytes[i] } else { matched_byte(&mut self.matched[kind], c, pred.bytes[i], want) };
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
