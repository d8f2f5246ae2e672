//! Philox4x32-10, the counter-based generator of Salmon et al. (SC'11), and the Bernoulli
//! draw that DESIGN.md fixes on top of it.
//!
//! A counter-based generator needs no state: the draw for element `e` is a pure function of
//! `(seed, offset, e)`, so the CPU and every GPU thread compute the same bits in any order.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with ten rounds: one 128-bit block of output for a 128-bit counter and a
/// 64-bit key.
///
/// ```
/// use candle_targeted_dropout::philox::philox4x32_10;
/// // Random123's first known-answer vector.
/// assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
/// ```
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The largest threshold: `alpha = 1`, every targeted element is dropped.
pub const THRESHOLD_ALWAYS: u32 = 1 << 24;

/// `t = ceil(alpha * 2^24)`, computed in f64 as DESIGN.md says. `alpha` must be in [0, 1].
pub fn drop_threshold(alpha: f64) -> u32 {
    (alpha * (1u64 << 24) as f64).ceil() as u32
}

/// The Bernoulli draws of one call: element `e` is dropped when `(r >> 8) < threshold`, with
/// `r` word `e % 4` of Philox at counter `[e / 4, offset]` under key `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bernoulli {
    /// The Philox key, as a u64 (low word first).
    pub seed: u64,
    /// Words 2 and 3 of the counter: one per call of the plain functions.
    pub offset: u64,
    /// `ceil(alpha * 2^24)`, in `0..=2^24`.
    pub threshold: u32,
}

impl Bernoulli {
    /// The draws of `(seed, offset)` at drop rate `alpha` (in [0, 1]).
    pub fn new(seed: u64, offset: u64, alpha: f64) -> Self {
        Self {
            seed,
            offset,
            threshold: drop_threshold(alpha),
        }
    }

    /// Every targeted element dropped, with no draws: pruning.
    pub fn always() -> Self {
        Self {
            seed: 0,
            offset: 0,
            threshold: THRESHOLD_ALWAYS,
        }
    }

    /// The raw 32-bit draw for element `e`.
    #[inline]
    pub fn draw(&self, e: u64) -> u32 {
        self.block(e / 4)[(e % 4) as usize]
    }

    /// The Philox block for counter `c`: the draws of elements `4c .. 4c + 4`.
    #[inline]
    pub fn block(&self, c: u64) -> [u32; 4] {
        philox4x32_10(
            [
                c as u32,
                (c >> 32) as u32,
                self.offset as u32,
                (self.offset >> 32) as u32,
            ],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }

    /// The words of the eight Philox blocks for counters `c .. c + 8`: the draws of elements
    /// `4c .. 4c + 32`, in element order. Uses AVX2 (eight blocks in the eight 32-bit lanes)
    /// where the processor has it, the scalar [`Bernoulli::block`] elsewhere; the same bits.
    #[inline]
    pub fn blocks8(&self, c: u64) -> [u32; 32] {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2, the only target feature the function enables.
            return unsafe { x86::blocks8_avx2(self, c) };
        }
        self.blocks8_scalar(c)
    }

    /// [`Bernoulli::blocks8`] one block at a time (the fallback, and the check of the SIMD
    /// path).
    pub fn blocks8_scalar(&self, c: u64) -> [u32; 32] {
        let mut out = [0u32; 32];
        for (j, w) in out.chunks_exact_mut(4).enumerate() {
            w.copy_from_slice(&self.block(c.wrapping_add(j as u64)));
        }
        out
    }

    /// Whether targeted element `e` is dropped. Thresholds 0 and 2^24 decide without drawing.
    #[inline]
    pub fn drops(&self, e: u64) -> bool {
        match self.threshold {
            0 => false,
            THRESHOLD_ALWAYS => true,
            t => (self.draw(e) >> 8) < t,
        }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86 {
    //! Philox4x32-10 on eight blocks at once with AVX2: lane `j` of each of the four state
    //! vectors holds word `q` of block `j`. `_mm256_mul_epu32` multiplies the even lanes
    //! (32 x 32 -> 64 bits), so each round does the even and the odd lanes separately and
    //! blends the halves back.
    use super::{Bernoulli, M0, M1, W0, W1};
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// `(hi, lo)` of `a * m` in each 32-bit lane (`m` broadcast in every 64-bit lane's low
    /// half).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mulhilo8(a: __m256i, m: __m256i) -> (__m256i, __m256i) {
        let even = _mm256_mul_epu32(a, m);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), m);
        let lo = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
        let hi = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        (hi, lo)
    }

    /// [`Bernoulli::blocks8`] with AVX2.
    ///
    /// # Safety
    /// The processor must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn blocks8_avx2(b: &Bernoulli, c: u64) -> [u32; 32] {
        let mut lo = [0u32; 8];
        let mut hi = [0u32; 8];
        for j in 0..8 {
            // Each lane's counter in 64 bits, so a low word that wraps carries into the high.
            let cj = c.wrapping_add(j as u64);
            lo[j] = cj as u32;
            hi[j] = (cj >> 32) as u32;
        }
        // SAFETY: `lo` and `hi` are 32 bytes each; unaligned loads.
        let mut c0 = unsafe { _mm256_loadu_si256(lo.as_ptr().cast()) };
        let mut c1 = unsafe { _mm256_loadu_si256(hi.as_ptr().cast()) };
        let mut c2 = _mm256_set1_epi32(b.offset as u32 as i32);
        let mut c3 = _mm256_set1_epi32((b.offset >> 32) as u32 as i32);
        let mut k0 = _mm256_set1_epi32(b.seed as u32 as i32);
        let mut k1 = _mm256_set1_epi32((b.seed >> 32) as u32 as i32);
        let m0 = _mm256_set1_epi64x(M0 as i64);
        let m1 = _mm256_set1_epi64x(M1 as i64);
        let w0 = _mm256_set1_epi32(W0 as i32);
        let w1 = _mm256_set1_epi32(W1 as i32);
        for round in 0..10 {
            if round > 0 {
                k0 = _mm256_add_epi32(k0, w0);
                k1 = _mm256_add_epi32(k1, w1);
            }
            let (hi0, lo0) = mulhilo8(c0, m0);
            let (hi1, lo1) = mulhilo8(c2, m1);
            c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0);
            c1 = lo1;
            c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1);
            c3 = lo0;
        }
        // Transpose: four vectors of eight words into eight blocks of four, in order.
        let t0 = _mm256_unpacklo_epi32(c0, c1); // w0 w1 of blocks 0 1 | 4 5
        let t1 = _mm256_unpackhi_epi32(c0, c1); // blocks 2 3 | 6 7
        let t2 = _mm256_unpacklo_epi32(c2, c3); // w2 w3 of blocks 0 1 | 4 5
        let t3 = _mm256_unpackhi_epi32(c2, c3);
        let u0 = _mm256_unpacklo_epi64(t0, t2); // block 0 | block 4
        let u1 = _mm256_unpackhi_epi64(t0, t2); // block 1 | block 5
        let u2 = _mm256_unpacklo_epi64(t1, t3); // block 2 | block 6
        let u3 = _mm256_unpackhi_epi64(t1, t3); // block 3 | block 7
        let mut out = [0u32; 32];
        let o = out.as_mut_ptr();
        // SAFETY: `out` holds 32 words: four unaligned 32-byte stores at words 0, 8, 16, 24.
        unsafe {
            _mm256_storeu_si256(o.cast(), _mm256_permute2x128_si256::<0x20>(u0, u1));
            _mm256_storeu_si256(o.add(8).cast(), _mm256_permute2x128_si256::<0x20>(u2, u3));
            _mm256_storeu_si256(o.add(16).cast(), _mm256_permute2x128_si256::<0x31>(u0, u1));
            _mm256_storeu_si256(o.add(24).cast(), _mm256_permute2x128_si256::<0x31>(u2, u3));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_blocks_match_one_at_a_time() {
        // Counters whose low word wraps (and the 64-bit counter itself), keys and offsets
        // with every bit pattern class: the SIMD path, the scalar path and the oracle agree.
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut cases: Vec<(u64, u64, u64)> = vec![
            (0, 0, 0),
            (u32::MAX as u64 - 3, 1, 2),
            (u32::MAX as u64 - 7, 5, 6),
            ((7 << 32) | 0xffff_fffa, u64::MAX, u64::MAX),
            (u64::MAX - 3, 0x299f31d0_a4093822, 0x03707344_13198a2e),
        ];
        for _ in 0..2000 {
            let c = match next() % 3 {
                0 => next() % 100_000,
                1 => (next() << 32) | (0xffff_fff0 + next() % 16),
                _ => next(),
            };
            cases.push((c, next(), next()));
        }
        for (c, seed, offset) in cases {
            let b = Bernoulli::new(seed, offset, 0.5);
            let scalar = b.blocks8_scalar(c);
            assert_eq!(
                b.blocks8(c),
                scalar,
                "c {c:#x} seed {seed:#x} offset {offset:#x}"
            );
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present.
                let simd = unsafe { x86::blocks8_avx2(&b, c) };
                assert_eq!(
                    simd, scalar,
                    "avx2: c {c:#x} seed {seed:#x} offset {offset:#x}"
                );
            }
            for (i, &w) in scalar.iter().enumerate() {
                let e = (c.wrapping_add(i as u64 / 4)).wrapping_mul(4) + i as u64 % 4;
                let cc = c.wrapping_add(i as u64 / 4);
                let want = crate::reference::philox4x32_10(
                    [
                        cc as u32,
                        (cc >> 32) as u32,
                        offset as u32,
                        (offset >> 32) as u32,
                    ],
                    [seed as u32, (seed >> 32) as u32],
                )[i % 4];
                assert_eq!(w, want, "word {i}, c {c:#x}");
                if cc < u64::MAX / 4 {
                    assert_eq!(b.draw(e), w);
                }
            }
        }
    }

    #[test]
    fn eight_blocks_known_answers() {
        // Random123's vectors through the eight-lane path: block j of `blocks8(c)` has
        // counter c + j, so each vector sits in lane 0 and in lane 5 (counter c + 5).
        let kat: [(u64, u64, u64, [u32; 4]); 3] = [
            (0, 0, 0, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
            (
                u64::MAX,
                u64::MAX,
                u64::MAX,
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                0x85a308d3_243f6a88,
                0x299f31d0_a4093822,
                0x03707344_13198a2e,
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, seed, offset, want) in kat {
            let b = Bernoulli::new(seed, offset, 0.5);
            for lane in [0u64, 5] {
                let words = b.blocks8(ctr.wrapping_sub(lane));
                let l = lane as usize * 4;
                assert_eq!(words[l..l + 4], want, "counter {ctr:#x} in lane {lane}");
            }
        }
    }

    /// A draw `r` is kept at `alpha = (r >> 8) / 2^24` (threshold `r >> 8`) and dropped at
    /// `((r >> 8) + 1) / 2^24`: the comparison is strict, `(r >> 8) < t`.
    #[test]
    fn a_draw_drops_exactly_below_its_threshold() {
        let two24 = (1u64 << 24) as f64;
        for (seed, offset) in [(0u64, 0u64), (7, 3), (u64::MAX, u64::MAX - 1)] {
            for e in (0..64u64).chain([1 << 33, u64::MAX / 4 - 1]) {
                let r = Bernoulli::new(seed, offset, 0.5).draw(e);
                let d = (r >> 8) as f64;
                let keep = Bernoulli::new(seed, offset, d / two24);
                let drop = Bernoulli::new(seed, offset, (d + 1.0) / two24);
                assert_eq!(keep.threshold, r >> 8);
                assert!(
                    !keep.drops(e),
                    "e {e}: r >> 8 = {} at t = {}",
                    r >> 8,
                    keep.threshold
                );
                assert!(
                    drop.drops(e),
                    "e {e}: r >> 8 = {} at t = {}",
                    r >> 8,
                    drop.threshold
                );
            }
        }
    }

    #[test]
    fn thresholds() {
        assert_eq!(drop_threshold(0.0), 0);
        assert_eq!(drop_threshold(1.0), 1 << 24);
        assert_eq!(drop_threshold(0.5), 1 << 23);
        // ceil: the smallest positive alpha still drops something.
        assert_eq!(drop_threshold(1e-12), 1);
    }
}
