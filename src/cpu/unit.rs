//! Targeted unit dropout on the host: the unit scores (squared L2 norms in the documented
//! reduction order), the `floor(gamma * d0)` smallest units targeted by the radix select over
//! the row of scores, a draw per unit, and every row written through the masked-output writer
//! (a unit is dropped or kept whole).

use super::mask::{write_masked, All, BitsOut, Kept, Part};
use crate::element::{Element, Score, Scored};
use crate::philox::Bernoulli;
use crate::select::{row_cut, row_cut_par, targeted_count, Scratch, LONG_ROW};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::AtomicU32;

/// Lanes of the unit-norm reduction: see [`unit_score`].
pub(crate) const SCORE_LANES: usize = 1024;

/// The squared L2 norm of one unit, in the order every device follows:
/// 1. lane `j` (`0 <= j < 1024`) starts at +0.0 and adds `x[j + 1024 m]^2` for
///    `m = 0, 1, ...` in turn (each square rounded, then each sum rounded: no fused
///    multiply-add);
/// 2. the lanes are folded pairwise, `lane[j] += lane[j + s]` for `s = 512, 256, ..., 1`;
/// 3. a NaN result becomes the canonical NaN.
pub(crate) fn unit_score<T: Scored>(unit: &[T]) -> T::Acc {
    let zero = T::Acc::ZERO;
    let mut lanes = [zero; SCORE_LANES];
    for chunk in unit.chunks(SCORE_LANES) {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            let v = x.to_acc();
            *l = *l + v * v;
        }
    }
    // Folds with `s >= unit.len()` only add +0.0 to lanes: skip them, the bits are the same.
    let mut s = SCORE_LANES / 2;
    while s >= unit.len().max(1) {
        s /= 2;
    }
    while s >= 1 {
        for j in 0..s {
            lanes[j] = lanes[j] + lanes[j + s];
        }
        s /= 2;
    }
    lanes[0].canonical()
}

/// The unit scores of the `w.len() / n` units of `w`, over the rayon pool.
pub(crate) fn unit_scores<T: Scored>(w: &[T], n: usize) -> Vec<T::Acc> {
    w.par_chunks(n)
        .with_min_len((4096 / n).max(1))
        .map(unit_score)
        .collect()
}

/// The dropped flags of the `d0 = w.len() / n` units under targeted unit dropout.
pub(super) fn unit_dropped<T: Scored>(
    w: &[T],
    n: usize,
    gamma: f64,
    draws: &Bernoulli,
) -> Vec<bool> {
    let d0 = w.len() / n;
    let k = targeted_count(gamma, d0);
    let mut dropped = vec![false; d0];
    if k == 0 || draws.threshold == 0 {
        return dropped;
    }
    // The unit scores as one row (non-negative, NaN canonical: their keys order like the
    // scores), selected like a row of weights.
    let scores = unit_scores(w, n);
    let cut = if d0 >= LONG_ROW {
        row_cut_par(&scores, k)
    } else {
        row_cut(&scores, k, &mut Scratch::default())
    };
    let (before, after) = cut.limits();
    // The draw of a unit is the draw of element index = unit index.
    dropped
        .par_iter_mut()
        .zip(&scores)
        .enumerate()
        .with_min_len(4096)
        .for_each(|(i, (d, s))| {
            let lim = if i < cut.cut { before } else { after };
            *d = s.key() < lim && draws.drops(i as u64);
        });
    dropped
}

/// Writes every element of `out` (rows of `n`): `dropped` in the dropped units, the kept
/// values elsewhere; and the bit mask of the dropped elements into `bits`, if given (zeroed,
/// see [`BitsOut`]). The unit's draw is decided already, so each row is a part whose
/// elements are all targeted or none, written with no further draws.
pub(super) fn unit_dropout_into<O: Copy + Send + Sync, K: Kept<O>>(
    out: &mut [MaybeUninit<O>],
    (kept, dropped): (K, O),
    n: usize,
    units: &[bool],
    bits: Option<&[AtomicU32]>,
) {
    let decided = Bernoulli::always();
    out.par_chunks_mut(n)
        .zip(units.par_iter())
        .enumerate()
        .with_min_len((4096 / n).max(1))
        .for_each_init(Vec::new, |words, (r, (o, &d))| {
            let part = Part {
                kept: kept.part(r * n, n),
                dropped,
                targets: All(d),
                first_e: (r * n) as u64,
                bits: bits.map(|words| BitsOut { words, base: 0 }),
            };
            write_masked(o, part, &decided, words)
        });
}
