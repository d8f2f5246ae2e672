//! Per-filter selection of the targeted set: the `k` elements with the smallest
//! `(key, index)`, where the key is the magnitude's bit pattern (DESIGN.md).
//!
//! The k-th key is found by an MSB-first radix select, the algorithm the CUDA kernels run:
//! a histogram of the highest digit in which the candidates differ, the bin that holds rank
//! `k - 1`, then the next digit among the elements of that bin only, and so on. Each pass
//! only looks at the candidates left by the previous one, so the work is linear in the row
//! length.
//!
//! Every row is selected with [`row_cut`] (and [`row_cut_par`] for a few long rows; unit
//! dropout runs them over the row of unit scores): the first digit fixed at 11 bits (bits 30..20 of an f32 key, 14..4 of a
//! 16-bit key) and counted while the row is read, the elements of its bin compacted and
//! resolved alone, and the result a [`Cut`]: the tie cut as an index, so the output pass
//! compares and needs no scan. Rows of up to 64 count ranks in AVX2 lanes instead, rows up
//! to 256 use `select_nth_unstable` on a copy of their keys.
//! After the first digit, [`pass`] is the one radix pass that every path runs.

use crate::element::{Element, RadixKey};
use rayon::prelude::*;

/// Rows at least this long are selected with all the pool's threads.
pub(crate) const LONG_ROW: usize = 1 << 16;

/// Elements per task when one row is split over the rayon pool.
pub(crate) const PAR_CHUNK: usize = 1 << 14;

/// Candidates at or below this count are finished by counting instead of histograms.
const FINISH_BY_COUNTING: usize = 16;

/// `k = floor(gamma * n)` in f64, as DESIGN.md fixes it.
pub(crate) fn targeted_count(gamma: f64, n: usize) -> usize {
    ((gamma * n as f64).floor() as usize).min(n)
}

/// The boundary of a row's targeted set: every element with `key < kth` is targeted, and of
/// the `ties` elements with `key == kth` the `take` with the lowest indices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Threshold<K> {
    pub kth: K,
    pub take: usize,
    pub ties: usize,
}

impl<K: RadixKey> Threshold<K> {
    /// Whether every tie is targeted, so that `key <= kth` decides alone.
    pub fn takes_all_ties(&self) -> bool {
        self.take == self.ties
    }
}

/// The outcome of one radix pass.
enum Pass<K> {
    /// The candidates all share one key: the threshold is found.
    Done(Threshold<K>),
    /// Rank `r` lies among the candidates whose digit `(key >> shift) & (2^bits - 1)` is `bin`.
    Narrow {
        shift: u32,
        bits: u32,
        bin: usize,
        r: usize,
    },
}

/// Whether `key`'s digit in the window `(shift, bits)` is `bin`.
#[inline(always)]
fn in_bin<K: RadixKey>(key: K, shift: u32, bits: u32, bin: usize) -> bool {
    ((key.to_u64() >> shift) & ((1u64 << bits) - 1)) as usize == bin
}

/// One radix pass over `len` candidates whose keys differ in the bits of `diff` (`some` is
/// one of them), looking for rank `r`: the digit window just below the highest differing bit
/// (the bits above it are common to all candidates and need no pass), its histogram from
/// `histogram(shift, bits, &mut hist)`, and the bin that holds rank `r`.
fn pass<K: RadixKey>(
    len: usize,
    diff: u64,
    some: K,
    r: usize,
    histogram: impl FnOnce(u32, u32, &mut [u32; 256]),
) -> Pass<K> {
    if diff == 0 {
        return Pass::Done(Threshold {
            kth: some,
            take: r + 1,
            ties: len,
        });
    }
    let high_bit = 63 - diff.leading_zeros();
    // Fewer bins for few candidates (about four per bin): the per-pass cost stays
    // proportional to the work.
    let bits = (usize::BITS - len.leading_zeros())
        .saturating_sub(2)
        .clamp(4, 8);
    let shift = (high_bit + 1).saturating_sub(bits);
    let mut hist = [0u32; 256];
    histogram(shift, bits, &mut hist);
    let mut below = 0usize;
    for (bin, &c) in hist[..1 << bits].iter().enumerate() {
        let c = c as usize;
        if r < below + c {
            return Pass::Narrow {
                shift,
                bits,
                bin,
                r: r - below,
            };
        }
        below += c;
    }
    unreachable!("rank {r} is outside a histogram of {below} keys")
}

/// The bits in which `keys` differ from `first`: `OR` of `key ^ first`.
#[inline]
fn spread<T, K: RadixKey>(items: &[T], key: impl Fn(&T) -> K, first: K) -> u64 {
    let x0 = first.to_u64();
    items.iter().fold(0u64, |a, x| a | (key(x).to_u64() ^ x0))
}

/// The histogram of the keys `key(x)` of `items` in the window `(shift, bits)`.
#[inline]
fn histogram<I, K: RadixKey>(
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

/// The key of rank `r` (0-based) among `cand` by MSB-first radix select; `cand` is used as
/// scratch (compacted in place pass after pass). Linear in `cand.len()`.
pub(crate) fn select_in_place<K: RadixKey>(cand: &mut [K], mut r: usize) -> Threshold<K> {
    let mut len = cand.len();
    loop {
        let c = &mut cand[..len];
        if len <= FINISH_BY_COUNTING {
            return finish_by_counting(c, r);
        }
        let diff = spread(c, |&x| x, c[0]);
        match pass(len, diff, c[0], r, |s, b, h| histogram(c, |&x| x, s, b, h)) {
            Pass::Done(t) => return t,
            Pass::Narrow {
                shift,
                bits,
                bin,
                r: rr,
            } => {
                r = rr;
                // Branch-free compaction: every key is written, the cursor advances on a match.
                let mut w = 0;
                for i in 0..len {
                    let x = c[i];
                    c[w] = x;
                    w += in_bin(x, shift, bits, bin) as usize;
                }
                len = w;
            }
        }
    }
}

/// The threshold of `k` (`1 <= k < row.len()`) targeted elements of a long row, its first
/// (full) pass split over the rayon pool.
fn threshold_par<T: Element>(row: &[T], k: usize) -> Threshold<T::Key> {
    let first = row[0].key();
    let diff = row
        .par_chunks(PAR_CHUNK)
        .map(|c| spread(c, |x| x.key(), first))
        .reduce(|| 0, |a, b| a | b);
    let histo = |shift, bits, hist: &mut [u32; 256]| {
        *hist = row
            .par_chunks(PAR_CHUNK)
            .map(|c| {
                let mut h = [0u32; 256];
                histogram(c, |x| x.key(), shift, bits, &mut h);
                h
            })
            .reduce(
                || [0u32; 256],
                |mut a, b| {
                    a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y);
                    a
                },
            )
    };
    match pass(row.len(), diff, first, k - 1, histo) {
        Pass::Done(t) => t,
        Pass::Narrow {
            shift,
            bits,
            bin,
            r,
        } => {
            let mut cand: Vec<T::Key> = row
                .par_chunks(PAR_CHUNK)
                .flat_map_iter(|c| {
                    c.iter()
                        .map(|x| x.key())
                        .filter(move |&x| in_bin(x, shift, bits, bin))
                })
                .collect();
            select_in_place(&mut cand, r)
        }
    }
}

/// A row's targeted set as a cut: element `i` is targeted iff `key < kth`, or `key == kth` and
/// `i < cut` (the tie cut as an index, so that writing the output needs no scan of the ties).
/// Equivalently: `key < kth + 1` before index `cut`, `key < kth` from `cut` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut<K> {
    pub kth: K,
    pub cut: usize,
}

impl<K: RadixKey> Cut<K> {
    /// `k = 0`: nothing targeted.
    pub fn nothing() -> Self {
        Cut {
            kth: K::default(),
            cut: 0,
        }
    }

    /// `k = n`: everything targeted (every key is at most the largest key, the sign bit
    /// clear).
    pub fn everything(n: usize) -> Self {
        Cut {
            kth: K::from_u64((1u64 << (K::BITS - 1)) - 1),
            cut: n,
        }
    }

    /// Whether element `i` with key `key` is targeted.
    #[cfg(test)]
    pub fn targeted(&self, key: K, i: usize) -> bool {
        key < self.kth || (key == self.kth && i < self.cut)
    }

    /// The two strict limits: `key < before` targets before index `cut`, `key < after` from
    /// `cut` on. Keys keep the sign bit clear, so `kth + 1` does not overflow.
    #[inline]
    pub fn limits(&self) -> (K, K) {
        (K::from_u64(self.kth.to_u64() + 1), self.kth)
    }

    /// The cut of a threshold on `row`: after the `take`-th tie, or past the row when every
    /// tie is taken.
    fn of_threshold<T: Element<Key = K>>(row: &[T], th: Threshold<K>) -> Self {
        if th.takes_all_ties() {
            return Cut {
                kth: th.kth,
                cut: row.len(),
            };
        }
        let mut seen = 0;
        for (i, x) in row.iter().enumerate() {
            seen += (x.key() == th.kth) as usize;
            if seen == th.take {
                return Cut {
                    kth: th.kth,
                    cut: i + 1,
                };
            }
        }
        unreachable!("fewer than {} ties of {:?}", th.take, th.kth)
    }

    /// [`Cut::of_threshold`] for a long row, the ties counted over the rayon pool.
    fn of_threshold_par<T: Element<Key = K>>(row: &[T], th: Threshold<K>) -> Self {
        if th.takes_all_ties() {
            return Cut {
                kth: th.kth,
                cut: row.len(),
            };
        }
        let counts: Vec<usize> = row
            .par_chunks(PAR_CHUNK)
            .map(|c| c.iter().filter(|x| x.key() == th.kth).count())
            .collect();
        let mut before = 0;
        for (c, &n) in counts.iter().enumerate() {
            if before + n >= th.take {
                let start = c * PAR_CHUNK;
                let end = (start + PAR_CHUNK).min(row.len());
                let part = Self::of_threshold(
                    &row[start..end],
                    Threshold {
                        take: th.take - before,
                        ..th
                    },
                );
                return Cut {
                    kth: th.kth,
                    cut: start + part.cut,
                };
            }
            before += n;
        }
        unreachable!("fewer than {} ties of {:?}", th.take, th.kth)
    }
}

/// Rows up to this length take the small-row path: keys copied, `select_nth_unstable`.
pub(crate) const SMALL_ROW: usize = 256;

/// Width of the first digit of the row path: bits `BITS - 2 .. BITS - 12` of the key (30..20
/// for f32, 14..4 for f16 and bf16), counted while the row is read.
const FIRST_DIGIT: u32 = 11;

/// Scratch of the row selection, reused across the rows of a task.
#[derive(Debug, Default)]
pub(crate) struct Scratch<K> {
    hist: Vec<u32>,
    cand: Vec<K>,
}

/// Rows up to this length find their k-th key by counting ranks (all pairs, in AVX2 lanes).
#[cfg_attr(
    not(any(target_arch = "x86", target_arch = "x86_64")),
    allow(dead_code)
)]
pub(crate) const RANK_ROW: usize = 64;

/// The cut of the `k` targeted elements of `row` (one thread).
/// - `k = 0` and `k = n` decide alone;
/// - rows up to [`RANK_ROW`] with AVX2 (keys up to 32 bits): the k-th key by counting, for
///   every key, the keys below it (all pairs, in vector lanes; no histogram to clear or scan);
/// - rows up to [`SMALL_ROW`]: the keys copied and the k-th found by `select_nth_unstable`;
/// - longer rows: the histogram of the first 11-bit digit, counted while the row is read;
///   the bin of rank `k - 1`; the elements of that bin compacted and resolved alone
///   ([`select_in_place`]), so no later pass touches the whole row.
///
/// Then one counting pass gives the tie cut. With AVX2 the same code is compiled for AVX2.
pub(crate) fn row_cut<T: Element>(row: &[T], k: usize, s: &mut Scratch<T::Key>) -> Cut<T::Key> {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2, the only feature the function enables.
        return unsafe { row_cut_avx2(row, k, s) };
    }
    row_cut_body(row, k, s)
}

/// [`row_cut`] compiled for AVX2.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn row_cut_avx2<T: Element>(row: &[T], k: usize, s: &mut Scratch<T::Key>) -> Cut<T::Key> {
    let n = row.len();
    if 0 < k && k < n && n <= RANK_ROW && <T::Key as RadixKey>::BITS <= 32 {
        let mut keys = [i32::MAX; RANK_ROW];
        for (d, x) in keys.iter_mut().zip(row) {
            // The sign bit is clear: the key is below 2^31.
            *d = x.key().to_u64() as i32;
        }
        // SAFETY: AVX2 is present (this function's contract).
        let kth = unsafe { kth_by_prefix_avx2(&keys, n, k - 1, <T::Key as RadixKey>::BITS - 16) };
        return cut_of_kth(row, k, T::Key::from_u64(kth as u64));
    }
    row_cut_body(row, k, s)
}

/// The key of rank `r` among the first `n` (at most [`RANK_ROW`]) of `keys` (keys below
/// 2^31 as i32, padded with `i32::MAX`): the largest key with at most `r` keys below it.
/// For each key, a broadcast compared with all 64 in eight vectors; the counts stay in
/// registers. (A padding key only counts when the k-th key is `i32::MAX` itself.)
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn kth_by_ranks_avx2(keys: &[i32; RANK_ROW], n: usize, r: usize) -> i32 {
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;
    let mut v = [_mm256_setzero_si256(); 8];
    for (j, x) in v.iter_mut().enumerate() {
        // SAFETY: `keys` holds 64 i32, eight vectors of eight; unaligned loads.
        *x = unsafe { _mm256_loadu_si256(keys.as_ptr().add(8 * j).cast()) };
    }
    let mut less = [_mm256_setzero_si256(); 8];
    for &ki in &keys[..n] {
        let b = _mm256_set1_epi32(ki);
        for (l, &x) in less.iter_mut().zip(&v) {
            // key_j > key_i: -1, so subtracting counts one more key below key_j.
            *l = _mm256_sub_epi32(*l, _mm256_cmpgt_epi32(x, b));
        }
    }
    let rr = _mm256_set1_epi32(r as i32);
    let mut best = _mm256_setzero_si256();
    for (&l, &x) in less.iter().zip(&v) {
        // Keys with more than r below them are out; keys are >= 0, so 0 is neutral.
        best = _mm256_max_epi32(best, _mm256_andnot_si256(_mm256_cmpgt_epi32(l, rr), x));
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds eight i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), best) };
    lanes.into_iter().max().unwrap_or(0)
}

/// [`kth_by_ranks_avx2`] with half the lanes' work for the usual row: the ranks of the
/// 16-bit prefixes `key >> shift` in sixteen i16 lanes give the prefix `d` of the k-th key;
/// the keys with that prefix are usually one or two, and then the k-th key is their
/// smallest or their largest (vector min and max over the row). Otherwise (three or more
/// with the k-th in the middle, or the largest prefix) the full ranks decide.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn kth_by_prefix_avx2(keys: &[i32; RANK_ROW], n: usize, r: usize, shift: u32) -> i32 {
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;
    // Real keys are below 2^31 and `shift` leaves at most 15 bits; the padding gets the
    // largest prefix, which counts below no real prefix.
    let mut pre = [i16::MAX; RANK_ROW];
    for (p, &k) in pre[..n].iter_mut().zip(keys) {
        *p = (k >> shift) as i16;
    }
    // SAFETY: `pre` holds 64 i16, four vectors of sixteen; unaligned loads.
    let v = unsafe {
        let p = pre.as_ptr();
        [
            _mm256_loadu_si256(p.cast()),
            _mm256_loadu_si256(p.add(16).cast()),
            _mm256_loadu_si256(p.add(32).cast()),
            _mm256_loadu_si256(p.add(48).cast()),
        ]
    };
    let (mut l0, mut l1, mut l2, mut l3) = (
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
    );
    for &pi in &pre[..n] {
        let b = _mm256_set1_epi16(pi);
        l0 = _mm256_sub_epi16(l0, _mm256_cmpgt_epi16(v[0], b));
        l1 = _mm256_sub_epi16(l1, _mm256_cmpgt_epi16(v[1], b));
        l2 = _mm256_sub_epi16(l2, _mm256_cmpgt_epi16(v[2], b));
        l3 = _mm256_sub_epi16(l3, _mm256_cmpgt_epi16(v[3], b));
    }
    let less = [l0, l1, l2, l3];
    let rr = _mm256_set1_epi16(r as i16);
    let mut best = _mm256_setzero_si256();
    for (&l, &x) in less.iter().zip(&v) {
        best = _mm256_max_epi16(best, _mm256_andnot_si256(_mm256_cmpgt_epi16(l, rr), x));
    }
    let mut lanes = [0i16; 16];
    // SAFETY: `lanes` holds sixteen i16.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), best) };
    let d = lanes.into_iter().max().unwrap_or(0);
    if d != i16::MAX {
        let below = pre[..n].iter().fold(0usize, |a, &p| a + (p < d) as usize);
        let dv = _mm256_set1_epi32(d as i32);
        let sh = _mm_cvtsi32_si128(shift as i32);
        let (mut lo, mut hi, mut count) = (
            _mm256_set1_epi32(i32::MAX),
            _mm256_set1_epi32(-1),
            _mm256_setzero_si256(),
        );
        for j in 0..RANK_ROW / 8 {
            // SAFETY: `keys` holds 64 i32, eight vectors of eight; unaligned loads.
            let x = unsafe { _mm256_loadu_si256(keys.as_ptr().add(8 * j).cast()) };
            // The padding (i32::MAX) has prefix 2^15 - 1 or more, never `d`.
            let eq = _mm256_cmpeq_epi32(_mm256_srl_epi32(x, sh), dv);
            lo = _mm256_min_epi32(lo, _mm256_blendv_epi8(_mm256_set1_epi32(i32::MAX), x, eq));
            hi = _mm256_max_epi32(hi, _mm256_blendv_epi8(_mm256_set1_epi32(-1), x, eq));
            count = _mm256_sub_epi32(count, eq);
        }
        let (mut l8, mut h8, mut c8) = ([0i32; 8], [0i32; 8], [0i32; 8]);
        // SAFETY: each array holds eight i32.
        unsafe {
            _mm256_storeu_si256(l8.as_mut_ptr().cast(), lo);
            _mm256_storeu_si256(h8.as_mut_ptr().cast(), hi);
            _mm256_storeu_si256(c8.as_mut_ptr().cast(), count);
        }
        let c: i32 = c8.iter().sum();
        let rank = r - below;
        if rank == 0 {
            return l8.into_iter().min().unwrap_or(0);
        }
        if rank as i32 == c - 1 {
            return h8.into_iter().max().unwrap_or(0);
        }
    }
    // SAFETY: AVX2 is present (this function's contract); n <= 64.
    unsafe { kth_by_ranks_avx2(keys, n, r) }
}

/// The cut of `k` targeted elements once the k-th key is known: one counting pass.
#[inline(always)]
fn cut_of_kth<T: Element>(row: &[T], k: usize, kth: T::Key) -> Cut<T::Key> {
    debug_assert!(row.len() <= SMALL_ROW);
    // u32 counts (the rows are short): eight lanes a vector.
    let (mut less, mut ties) = (0u32, 0u32);
    for x in row {
        let key = x.key();
        less += (key < kth) as u32;
        ties += (key == kth) as u32;
    }
    let th = Threshold {
        kth,
        take: k - less as usize,
        ties: ties as usize,
    };
    Cut::of_threshold(row, th)
}

#[inline(always)]
fn row_cut_body<T: Element>(row: &[T], k: usize, s: &mut Scratch<T::Key>) -> Cut<T::Key> {
    let n = row.len();
    if k == 0 {
        return Cut::nothing();
    }
    if k >= n {
        return Cut::everything(n);
    }
    if n <= SMALL_ROW {
        s.cand.clear();
        s.cand.extend(row.iter().map(|x| x.key()));
        let kth = *s.cand.select_nth_unstable(k - 1).1;
        return cut_of_kth(row, k, kth);
    }
    let shift = <T::Key as RadixKey>::BITS - 1 - FIRST_DIGIT;
    const BINS: usize = 1 << FIRST_DIGIT;
    s.hist.clear();
    s.hist.resize(BINS, 0);
    let hist: &mut [u32; BINS] = (&mut s.hist[..BINS]).try_into().expect("2^11 bins");
    for x in row {
        // The sign bit is clear, so the digit is below 2^11 already; the mask only spares
        // the bounds check.
        hist[(x.key().to_u64() >> shift) as usize & (BINS - 1)] += 1;
    }
    let (bin, below) = find_bin(hist, k - 1);
    if s.cand.len() < n {
        s.cand.resize(n, Default::default());
    }
    let cand = &mut s.cand[..n];
    let in_bin = |x: &T| (x.key().to_u64() >> shift) as usize == bin;
    // Eight elements at a time, tested together: most groups hold none of the bin (a few
    // percent of the row) and are skipped; the others are compacted branch-free.
    let mut c = 0;
    let mut groups = row.chunks_exact(8);
    for g in &mut groups {
        if g.iter().fold(false, |a, x| a | in_bin(x)) {
            for x in g {
                cand[c] = x.key();
                c += in_bin(x) as usize;
            }
        }
    }
    for x in groups.remainder() {
        cand[c] = x.key();
        c += in_bin(x) as usize;
    }
    let th = select_in_place(&mut cand[..c], k - 1 - below);
    Cut::of_threshold(row, th)
}

/// The cut of a long row, its selection split over the rayon pool.
pub(crate) fn row_cut_par<T: Element>(row: &[T], k: usize) -> Cut<T::Key> {
    if k == 0 {
        return Cut::nothing();
    }
    if k >= row.len() {
        return Cut::everything(row.len());
    }
    Cut::of_threshold_par(row, threshold_par(row, k))
}

/// The bin of a histogram that holds rank `r`, and the count below it. Sums blocks of 16
/// bins first (vectorised), then the bins of one block.
fn find_bin(hist: &[u32], r: usize) -> (usize, usize) {
    let mut below = 0usize;
    for (b, block) in hist.chunks(16).enumerate() {
        let sum: u32 = block.iter().sum();
        if r < below + sum as usize {
            for (j, &h) in block.iter().enumerate() {
                if r < below + h as usize {
                    return (16 * b + j, below);
                }
                below += h as usize;
            }
        }
        below += sum as usize;
    }
    unreachable!("rank {r} is outside a histogram of {below} keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn radix_select<K: RadixKey>(keys: &[K], k: usize) -> Threshold<K> {
        select_in_place(&mut keys.to_vec(), k - 1)
    }

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
        assert_eq!(radix_select(&keys, 1).kth, 0);
    }

    #[test]
    fn select_u64_and_u16() {
        let keys: Vec<u64> = (0..1000u64).map(|i| ((i * 7919) % 1000) << 40).collect();
        assert_eq!(radix_select(&keys, 500).kth, 499 << 40);
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
    fn serial_and_parallel_first_pass_agree() {
        // A long row with heavy ties: the serial cut (11-bit first digit) and the pool's (radix
        // passes over chunks) are the same, and each targets exactly k.
        let row: Vec<f32> = (0..LONG_ROW + 77)
            .map(|i| ((i * 2654435761usize) % 1000) as f32 * 0.25)
            .collect();
        for k in [1, 17, row.len() / 2, row.len() - 1] {
            let a = row_cut_body(&row, k, &mut Scratch::default());
            let b = row_cut_par(&row, k);
            assert_eq!(a, b, "k = {k}");
            let targeted = row
                .iter()
                .enumerate()
                .filter(|&(i, x)| a.targeted(x.key(), i));
            assert_eq!(targeted.count(), k);
        }
    }

    /// The targeted flags by sorting `(key, index)`, the contract itself.
    fn by_sort<T: Element>(row: &[T], k: usize) -> Vec<bool> {
        let mut order: Vec<(T::Key, usize)> = row.iter().map(|x| x.key()).zip(0..).collect();
        order.sort();
        let mut f = vec![false; row.len()];
        for &(_, i) in &order[..k] {
            f[i] = true;
        }
        f
    }

    fn check_cuts<T: Element>(row: &[T], what: &str) {
        let n = row.len();
        let mut ks: Vec<usize> = vec![0, 1, n / 3, n / 2, n.saturating_sub(1), n];
        ks.extend((0..n).step_by((n / 13).max(1)));
        let mut s = Scratch::default();
        for k in ks {
            let want = by_sort(row, k);
            for (how, cut) in [
                ("serial", row_cut(row, k, &mut s)),
                // The code without AVX2 (the fallback of other processors).
                ("portable", row_cut_body(row, k, &mut s)),
                ("pool", row_cut_par(row, k)),
            ] {
                let got: Vec<bool> = (0..n).map(|i| cut.targeted(row[i].key(), i)).collect();
                assert_eq!(got, want, "{what}, n = {n}, k = {k}, {how}: {cut:?}");
                let (before, after) = cut.limits();
                let via_limits: Vec<bool> = (0..n)
                    .map(|i| row[i].key() < if i < cut.cut { before } else { after })
                    .collect();
                assert_eq!(via_limits, want, "{what}, n = {n}, k = {k}, {how}, limits");
            }
        }
    }

    #[test]
    fn cuts_match_the_sort_on_edge_data() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in [
            2,
            3,
            17,
            63,
            64,
            65,
            SMALL_ROW,
            SMALL_ROW + 1,
            300,
            2304,
            5000,
        ] {
            // Plain data, signs mixed.
            let plain: Vec<f32> = (0..n)
                .map(|_| (next() % 2_000_001) as f32 / 1e6 - 1.0)
                .collect();
            check_cuts(&plain, "plain");
            // Heavy ties (the tie cut falls inside a run), with -0.0 and +0.0.
            let ties: Vec<f32> = (0..n)
                .map(|_| [0.0, -0.0, 1.0, -1.0, 2.5][(next() % 5) as usize])
                .collect();
            check_cuts(&ties, "ties");
            // All equal: one bin, every candidate tied.
            check_cuts(&vec![-3.0f32; n], "equal");
            // Candidate overflow: every key in one first-digit bin, differing in low bits
            // only; and keys straddling first-digit boundaries (bit 20 of an f32 key).
            let one_bin: Vec<f32> = (0..n)
                .map(|_| f32::from_bits(0x3f80_0000 | (next() as u32 & 0xfff)))
                .collect();
            check_cuts(&one_bin, "one bin");
            let straddle: Vec<f32> = (0..n)
                .map(|_| f32::from_bits(0x3f8f_fff0 + (next() as u32 % 32)))
                .collect();
            check_cuts(&straddle, "digit boundary");
            // NaN, infinities, subnormals.
            let edgy: Vec<f32> = (0..n)
                .map(|_| match next() % 6 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::from_bits(next() as u32 % 1000),
                    3 => f32::MAX,
                    _ => (next() % 1000) as f32,
                })
                .collect();
            check_cuts(&edgy, "edgy");
            // Other widths: the first digit is bits 14..4 of a 16-bit key, 62..52 of f64.
            let h: Vec<half::f16> = (0..n)
                .map(|_| half::f16::from_bits(next() as u16))
                .collect();
            check_cuts(&h, "f16");
            let b: Vec<half::bf16> = (0..n)
                .map(|_| half::bf16::from_bits(0x3f80 | (next() as u16 & 0x1f)))
                .collect();
            check_cuts(&b, "bf16 one bin");
            let d: Vec<f64> = (0..n).map(|_| f64::from_bits(next())).collect();
            check_cuts(&d, "f64");
        }
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[test]
    fn ranks_in_lanes_match_the_sort() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut x = 0x5851_f42d_4c95_7f2du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..3000 {
            let n = 1 + (next() % 64) as usize;
            let shift = if case % 2 == 0 { 16 } else { 0 };
            let top = if shift == 16 { 0x7fff_ffffu64 } else { 0x7fff };
            // Distinct prefixes, shared prefixes (the middle of three or more: the full
            // ranks), ties, and the largest prefix (NaN keys).
            let class = case % 4;
            let mut keys = [i32::MAX; RANK_ROW];
            for k in keys[..n].iter_mut() {
                let v = match class {
                    0 => next() % (top + 1),
                    1 => (0x3f80_0000u64 >> (16 - shift)) + next() % 5,
                    2 => [0, 1, top / 2, top][(next() % 4) as usize],
                    _ => top - next() % 3,
                };
                *k = v as i32;
            }
            let mut sorted = keys[..n].to_vec();
            sorted.sort();
            for (r, &want) in sorted.iter().enumerate() {
                // SAFETY: AVX2 is present.
                let (a, b) = unsafe {
                    (
                        kth_by_prefix_avx2(&keys, n, r, shift),
                        kth_by_ranks_avx2(&keys, n, r),
                    )
                };
                assert_eq!(a, want, "prefix, case {case} n {n} r {r}");
                assert_eq!(b, want, "ranks, case {case} n {n} r {r}");
            }
        }
    }

    #[test]
    fn count_is_floor() {
        assert_eq!(targeted_count(0.5, 9), 4);
        assert_eq!(targeted_count(1.0, 9), 9);
        assert_eq!(targeted_count(0.0, 9), 0);
        assert_eq!(targeted_count(0.3, 10), 3);
    }
}
