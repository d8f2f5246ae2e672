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

/// An unsigned key that a radix select can take apart a digit at a time.
pub trait RadixKey: Copy + Ord + Eq + Send + Sync + Default + std::fmt::Debug + 'static {
    const BITS: u32;
    fn to_u64(self) -> u64;
    #[inline(always)]
    fn digit(self, shift: u32) -> usize {
        ((self.to_u64() >> shift) & 0xff) as usize
    }
}

macro_rules! radix_key {
    ($($t:ty),*) => {$(
        impl RadixKey for $t {
            const BITS: u32 = <$t>::BITS;
            #[inline(always)]
            fn to_u64(self) -> u64 {
                self as u64
            }
        }
    )*};
}
radix_key!(u16, u32, u64);

/// A floating element type the ops accept, with its magnitude key.
pub trait Element: Copy + Send + Sync + PartialEq + Default + std::fmt::Debug + 'static {
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

/// Candidates at or below this count are finished by counting instead of histograms.
const FINISH_BY_COUNTING: usize = 16;

/// The bin of `hist` that holds rank `r` (0-based): `(bin, rank within it, bin size)`.
#[inline]
fn pick_bin(hist: &[u32], r: usize) -> (usize, usize, usize) {
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

/// The key of rank `r` among a few candidates, by counting.
fn finish_by_counting<K: RadixKey>(cand: &[K], r: usize) -> Threshold<K> {
    for &c in cand {
        let less = cand.iter().filter(|&&x| x < c).count();
        let eq = cand.iter().filter(|&&x| x == c).count();
        if less <= r && r < less + eq {
            return Threshold {
                kth: c,
                take: r - less + 1,
                ties: eq,
            };
        }
    }
    unreachable!("rank {r} is outside {} candidates", cand.len())
}

/// The digit window of one pass: the `bits`-wide digit just below the highest bit in which
/// the candidates differ (the bits above it are common to all and need no pass).
#[inline]
fn window(diff: u64, len: usize) -> (u32, u32) {
    let hb = 63 - diff.leading_zeros();
    // Fewer bins for few candidates (about four per bin): the per-pass cost stays
    // proportional to the work.
    let bits = (usize::BITS - len.leading_zeros())
        .saturating_sub(2)
        .clamp(4, 8);
    let shift = (hb + 1).saturating_sub(bits);
    (shift, bits)
}

/// One histogram pass over `cand` in the window `(shift, bits)` into `hist[..1 << bits]`.
#[inline]
fn histogram<K: RadixKey>(cand: &[K], shift: u32, bits: u32, hist: &mut [u32; 256]) {
    histogram_by(cand, |&x| x, shift, bits, hist)
}

/// [`histogram`] over the keys `key(x)` of `items`.
#[inline]
fn histogram_by<I, K: RadixKey>(
    items: &[I],
    key: impl Fn(&I) -> K,
    shift: u32,
    bits: u32,
    hist: &mut [u32; 256],
) {
    let mask = (1u64 << bits) - 1;
    let bins = 1usize << bits;
    hist[..bins].fill(0);
    if items.len() < 8192 {
        for x in items {
            hist[((key(x).to_u64() >> shift) & mask) as usize] += 1;
        }
        return;
    }
    // Four sub-histograms break the dependency between neighbours of the same bin.
    let mut h = [[0u32; 256]; 4];
    let mut chunks = items.chunks_exact(4);
    for c in &mut chunks {
        for (q, x) in c.iter().enumerate() {
            h[q][((key(x).to_u64() >> shift) & mask) as usize] += 1;
        }
    }
    for x in chunks.remainder() {
        h[0][((key(x).to_u64() >> shift) & mask) as usize] += 1;
    }
    for b in 0..bins {
        hist[b] = h[0][b] + h[1][b] + h[2][b] + h[3][b];
    }
}

/// Keeps the candidates whose digit in `(shift, bits)` is `bin`, in place; returns how many.
#[inline]
fn compact<K: RadixKey>(cand: &mut [K], shift: u32, bits: u32, bin: usize) -> usize {
    let mask = (1u64 << bits) - 1;
    let mut w = 0;
    for i in 0..cand.len() {
        let x = cand[i];
        cand[w] = x;
        w += (((x.to_u64() >> shift) & mask) as usize == bin) as usize;
    }
    w
}

/// The highest differing bit pattern of the candidates: `OR` of `x ^ x0`.
#[inline]
fn spread<K: RadixKey>(cand: &[K]) -> u64 {
    let x0 = cand[0].to_u64();
    cand.iter().fold(0u64, |a, x| a | (x.to_u64() ^ x0))
}

/// The key of rank `r` (0-based) among `cand` by MSB-first radix select; `cand` is used as
/// scratch (compacted in place pass after pass). Linear in `cand.len()`.
pub fn select_in_place<K: RadixKey>(cand: &mut [K], mut r: usize) -> Threshold<K> {
    let mut len = cand.len();
    let mut hist = [0u32; 256];
    loop {
        let c = &mut cand[..len];
        if len <= FINISH_BY_COUNTING {
            return finish_by_counting(c, r);
        }
        let diff = spread(c);
        if diff == 0 {
            return Threshold {
                kth: c[0],
                take: r + 1,
                ties: len,
            };
        }
        let (shift, bits) = window(diff, len);
        histogram(c, shift, bits, &mut hist);
        let (b, rr, _) = pick_bin(&hist[..1 << bits], r);
        r = rr;
        len = compact(c, shift, bits, b);
    }
}

/// The k-th smallest key (`1 <= k <= keys.len()`) by radix select, in linear time.
pub fn radix_select<K: RadixKey>(keys: &[K], k: usize) -> Threshold<K> {
    let mut cand = keys.to_vec();
    select_in_place(&mut cand, k - 1)
}

/// [`radix_select`] over a long row, its first (full) pass split over the rayon pool.
pub fn radix_select_par<T: Element>(row: &[T], k: usize) -> Threshold<T::Key> {
    const CHUNK: usize = 1 << 14;
    let x0 = row[0].key().to_u64();
    let diff = row
        .par_chunks(CHUNK)
        .map(|c| c.iter().fold(0u64, |a, x| a | (x.key().to_u64() ^ x0)))
        .reduce(|| 0, |a, b| a | b);
    if diff == 0 {
        return Threshold {
            kth: row[0].key(),
            take: k,
            ties: row.len(),
        };
    }
    let (shift, bits) = window(diff, row.len());
    let hist = row
        .par_chunks(CHUNK)
        .map(|c| {
            let keys: Vec<T::Key> = c.iter().map(|x| x.key()).collect();
            let mut h = [0u32; 256];
            histogram(&keys, shift, bits, &mut h);
            h
        })
        .reduce(
            || [0u32; 256],
            |mut a, b| {
                a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y);
                a
            },
        );
    let (b, r, _) = pick_bin(&hist[..1 << bits], k - 1);
    let mask = (1u64 << bits) - 1;
    let mut cand: Vec<T::Key> = row
        .par_chunks(CHUNK)
        .flat_map_iter(|c| {
            c.iter()
                .map(|x| x.key())
                .filter(move |x| ((x.to_u64() >> shift) & mask) as usize == b)
        })
        .collect();
    select_in_place(&mut cand, r)
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
            let mut keys: Vec<K> = row.iter().map(|x| x.key()).collect();
            Some(select_in_place(&mut keys, k - 1))
        }
    }

    /// Sets `flags[i]` to whether element `i` of `row` (whose threshold this is) is targeted:
    /// key below the k-th, or one of the `take` lowest-indexed ties.
    pub fn flags<T: Element<Key = K>>(&self, row: &[T], flags: &mut [bool]) {
        let kth = self.kth;
        if self.take == self.ties {
            // Every tie is targeted: one branch-free comparison per element.
            for (f, x) in flags.iter_mut().zip(row) {
                *f = x.key() <= kth;
            }
        } else {
            let mut ties_left = self.take;
            for (f, x) in flags.iter_mut().zip(row) {
                let key = x.key();
                let tie = key == kth && ties_left > 0;
                ties_left -= tie as usize;
                *f = key < kth || tie;
            }
        }
    }

    /// [`Threshold::of_row`] with a caller-owned key buffer, reused across rows.
    pub fn of_row_with<T: Element<Key = K>>(
        row: &[T],
        k: usize,
        keys: &mut Vec<K>,
    ) -> Option<Self> {
        if k == 0 || k == row.len() || row.len() >= LONG_ROW {
            return Self::of_row(row, k);
        }
        // The first pass reads the row itself; only the candidates it leaves are copied.
        let x0 = row[0].key().to_u64();
        let diff = row.iter().fold(0u64, |a, x| a | (x.key().to_u64() ^ x0));
        if diff == 0 {
            return Some(Threshold {
                kth: row[0].key(),
                take: k,
                ties: row.len(),
            });
        }
        let (shift, bits) = window(diff, row.len());
        let mut hist = [0u32; 256];
        histogram_by(row, |x| x.key(), shift, bits, &mut hist);
        let (b, r, _) = pick_bin(&hist[..1 << bits], k - 1);
        // Branch-free compaction: every key is written, the cursor advances on a match.
        let mask = (1u64 << bits) - 1;
        if keys.len() < row.len() {
            keys.resize(row.len(), K::default());
        }
        let buf = &mut keys[..row.len()];
        let mut c = 0;
        for x in row {
            let key = x.key();
            buf[c] = key;
            c += (((key.to_u64() >> shift) & mask) as usize == b) as usize;
        }
        Some(select_in_place(&mut buf[..c], r))
    }
}

/// Calls `f(i)` for every targeted index `i` of `row`, in increasing order, given the number
/// `k` of targeted elements.
#[inline]
pub fn for_each_targeted<T: Element>(row: &[T], k: usize, f: impl FnMut(usize)) {
    for_each_targeted_with(row, k, &mut Vec::new(), f)
}

/// [`for_each_targeted`] with a caller-owned key buffer, reused across rows.
#[inline]
pub fn for_each_targeted_with<T: Element>(
    row: &[T],
    k: usize,
    keys: &mut Vec<T::Key>,
    mut f: impl FnMut(usize),
) {
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
    let th = Threshold::of_row_with(row, k, keys).expect("k >= 1");
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

/// Sets `flags[i]` (`flags.len() == row.len()`) to whether element `i` of `row` is among its
/// `k` targeted elements; `keys` is a scratch buffer reused across rows.
pub fn targeted_flags<T: Element>(row: &[T], k: usize, keys: &mut Vec<T::Key>, flags: &mut [bool]) {
    if k == 0 {
        flags.fill(false);
        return;
    }
    if k == row.len() {
        flags.fill(true);
        return;
    }
    if row.len() <= TINY_ROW {
        flags.fill(false);
        for_each_targeted(row, k, |i| flags[i] = true);
        return;
    }
    Threshold::of_row_with(row, k, keys)
        .expect("k >= 1")
        .flags(row, flags);
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
        let t = radix_select(&keys, 4);
        assert_eq!(
            t,
            Threshold {
                kth: 3,
                take: 2,
                ties: 3
            }
        );
        let t = radix_select(&keys, 7);
        assert_eq!(
            t,
            Threshold {
                kth: 9,
                take: 1,
                ties: 1
            }
        );
        let t = radix_select(&keys, 1);
        assert_eq!(t.kth, 0);
    }

    #[test]
    fn select_u64_and_u16() {
        let keys: Vec<u64> = (0..1000u64).map(|i| ((i * 7919) % 1000) << 40).collect();
        let t = radix_select(&keys, 500);
        assert_eq!(t.kth, 499 << 40);
        let keys: Vec<u16> = (0..300u16).rev().collect();
        assert_eq!(radix_select(&keys, 1).kth, 0);
        assert_eq!(radix_select(&keys, 300).kth, 299);
        // Many ties and a long row: past the counting finish.
        let keys: Vec<u32> = (0..5000u32).map(|i| (i % 7) << 20 | (i % 3)).collect();
        let t = radix_select(&keys, 2500);
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(t.kth, sorted[2499]);
        let less = sorted.iter().filter(|&&x| x < t.kth).count();
        assert_eq!(t.take, 2500 - less);
        assert_eq!(t.ties, sorted.iter().filter(|&&x| x == t.kth).count());
    }

    #[test]
    fn count_is_floor() {
        assert_eq!(targeted_count(0.5, 9), 4);
        assert_eq!(targeted_count(1.0, 9), 9);
        assert_eq!(targeted_count(0.0, 9), 0);
        assert_eq!(targeted_count(0.3, 10), 3);
    }
}
