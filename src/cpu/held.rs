//! What a training step holds on the CPU (`VarMapDropout`): the bit mask of the dropped
//! elements (bit `e % 32` of word `e / 32`) and their original values in flat order. The
//! variable itself holds the dropped weight, written in place: [`take_dropped`] moves the
//! dropped values out (one pass over the weight that touches the words with a set bit),
//! [`put_back`] puts them back, and [`mask_values`] masks a gradient with the same bits.
//!
//! Each runs over the rayon pool in chunks of [`CHUNK`] elements (whole words) when the
//! tensor has more than one chunk, on the calling thread otherwise.

use crate::op::TargetedOp;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel chunk: a multiple of 32, so each chunk starts on a word.
const CHUNK: usize = 1 << 15;

/// The words of the elements of chunk `c`.
fn chunk_words(bits: &[u32], c: usize, len: usize) -> &[u32] {
    let w0 = (c * CHUNK / 32).min(bits.len());
    &bits[w0..(w0 + len.div_ceil(32)).min(bits.len())]
}

/// The bits of a word that belong to a chunk of `len` elements (bits past its end are
/// ignored everywhere: they must not count a value that is not there).
fn in_range(word: u32, len: usize) -> u32 {
    if len >= 32 {
        word
    } else {
        word & ((1u32 << len) - 1)
    }
}

/// The set bits of `bits` for the first `len` elements.
fn count(bits: &[u32], len: usize) -> usize {
    bits.iter()
        .enumerate()
        .map(|(i, &b)| in_range(b, len.saturating_sub(32 * i)).count_ones() as usize)
        .sum()
}

/// An element type a step holds: f32 moves its values with AVX2 (eight at a time, by a
/// permutation from a table), the others one set bit at a time.
pub(crate) trait Held: Copy + Default + Send + Sync {
    /// [`take_chunk`] with SIMD; `false` where the type or the processor has none.
    fn take_simd(_w: &mut [Self], _bits: &[u32], _out: &mut [MaybeUninit<Self>]) -> bool {
        false
    }
    /// [`put_chunk`] with SIMD; `false` where the type or the processor has none.
    fn put_simd(_w: &mut [Self], _bits: &[u32], _values: &[Self]) -> bool {
        false
    }
}

impl Held for f64 {}
impl Held for half::f16 {}
impl Held for half::bf16 {}

impl Held for f32 {
    fn take_simd(w: &mut [f32], bits: &[u32], out: &mut [MaybeUninit<f32>]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: f32 and u32 have one size and alignment and every bit pattern is valid
            // as either; the processor has AVX2.
            unsafe {
                let w = std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u32>(), w.len());
                let out = std::slice::from_raw_parts_mut(
                    out.as_mut_ptr().cast::<MaybeUninit<u32>>(),
                    out.len(),
                );
                x86::take_u32(w, bits, out);
            }
            return true;
        }
        let _ = (w, bits, out);
        false
    }

    fn put_simd(w: &mut [f32], bits: &[u32], values: &[f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as in `take_simd`.
            unsafe {
                let w = std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u32>(), w.len());
                let v = std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len());
                x86::put_u32(w, bits, v);
            }
            return true;
        }
        let _ = (w, bits, values);
        false
    }
}

/// Moves the dropped values of one chunk into `out` (exactly as many as its bits are set),
/// setting each to `T::default()` (+0.0).
fn take_chunk<T: Held>(w: &mut [T], bits: &[u32], out: &mut [MaybeUninit<T>]) {
    if T::take_simd(w, bits, out) {
        return;
    }
    let mut k = 0;
    for (c, &word) in w.chunks_mut(32).zip(bits) {
        let mut b = in_range(word, c.len());
        while b != 0 {
            let j = b.trailing_zeros() as usize;
            out[k].write(c[j]);
            k += 1;
            c[j] = T::default();
            b &= b - 1;
        }
    }
}

/// Moves the values of `w` whose bit is set (`bits` from bit 0, no bit past `w`) to the end
/// of `run`, +0.0 left in their place.
pub(super) fn take_into<T: Held>(w: &mut [T], bits: &[u32], run: &mut Vec<T>) {
    let n = count(bits, w.len());
    run.reserve(n);
    let at = run.len();
    take_chunk(w, bits, &mut run.spare_capacity_mut()[..n]);
    // SAFETY: `take_chunk` wrote all `n` elements after `at` (as many as bits are set).
    unsafe { run.set_len(at + n) };
}

/// Puts `values` back at the set bits of one chunk.
fn put_chunk<T: Held>(w: &mut [T], bits: &[u32], values: &[T]) {
    if T::put_simd(w, bits, values) {
        return;
    }
    let mut v = values.iter();
    for (c, &word) in w.chunks_mut(32).zip(bits) {
        let mut b = in_range(word, c.len());
        while b != 0 {
            let j = b.trailing_zeros() as usize;
            if let Some(&x) = v.next() {
                c[j] = x;
            }
            b &= b - 1;
        }
    }
}

/// The values of `w` whose bit is set, in flat order, each replaced by `T::default()` (+0.0,
/// the contract's dropped value) in `w`. `bits` has `ceil(w.len() / 32)` words; bits past the
/// last element are ignored.
pub(crate) fn take_dropped<T: Held>(w: &mut [T], bits: &[u32]) -> Vec<T> {
    debug_assert_eq!(bits.len(), w.len().div_ceil(32));
    let counts: Vec<usize> = (0..w.len().div_ceil(CHUNK))
        .map(|c| {
            let len = CHUNK.min(w.len() - c * CHUNK);
            count(chunk_words(bits, c, len), len)
        })
        .collect();
    let total = counts.iter().sum();
    let mut out = Vec::with_capacity(total);
    let mut spare = &mut out.spare_capacity_mut()[..total];
    // Each chunk writes its own run of the values.
    let mut runs = Vec::with_capacity(counts.len());
    for &n in &counts {
        let (run, rest) = spare.split_at_mut(n);
        runs.push(run);
        spare = rest;
    }
    if w.len() <= CHUNK {
        if let Some(run) = runs.pop() {
            take_chunk(w, bits, run);
        }
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(runs.into_par_iter())
            .enumerate()
            .for_each(|(c, (x, run))| take_chunk(x, chunk_words(bits, c, x.len()), run));
    }
    // SAFETY: the capacity is `total`, and each chunk wrote every element of its run (as many
    // as its bits are set); the runs cover `out[..total]`.
    unsafe { out.set_len(total) };
    out
}

/// Puts `values` (in flat order) back at the elements of `w` whose bit is set: the inverse of
/// [`take_dropped`]. `values` holds exactly as many values as bits are set.
pub(crate) fn put_back<T: Held>(w: &mut [T], bits: &[u32], values: &[T]) {
    if w.len() <= CHUNK {
        return put_chunk(w, bits, values);
    }
    // Where each chunk's values start.
    let mut starts = Vec::with_capacity(w.len().div_ceil(CHUNK));
    let mut at = 0usize;
    for c in 0..w.len().div_ceil(CHUNK) {
        starts.push(at);
        let len = CHUNK.min(w.len() - c * CHUNK);
        at += count(chunk_words(bits, c, len), len);
    }
    w.par_chunks_mut(CHUNK).enumerate().for_each(|(c, x)| {
        let words = chunk_words(bits, c, x.len());
        let from = starts[c].min(values.len());
        let to = (from + count(words, x.len())).min(values.len());
        put_chunk(x, words, &values[from..to]);
    });
}

/// `g[e]`, or `T::default()` (+0.0) where bit `e` is set: word by word. Compiled for AVX2
/// where the processor has it (the select by a variable shift vectorises).
pub(crate) fn mask_values<T: Copy + Default + Send + Sync>(g: &[T], bits: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(g.len());
    let spare = &mut out.spare_capacity_mut()[..g.len()];
    if g.len() <= CHUNK {
        mask_chunk(spare, g, bits);
    } else {
        spare
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (o, g))| mask_chunk(o, g, chunk_words(bits, c, g.len())));
    }
    // SAFETY: the capacity is `g.len()`, and every element of `spare` was written above
    // (a chunk with fewer words than it needs reads the missing ones as 0).
    unsafe { out.set_len(g.len()) };
    out
}

/// One chunk of [`mask_values`].
fn mask_chunk<T: Copy + Default>(o: &mut [MaybeUninit<T>], g: &[T], words: &[u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2, the only feature the function enables.
        return unsafe { mask_chunk_avx2(o, g, words) };
    }
    mask_chunk_body(o, g, words)
}

/// [`mask_chunk`] compiled for AVX2.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_chunk_avx2<T: Copy + Default>(o: &mut [MaybeUninit<T>], g: &[T], words: &[u32]) {
    mask_chunk_body(o, g, words)
}

#[inline(always)]
fn mask_chunk_body<T: Copy + Default>(o: &mut [MaybeUninit<T>], g: &[T], words: &[u32]) {
    for (i, (o, g)) in o.chunks_mut(32).zip(g.chunks(32)).enumerate() {
        // A missing word masks nothing (every element is written either way).
        let w = words.get(i).copied().unwrap_or(0);
        for (j, (o, &g)) in o.iter_mut().zip(g).enumerate() {
            o.write(if (w >> j) & 1 == 0 { g } else { T::default() });
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The held values of 32-bit elements, eight at a time: the set bits of each byte of a
    //! mask word select the lanes that a permutation from a table moves to the front (take)
    //! or back to their places (put).
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// For each 8-bit mask: the lanes whose bit is set, in order (the rest 0).
    static COMPRESS: [[u32; 8]; 256] = tables().0;
    /// For each 8-bit mask: for each lane whose bit is set, how many set bits come before it.
    static EXPAND: [[u32; 8]; 256] = tables().1;

    const fn tables() -> ([[u32; 8]; 256], [[u32; 8]; 256]) {
        let mut c = [[0u32; 8]; 256];
        let mut e = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut k, mut i) = (0, 0);
            while i < 8 {
                if (m >> i) & 1 == 1 {
                    c[m][k] = i as u32;
                    e[m][i] = k as u32;
                    k += 1;
                }
                i += 1;
            }
            m += 1;
        }
        (c, e)
    }

    /// The 8-bit mask of elements `8g .. 8g + 8`.
    #[inline(always)]
    fn byte(bits: &[u32], g: usize) -> u32 {
        (bits[g / 4] >> (8 * (g % 4))) & 0xff
    }

    /// The lanes of a vector whose bit in `m` is set, all ones.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes(m: u32) -> __m256i {
        let sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(m as i32), sel), sel)
    }

    /// `super::take_chunk` on 32-bit elements.
    ///
    /// # Safety
    /// The processor must support AVX2; `out` holds exactly as many elements as `bits` has
    /// set bits within `w`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn take_u32(w: &mut [u32], bits: &[u32], out: &mut [MaybeUninit<u32>]) {
        let mut k = 0usize;
        let groups = w.len() / 8;
        for g in 0..groups {
            let m = byte(bits, g);
            if m == 0 {
                continue;
            }
            let p = w[8 * g..8 * g + 8].as_mut_ptr();
            // SAFETY: `p` points at eight elements of `w`.
            let v = unsafe { _mm256_loadu_si256(p.cast()) };
            if k + 8 <= out.len() {
                let idx = COMPRESS[m as usize];
                // SAFETY: `out[k..k + 8]` is in bounds; `idx` is 32 bytes.
                unsafe {
                    let idx = _mm256_loadu_si256(idx.as_ptr().cast());
                    let packed = _mm256_permutevar8x32_epi32(v, idx);
                    _mm256_storeu_si256(out[k..k + 8].as_mut_ptr().cast(), packed);
                }
            } else {
                let (mut b, mut kk) = (m, k);
                while b != 0 {
                    let j = b.trailing_zeros() as usize;
                    out[kk].write(w[8 * g + j]);
                    kk += 1;
                    b &= b - 1;
                }
            }
            k += m.count_ones() as usize;
            // SAFETY: as the load.
            unsafe { _mm256_storeu_si256(p.cast(), _mm256_andnot_si256(lanes(m), v)) };
        }
        for i in 8 * groups..w.len() {
            if (bits[i / 32] >> (i % 32)) & 1 == 1 {
                out[k].write(w[i]);
                k += 1;
                w[i] = 0;
            }
        }
        debug_assert_eq!(k, out.len());
    }

    /// `super::put_chunk` on 32-bit elements.
    ///
    /// # Safety
    /// The processor must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn put_u32(w: &mut [u32], bits: &[u32], values: &[u32]) {
        let mut k = 0usize;
        let groups = w.len() / 8;
        for g in 0..groups {
            let m = byte(bits, g);
            if m == 0 {
                continue;
            }
            let n = m.count_ones() as usize;
            if k + 8 <= values.len() {
                let p = w[8 * g..8 * g + 8].as_mut_ptr();
                let idx = EXPAND[m as usize];
                // SAFETY: `p` points at eight elements of `w`, `values[k..k + 8]` is in
                // bounds, `idx` is 32 bytes.
                unsafe {
                    let v = _mm256_loadu_si256(values[k..k + 8].as_ptr().cast());
                    let idx = _mm256_loadu_si256(idx.as_ptr().cast());
                    let spread = _mm256_permutevar8x32_epi32(v, idx);
                    let old = _mm256_loadu_si256(p.cast());
                    _mm256_storeu_si256(p.cast(), _mm256_blendv_epi8(old, spread, lanes(m)));
                }
            } else {
                let (mut b, mut kk) = (m, k);
                while b != 0 {
                    let j = b.trailing_zeros() as usize;
                    if let Some(&x) = values.get(kk) {
                        w[8 * g + j] = x;
                    }
                    kk += 1;
                    b &= b - 1;
                }
            }
            k += n;
        }
        for i in 8 * groups..w.len() {
            if (bits[i / 32] >> (i % 32)) & 1 == 1 {
                if let Some(&x) = values.get(k) {
                    w[i] = x;
                }
                k += 1;
            }
        }
    }
}

/// The elements `a..b` of a contiguous layout, or an error naming `what`.
fn offsets(l: &Layout, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(ab) => Ok(ab),
        None => bail!("{what}: internal error, a weight that is not contiguous"),
    }
}

/// One step's drop of `s` (a weight, contiguous, in place) under `op`: the bit mask of the
/// elements dropped (one pass: the selection, the draws and the packed bits, no other
/// output), then those elements moved out ([`take_dropped`]), +0.0 left in their place.
/// Returns the bits and the moved values (a storage of the weight's dtype).
pub(crate) fn drop_in_place(
    op: &TargetedOp,
    s: &mut CpuStorage,
    l: &Layout,
) -> Result<(Vec<u32>, CpuStorage)> {
    let (a, b) = offsets(l, op.name())?;
    macro_rules! go {
        ($($variant:ident),*) => {
            match s {
                $(CpuStorage::$variant(x) => {
                    let x = &mut x[a..b];
                    let (bits, values) = op.drop_in_place(x, l.shape());
                    (bits, CpuStorage::$variant(values))
                })*
                other => bail!(
                    "{}: unsupported dtype {:?} (expected f16, bf16, f32 or f64)",
                    op.name(),
                    other.dtype()
                ),
            }
        };
    }
    Ok(go!(F32, F64, F16, BF16))
}

/// Puts the values that [`drop_in_place`] moved out (elements `vr.0 .. vr.1` of `values`)
/// back into `s` (in place).
pub(crate) fn restore_in_place(
    s: &mut CpuStorage,
    l: &Layout,
    bits: &[u32],
    (values, (va, vb)): (&CpuStorage, (usize, usize)),
) -> Result<()> {
    const WHAT: &str = "VarMapDropout";
    let (a, b) = offsets(l, WHAT)?;
    if bits.len() != (b - a).div_ceil(32) {
        bail!(
            "{WHAT}: internal error, a held mask of {} words for {} elements",
            bits.len(),
            b - a
        )
    }
    macro_rules! go {
        ($($variant:ident),*) => {
            match (s, values) {
                $((CpuStorage::$variant(x), CpuStorage::$variant(v)) => {
                    put_back(&mut x[a..b], bits, &v[va..vb])
                })*
                (s, v) => bail!(
                    "{WHAT}: the variable is {:?} but its held values are {:?}",
                    s.dtype(),
                    v.dtype()
                ),
            }
        };
    }
    go!(F32, F64, F16, BF16);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Take, put back and mask against a direct evaluation, on lengths around a group of
    /// eight, a word and a chunk; f32 (AVX2 here) and f64 (one set bit at a time).
    #[test]
    fn take_put_and_mask_round_trip() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let lens = [
            0usize,
            1,
            7,
            8,
            9,
            31,
            32,
            33,
            1000,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 77,
        ];
        for len in lens {
            for density in [0u32, 1, 2, 3, 4] {
                let mut bits: Vec<u32> = (0..len.div_ceil(32))
                    .map(|_| match density {
                        0 => 0,
                        1 => next() as u32 & next() as u32 & next() as u32,
                        2 => next() as u32,
                        _ => !0,
                    })
                    .collect();
                // Bits past the last element stay set in odd rounds: they must be ignored.
                if len % 32 != 0 && density % 2 == 0 {
                    *bits.last_mut().unwrap() &= (1u32 << (len % 32)) - 1;
                }
                let w: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
                check(&w, &bits, &format!("f32, len {len}, density {density}"));
                let w: Vec<f64> = (0..len).map(|i| i as f64 - 0.5).collect();
                check(&w, &bits, &format!("f64, len {len}, density {density}"));
            }
        }
    }

    fn check<T: Held + PartialEq + std::fmt::Debug>(w: &[T], bits: &[u32], what: &str) {
        let len = w.len();
        let set = |e: usize| (bits[e / 32] >> (e % 32)) & 1 == 1;
        let want_vals: Vec<T> = (0..len).filter(|&e| set(e)).map(|e| w[e]).collect();
        let want_w: Vec<T> = (0..len)
            .map(|e| if set(e) { T::default() } else { w[e] })
            .collect();
        assert_eq!(mask_values(w, bits), want_w, "mask, {what}");
        let mut d = w.to_vec();
        let vals = take_dropped(&mut d, bits);
        assert_eq!(vals, want_vals, "values, {what}");
        assert_eq!(d, want_w, "dropped, {what}");
        put_back(&mut d, bits, &vals);
        assert_eq!(d, w, "put back, {what}");
    }
}
