//! Targeted weight dropout on the host: per row (filter), the `k = floor(gamma * n)`
//! smallest `(key, index)` are targeted, then written through the masked-output writer.
//!
//! - rows over the pool: [`row_cut`] gives each row's cut (rows of at most 64 by ranks in
//!   AVX2 lanes, longer ones by the radix select), and the row is written as its two
//!   segments below the cut's two limits;
//! - a few rows of at least [`LONG_ROW`]: each row's selection and writing split over the pool.

use super::held::{take_into, Held};
use super::mask::{write_masked, Below, BitsOut, Fill, Kept, Part};
use crate::element::Element;
use crate::op::TargetedOp;
use crate::philox::Bernoulli;
use crate::select::{row_cut, row_cut_par, targeted_count, Cut, Scratch, LONG_ROW, PAR_CHUNK};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::AtomicU32;

/// A part of a row that starts at index `start` of the row: `row` and `kept` are that part,
/// `first_e` the flat index of its first element.
#[derive(Clone, Copy)]
struct RowPart<'a, T, O, K> {
    row: &'a [T],
    kept: K,
    dropped: O,
    start: usize,
    first_e: u64,
    bits: Option<BitsOut<'a>>,
}

/// Writes a part of a row: the cut splits it into a segment below `kth + 1` and one below
/// `kth`.
#[inline]
fn write_cut<T: Element, O: Copy, K: Kept<O>>(
    out: &mut [MaybeUninit<O>],
    rp: RowPart<'_, T, O, K>,
    cut: Cut<T::Key>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
) {
    let (before, after) = cut.limits();
    let split = cut.cut.clamp(rp.start, rp.start + rp.row.len()) - rp.start;
    let (o1, o2) = out.split_at_mut(split);
    let (r1, r2) = rp.row.split_at(split);
    for (o, r, lim, s) in [(o1, r1, before, 0), (o2, r2, after, split)] {
        if o.is_empty() {
            continue;
        }
        let part = Part {
            kept: rp.kept.part(s, o.len()),
            dropped: rp.dropped,
            targets: Below { row: r, lim },
            first_e: rp.first_e + s as u64,
            bits: rp.bits,
        };
        write_masked(o, part, draws, words);
    }
}

/// Targeted weight dropout on `w` (row-major, rows of `n`), written into every element of
/// `out`: `dropped` where an element is dropped, its kept value elsewhere; and the bit mask
/// of the dropped elements into `bits`, if given (zeroed, see [`BitsOut`]).
pub(super) fn weight_dropout_into<T: Element, O: Copy + Send + Sync, K: Kept<O>>(
    w: &[T],
    out: &mut [MaybeUninit<O>],
    (kept, dropped): (K, O),
    n: usize,
    op: &TargetedOp,
    bits: Option<&[AtomicU32]>,
) {
    if w.is_empty() || n == 0 {
        return;
    }
    let elem_base = op.elem_base;
    // Draw index `elem_base + e` is bit `e`.
    let bits = bits.map(|words| BitsOut {
        words,
        base: elem_base,
    });
    let k = targeted_count(op.gamma, n);
    // Nothing is dropped at alpha = 0, so nothing needs selecting.
    let k = if op.draws.threshold == 0 { 0 } else { k };
    let rows = w.len() / n;
    if n >= LONG_ROW && rows < 2 * rayon::current_num_threads() {
        // Few long rows: split each row over the pool instead.
        for (r, (wr, or)) in w.chunks(n).zip(out.chunks_mut(n)).enumerate() {
            let cut = row_cut_par(wr, k);
            let kr = kept.part(r * n, n);
            or.par_chunks_mut(PAR_CHUNK)
                .zip(wr.par_chunks(PAR_CHUNK))
                .enumerate()
                .for_each_init(Vec::new, |words, (c, (o, x))| {
                    let start = c * PAR_CHUNK;
                    let rp = RowPart {
                        row: x,
                        kept: kr.part(start, o.len()),
                        dropped,
                        start,
                        first_e: elem_base + (r * n + start) as u64,
                        bits,
                    };
                    write_cut(o, rp, cut, &op.draws, words)
                });
        }
        return;
    }
    out.par_chunks_mut(n)
        .zip(w.par_chunks(n))
        .enumerate()
        .with_min_len((4096 / n).max(1))
        .for_each_init(
            || (Scratch::default(), Vec::new()),
            |(scratch, words), (r, (o, wr))| {
                let cut = row_cut(wr, k, scratch);
                let rp = RowPart {
                    row: wr,
                    kept: kept.part(r * n, n),
                    dropped,
                    start: 0,
                    first_e: elem_base + (r * n) as u64,
                    bits,
                };
                write_cut(o, rp, cut, &op.draws, words)
            },
        );
}

/// The words of `bits` for elements `e0 .. e0 + n` (as many words as they need), from bit 0;
/// the bits past the `n`-th cleared. Only this range's bits are read (the words at its ends
/// may be shared with other rows, written meanwhile).
fn row_words(bits: &[AtomicU32], e0: usize, n: usize, out: &mut Vec<u32>) {
    use std::sync::atomic::Ordering::Relaxed;
    out.clear();
    let (w0, sh) = (e0 / 32, (e0 % 32) as u32);
    for i in 0..n.div_ceil(32) {
        let lo = bits[w0 + i].load(Relaxed) >> sh;
        let hi = match (sh, bits.get(w0 + i + 1)) {
            (0, _) | (_, None) => 0,
            (_, Some(w)) => w.load(Relaxed) << (32 - sh),
        };
        out.push(lo | hi);
    }
    if !n.is_multiple_of(32) {
        if let Some(last) = out.last_mut() {
            *last &= (1u32 << (n % 32)) - 1;
        }
    }
}

/// One step's weight dropout of `w` in place (rows of `n`; not the few-long-rows case, see
/// [`weight_in_place_fits`]): per row, the cut, the bit mask of the dropped elements into
/// `bits` (zeroed, see [`BitsOut`]), then the dropped values moved out of the row while it is
/// in the cache (+0.0 left in their place). Returns the moved values in flat order.
pub(super) fn weight_drop_in_place<T: Element + Held>(
    w: &mut [T],
    n: usize,
    op: &TargetedOp,
    bits: &[AtomicU32],
) -> Vec<T> {
    if w.is_empty() || n == 0 {
        return Vec::new();
    }
    let k = targeted_count(op.gamma, n);
    let k = if op.draws.threshold == 0 { 0 } else { k };
    let out = BitsOut {
        words: bits,
        base: op.elem_base,
    };
    let rows_per_task = (4096 / n).max(1);
    let runs: Vec<Vec<T>> = w
        .par_chunks_mut(rows_per_task * n)
        .enumerate()
        .map_init(
            || (Scratch::default(), Vec::new(), Vec::new()),
            |(scratch, words, local), (t, rows)| {
                let mut run = Vec::new();
                // The bit mask alone: the writer's output is `()`.
                let mut unit = vec![MaybeUninit::new(()); n];
                for (j, row) in rows.chunks_mut(n).enumerate() {
                    let r = t * rows_per_task + j;
                    let cut = row_cut(row, k, scratch);
                    let rp = RowPart {
                        row: &*row,
                        kept: Fill(()),
                        dropped: (),
                        start: 0,
                        first_e: op.elem_base + (r * n) as u64,
                        bits: Some(out),
                    };
                    write_cut(&mut unit, rp, cut, &op.draws, words);
                    row_words(bits, r * n, n, local);
                    take_into(row, local, &mut run);
                }
                run
            },
        )
        .collect();
    let mut values = Vec::with_capacity(runs.iter().map(Vec::len).sum());
    for r in runs {
        values.extend_from_slice(&r);
    }
    values
}

/// Whether [`weight_drop_in_place`] serves `w` (rows of `n`): every case but a few long rows
/// (those split each row over the pool).
pub(super) fn weight_in_place_fits(len: usize, n: usize) -> bool {
    n == 0 || !(n >= LONG_ROW && len / n < 2 * rayon::current_num_threads())
}

#[cfg(test)]
mod tests {
    use crate::op::{DropoutKind, Output, TargetedOp};
    use crate::philox::Bernoulli;
    use candle_core::Shape;

    /// The row-by-row drop in place against the bits alone and the values moved after, on
    /// row lengths around a word and the rows of a task, alpha 0.5 and 1, a shard's base.
    #[test]
    fn in_place_matches_bits_then_take() {
        let mut x = 0x6a09_e667_f3bc_c908u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (rows, n) in [
            (1, 1),
            (3, 7),
            (5, 31),
            (4, 33),
            (40, 300),
            (9, 784),
            (2, 4100),
        ] {
            for (alpha, base) in [(0.5, 0u64), (1.0, 0), (0.5, 12345), (0.0, 0)] {
                let w: Vec<f32> = (0..rows * n)
                    .map(|_| [0.0, -0.0, 1.0, -1.0][(next() % 4) as usize] + (next() % 7) as f32)
                    .collect();
                let op = TargetedOp {
                    kind: DropoutKind::Weight,
                    gamma: 0.5,
                    draws: Bernoulli::new(next(), next(), alpha),
                    output: Output::Values,
                    elem_base: base,
                };
                let shape = Shape::from((rows, n));
                let bits = op.dropped_bits(&w, &shape);
                let mut want = w.clone();
                let want_vals = super::super::held::take_dropped(&mut want, &bits);
                let mut got = w.clone();
                let (got_bits, got_vals) = op.drop_in_place(&mut got, &shape);
                let what = format!("{rows} x {n}, alpha {alpha}, base {base}");
                assert_eq!(got_bits, bits, "bits, {what}");
                assert_eq!(got_vals, want_vals, "values, {what}");
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "dropped weight, {what}"
                );
            }
        }
    }
}
