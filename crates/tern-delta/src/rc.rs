//! Adaptive binary range coder (the patch payload's entropy coder).
//!
//! A carry-propagating range coder over 32-bit ranges with 16-bit adaptive probabilities:
//! each probability is the chance (out of 65 536) that the next bit is 0 and moves 1/8 of
//! the way towards every coded bit. Sixteen bits (rather than the 11 of LZMA) let a
//! context that is right almost every time cost well under a thousandth of a bit, which
//! matters here because most bytes of a delta are "as predicted".
//!
//! The model (`crate::model`) is written once against [`Coder`], so the generator and the
//! applier cannot disagree about what is coded in which context.

/// Bits of probability precision.
const PROB_BITS: u32 = 16;
/// Adaptation rate: a probability moves 1/2^ADAPT of the way towards each coded bit
/// (1/8: measured on the corpus pairs, 1/8 beat 1/4, 1/16 and 1/32 for flags and literal
/// trees alike).
const ADAPT: u32 = 3;
/// Adaptation rate in patches from nothing (an empty old image): 1/16. Such a payload is
/// a long run of literals and repeats of the image's own bytes whose statistics change
/// more slowly than a delta's (measured: 1/16 beat 1/8 and 1/32 on full images).
const ADAPT_FROM_NOTHING: u32 = 4;

/// The adaptation rate of a payload whose old image is `old_len` bytes long.
pub fn rate_for(old_len: u32) -> u32 {
    if old_len == 0 {
        ADAPT_FROM_NOTHING
    } else {
        ADAPT
    }
}

/// Ranges are kept at or above this value (one byte is shifted in or out below it).
const TOP: u32 = 1 << 24;

/// An adaptive probability that the next bit is 0, out of 65 536 (always in 1..=65 535).
pub type Prob = u16;
/// The initial probability: even odds.
pub const PROB_INIT: Prob = 1 << (PROB_BITS - 1);

fn adapt(p: &mut Prob, bit: u32, rate: u32) {
    if bit == 0 {
        *p += (((1u32 << PROB_BITS) - u32::from(*p)) >> rate) as u16;
    } else {
        *p -= *p >> rate;
    }
}

/// One side of the range coder: the generator encodes the bits it is given, the applier
/// decodes bits and ignores the argument.
pub trait Coder {
    /// Codes one bit with the adaptive probability `p`; returns the bit coded.
    fn bit(&mut self, p: &mut Prob, bit: u32) -> u32 {
        let rate = self.rate();
        self.bit_at(p, bit, rate)
    }
    /// The adaptation rate of [`Coder::bit`] (see [`rate_for`]).
    fn rate(&self) -> u32;
    /// Codes one bit with `p`, which then moves 1/2^`rate` of the way towards the bit.
    fn bit_at(&mut self, p: &mut Prob, bit: u32, rate: u32) -> u32;
    /// Codes one bit at even odds (no adaptation).
    fn even(&mut self, bit: u32) -> u32;
    /// Names what the next bits code (the generator's cost accounting; no effect on the
    /// coded data).
    fn account(&mut self, _what: Cost) {}
}

/// What coded bits are spent on (for `Encoder::tally`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// The address map.
    Map = 0,
    /// Jump flags and targets.
    Jump = 1,
    /// "As predicted" flags.
    Predicted = 2,
    /// Bytes that missed their prediction.
    Missed = 3,
    /// Bytes without a reference.
    Literal = 4,
}

/// The applier's range decoder. It pulls payload bytes through a closure-free cursor over
/// a byte source the caller refills ([`Source`]).
#[derive(Clone, Debug)]
pub struct Decoder {
    range: u32,
    code: u32,
    /// Adaptation rate ([`rate_for`]).
    pub(crate) rate: u32,
    /// Bytes still to read before decoding can start (the encoder's 5 leading bytes).
    pub(crate) init_left: u8,
}

/// Where the decoder takes its next payload byte from.
pub trait Source {
    /// The next byte, or `None` when no byte is available (the decoder then records an
    /// overrun and continues with zeros; the caller turns that into an error).
    fn next(&mut self) -> Option<u8>;
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that still has to read its 5 leading bytes.
    pub const fn new() -> Self {
        Decoder { range: 0xFFFF_FFFF, code: 0, rate: ADAPT, init_left: 5 }
    }

    /// Reads the leading bytes; true once decoding can start. The first byte an encoder
    /// writes is always 0, so anything else is corrupt.
    pub fn start(&mut self, src: &mut impl Source) -> Result<bool, BadStart> {
        while self.init_left > 0 {
            let Some(b) = src.next() else { return Ok(false) };
            if self.init_left == 5 && b != 0 {
                return Err(BadStart);
            }
            self.code = (self.code << 8) | u32::from(b);
            self.init_left -= 1;
        }
        Ok(true)
    }
}

/// The coded data does not start with the encoder's 0 byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadStart;

/// A decoder bound to its byte source for a stretch of decoding.
pub struct Decoding<'a, S: Source> {
    /// The decoder's state.
    pub dec: &'a mut Decoder,
    /// Where bytes come from.
    pub src: &'a mut S,
    /// Set when the source ran dry mid-symbol.
    pub overrun: bool,
}

impl<S: Source> Decoding<'_, S> {
    fn normalize(&mut self) {
        while self.dec.range < TOP {
            let b = match self.src.next() {
                Some(b) => b,
                None => {
                    self.overrun = true;
                    0
                }
            };
            self.dec.range <<= 8;
            self.dec.code = (self.dec.code << 8) | u32::from(b);
        }
    }
}

impl<S: Source> Coder for Decoding<'_, S> {
    fn rate(&self) -> u32 {
        self.dec.rate
    }

    fn bit_at(&mut self, p: &mut Prob, _bit: u32, rate: u32) -> u32 {
        let bound = (self.dec.range >> PROB_BITS) * u32::from(*p);
        let bit = if self.dec.code < bound {
            self.dec.range = bound;
            0
        } else {
            self.dec.code -= bound;
            self.dec.range -= bound;
            1
        };
        adapt(p, bit, rate);
        self.normalize();
        bit
    }

    fn even(&mut self, _bit: u32) -> u32 {
        self.dec.range >>= 1;
        let bit = if self.dec.code < self.dec.range {
            0
        } else {
            self.dec.code -= self.dec.range;
            1
        };
        self.normalize();
        bit
    }
}

/// The generator's range encoder.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    /// The bytes produced so far.
    pub out: Vec<u8>,
    /// Bits spent per [`Cost`] (estimated from the probabilities).
    pub tally: [f64; 5],
    what: usize,
    /// Adaptation rate ([`rate_for`]).
    pub rate: u32,
}

#[cfg(feature = "std")]
impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "std")]
impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Encoder {
            low: 0,
            range: 0xFFFF_FFFF,
            cache: 0,
            cache_size: 1,
            out: Vec::new(),
            tally: [0.0; 5],
            what: 0,
            rate: ADAPT,
        }
    }

    fn shift_low(&mut self) {
        // A byte can only be emitted once no later carry can change it: either the
        // pending top byte is below 0xFF, or a carry has just happened.
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut pending = self.cache;
            while self.cache_size > 0 {
                self.out.push(pending.wrapping_add(carry));
                pending = 0xFF;
                self.cache_size -= 1;
            }
            self.cache = ((self.low >> 24) & 0xFF) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Writes out the final state; the decoder reads exactly these bytes.
    pub fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

#[cfg(feature = "std")]
impl Coder for Encoder {
    fn rate(&self) -> u32 {
        self.rate
    }

    fn account(&mut self, what: Cost) {
        self.what = what as usize;
    }

    fn bit_at(&mut self, p: &mut Prob, bit: u32, rate: u32) -> u32 {
        self.tally[self.what] += f64::from(cost(*p, bit)) / 256.0;
        let bound = (self.range >> PROB_BITS) * u32::from(*p);
        if bit == 0 {
            self.range = bound;
        } else {
            self.low += u64::from(bound);
            self.range -= bound;
        }
        adapt(p, bit, rate);
        self.normalize();
        bit
    }

    fn even(&mut self, bit: u32) -> u32 {
        self.tally[self.what] += 1.0;
        self.range >>= 1;
        if bit != 0 {
            self.low += u64::from(self.range);
        }
        self.normalize();
        bit
    }
}

/// Cost in 1/256 bits of coding `bit` with probability `p` (the generator's estimates).
#[cfg(feature = "std")]
pub fn cost(p: Prob, bit: u32) -> u32 {
    let p0 = f64::from(p) / 65536.0;
    let q = if bit == 0 { p0 } else { 1.0 - p0 };
    (-q.log2() * 256.0) as u32
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    struct Bytes<'a>(&'a [u8], usize);
    impl Source for Bytes<'_> {
        fn next(&mut self) -> Option<u8> {
            let b = self.0.get(self.1).copied();
            self.1 += 1;
            b
        }
    }

    #[test]
    fn bits_round_trip_through_skewed_and_even_contexts() {
        let bits: Vec<u32> = (0..20_000u32).map(|i| u32::from(i % 97 == 0 || (i * 7919) % 13 == 0)).collect();
        let mut enc = Encoder::new();
        let mut probs = [PROB_INIT; 4];
        for (i, &b) in bits.iter().enumerate() {
            if i % 5 == 0 {
                enc.even(b);
            } else {
                enc.bit(&mut probs[i % 4], b);
            }
        }
        let out = enc.finish();
        assert_eq!(out[0], 0);
        // 4000 even bits take 500 bytes; 16 000 bits that are 1 about 9% of the time carry
        // about 0.43 bits each (860 bytes); stored plainly the 20 000 bits take 2500. The
        // fast adaptation (1/8) costs some of that on stationary bits: within 25%.
        assert!(out.len() < 1700, "{} bytes", out.len());
        let mut dec = Decoder::new();
        let mut src = Bytes(&out, 0);
        assert_eq!(dec.start(&mut src), Ok(true));
        let mut d = Decoding { dec: &mut dec, src: &mut src, overrun: false };
        let mut probs = [PROB_INIT; 4];
        for (i, &b) in bits.iter().enumerate() {
            let got = if i % 5 == 0 { d.even(0) } else { d.bit(&mut probs[i % 4], 0) };
            assert_eq!(got, b, "bit {i}");
        }
        assert!(!d.overrun);
        assert!(src.1 <= out.len());
    }
}
