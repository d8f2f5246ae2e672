//! The host implementation of [`TargetedOp`], generic over the element type: the CPU custom
//! ops call [`TargetedOp::cpu`]; the CUDA kernels compute the same bits.
//!
//! Rows go over the rayon pool; each row is selected once ([`RowSelection::of_row`]) and
//! written in one pass that fuses the comparison with the threshold, the Philox draw and the
//! store. A few long rows are split over the pool instead.

use crate::element::{Element, Score, Scored};
use crate::op::{filters, DropoutKind, Output, TargetedOp};
use crate::philox::{Bernoulli, THRESHOLD_ALWAYS};
use crate::select::{targeted_count, RowSelection, LONG_ROW, PAR_CHUNK};
use candle_core::{bail, CpuStorage, Layout, Result};
use rayon::prelude::*;

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

/// A vector of `len` default values, filled by the rayon pool (so that the first touch of
/// fresh pages is spread over the threads too).
fn par_default<O: Copy + Send + Sync + Default>(len: usize) -> Vec<O> {
    (0..len).into_par_iter().map(|_| O::default()).collect()
}

/// Writes one row of output: `dropped` where the element is targeted and its draw falls
/// under alpha, the kept value (`kept[i]`, or the default when there is none) elsewhere.
/// `first_e` is the flat index of the row's first element.
#[inline]
fn write_row<O: Copy + Default>(
    out: &mut [O],
    kept: Option<&[O]>,
    targeted: impl Fn(usize) -> bool,
    dropped: O,
    first_e: u64,
    draws: &Bernoulli,
) {
    let keep = |i: usize| kept.map_or(O::default(), |k| k[i]);
    match draws.threshold {
        0 => out.iter_mut().enumerate().for_each(|(i, o)| *o = keep(i)),
        THRESHOLD_ALWAYS => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = if targeted(i) { dropped } else { keep(i) };
            }
        }
        t => {
            // Elements before the first aligned group and after the last, one at a time.
            let len = out.len();
            let head = (((4 - first_e % 4) % 4) as usize).min(len);
            let one = |o: &mut O, i: usize| {
                let d = targeted(i) && (draws.draw(first_e + i as u64) >> 8) < t;
                *o = if d { dropped } else { keep(i) };
            };
            let (head_out, body) = out.split_at_mut(head);
            head_out.iter_mut().enumerate().for_each(|(i, o)| one(o, i));
            // Whole groups in batches: the Philox blocks of a batch are independent, so the
            // processor overlaps them; the selects after them have no branches.
            const BATCH: usize = 16;
            let groups = body.len() / 4;
            let g0 = (first_e + head as u64) / 4;
            let mut words = [[0u32; 4]; BATCH];
            for b0 in (0..groups).step_by(BATCH) {
                let nb = BATCH.min(groups - b0);
                for (g, w) in words.iter_mut().enumerate().take(nb) {
                    *w = draws.block(g0 + (b0 + g) as u64);
                }
                for (g, w) in words.iter().enumerate().take(nb) {
                    for (q, &r) in w.iter().enumerate() {
                        let i = head + 4 * (b0 + g) + q;
                        let d = targeted(i) & ((r >> 8) < t);
                        body[i - head] = if d { dropped } else { keep(i) };
                    }
                }
            }
            let done = head + 4 * groups;
            out[done..]
                .iter_mut()
                .enumerate()
                .for_each(|(j, o)| one(o, done + j));
        }
    }
}

/// The raw draws of the `n` elements from flat index `first_e` on, into `words[..n]`.
fn fill_draws(words: &mut Vec<u32>, first_e: u64, n: usize, draws: &Bernoulli) {
    words.resize(n, 0);
    let head = (((4 - first_e % 4) % 4) as usize).min(n);
    for (i, w) in words[..head].iter_mut().enumerate() {
        *w = draws.draw(first_e + i as u64);
    }
    let groups = (n - head) / 4;
    let g0 = (first_e + head as u64) / 4;
    for (g, c) in words[head..head + 4 * groups]
        .chunks_exact_mut(4)
        .enumerate()
    {
        c.copy_from_slice(&draws.block(g0 + g as u64));
    }
    for (j, w) in words[head + 4 * groups..n].iter_mut().enumerate() {
        *w = draws.draw(first_e + (head + 4 * groups + j) as u64);
    }
}

/// Targeted weight dropout on `w` (row-major, rows of `n`), written into every element of
/// `out`: `dropped` where an element is dropped, `kept[e]` elsewhere (the values to mask:
/// `w` itself in the forward pass, the incoming gradient in the backward pass), or the
/// default value when `kept` is `None` (a mask).
fn weight_dropout_into<T: Element, O: Copy + Send + Sync + Default>(
    w: &[T],
    kept: Option<&[O]>,
    out: &mut [O],
    dropped: O,
    n: usize,
    gamma: f64,
    draws: &Bernoulli,
) {
    if w.is_empty() || n == 0 {
        return;
    }
    let k = targeted_count(gamma, n);
    let rows = w.len() / n;
    if n >= LONG_ROW && rows < 2 * rayon::current_num_threads() {
        // Few long rows: split each row over the pool instead.
        let mut flags = vec![false; n];
        for (r, (wr, or)) in w.chunks(n).zip(out.chunks_mut(n)).enumerate() {
            RowSelection::of_row(wr, k, &mut Vec::new()).flags_par(wr, &mut flags);
            let kr = kept.map(|v| &v[r * n..(r + 1) * n]);
            or.par_chunks_mut(PAR_CHUNK)
                .zip(flags.par_chunks(PAR_CHUNK))
                .enumerate()
                .for_each(|(c, (o, f))| {
                    let kc = kr.map(|v| &v[c * PAR_CHUNK..c * PAR_CHUNK + o.len()]);
                    let e0 = (r * n + c * PAR_CHUNK) as u64;
                    write_row(o, kc, |i| f[i], dropped, e0, draws)
                });
        }
        return;
    }
    out.par_chunks_mut(n)
        .zip(w.par_chunks(n))
        .enumerate()
        .with_min_len((4096 / n).max(1))
        .for_each_init(
            || (Vec::new(), vec![false; n], Vec::new()),
            |(keys, flags, words), (r, (o, wr))| {
                let kr = kept.map(|v| &v[r * n..(r + 1) * n]);
                let e0 = (r * n) as u64;
                // Nothing is dropped at alpha = 0, so nothing needs selecting.
                let sel = if draws.threshold == 0 {
                    RowSelection::Nothing
                } else {
                    RowSelection::of_row(wr, k, keys)
                };
                match (sel, kr) {
                    (RowSelection::Below(th), Some(kr)) if th.takes_all_ties() => {
                        // No tie to rank: one branch-free select per element, which the
                        // compiler vectorises; dropout draws the row's words first
                        // (independent Philox blocks).
                        let kth = th.kth;
                        if draws.threshold == THRESHOLD_ALWAYS {
                            for ((o, x), &v) in o.iter_mut().zip(wr).zip(kr) {
                                *o = if x.key() <= kth { dropped } else { v };
                            }
                        } else {
                            let t = draws.threshold;
                            fill_draws(words, e0, n, draws);
                            for (((o, x), &v), &r) in o.iter_mut().zip(wr).zip(kr).zip(&*words) {
                                let d = (x.key() <= kth) & ((r >> 8) < t);
                                *o = if d { dropped } else { v };
                            }
                        }
                    }
                    (RowSelection::Below(th), _) if th.takes_all_ties() => {
                        let kth = th.kth;
                        write_row(o, kr, |i| wr[i].key() <= kth, dropped, e0, draws)
                    }
                    (RowSelection::Nothing, _) => write_row(o, kr, |_| false, dropped, e0, draws),
                    (RowSelection::Everything, _) => write_row(o, kr, |_| true, dropped, e0, draws),
                    (sel, _) => {
                        sel.flags(wr, flags);
                        write_row(o, kr, |i| flags[i], dropped, e0, draws)
                    }
                }
            },
        );
}

/// The dropped flags of the `d0 = w.len() / n` units under targeted unit dropout.
fn unit_dropped<T: Scored>(w: &[T], n: usize, gamma: f64, draws: &Bernoulli) -> Vec<bool> {
    let d0 = w.len() / n;
    let k = targeted_count(gamma, d0);
    let mut dropped = vec![false; d0];
    if k == 0 || draws.threshold == 0 {
        return dropped;
    }
    let scores = unit_scores(w, n);
    RowSelection::of_row(&scores, k, &mut Vec::new()).flags_par(&scores, &mut dropped);
    // The draw of a unit is the draw of element index = unit index.
    dropped
        .par_iter_mut()
        .enumerate()
        .with_min_len(4096)
        .for_each(|(i, d)| *d = *d && draws.drops(i as u64));
    dropped
}

/// Writes every element of `out` (rows of `n`): `dropped` in the dropped units, `kept[e]`
/// (or the default) elsewhere.
fn unit_dropout_into<O: Copy + Send + Sync + Default>(
    kept: Option<&[O]>,
    out: &mut [O],
    dropped: O,
    n: usize,
    units: &[bool],
) {
    out.par_chunks_mut(n)
        .zip(units.par_iter())
        .enumerate()
        .with_min_len((4096 / n).max(1))
        .for_each(|(r, (o, &d))| match (d, kept) {
            (true, _) => o.fill(dropped),
            (false, Some(k)) => o.copy_from_slice(&k[r * n..(r + 1) * n]),
            (false, None) => o.fill(O::default()),
        });
}

/// The contiguous elements of a layout (the public functions make `w` contiguous first, the
/// backward pass its gradient).
fn contiguous<'a, T>(op: &TargetedOp, data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{}: internal error, an input is not contiguous", op.name()),
    }
}

impl TargetedOp {
    /// The selection on `w` (rows of `n`), written over `kept` (the values) or as a mask
    /// (`O = u8`, 1 = dropped) when `kept` is `None`.
    fn run<T: Scored, O: Copy + Send + Sync + Default>(
        &self,
        w: &[T],
        kept: Option<&[O]>,
        dropped: O,
        n: usize,
    ) -> Vec<O> {
        let mut out = par_default(w.len());
        if n == 0 {
            return out;
        }
        match self.kind {
            DropoutKind::Weight => {
                weight_dropout_into(w, kept, &mut out, dropped, n, self.gamma, &self.draws)
            }
            DropoutKind::Unit => {
                let units = unit_dropped(w, n, self.gamma, &self.draws);
                unit_dropout_into(kept, &mut out, dropped, n, &units)
            }
        }
        out
    }

    /// The op on the CPU: selection on `w`, values from `vals` (the backward pass) or `w`,
    /// or the mask; `wrap` makes the values a storage of `T`.
    pub(crate) fn cpu<T: Scored>(
        &self,
        w: &[T],
        wl: &Layout,
        vals: Option<(&[T], &Layout)>,
        wrap: fn(Vec<T>) -> CpuStorage,
    ) -> Result<CpuStorage> {
        let w = contiguous(self, w, wl)?;
        let (_, n) = filters(wl.shape());
        Ok(match (self.output, vals) {
            (Output::Mask, _) => CpuStorage::U8(self.run::<T, u8>(w, None, 1, n)),
            (Output::Values, None) => wrap(self.run(w, Some(w), T::ZERO, n)),
            (Output::Values, Some((v, vl))) => {
                let v = contiguous(self, v, vl)?;
                wrap(self.run(w, Some(v), T::ZERO, n))
            }
        })
    }
}
