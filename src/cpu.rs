//! The host implementation of every op, generic over the element type. The CPU custom ops
//! and the tests call these; the CUDA kernels compute the same bits.

use crate::philox::Bernoulli;
use crate::select::{
    for_each_targeted, targeted_count, targeted_flags, targeted_flags_par, Element, Threshold,
    LONG_ROW, TINY_ROW,
};
use half::{bf16, f16};
use rayon::prelude::*;

/// Lanes of the unit-norm reduction: see [`unit_score`].
pub const SCORE_LANES: usize = 1024;

/// The accumulator of unit scores: f32 for f16, bf16 and f32 input, f64 for f64.
pub trait Score: Element + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    /// NaN scores all rank above every number and tie with each other: one canonical NaN.
    fn canonical(self) -> Self;
}
impl Score for f32 {
    fn canonical(self) -> Self {
        if self.is_nan() {
            f32::NAN
        } else {
            self
        }
    }
}
impl Score for f64 {
    fn canonical(self) -> Self {
        if self.is_nan() {
            f64::NAN
        } else {
            self
        }
    }
}

/// An element type with its unit-score accumulator.
pub trait Scored: Element {
    type Acc: Score;
    fn to_acc(self) -> Self::Acc;
}
impl Scored for f32 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self
    }
}
impl Scored for f64 {
    type Acc = f64;
    fn to_acc(self) -> f64 {
        self
    }
}
impl Scored for f16 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
}
impl Scored for bf16 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
}

/// The squared L2 norm of one unit, in the order every device follows:
/// 1. lane `j` (`0 <= j < 1024`) starts at +0.0 and adds `x[j + 1024 m]^2` for
///    `m = 0, 1, ...` in turn (each square rounded, then each sum rounded: no fused
///    multiply-add);
/// 2. the lanes are folded pairwise, `lane[j] += lane[j + s]` for `s = 512, 256, ..., 1`;
/// 3. a NaN result becomes the canonical NaN.
pub fn unit_score<T: Scored>(unit: &[T]) -> T::Acc {
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

/// A vector of `len` default values, filled by the rayon pool (so that the first touch of
/// fresh pages is spread over the threads too).
pub fn par_default<O: Copy + Send + Sync + Default>(len: usize) -> Vec<O> {
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
        crate::philox::THRESHOLD_ALWAYS => {
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
pub fn weight_dropout_into<T: Element, O: Copy + Send + Sync + Default>(
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
        const CHUNK: usize = 1 << 14;
        let mut flags = vec![false; n];
        for (r, (wr, or)) in w.chunks(n).zip(out.chunks_mut(n)).enumerate() {
            targeted_flags_par(wr, k, &mut flags);
            let kr = kept.map(|v| &v[r * n..(r + 1) * n]);
            or.par_chunks_mut(CHUNK)
                .zip(flags.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (o, f))| {
                    let kc = kr.map(|v| &v[c * CHUNK..c * CHUNK + o.len()]);
                    write_row(o, kc, |i| f[i], dropped, (r * n + c * CHUNK) as u64, draws)
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
                // The row's threshold, found once (tiny rows rank directly; nothing is
                // dropped at alpha = 0, so nothing is selected).
                let th = if draws.threshold == 0 || n <= TINY_ROW {
                    None
                } else {
                    Threshold::of_row_with(wr, k, keys)
                };
                match th {
                    Some(th)
                        if th.take == th.ties
                            && draws.threshold == crate::philox::THRESHOLD_ALWAYS
                            && kr.is_some() =>
                    {
                        // Pruning without ties to rank: one select per element, no indexing,
                        // which the compiler vectorises.
                        let (kth, kr) = (th.kth, kr.expect("checked above"));
                        for ((o, x), &v) in o.iter_mut().zip(wr).zip(kr) {
                            *o = if x.key() <= kth { dropped } else { v };
                        }
                    }
                    Some(th) if th.take == th.ties && kr.is_some() => {
                        // Dropout without ties to rank: the row's draws first (independent
                        // Philox blocks), then one branch-free select per element.
                        let (kth, kr, t) = (th.kth, kr.expect("checked above"), draws.threshold);
                        fill_draws(words, e0, n, draws);
                        for (((o, x), &v), &r) in o.iter_mut().zip(wr).zip(kr).zip(words.iter()) {
                            *o = if (x.key() <= kth) & ((r >> 8) < t) {
                                dropped
                            } else {
                                v
                            };
                        }
                    }
                    Some(th) if th.take == th.ties => {
                        // No tie to rank: the comparison is made as the output is written.
                        let kth = th.kth;
                        write_row(o, kr, |i| wr[i].key() <= kth, dropped, e0, draws)
                    }
                    Some(th) => {
                        th.flags(wr, flags);
                        write_row(o, kr, |i| flags[i], dropped, e0, draws)
                    }
                    None if draws.threshold == 0 => write_row(o, kr, |_| false, dropped, e0, draws),
                    None => {
                        targeted_flags(wr, k, keys, flags);
                        write_row(o, kr, |i| flags[i], dropped, e0, draws)
                    }
                }
            },
        );
}

/// The dropped flags of the `d0 = w.len() / n` units under targeted unit dropout.
pub fn unit_dropped<T: Scored>(w: &[T], n: usize, gamma: f64, draws: &Bernoulli) -> Vec<bool> {
    if n == 0 {
        return Vec::new();
    }
    let d0 = w.len() / n;
    let k = targeted_count(gamma, d0);
    let mut dropped = vec![false; d0];
    if k == 0 || draws.threshold == 0 {
        return dropped;
    }
    let scores: Vec<T::Acc> = w
        .par_chunks(n)
        .with_min_len((4096 / n).max(1))
        .map(unit_score)
        .collect();
    if d0 >= LONG_ROW {
        targeted_flags_par(&scores, k, &mut dropped);
        dropped
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, d)| *d = *d && draws.drops(i as u64));
    } else {
        let mut cursor = draws.cursor();
        for_each_targeted(&scores, k, |i| dropped[i] = cursor.drops(i as u64));
    }
    dropped
}

/// Writes every element of `out` (rows of `n`): `dropped` in the dropped units, `kept[e]`
/// (or the default) elsewhere.
pub fn unit_dropout_into<O: Copy + Send + Sync + Default>(
    kept: Option<&[O]>,
    out: &mut [O],
    dropped: O,
    n: usize,
    units: &[bool],
) {
    if n == 0 {
        return;
    }
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
