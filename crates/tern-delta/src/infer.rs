//! Load-address inference for raw images (no module header to read it from).
//!
//! An image's literal pools hold the absolute addresses of its own functions, and Thumb
//! function addresses are odd (bit 0 set). The window of the image's length in the
//! ARMv7-M code region (0x0000_0000..0x2000_0000; SRAM and peripherals lie above) that
//! catches the most odd words is where the image runs. Within the range of load addresses
//! that still cover every one of those words, the most aligned address is taken, because
//! images start at flash sector or page boundaries.

/// End of the ARMv7-M code region.
const CODE_REGION_END: u32 = 0x2000_0000;

/// The most likely load address of `image` (0 when no odd word points into any window).
pub fn infer_load_address(image: &[u8]) -> u32 {
    let len = image.len() as u64;
    let mut words: Vec<u32> = image
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .filter(|&v| v & 1 == 1 && v < CODE_REGION_END)
        .collect();
    if words.is_empty() || len == 0 {
        return 0;
    }
    words.sort_unstable();
    // Sliding window of the image's length over the sorted words.
    let (mut best, mut best_lo, mut best_hi) = (0usize, 0usize, 0usize);
    let mut hi = 0usize;
    for lo in 0..words.len() {
        while hi < words.len() && u64::from(words[hi]) < u64::from(words[lo]) + len {
            hi += 1;
        }
        if hi - lo > best {
            (best, best_lo, best_hi) = (hi - lo, lo, hi);
        }
    }
    let lowest = u64::from(words[best_lo]);
    let highest = u64::from(words[best_hi - 1]);
    // Load addresses L with L <= lowest and highest < L + len.
    let floor = (highest + 1).saturating_sub(len);
    for bits in (1..32).rev() {
        let align = 1u64 << bits;
        let l = lowest / align * align;
        if l >= floor {
            return l as u32;
        }
    }
    (lowest & !1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_at(load: u32, len: usize) -> Vec<u8> {
        // Odd words (function addresses) spread over the image, RAM pointers between.
        let mut b = vec![0u8; len];
        for (i, w) in b.chunks_exact_mut(4).enumerate() {
            let v = match i % 4 {
                0 => (load + 0x40 + (i as u32 * 4 * 7) % (len as u32 - 0x80)) | 1,
                1 => 0x2000_0000 + i as u32 * 8 + 1,
                _ => 0x4600_4700,
            };
            w.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn finds_the_load_address_from_function_pointers() {
        for load in [0u32, 0x1000, 0x30000, 0x0802_0000, 0xF4000, 0x0800_5000] {
            assert_eq!(infer_load_address(&image_at(load, 0x4000)), load, "{load:#x}");
        }
        assert_eq!(infer_load_address(&[0u8; 64]), 0);
        assert_eq!(infer_load_address(&[]), 0);
    }
}
