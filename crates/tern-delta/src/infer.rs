//! Load-address inference for raw images (no module header to read it from).
//!
//! An image's literal pools hold absolute addresses of its own code and data, so the
//! window of the image's length that catches the most aligned words is where it runs.
//! Candidates are 256-byte aligned (vector tables and flash sectors are at least that).

use std::collections::BTreeMap;

/// Granularity of candidate load addresses.
const GRAIN: u32 = 0x100;

/// The most likely load address of `image` (0 when nothing points into any window, as for
/// an image at the start of flash).
pub fn infer_load_address(image: &[u8]) -> u32 {
    let len = image.len() as u64;
    if len < 8 {
        return 0;
    }
    // Words per grain-aligned bucket; 0 and erased-flash words say nothing.
    let mut buckets: BTreeMap<u32, u32> = BTreeMap::new();
    for w in image.chunks_exact(4) {
        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        if v != 0 && v != 0xFFFF_FFFF {
            *buckets.entry(v / GRAIN).or_default() += 1;
        }
    }
    let keys: Vec<(u32, u32)> = buckets.into_iter().collect();
    let span = len.div_ceil(u64::from(GRAIN));
    // Sliding window over sorted buckets: the best window starts at an occupied bucket.
    let (mut best, mut best_at) = (0u32, 0u32);
    let (mut hi, mut sum) = (0usize, 0u32);
    for lo in 0..keys.len() {
        while hi < keys.len() && u64::from(keys[hi].0) < u64::from(keys[lo].0) + span {
            sum += keys[hi].1;
            hi += 1;
        }
        if sum > best {
            best = sum;
            best_at = keys[lo].0;
        }
        sum -= keys[lo].1;
    }
    best_at * GRAIN
}
