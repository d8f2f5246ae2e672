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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(drop_threshold(0.0), 0);
        assert_eq!(drop_threshold(1.0), 1 << 24);
        assert_eq!(drop_threshold(0.5), 1 << 23);
        // ceil: the smallest positive alpha still drops something.
        assert_eq!(drop_threshold(1e-12), 1);
    }
}
