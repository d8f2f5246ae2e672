//! Per-filter selection of the targeted set: the `k` elements with the smallest
//! `(key, index)`, where the key is the magnitude's bit pattern (DESIGN.md).
//!
//! The k-th key is found by an MSB-first radix select with 8-bit digits, the algorithm the
//! CUDA kernels run: a histogram of the top digit, the bin that holds rank `k - 1`, then the
//! next digit among the elements of that bin only, and so on. Each pass only looks at the
//! candidates left by the previous one, so the work is linear in the row length. A row of at
//! most [`TINY_ROW`] elements is decided by counting ranks directly (the GPU does the same
//! per thread), which is cheaper than one histogram there.

use half::{bf16, f16};
use rayon::prelude::*;

/// Rows up to this length are selected by rank counting instead of histograms.
pub const TINY_ROW: usize = 16;

/// Rows at least this long are selected with both (all) cores when there are few of them.
pub const LONG_ROW: usize = 1 << 16;

/// An unsigned key that a radix select can take apart 8 bits at a time.
pub trait RadixKey: Copy + Ord + Eq + Send + Sync + std::fmt::Debug + 'static {
    const BITS: u32;
    fn digit(self, shift: u32) -> usize;
}

macro_rules! radix_key {
    ($($t:ty),*) => {$(
        impl RadixKey for $t {
            const BITS: u32 = <$t>::BITS;
            #[inline(always)]
            fn digit(self, shift: u32) -> usize {
                ((self >> shift) & 0xff) as usize
            }
        }
    )*};
}
radix_key!(u16, u32, u64);

/// A floating element type the ops accept, with its magnitude key.
pub trait Element: Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    type Key: RadixKey;
    /// The IEEE bits with the sign bit cleared.
    fn key(self) -> Self::Key;
    /// +0.0
    const ZERO: Self;
    /// The raw bits, for bit-exact comparisons.
    fn to_bits_u64(self) -> u64;
}

impl Element for f32 {
    type Key = u32;
    #[inline(always)]
    fn key(self) -> u32 {
        self.to_bits() & 0x7fff_ffff
    }
    const ZERO: Self = 0.0;
    fn to_bits_u64(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Element for f64 {
    type Key = u64;
    #[inline(always)]
    fn key(self) -> u64 {
        self.to_bits() & 0x7fff_ffff_ffff_ffff
    }
    const ZERO: Self = 0.0;
    fn to_bits_u64(self) -> u64 {
        self.to_bits()
    }
}
impl Element for f16 {
    type Key = u16;
    #[inline(always)]
    fn key(self) -> u16 {
        self.to_bits() & 0x7fff
    }
    const ZERO: Self = f16::ZERO;
    fn to_bits_u64(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Element for bf16 {
    type Key = u16;
    #[inline(always)]
    fn key(self) -> u16 {
        self.to_bits() & 0x7fff
    }
    const ZERO: Self = bf16::ZERO;
    fn to_bits_u64(self) -> u64 {
        self.to_bits() as u64
    }
}

/// The boundary of a row's targeted set: every element with `key < kth` is targeted, and of
/// the `ties` elements with `key == kth` the `take` with the lowest indices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold<K> {
    pub kth: K,
    pub take: usize,
    pub ties: usize,
}

/// `k = floor(gamma * n)` in f64, as DESIGN.md fixes it.
pub fn targeted_count(gamma: f64, n: usize) -> usize {
    ((gamma * n as f64).floor() as usize).min(n)
}

type Hist = [u32; 256];

/// Finds the bin that holds rank `r` (0-based) and returns `(bin, rank within it, bin size)`.
#[inline]
fn pick_bin(hist: &Hist, r: usize) -> (usize, usize, usize) {
    let mut below = 0usize;
    for (b, &c) in hist.iter().enumerate() {
        let c = c as usize;
        if r < below + c {
            return (b, r - below, c);
        }
        below += c;
    }
    unreachable!("rank {r} is outside a histogram of {below} keys")
}

/// Continues a radix select on the candidates that share `prefix` in the digits above
/// `shift + 8`; `hist` is the histogram of digit `shift` over them.
fn finish_select<K: RadixKey>(
    mut candidates: Vec<K>,
    mut hist: Hist,
    mut shift: u32,
    mut r: usize,
) -> Threshold<K> {
    loop {
        let (b, rr, count) = pick_bin(&hist, r);
        r = rr;
        candidates.retain(|k| k.digit(shift) == b);
        if count == 1 || shift == 0 {
            // One candidate left, or every digit fixed: all candidates equal the k-th key.
            return Threshold {
                kth: candidates[0],
                take: r + 1,
                ties: count,
            };
        }
        shift -= 8;
        hist = [0; 256];
        for k in &candidates {
            hist[k.digit(shift)] += 1;
        }
    }
}

/// The k-th smallest key (`1 <= k <= keys.len()`) by radix select, in linear time.
pub fn radix_select<K: RadixKey>(keys: impl Iterator<Item = K> + Clone, k: usize) -> Threshold<K> {
    let shift = K::BITS - 8;
    let mut hist = [0u32; 256];
    for key in keys.clone() {
        hist[key.digit(shift)] += 1;
    }
    let (b, _, _) = pick_bin(&hist, k - 1);
    let candidates: Vec<K> = keys.filter(|key| key.digit(shift) == b).collect();
    finish_select(candidates, hist, shift, k - 1)
}

/// [`radix_select`] over a long row, its first (full) pass split over the rayon pool.
pub fn radix_select_par<T: Element>(row: &[T], k: usize) -> Threshold<T::Key> {
    let shift = T::Key::BITS - 8;
    const CHUNK: usize = 1 << 14;
    let hist = row
        .par_chunks(CHUNK)
        .map(|c| {
            let mut h = [0u32; 256];
            for x in c {
                h[x.key().digit(shift)] += 1;
            }
            h
        })
        .reduce(
            || [0u32; 256],
            |mut a, b| {
                a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y);
                a
            },
        );
    let (b, _, _) = pick_bin(&hist, k - 1);
    let candidates: Vec<T::Key> = row
        .par_chunks(CHUNK)
        .flat_map_iter(|c| {
            c.iter()
                .map(|x| x.key())
                .filter(move |key| key.digit(shift) == b)
        })
        .collect();
    finish_select(candidates, hist, shift, k - 1)
}

impl<K: RadixKey> Threshold<K> {
    /// The threshold of a row with `k` targeted elements, or `None` when `k == 0`.
    pub fn of_row<T: Element<Key = K>>(row: &[T], k: usize) -> Option<Self> {
        if k == 0 {
            return None;
        }
        if k == row.len() {
            // Everything is targeted: the k-th key is the maximum and all its ties are taken.
            let kth = row.iter().map(|x| x.key()).max().expect("k >= 1");
            let ties = row.iter().filter(|x| x.key() == kth).count();
            return Some(Threshold {
                kth,
                take: ties,
                ties,
            });
        }
        if row.len() >= LONG_ROW {
            Some(radix_select_par(row, k))
        } else {
            Some(radix_select(row.iter().map(|x| x.key()), k))
        }
    }
}

/// Calls `f(i)` for every targeted index `i` of `row`, in increasing order, given the number
/// `k` of targeted elements.
#[inline]
pub fn for_each_targeted<T: Element>(row: &[T], k: usize, mut f: impl FnMut(usize)) {
    if k == 0 {
        return;
    }
    if k == row.len() {
        (0..row.len()).for_each(f);
        return;
    }
    if row.len() <= TINY_ROW {
        // rank(i) = #{j : (key_j, j) < (key_i, i)}; targeted iff rank < k.
        for (i, x) in row.iter().enumerate() {
            let ki = x.key();
            let rank = row
                .iter()
                .enumerate()
                .filter(|&(j, y)| {
                    let kj = y.key();
                    kj < ki || (kj == ki && j < i)
                })
                .count();
            if rank < k {
                f(i)
            }
        }
        return;
    }
    let th = Threshold::of_row(row, k).expect("k >= 1");
    let mut ties_left = th.take;
    for (i, x) in row.iter().enumerate() {
        let key = x.key();
        if key < th.kth {
            f(i)
        } else if key == th.kth && ties_left > 0 {
            ties_left -= 1;
            f(i)
        }
    }
}

/// The targeted flags of a long row, computed with the rayon pool: the tied elements are
/// counted per chunk first so that each chunk knows how many ties come before it.
pub fn targeted_flags_par<T: Element>(row: &[T], k: usize, flags: &mut [bool]) {
    const CHUNK: usize = 1 << 14;
    flags.fill(false);
    let Some(th) = Threshold::of_row(row, k) else {
        return;
    };
    let tie_counts: Vec<usize> = if th.take == th.ties {
        Vec::new()
    } else {
        row.par_chunks(CHUNK)
            .map(|c| c.iter().filter(|x| x.key() == th.kth).count())
            .collect()
    };
    flags
        .par_chunks_mut(CHUNK)
        .zip(row.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(ci, (fl, c))| {
            let before: usize = if tie_counts.is_empty() {
                0
            } else {
                tie_counts[..ci].iter().sum()
            };
            let mut ties_left = th.take.saturating_sub(before);
            for (f, x) in fl.iter_mut().zip(c) {
                let key = x.key();
                *f = key < th.kth
                    || (key == th.kth && ties_left > 0 && {
                        ties_left -= 1;
                        true
                    });
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_small() {
        let keys = [5u32, 1, 3, 3, 9, 0, 3];
        // sorted: 0 1 3 3 3 5 9
        let t = radix_select(keys.iter().copied(), 4);
        assert_eq!(
            t,
            Threshold {
                kth: 3,
                take: 2,
                ties: 3
            }
        );
        let t = radix_select(keys.iter().copied(), 7);
        assert_eq!(
            t,
            Threshold {
                kth: 9,
                take: 1,
                ties: 1
            }
        );
        let t = radix_select(keys.iter().copied(), 1);
        assert_eq!(t.kth, 0);
    }

    #[test]
    fn select_u64_and_u16() {
        let keys: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 1000 << 40).collect();
        let t = radix_select(keys.iter().copied(), 500);
        assert_eq!(t.kth, 499 << 40);
        let keys: Vec<u16> = (0..300u16).rev().collect();
        assert_eq!(radix_select(keys.iter().copied(), 1).kth, 0);
        assert_eq!(radix_select(keys.iter().copied(), 300).kth, 299);
    }

    #[test]
    fn count_is_floor() {
        assert_eq!(targeted_count(0.5, 9), 4);
        assert_eq!(targeted_count(1.0, 9), 9);
        assert_eq!(targeted_count(0.0, 9), 0);
        assert_eq!(targeted_count(0.3, 10), 3);
    }
}
