//! Targeted weight dropout on the host: per row (filter), the `k = floor(gamma * n)`
//! smallest `(key, index)` are targeted, then written through the masked-output writer.
//!
//! - rows over the pool: [`row_cut`] gives each row's cut (rows of at most 64 by ranks in
//!   AVX2 lanes, longer ones by the radix select), and the row is written as its two
//!   segments below the cut's two limits;
//! - a few rows of at least [`LONG_ROW`]: each row's selection and writing split over the pool.

use super::mask::{write_masked, Below, BitsOut, Kept, Part};
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
