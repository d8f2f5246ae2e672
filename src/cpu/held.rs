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

/// Elements per parallel chunk: a multiple of 32, so each chunk starts on a word.
const CHUNK: usize = 1 << 15;

/// The words of the elements of chunk `c`.
fn chunk_words(bits: &[u32], c: usize, len: usize) -> &[u32] {
    let w0 = c * CHUNK / 32;
    &bits[w0..(w0 + len.div_ceil(32)).min(bits.len())]
}

/// Moves the dropped values of one chunk into `out` (exactly as many as its bits are set),
/// setting each to `T::default()` (+0.0).
fn take_chunk<T: Copy + Default>(w: &mut [T], bits: &[u32], out: &mut Vec<T>) {
    for (c, &word) in w.chunks_mut(32).zip(bits) {
        let mut b = word;
        while b != 0 {
            let j = b.trailing_zeros() as usize;
            out.push(c[j]);
            c[j] = T::default();
            b &= b - 1;
        }
    }
}

/// The values of `w` whose bit is set, in flat order, each replaced by `T::default()` (+0.0,
/// the contract's dropped value) in `w`. `bits` has `ceil(w.len() / 32)` words and no bit set
/// past the last element.
pub(crate) fn take_dropped<T: Copy + Default + Send + Sync>(w: &mut [T], bits: &[u32]) -> Vec<T> {
    debug_assert_eq!(bits.len(), w.len().div_ceil(32));
    let count: usize = bits.iter().map(|b| b.count_ones() as usize).sum();
    let mut out = Vec::with_capacity(count);
    if w.len() <= CHUNK {
        take_chunk(w, bits, &mut out);
        return out;
    }
    // Each chunk's values into its own vector, then in order: the values are a quarter of the
    // weight at gamma = alpha = 0.5, and a chunk's fit in the cache.
    let parts: Vec<Vec<T>> = w
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(c, x)| {
            let words = chunk_words(bits, c, x.len());
            let n = words.iter().map(|b| b.count_ones() as usize).sum();
            let mut v = Vec::with_capacity(n);
            take_chunk(x, words, &mut v);
            v
        })
        .collect();
    for p in parts {
        out.extend_from_slice(&p);
    }
    out
}

/// Puts `values` (in flat order) back at the elements of `w` whose bit is set: the inverse of
/// [`take_dropped`]. `values` holds exactly as many values as bits are set.
pub(crate) fn put_back<T: Copy + Send + Sync>(w: &mut [T], bits: &[u32], values: &[T]) {
    let put = |w: &mut [T], bits: &[u32], values: &[T]| {
        let mut v = values.iter();
        for (c, &word) in w.chunks_mut(32).zip(bits) {
            let mut b = word;
            while b != 0 {
                let j = b.trailing_zeros() as usize;
                if let Some(&x) = v.next() {
                    c[j] = x;
                }
                b &= b - 1;
            }
        }
    };
    if w.len() <= CHUNK {
        return put(w, bits, values);
    }
    // Where each chunk's values start.
    let mut starts = Vec::with_capacity(w.len().div_ceil(CHUNK));
    let mut at = 0usize;
    for c in 0..w.len().div_ceil(CHUNK) {
        starts.push(at);
        let len = CHUNK.min(w.len() - c * CHUNK);
        at += chunk_words(bits, c, len)
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum::<usize>();
    }
    w.par_chunks_mut(CHUNK).enumerate().for_each(|(c, x)| {
        let from = starts[c].min(values.len());
        put(x, chunk_words(bits, c, x.len()), &values[from..]);
    });
}

/// `g[e]`, or `T::default()` (+0.0) where bit `e` is set: word by word (a word without a set
/// bit is a copy of its 32 elements).
pub(crate) fn mask_values<T: Copy + Default + Send + Sync>(g: &[T], bits: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(g.len());
    let spare = &mut out.spare_capacity_mut()[..g.len()];
    let run = |o: &mut [std::mem::MaybeUninit<T>], g: &[T], words: &[u32]| {
        for ((o, g), &w) in o.chunks_mut(32).zip(g.chunks(32)).zip(words) {
            for (j, (o, &g)) in o.iter_mut().zip(g).enumerate() {
                o.write(if (w >> j) & 1 == 0 { g } else { T::default() });
            }
        }
    };
    if g.len() <= CHUNK {
        run(spare, g, bits);
    } else {
        spare
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (o, g))| run(o, g, chunk_words(bits, c, g.len())));
    }
    // SAFETY: the capacity is `g.len()`, and every element of `spare` was written above
    // (`bits` has a word for every 32 elements: the callers check it).
    unsafe { out.set_len(g.len()) };
    out
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
                    let bits = op.dropped_bits(x, l.shape());
                    let values = take_dropped(x, &bits);
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

    /// Take, put back and mask against a direct evaluation, on lengths around a word and a
    /// chunk.
    #[test]
    fn take_put_and_mask_round_trip() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in [
            0usize,
            1,
            31,
            32,
            33,
            1000,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 77,
        ] {
            let w: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
            let mut bits: Vec<u32> = (0..len.div_ceil(32)).map(|_| next() as u32).collect();
            if len % 32 != 0 {
                *bits.last_mut().unwrap() &= (1u32 << (len % 32)) - 1;
            }
            let set = |e: usize| (bits[e / 32] >> (e % 32)) & 1 == 1;
            let want_vals: Vec<f32> = (0..len).filter(|&e| set(e)).map(|e| w[e]).collect();
            let want_w: Vec<f32> = (0..len).map(|e| if set(e) { 0.0 } else { w[e] }).collect();
            assert_eq!(mask_values(&w, &bits), want_w, "mask, len {len}");
            let mut d = w.clone();
            let vals = take_dropped(&mut d, &bits);
            assert_eq!(vals, want_vals, "values, len {len}");
            assert_eq!(d, want_w, "dropped, len {len}");
            put_back(&mut d, &bits, &vals);
            assert_eq!(d, w, "put back, len {len}");
        }
    }
}
