//! The patch generator (std, server side).
//!
//! 1. A first walk over the new image with raw byte predictions finds, greedily, which old
//!    offset each stretch of the new image is best predicted from.
//! 2. Those stretches give the address map: each old byte is owned by the longest stretch
//!    copied from it; runs become map entries, short ones are merged away until the map
//!    fits the applier's table.
//! 3. A second walk, now predicting branch targets and pointers through the map, chooses
//!    the references again and codes everything with the shared model.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::infer::infer_load_address;
use crate::model::{
    code_signed, predict, predict_repeat, Choice, Cursor, Kind, Model, Params, Prediction, Ref, Target,
};
use crate::rc::{Coder, Encoder};
use crate::thumb::{self, AddressMap, Maps};
use crate::{Header, FLAG_BRANCHES, FLAG_EXTERNAL, FLAG_POINTERS};

/// What the generator models (all on by default; the switches exist for measuring what
/// each idea is worth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where both images run; inferred from the new image when `None`.
    pub load_address: Option<u32>,
    /// Predict `BL`/`B.W` targets.
    pub branches: bool,
    /// Predict pointers into the image.
    pub pointers: bool,
    /// Send an address map (without one, targets and pointers are predicted unmoved).
    pub address_map: bool,
    /// Predict pointers outside the image (RAM, other modules) through a second map.
    pub external: bool,
    /// Predict from the new image's own earlier bytes (repeats), as LZ77 coders do.
    pub repeats: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { load_address: None, branches: true, pointers: true, address_map: true, external: true, repeats: true }
    }
}

/// Bytes of a seed looked up in the old image's index.
const SEED: usize = 8;
/// Old positions kept per seed.
const SEED_POSITIONS: usize = 24;
/// Bytes over which a reference is scored.
const WINDOW: u32 = 24;
/// A reference scoring at least this is kept without looking for another.
const KEEP: u32 = WINDOW - 2;
/// A new reference must beat the current one by this much.
const MARGIN: u32 = 8;
/// Below this score a reference is dropped for literal coding (predictions from a poor
/// reference still beat literals without one, so this is low).
const LITERAL_BELOW: u32 = 2;

/// Builds the patch that turns `old` into `new`. With `config.external`, the patch is
/// made with and without the external map and the smaller one is kept (the external map
/// pays off where RAM moved and costs a little where it did not).
pub fn make(old: &[u8], new: &[u8], config: &Config) -> Vec<u8> {
    let mut best = make_one(old, new, config);
    // Without an old image there is nothing for a map to say.
    if config.external && !old.is_empty() {
        let other = make_one(old, new, &Config { external: false, ..*config });
        if other.len() < best.len() {
            best = other;
        }
    }
    best
}

/// A full image compressed: the patch from an empty old image (the same format and
/// applier as any patch; apply it with an empty old image, e.g. `&[][..]` or a
/// [`crate::FlashImage`] of length 0).
pub fn compress(new: &[u8], config: &Config) -> Vec<u8> {
    make(&[], new, config)
}

fn make_one(old: &[u8], new: &[u8], config: &Config) -> Vec<u8> {
    let load = config.load_address.unwrap_or_else(|| infer_load_address(new));
    let base = Params {
        load,
        old_len: old.len() as u32,
        new_len: new.len() as u32,
        branches: false,
        pointers: false,
        external: false,
    };
    let index = Index::new(old);
    let params = Params { branches: config.branches, pointers: config.pointers, external: config.external, ..base };
    let mut maps = Maps::default();
    if !old.is_empty() && ((config.address_map && (config.branches || config.pointers)) || config.external) {
        let (_, stretches) = walk(old, new, &base, &maps, &index, config.repeats);
        let (inside, outside) = observe_moves(old, new, &params, &stretches);
        if config.address_map {
            maps.image = build_map(&inside);
        }
        if config.external {
            maps.external = build_external_map(&outside);
        }
    }
    let map = maps;
    let (payload, _) = walk(old, new, &params, &map, &index, config.repeats);
    let header = Header {
        flags: if config.branches { FLAG_BRANCHES } else { 0 }
            | if config.pointers { FLAG_POINTERS } else { 0 }
            | if config.external { FLAG_EXTERNAL } else { 0 },
        load_address: load,
        old_len: old.len() as u32,
        old_sha256: Sha256::digest(old).into(),
        new_len: new.len() as u32,
        new_sha256: Sha256::digest(new).into(),
        payload_len: payload.len() as u32,
    };
    let mut patch = header.to_bytes().to_vec();
    patch.extend_from_slice(&payload);
    patch
}

/// Old positions by the `SEED` bytes that start there.
struct Index {
    seeds: HashMap<u64, Vec<u32>>,
}

fn seed_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + SEED)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(s);
    Some(u64::from_le_bytes(w))
}

impl Index {
    fn new(old: &[u8]) -> Self {
        let mut seeds: HashMap<u64, Vec<u32>> = HashMap::new();
        for at in 0..old.len().saturating_sub(SEED - 1) {
            let key = seed_at(old, at).expect("at + SEED <= old.len()");
            let v = seeds.entry(key).or_default();
            if v.len() < SEED_POSITIONS {
                v.push(at as u32);
            }
        }
        Index { seeds }
    }
}

/// A stretch of the new image predicted from one reference: new offsets `start..end`,
/// old offset = new offset + `d`.
#[derive(Clone, Copy, Debug)]
struct Stretch {
    start: u32,
    end: u32,
    d: i64,
}

/// How many of the next `WINDOW` new bytes reference `d` predicts.
fn score(old: &[u8], new: &[u8], params: &Params, map: &Maps, n: u32, d: i64) -> u32 {
    let mut pos = n;
    let mut hits = 0;
    let end = (n + WINDOW).min(params.new_len);
    let mut reader: &[u8] = old;
    while pos < end {
        let o = i64::from(pos) + d;
        if !(0..i64::from(params.old_len)).contains(&o) {
            pos += 1;
            continue;
        }
        let p = predict(params, map, &mut reader, o as u32, pos).expect("o is inside the old image");
        for i in 0..p.len {
            hits += u32::from(new[pos as usize + i] == p.bytes[i]);
        }
        pos += p.len as u32;
    }
    hits
}

/// Estimated bits of a literal byte, of a byte as predicted and of a missed prediction
/// (the generator's rough prices for choosing references; they do not affect the
/// format).
const PRICE_HIT: f64 = 0.3;
const PRICE_MISS: f64 = 15.0;
/// Price of jumping to literals, to a recent reference.
const PRICE_TO_LITERAL: f64 = 3.0;
const PRICE_TO_REP: f64 = 4.0;
/// Price of a new distance: a constant and bits per bit of the distance (the gamma
/// code's unary length and mantissa, less what adaptation saves).
const PRICE_DISTANCE: f64 = 8.0;
const PRICE_DISTANCE_BIT: f64 = 1.4;
/// Bits a repeat must be worth more than the alternative (in a delta, than the old
/// image's choice).
const REPEAT_MARGIN: f64 = 1.0;
const REPEAT_MARGIN_DELTA: f64 = 5.0;
/// Bytes over which a repeat is valued.
const REPEAT_WINDOW: u32 = 32;
/// Candidates looked at per position.
const CHAIN_DEPTH: usize = 48;
/// Shortest raw match looked at for a repeat.
const REPEAT_MIN: usize = 3;

/// Bits saved (against coding literals) by following `r` for the best prefix of the next
/// `REPEAT_WINDOW` bytes.
fn savings(ctx: &Walk, n: u32, r: Ref, lits: &[f64]) -> f64 {
    let params = ctx.params;
    let end = (n + REPEAT_WINDOW).min(params.new_len);
    let mut pos = n;
    let (mut sum, mut best) = (0.0f64, 0.0f64);
    let mut old_reader: &[u8] = ctx.old;
    let mut new_reader: &[u8] = ctx.new;
    while pos < end {
        let p = match r {
            Ref::Old(d) => {
                let o = i64::from(pos) + d;
                if (0..i64::from(params.old_len)).contains(&o) {
                    predict(params, ctx.maps, &mut old_reader, o as u32, pos).expect("inside the old image")
                } else {
                    Prediction { kind: Kind::Plain, len: 1, bytes: [0; 4] }
                }
            }
            Ref::New(dist) => predict_repeat(params, &mut new_reader, dist, pos).expect("inside the new image"),
        };
        for i in 0..p.len {
            let lit = lits[(pos - n) as usize + i];
            sum += if ctx.new[pos as usize + i] == p.bytes[i] { lit - PRICE_HIT } else { lit - PRICE_MISS };
        }
        best = best.max(sum);
        pos += p.len as u32;
    }
    best
}

/// Bits of coding `bit` with probability `p` (a table of [`crate::rc::cost`]).
fn bits(p: crate::rc::Prob, bit: u32) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=4096u32).map(|i| f64::from(crate::rc::cost((i << 4).clamp(1, 65535) as u16, 0)) / 256.0).collect()
    });
    let p0 = if bit == 0 { u32::from(p) } else { 65536 - u32::from(p) };
    table[(p0 >> 4) as usize]
}

/// Price of coding a jump to `dist` bytes back.
fn price_distance(cur: &Cursor, dist: u32) -> f64 {
    if cur.nrep.contains(&dist) {
        PRICE_TO_REP
    } else {
        PRICE_DISTANCE + PRICE_DISTANCE_BIT * f64::from(32 - dist.leading_zeros())
    }
}

/// Positions of the new image by the `REPEAT_MIN` bytes that start there (hash chains).
struct Chains {
    head: Vec<u32>,
    prev: Vec<u32>,
    /// The new image as the chains see it: long branches into the image replaced by
    /// their absolute targets, so calls to one function look alike wherever they are (a
    /// repeat re-encodes them for their new address).
    image: Vec<u8>,
}

const CHAIN_BITS: u32 = 16;
const NONE: u32 = u32::MAX;

impl Chains {
    fn new(new: &[u8], params: &Params) -> Self {
        let mut image = new.to_vec();
        if params.branches {
            let load = i64::from(params.load);
            let mut i = (params.load & 1) as usize;
            while i + 4 <= new.len() {
                let hw0 = u16::from_le_bytes([new[i], new[i + 1]]);
                let hw1 = u16::from_le_bytes([new[i + 2], new[i + 3]]);
                if thumb::is_long_branch(hw0, hw1) {
                    let target = load + i as i64 + 4 + i64::from(thumb::branch_offset(hw0, hw1));
                    if (0..new.len() as i64).contains(&(target - load)) {
                        // Targets are even: bit 0 tells BL from B.W.
                        let t = target as u32 | u32::from(hw1 >> 12 & 1);
                        image[i..i + 4].copy_from_slice(&t.to_le_bytes());
                        i += 4;
                        continue;
                    }
                }
                i += 2;
            }
        }
        Chains { head: vec![NONE; 1 << CHAIN_BITS], prev: vec![NONE; new.len()], image }
    }
    fn hash(new: &[u8], at: usize) -> Option<usize> {
        let s = new.get(at..at + REPEAT_MIN)?;
        let mut h = 0u32;
        for &b in s {
            h = h.wrapping_mul(0x9E37_79B1).wrapping_add(u32::from(b) + 1);
        }
        Some((h.wrapping_mul(0x9E37_79B1) >> (32 - CHAIN_BITS)) as usize)
    }
    fn insert(&mut self, at: usize) {
        if let Some(h) = Self::hash(&self.image, at) {
            self.prev[at] = self.head[h];
            self.head[h] = at as u32;
        }
    }
}

/// What a walk works on.
struct Walk<'a> {
    old: &'a [u8],
    new: &'a [u8],
    params: &'a Params,
    maps: &'a Maps,
    index: &'a Index,
    chains: Option<Chains>,
}

/// Chooses where the reference should be at `cur.n`: `None` keeps it.
fn decide(ctx: &Walk, cur: &Cursor, model: &Model) -> Option<Target> {
    let (old, new, params, map) = (ctx.old, ctx.new, ctx.params, ctx.maps);
    let n = cur.n;
    let current = match cur.r {
        Some(Ref::Old(d)) => Some(score(old, new, params, map, n, d)),
        Some(Ref::New(dist)) => Some(score_repeat(new, params, n, dist)),
        None => None,
    };
    if current.is_some_and(|s| s >= KEEP) {
        return None;
    }
    let floor = current.unwrap_or(0);
    let mut best: Option<(u32, i64)> = None;
    let mut consider = |d: i64| {
        if Some(Ref::Old(d)) == cur.r {
            return;
        }
        let s = score(old, new, params, map, n, d);
        if best.is_none_or(|(bs, _)| s > bs) {
            best = Some((s, d));
        }
    };
    if params.old_len > 0 {
        for &r in &cur.rep {
            consider(r);
        }
        if let Some(key) = seed_at(new, n as usize) {
            if let Some(positions) = ctx.index.seeds.get(&key) {
                for &p in positions {
                    consider(i64::from(p) - i64::from(n));
                }
            }
        }
    }
    let choice = match best {
        Some((s, d)) if s >= floor + MARGIN && s >= LITERAL_BELOW => Some(Target::Old(d)),
        _ if cur.r.is_some() && floor < LITERAL_BELOW => Some(Target::Literal),
        _ => None,
    };
    let Some(chains) = &ctx.chains else { return choice };
    // Repeats of the new image's own bytes, valued in bits against what the old-image
    // choice above is worth.
    // What each byte of the window would cost as a literal now.
    // (A 4-byte unit may start at the window's last byte.)
    let mut lits = [0.0; REPEAT_WINDOW as usize + 3];
    let mut prev = if n > 0 { new[n as usize - 1] } else { 0 };
    for (i, at) in (n..(n + REPEAT_WINDOW + 3).min(params.new_len)).enumerate() {
        let b = new[at as usize];
        lits[i] = model.literal_price(at, prev, b, bits);
        prev = b;
    }
    let lits = &lits[..];
    let value_of = |t: Option<Target>| match t {
        None => cur.r.map_or(0.0, |r| savings(ctx, n, r, lits)),
        Some(Target::Literal) => -PRICE_TO_LITERAL,
        Some(Target::Old(d)) => savings(ctx, n, Ref::Old(d), lits) - PRICE_TO_REP * 2.0,
        Some(Target::New(dist)) => savings(ctx, n, Ref::New(dist), lits) - price_distance(cur, dist),
    };
    let base = value_of(choice);
    let mut best_new: Option<(f64, u32)> = None;
    let mut consider_new = |dist: u32| {
        if dist == 0 || dist > n || Some(Ref::New(dist)) == cur.r {
            return;
        }
        let v = savings(ctx, n, Ref::New(dist), lits) - price_distance(cur, dist);
        if best_new.is_none_or(|(bv, _)| v > bv) {
            best_new = Some((v, dist));
        }
    };
    for dist in cur.nrep {
        consider_new(dist);
    }
    let xnew = &chains.image[..];
    if let Some(h) = Chains::hash(xnew, n as usize) {
        let mut p = chains.head[h];
        let mut depth = 0;
        let at = n as usize;
        let mut longest = 0;
        let limit = (new.len() - at).min(REPEAT_WINDOW as usize);
        while p != NONE && depth < CHAIN_DEPTH {
            let q = p as usize;
            let len = xnew[q..].iter().zip(&xnew[at..at + limit]).take_while(|(a, b)| a == b).count();
            // Only candidates about as long as the longest so far are valued in full.
            if len >= REPEAT_MIN && len + 2 >= longest {
                longest = longest.max(len);
                consider_new(n - p);
            }
            p = chains.prev[q];
            depth += 1;
        }
    }
    // In a delta a repeat must beat the old image's choice clearly (the old reference
    // tends to stay right beyond the window; measured: 5 bits better than 1 or 9).
    let margin = if params.old_len > 0 { REPEAT_MARGIN_DELTA } else { REPEAT_MARGIN };
    match best_new {
        Some((v, dist)) if v > base + margin && v > 0.0 => Some(Target::New(dist)),
        _ => choice,
    }
}

/// How many of the next `WINDOW` bytes the repeat from `dist` back predicts.
fn score_repeat(new: &[u8], params: &Params, n: u32, dist: u32) -> u32 {
    let mut pos = n;
    let mut hits = 0;
    let end = (n + WINDOW).min(params.new_len);
    let mut reader: &[u8] = new;
    while pos < end {
        let p = predict_repeat(params, &mut reader, dist, pos).expect("inside the new image");
        for i in 0..p.len {
            hits += u32::from(new[pos as usize + i] == p.bytes[i]);
        }
        pos += p.len as u32;
    }
    hits
}

/// Walks the new image, choosing references and coding every step; returns the payload
/// and the stretches chosen (from the old image).
fn walk(old: &[u8], new: &[u8], params: &Params, map: &Maps, index: &Index, repeats: bool) -> (Vec<u8>, Vec<Stretch>) {
    let mut enc = Encoder::new();
    enc.rate = crate::rc::rate_for(params.old_len);
    let mut model = Model::default();
    code_map(&mut model, &mut enc, map);
    let mut cur = Cursor::default();
    let mut stretches = Vec::new();
    let mut open: Option<(u32, i64)> = None;
    let mut reader: &[u8] = old;
    let mut written: &[u8] = new;
    let mut ctx = Walk { old, new, params, maps: map, index, chains: repeats.then(|| Chains::new(new, params)) };
    while cur.n < params.new_len {
        let n = cur.n;
        let jump = decide(&ctx, &cur, &model);
        let mut bytes = [0u8; 4];
        let avail = (params.new_len - n).min(4) as usize;
        bytes[..avail].copy_from_slice(&new[n as usize..n as usize + avail]);
        let before = cur.r;
        let unit = model
            .step(&mut cur, &mut enc, params, map, &mut reader, &mut written, &Choice { jump, bytes })
            .expect("the generator only reads inside both images and jumps within range");
        debug_assert_eq!(unit.bytes[..unit.len], new[n as usize..n as usize + unit.len]);

        if let Some(chains) = &mut ctx.chains {
            for at in n..cur.n {
                chains.insert(at as usize);
            }
        }
        if cur.r != before || jump.is_some() {
            if let Some((start, d)) = open.take() {
                stretches.push(Stretch { start, end: n, d });
            }
            open = match cur.r {
                Some(Ref::Old(d)) => Some((n, d)),
                _ => None,
            };
        }
    }
    if let Some((start, d)) = open {
        stretches.push(Stretch { start, end: params.new_len, d });
    }
    (enc.finish(), stretches)
}

fn code_map(model: &mut Model, enc: &mut Encoder, maps: &Maps) {
    enc.account(crate::rc::Cost::Map);
    fn entries<const N: usize>(
        count: &mut crate::model::Gamma,
        start_code: &mut crate::model::Gamma,
        sign: &mut crate::rc::Prob,
        shift_code: &mut crate::model::Gamma,
        enc: &mut Encoder,
        map: &AddressMap<N>,
    ) {
        count.code(enc, map.len() as u64);
        let (mut prev_start, mut prev_shift) = (None::<u32>, 0i32);
        for (start, shift) in map.entries() {
            let gap = match prev_start {
                None => u64::from(start),
                Some(p) => u64::from(start - p - 1),
            };
            start_code.code(enc, gap);
            code_signed(sign, shift_code, enc, i64::from(shift) - i64::from(prev_shift));
            prev_start = Some(start);
            prev_shift = shift;
        }
    }
    let m = model;
    entries(&mut m.map_count, &mut m.map_start, &mut m.map_sign, &mut m.map_shift, enc, &maps.image);
    entries(&mut m.map_count, &mut m.ext_start, &mut m.ext_sign, &mut m.ext_shift, enc, &maps.external);
}

/// One observed move: an address inside the old image (as an offset) that the new image
/// refers to at `offset + shift`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Move {
    offset: u32,
    shift: i64,
}

/// Where the old image's referenced addresses went: for every long branch and every
/// in-image pointer of the old image that the raw walk lined up with the same kind of
/// unit in the new image, the old target and the new one.
fn observe_moves(old: &[u8], new: &[u8], params: &Params, stretches: &[Stretch]) -> (Vec<Move>, Vec<Move>) {
    let load = i64::from(params.load);
    let inside = |a: i64| (0..i64::from(params.old_len)).contains(&(a - load));
    let word = |b: &[u8], at: usize| b.get(at..at + 4).map(|w| [w[0], w[1], w[2], w[3]]);
    let mut moves = Vec::new();
    let mut outside = Vec::new();
    for s in stretches {
        let mut n = s.start;
        while n < s.end {
            let o = i64::from(n) + s.d;
            let (Some(ow), Some(nw)) = (word(old, o as usize), word(new, n as usize)) else {
                n += 1;
                continue;
            };
            if o < 0 {
                n += 1;
                continue;
            }
            let old_addr = load + o;
            let new_addr = load + i64::from(n);
            let (oh0, oh1) = (u16::from_le_bytes([ow[0], ow[1]]), u16::from_le_bytes([ow[2], ow[3]]));
            let (nh0, nh1) = (u16::from_le_bytes([nw[0], nw[1]]), u16::from_le_bytes([nw[2], nw[3]]));
            if params.branches
                && old_addr & 1 == 0
                && thumb::is_long_branch(oh0, oh1)
                && thumb::is_long_branch(nh0, nh1)
            {
                let t_old = old_addr + 4 + i64::from(thumb::branch_offset(oh0, oh1));
                let t_new = new_addr + 4 + i64::from(thumb::branch_offset(nh0, nh1));
                if inside(t_old) {
                    moves.push(Move { offset: (t_old - load) as u32, shift: t_new - t_old });
                }
                n += 4;
                continue;
            }
            if old_addr & 3 == 0 {
                let (vo, vn) = (i64::from(u32::from_le_bytes(ow)), i64::from(u32::from_le_bytes(nw)));
                if inside(vo) {
                    if params.pointers && (vn - load) >= 0 && vn - load < i64::from(params.new_len) {
                        moves.push(Move { offset: (vo - load) as u32, shift: vn - vo });
                        n += 4;
                        continue;
                    }
                } else if params.external && vo >> 20 == vn >> 20 && vo >= 0x1_0000 && vo != 0xFFFF_FFFF {
                    // Words outside the image that stay in their megabyte: RAM addresses
                    // and other modules' addresses (also the unmoved ones, which end the
                    // runs of moved ones).
                    outside.push(Move { offset: vo as u32, shift: vn - vo });
                    n += 4;
                    continue;
                }
            }
            n += if old_addr & 1 == 0 { 2 } else { 1 };
        }
    }
    moves.sort_unstable();
    outside.sort_unstable();
    (moves, outside)
}

/// The address map: a step function through the observed moves. Consecutive moves (by old
/// offset) with one shift form a run; a run starts a map entry at its first offset. Runs
/// seen only once between two runs of the same shift are noise (a call that now goes
/// elsewhere); the least supported runs are merged away until the map fits.
fn build_map<const N: usize>(moves: &[Move]) -> AddressMap<N> {
    // (start offset, shift, support)
    let mut runs: Vec<(u32, i64, u32)> = Vec::new();
    for m in moves {
        match runs.last_mut() {
            Some(r) if r.1 == m.shift => r.2 += 1,
            _ => runs.push((m.offset, m.shift, 1)),
        }
    }
    let mut min_support = 2u32;
    loop {
        let mut kept: Vec<(u32, i64, u32)> = Vec::new();
        for &(start, shift, support) in &runs {
            let prev = kept.last().map_or(0, |r| r.1);
            if shift == prev {
                if let Some(last) = kept.last_mut() {
                    last.2 += support;
                }
                continue;
            }
            if support >= min_support {
                kept.push((start, shift, support));
            }
        }
        if kept.len() <= N {
            let mut map = AddressMap::default();
            for (start, shift, _) in kept {
                let shift = i32::try_from(shift).expect("shifts are bounded by image lengths");
                let pushed = map.push(start, shift);
                debug_assert!(pushed, "runs are in increasing offset order");
            }
            return map;
        }
        min_support += 1;
    }
}

/// The external map: runs of one non-zero shift among the observed addresses outside the
/// image, each closed by a zero-shift entry just after its last observation, so values
/// between runs (constants, unmoved addresses) are left alone.
fn build_external_map<const N: usize>(moves: &[Move]) -> AddressMap<N> {
    // (first, last, shift, support)
    let mut runs: Vec<(u32, u32, i64, u32)> = Vec::new();
    for m in moves {
        match runs.last_mut() {
            Some(r) if r.2 == m.shift => {
                r.1 = m.offset;
                r.3 += 1;
            }
            _ => runs.push((m.offset, m.offset, m.shift, 1)),
        }
    }
    let mut min_support = 3u32;
    loop {
        let mut entries: Vec<(u32, i64)> = Vec::new();
        for &(first, last, shift, support) in &runs {
            if shift == 0 || support < min_support {
                continue;
            }
            if entries.last().is_some_and(|e| e.0 >= first) {
                continue;
            }
            entries.push((first, shift));
            if let Some(end) = last.checked_add(1) {
                entries.push((end, 0));
            }
        }
        // A run starting right where the previous one ended replaces its closing entry.
        let mut merged: Vec<(u32, i64)> = Vec::new();
        for e in entries {
            if let Some(prev) = merged.last_mut() {
                if prev.0 == e.0 {
                    *prev = e;
                    continue;
                }
            }
            merged.push(e);
        }
        if merged.len() <= N {
            let mut map = AddressMap::default();
            for (start, shift) in merged {
                let shift = i32::try_from(shift).expect("shifts stay within a megabyte");
                let pushed = map.push(start, shift);
                debug_assert!(pushed, "entries are in increasing address order");
            }
            return map;
        }
        min_support += 1;
    }
}
