//! The unsafe part of the selection, alone so that it can be audited: the k-th key of a row
//! of at most [`RANK_ROW`] keys by counting ranks in AVX2 lanes (x86 only). Each function
//! requires AVX2 (`# Safety`); `row.rs` calls them only from its AVX2-compiled path, after
//! the runtime check. Every load and store is unaligned and stays inside a fixed-size array.

/// Rows up to this length find their k-th key by counting ranks (all pairs, in AVX2 lanes).
#[cfg_attr(
    not(any(target_arch = "x86", target_arch = "x86_64")),
    allow(dead_code)
)]
pub(crate) const RANK_ROW: usize = 64;

/// The key of rank `r` among the first `n` (at most [`RANK_ROW`]) of `keys` (keys below
/// 2^31 as i32, padded with `i32::MAX`): the largest key with at most `r` keys below it.
/// For each key, a broadcast compared with all 64 in eight vectors; the counts stay in
/// registers. (A padding key only counts when the k-th key is `i32::MAX` itself.)
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn kth_by_ranks_avx2(keys: &[i32; RANK_ROW], n: usize, r: usize) -> i32 {
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
// `inline`: without it the function, alone in its module, compiled to 20 more instructions a
// call (cachegrind, [16384, 64]); with it, the same count as beside its caller.
#[inline]
pub(super) unsafe fn kth_by_prefix_avx2(
    keys: &[i32; RANK_ROW],
    n: usize,
    r: usize,
    shift: u32,
) -> i32 {
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

/// For each 8-bit mask, the lanes whose bit is set, in order (the rest 0): the permutation
/// that packs those lanes at the front of a vector (`_mm256_permutevar8x32_epi32`).
#[cfg(target_arch = "x86_64")]
pub(crate) static COMPRESS8: [[u32; 8]; 256] = {
    let mut c = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut i) = (0, 0);
        while i < 8 {
            if (m >> i) & 1 == 1 {
                c[m][k] = i as u32;
                k += 1;
            }
            i += 1;
        }
        m += 1;
    }
    c
};

/// The keys (f32 bits, sign cleared) of `row` whose 11-bit digit `key >> shift` is `bin`,
/// packed in order at the front of `cand`; returns how many. Eight elements at a time with
/// no branch: the digits compared in a vector, the matching lanes packed by a permutation
/// and stored whole (the lanes past the count are overwritten by the next store), so `cand`
/// needs eight elements past the last one kept: at least `row.len() + 8`.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn compact_bin_f32_avx2(
    row: &[u32],
    shift: u32,
    bin: u32,
    cand: &mut [u32],
) -> usize {
    use std::arch::x86_64::*;
    assert!(
        cand.len() >= row.len() + 8,
        "compact_bin_f32_avx2: cand too short"
    );
    let sign = _mm256_set1_epi32(0x7fff_ffff);
    let b = _mm256_set1_epi32(bin as i32);
    let sh = _mm_cvtsi32_si128(shift as i32);
    let mut c = 0usize;
    let mut groups = row.chunks_exact(8);
    for g in &mut groups {
        // SAFETY: `g` holds eight u32; `cand[c..c + 8]` is in bounds (`c` is at most the
        // elements seen, and `cand` has eight past the row); `COMPRESS8` rows are 32 bytes.
        unsafe {
            let k = _mm256_and_si256(_mm256_loadu_si256(g.as_ptr().cast()), sign);
            let eq = _mm256_cmpeq_epi32(_mm256_srl_epi32(k, sh), b);
            let m = _mm256_movemask_ps(_mm256_castsi256_ps(eq)) as usize;
            let idx = _mm256_loadu_si256(COMPRESS8[m].as_ptr().cast());
            _mm256_storeu_si256(
                cand[c..c + 8].as_mut_ptr().cast(),
                _mm256_permutevar8x32_epi32(k, idx),
            );
            c += m.count_ones() as usize;
        }
    }
    for &x in groups.remainder() {
        let k = x & 0x7fff_ffff;
        cand[c] = k;
        c += ((k >> shift) == bin) as usize;
    }
    c
}

#[cfg(all(test, any(target_arch = "x86", target_arch = "x86_64")))]
mod tests {
    use super::*;

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
}
