//! The row dispatch: the cut of one row on one thread, by the path its length and the
//! processor call for (AVX2 rank counting, `select_nth_unstable`, or the 11-bit first digit
//! and the radix select of its bin).

use super::cut::Cut;
use super::radix::{select_in_place, Threshold};
#[cfg(target_arch = "x86_64")]
use super::simd::compact_bin_f32_avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::simd::{kth_by_prefix_avx2, RANK_ROW};
use crate::element::{Element, RadixKey};

/// Rows up to this length take the small-row path: keys copied, `select_nth_unstable`.
const SMALL_ROW: usize = 256;

/// Width of the first digit of the row path: bits `BITS - 2 .. BITS - 12` of the key (30..20
/// for f32, 14..4 for f16 and bf16), counted while the row is read.
pub(crate) const FIRST_DIGIT: u32 = 11;

/// Scratch of the row selection, reused across the rows of a task.
#[derive(Debug, Default)]
pub(crate) struct Scratch<K> {
    hist: Vec<u32>,
    cand: Vec<K>,
}

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
pub(super) fn row_cut_body<T: Element>(
    row: &[T],
    k: usize,
    s: &mut Scratch<T::Key>,
) -> Cut<T::Key> {
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
    // Eight past the row: the AVX2 compaction stores whole vectors.
    if s.cand.len() < n + 8 {
        s.cand.resize(n + 8, Default::default());
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(c) = compact_f32(row, shift, bin, &mut s.cand) {
        let th = select_in_place(&mut s.cand[..c], k - 1 - below);
        return Cut::of_threshold(row, th);
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

/// The keys of an f32 row in first-digit bin `bin`, compacted into `cand` with AVX2
/// ([`compact_bin_f32_avx2`]); `None` for other types or without AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn compact_f32<T: Element>(
    row: &[T],
    shift: u32,
    bin: usize,
    cand: &mut [T::Key],
) -> Option<usize> {
    use std::any::TypeId;
    if TypeId::of::<T>() != TypeId::of::<f32>()
        || TypeId::of::<T::Key>() != TypeId::of::<u32>()
        || !std::arch::is_x86_feature_detected!("avx2")
    {
        return None;
    }
    // SAFETY: `T` is f32 and `T::Key` is u32 (checked above): f32 and u32 have one size and
    // alignment and every bit pattern is valid as either. The processor has AVX2.
    unsafe {
        let row = std::slice::from_raw_parts(row.as_ptr().cast::<u32>(), row.len());
        let cand = std::slice::from_raw_parts_mut(cand.as_mut_ptr().cast::<u32>(), cand.len());
        Some(compact_bin_f32_avx2(row, shift, bin as u32, cand))
    }
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
    use crate::select::row_cut_par;

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
            // Negative bf16 values: the sign is not part of the key, so -x and x tie.
            let b: Vec<half::bf16> = (0..n)
                .map(|_| half::bf16::from_bits(0xbf80 | (next() as u16 & 0x1f)))
                .collect();
            check_cuts(&b, "bf16 negative, one bin");
            let b: Vec<half::bf16> = (0..n)
                .map(|_| {
                    half::bf16::from_bits(
                        (next() as u16 & 0x8000) | 0x3f80 | (next() as u16 & 0x1f),
                    )
                })
                .collect();
            check_cuts(&b, "bf16 signs mixed, one bin");
            let b: Vec<half::bf16> = (0..n)
                .map(|_| half::bf16::from_bits(next() as u16))
                .collect();
            check_cuts(&b, "bf16 any bits");
            let d: Vec<f64> = (0..n).map(|_| f64::from_bits(next())).collect();
            check_cuts(&d, "f64");
        }
    }
}
