//! The host implementation of every op, generic over the element type. The CPU custom ops
//! and the tests call these; the CUDA kernels compute the same bits.

use crate::philox::Bernoulli;
use crate::select::{for_each_targeted, targeted_count, targeted_flags_par, Element, LONG_ROW};
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

/// The dropped indices of one row whose first element has flat index `first_e`.
fn row_mask<T: Element>(row: &[T], k: usize, first_e: u64, draws: &Bernoulli) -> Vec<usize> {
    let mut cursor = draws.cursor();
    let mut dropped = Vec::new();
    for_each_targeted(row, k, |i| {
        if cursor.drops(first_e + i as u64) {
            dropped.push(i)
        }
    });
    dropped
}

/// Writes +0.0 into `out` at the elements that targeted weight dropout on `w` drops; every
/// other element of `out` is left as it is. `out` holds a copy of the values to mask (`w`
/// itself in the forward pass, the incoming gradient in the backward pass). Both are
/// row-major with rows of `n` elements.
///
/// `dropped` is what a dropped element becomes: `T::ZERO` for values, `1u8` for a mask.
pub fn weight_dropout_into<T: Element, O: Copy + Send + Sync>(
    w: &[T],
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
    if k == 0 || draws.threshold == 0 {
        return;
    }
    let rows = w.len() / n;
    if n >= LONG_ROW && rows < 2 * rayon::current_num_threads() {
        // Few long rows: split each row over the pool instead.
        let mut flags = vec![false; n];
        for (r, (wr, or)) in w.chunks(n).zip(out.chunks_mut(n)).enumerate() {
            targeted_flags_par(wr, k, &mut flags);
            let first_e = (r * n) as u64;
            const CHUNK: usize = 1 << 14;
            or.par_chunks_mut(CHUNK)
                .zip(flags.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (o, f))| {
                    let mut cursor = draws.cursor();
                    let base = first_e + (c * CHUNK) as u64;
                    for (i, (o, &f)) in o.iter_mut().zip(f).enumerate() {
                        if f && cursor.drops(base + i as u64) {
                            *o = dropped
                        }
                    }
                });
        }
        return;
    }
    out.par_chunks_mut(n)
        .zip(w.par_chunks(n))
        .enumerate()
        .with_min_len((4096 / n).max(1))
        .for_each(|(r, (o, wr))| {
            for i in row_mask(wr, k, (r * n) as u64, draws) {
                o[i] = dropped
            }
        });
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

/// Sets every element of the dropped units of `out` (rows of `n`) to `value`.
pub fn apply_unit_mask<O: Copy + Send + Sync>(out: &mut [O], n: usize, dropped: &[bool], value: O) {
    if n == 0 {
        return;
    }
    out.par_chunks_mut(n)
        .zip(dropped.par_iter())
        .with_min_len((4096 / n).max(1))
        .for_each(|(o, &d)| {
            if d {
                o.fill(value)
            }
        });
}
