//! The host implementation of [`TargetedOp`], generic over the element type: the CPU custom
//! ops call [`TargetedOp::cpu`]; the CUDA kernels compute the same bits.
//!
//! Rows go over the rayon pool; each row is selected once ([`row_cut`]: the k-th key and the
//! tie cut as an index) and written once, into uninitialised memory: the draws of the row's
//! 32-element batches that hold a targeted element first (eight Philox blocks in AVX2 lanes
//! where the processor has AVX2), then one vectorised select per element. A few long rows
//! are split over the pool instead.

use crate::config::NmPattern;
use crate::element::{Element, Score, Scored};
use crate::nm::nm_into;
use crate::op::{filters, DropoutKind, Output, TargetedOp};
use crate::philox::{Bernoulli, THRESHOLD_ALWAYS};
use crate::select::{row_cut, row_cut_par, targeted_count, Cut, Scratch, LONG_ROW, PAR_CHUNK};
use candle_core::{bail, CpuStorage, Layout, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Writes `f(i)` into every element `i` of `out`.
#[inline]
fn fill<O: Copy>(out: &mut [MaybeUninit<O>], f: impl Fn(usize) -> O) {
    for (i, o) in out.iter_mut().enumerate() {
        o.write(f(i));
    }
}

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

/// What the output pass writes for a dropped element and where its draws come from: the
/// same for every segment of a call.
#[derive(Clone, Copy)]
struct Drops<'a, O> {
    /// The value of a dropped element (+0 or the mask's 1).
    value: O,
    draws: &'a Bernoulli,
}

/// One segment of a row: element `i` is targeted iff `row[i].key() < lim`; `first_e` is the
/// flat index (draw index) of `row[0]`.
#[derive(Clone, Copy)]
struct Segment<'a, T: Element, O> {
    row: &'a [T],
    /// The value of each element that is not dropped.
    kept: &'a [O],
    lim: T::Key,
    first_e: u64,
}

/// Writes one segment of a row: a targeted element whose draw falls under alpha becomes
/// `drops.value`, every other `kept[i]`. Each output element is written once; `words` is
/// the row's scratch for the draws.
///
/// With AVX2 the same code is compiled for AVX2 (the selects in 256-bit vectors, the Philox
/// blocks eight lanes at a time, inlined); elsewhere for the baseline with scalar Philox.
#[inline]
fn write_segment<T: Element, O: Copy>(
    out: &mut [MaybeUninit<O>],
    seg: Segment<'_, T, O>,
    drops: Drops<'_, O>,
    words: &mut Vec<u32>,
) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2, the only feature the function enables.
        return unsafe { write_segment_avx2(out, seg, drops, words) };
    }
    write_segment_body(out, seg, drops, words, |c| drops.draws.blocks8_scalar(c))
}

/// [`write_segment`] compiled for AVX2.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn write_segment_avx2<T: Element, O: Copy>(
    out: &mut [MaybeUninit<O>],
    seg: Segment<'_, T, O>,
    drops: Drops<'_, O>,
    words: &mut Vec<u32>,
) {
    write_segment_body(out, seg, drops, words, |c| {
        // SAFETY: this function only runs on processors with AVX2.
        unsafe { crate::philox::x86::blocks8_avx2(drops.draws, c) }
    })
}

/// Fills `words[..len]` (returned) with the Philox words of flat indices `first_e ..
/// first_e + len` where they are needed: the elements before the first aligned group of four
/// and after the last one a draw each, whole groups eight blocks (32 elements) at a time, the
/// groups left one block at a time, each only when `targeted(range)` says one of its
/// elements is targeted (the words of the others are left as they were and must not be
/// looked at). `blocks8(c)` gives the words of Philox blocks `c .. c + 8`.
#[inline(always)]
pub(crate) fn draw_targeted<'w>(
    words: &'w mut Vec<u32>,
    first_e: u64,
    len: usize,
    draws: &Bernoulli,
    blocks8: &impl Fn(u64) -> [u32; 32],
    targeted: impl Fn(std::ops::Range<usize>) -> bool,
) -> &'w mut [u32] {
    if words.len() < len {
        words.resize(len, 0);
    }
    let words = &mut words[..len];
    let head = (((4 - first_e % 4) % 4) as usize).min(len);
    let g0 = (first_e + head as u64) / 4;
    let groups = (len - head) / 4;
    let body = head + 4 * groups;
    for i in (0..head).chain(body..len) {
        if targeted(i..i + 1) {
            words[i] = draws.draw(first_e + i as u64);
        }
    }
    let batches = groups / 8;
    for (b, w) in words[head..head + 32 * batches]
        .chunks_exact_mut(32)
        .enumerate()
    {
        let i = head + 32 * b;
        if targeted(i..i + 32) {
            w.copy_from_slice(&blocks8(g0 + 8 * b as u64));
        }
    }
    for g in 8 * batches..groups {
        let i = head + 4 * g;
        if targeted(i..i + 4) {
            words[i..i + 4].copy_from_slice(&draws.block(g0 + g as u64));
        }
    }
    words
}

/// The body of [`write_segment`]; `blocks8(c)` gives the words of Philox blocks `c .. c + 8`.
/// Every loop loads `kept` unconditionally, so that the compiler vectorises the selects.
#[inline(always)]
fn write_segment_body<T: Element, O: Copy>(
    out: &mut [MaybeUninit<O>],
    seg: Segment<'_, T, O>,
    drops: Drops<'_, O>,
    words: &mut Vec<u32>,
    blocks8: impl Fn(u64) -> [u32; 32],
) {
    let Segment {
        row,
        kept,
        lim,
        first_e,
    } = seg;
    let (dropped, draws) = (drops.value, drops.draws);
    let len = out.len();
    let (row, kept) = (&row[..len], &kept[..len]);
    let t = draws.threshold;
    if t == 0 {
        for (o, &v) in out.iter_mut().zip(kept) {
            o.write(v);
        }
        return;
    }
    if t == THRESHOLD_ALWAYS {
        for ((o, x), &v) in out.iter_mut().zip(row).zip(kept) {
            o.write(if x.key() < lim { dropped } else { v });
        }
        return;
    }
    // The draws first, then one select per element, which the compiler vectorises.
    let words = draw_targeted(words, first_e, len, draws, &blocks8, |r| {
        row[r].iter().fold(false, |a, x| a | (x.key() < lim))
    });
    for (((o, x), &v), &w) in out.iter_mut().zip(row).zip(kept).zip(&*words) {
        let d = (x.key() < lim) & ((w >> 8) < t);
        o.write(if d { dropped } else { v });
    }
}

/// The part of a row that starts at index `start` of the row (`row` and `kept` are that
/// part); `first_e` is the flat index of its first element. Without `kept` (a mask) the kept
/// value is the default.
#[derive(Clone, Copy)]
struct Part<'a, T, O> {
    row: &'a [T],
    kept: Option<&'a [O]>,
    start: usize,
    first_e: u64,
}

/// Writes a part of a row: the cut splits it into a segment with limit `kth + 1` and one with
/// `kth`.
fn write_part<T: Element, O: Copy + Default>(
    out: &mut [MaybeUninit<O>],
    part: Part<'_, T, O>,
    cut: Cut<T::Key>,
    drops: Drops<'_, O>,
    words: &mut Vec<u32>,
) {
    let Part {
        row,
        kept,
        start,
        first_e,
    } = part;
    let defaults;
    let kept = match kept {
        Some(k) => k,
        None => {
            defaults = vec![O::default(); row.len()];
            &defaults
        }
    };
    let (before, after) = cut.limits();
    let split = cut.cut.clamp(start, start + row.len()) - start;
    let (o1, o2) = out.split_at_mut(split);
    let (r1, r2) = row.split_at(split);
    let (k1, k2) = kept.split_at(split);
    if !o1.is_empty() {
        let seg = Segment {
            row: r1,
            kept: k1,
            lim: before,
            first_e,
        };
        write_segment(o1, seg, drops, words);
    }
    if !o2.is_empty() {
        let seg = Segment {
            row: r2,
            kept: k2,
            lim: after,
            first_e: first_e + split as u64,
        };
        write_segment(o2, seg, drops, words);
    }
}

/// What an op writes: `kept[e]` for an element that is not dropped (the values to mask: `w`
/// itself in the forward pass, the incoming gradient in the backward pass), or the default
/// value when `kept` is `None` (a mask); `dropped` for a dropped one.
#[derive(Clone, Copy)]
struct Values<'a, O> {
    kept: Option<&'a [O]>,
    dropped: O,
}

/// Targeted weight dropout on `w` (row-major, rows of `n`), written into every element of
/// `out`.
fn weight_dropout_into<T: Element, O: Copy + Send + Sync + Default>(
    w: &[T],
    out: &mut [MaybeUninit<O>],
    values: Values<'_, O>,
    n: usize,
    op: &TargetedOp,
) {
    let Values { kept, dropped } = values;
    if w.is_empty() || n == 0 {
        return;
    }
    let (draws, elem_base) = (&op.draws, op.elem_base);
    let drops = Drops {
        value: dropped,
        draws,
    };
    let k = targeted_count(op.gamma, n);
    // Nothing is dropped at alpha = 0, so nothing needs selecting.
    let k = if draws.threshold == 0 { 0 } else { k };
    let rows = w.len() / n;
    if n >= LONG_ROW && rows < 2 * rayon::current_num_threads() {
        // Few long rows: split each row over the pool instead.
        for (r, (wr, or)) in w.chunks(n).zip(out.chunks_mut(n)).enumerate() {
            let cut = row_cut_par(wr, k);
            let kr = kept.map(|v| &v[r * n..(r + 1) * n]);
            or.par_chunks_mut(PAR_CHUNK)
                .zip(wr.par_chunks(PAR_CHUNK))
                .enumerate()
                .for_each(|(c, (o, x))| {
                    let start = c * PAR_CHUNK;
                    let kc = kr.map(|v| &v[start..start + o.len()]);
                    let e0 = elem_base + (r * n + start) as u64;
                    let part = Part {
                        row: x,
                        kept: kc,
                        start,
                        first_e: e0,
                    };
                    write_part(o, part, cut, drops, &mut Vec::new())
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
                let kr = kept.map(|v| &v[r * n..(r + 1) * n]);
                let cut = row_cut(wr, k, scratch);
                let e0 = elem_base + (r * n) as u64;
                let part = Part {
                    row: wr,
                    kept: kr,
                    start: 0,
                    first_e: e0,
                };
                write_part(o, part, cut, drops, words)
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

/// Writes every element of `out` (rows of `n`): `dropped` in the dropped units, `kept[e]`
/// (or the default) elsewhere.
fn unit_dropout_into<O: Copy + Send + Sync + Default>(
    out: &mut [MaybeUninit<O>],
    values: Values<'_, O>,
    n: usize,
    units: &[bool],
) {
    let Values { kept, dropped } = values;
    out.par_chunks_mut(n)
        .zip(units.par_iter())
        .enumerate()
        .with_min_len((4096 / n).max(1))
        .for_each(|(r, (o, &d))| match (d, kept) {
            (true, _) => fill(o, |_| dropped),
            (false, Some(k)) => fill(o, |i| k[r * n + i]),
            (false, None) => fill(o, |_| O::default()),
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
        s: usize,
    ) -> Vec<O> {
        let len = w.len();
        let mut out: Vec<O> = Vec::with_capacity(len);
        if n == 0 {
            // No filter of any length: no element.
            return out;
        }
        debug_assert_eq!(len % n, 0, "rows of {n}");
        let spare = &mut out.spare_capacity_mut()[..len];
        let values = Values { kept, dropped };
        match self.kind {
            DropoutKind::Weight => weight_dropout_into(w, spare, values, n, self),
            DropoutKind::Unit => {
                let units = unit_dropped(w, n, self.gamma, &self.draws);
                unit_dropout_into(spare, values, n, &units)
            }
            DropoutKind::Nm { n, m } => {
                nm_into(w, kept, spare, dropped, NmPattern { n, m }, s, &self.draws)
            }
        }
        // SAFETY: the capacity is at least `len`, and both paths write every one of the `len`
        // elements of `spare` (every row of `n` elements, `len` a multiple of `n`) before this.
        unsafe { out.set_len(len) };
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
        // The N:M groups' stride (DESIGN.md, "N:M targeted dropout"); the functions have
        // checked the rank.
        let (_, _, s) = crate::op::nm_geometry(wl.dims()).unwrap_or((0, 0, 1));
        Ok(match (self.output, vals) {
            (Output::Mask, _) => CpuStorage::U8(self.run::<T, u8>(w, None, 1, n, s)),
            (Output::Values, None) => wrap(self.run(w, Some(w), T::ZERO, n, s)),
            (Output::Values, Some((v, vl))) => {
                let v = contiguous(self, v, vl)?;
                wrap(self.run(w, Some(v), T::ZERO, n, s))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable output code (scalar Philox) and the dispatching one (AVX2 here) against
    /// a direct evaluation of the contract, over segment starts of every alignment, lengths
    /// around the 32-element batches, limits at the row's own keys and thresholds 0, 2^24 and
    /// in between.
    #[test]
    fn segments_match_the_contract() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in [0usize, 1, 3, 4, 5, 31, 32, 33, 35, 36, 64, 67, 100, 257] {
            for first_e in [0u64, 1, 2, 3, 4, 29, (1 << 34) - 3, u64::MAX / 2 - 70] {
                let row: Vec<f32> = (0..len).map(|_| (next() % 200) as f32 - 100.0).collect();
                let kept: Vec<f32> = (0..len).map(|i| i as f32 + 0.5).collect();
                // The limit is a key of the row (the `kth` of a cut) or one above it (the
                // limit before the cut): the row's ties of that key land on it, and both
                // sides of `key < lim` occur.
                let lim = match len {
                    0 => 0,
                    _ => row[(next() % len as u64) as usize].key() + (next() % 2) as u32,
                };
                for alpha in [0.0, 1.0, 0.5, 0.1] {
                    let draws = Bernoulli::new(next(), next(), alpha);
                    let want: Vec<f32> = (0..len)
                        .map(|i| {
                            let e = first_e + i as u64;
                            if row[i].key() < lim && draws.drops(e) {
                                0.0
                            } else {
                                kept[i]
                            }
                        })
                        .collect();
                    let mut words = Vec::new();
                    let seg = Segment {
                        row: &row,
                        kept: &kept,
                        lim,
                        first_e,
                    };
                    let drops = Drops {
                        value: 0.0,
                        draws: &draws,
                    };
                    let mut a = vec![MaybeUninit::new(-1.0f32); len];
                    write_segment(&mut a, seg, drops, &mut words);
                    let mut b = vec![MaybeUninit::new(-1.0f32); len];
                    write_segment_body(&mut b, seg, drops, &mut words, |c| draws.blocks8_scalar(c));
                    // SAFETY: every element was initialised (to -1.0, then written).
                    let (a, b): (Vec<f32>, Vec<f32>) = unsafe {
                        (
                            a.iter().map(|v| v.assume_init()).collect(),
                            b.iter().map(|v| v.assume_init()).collect(),
                        )
                    };
                    let what = format!("len {len} first_e {first_e} lim {lim} alpha {alpha}");
                    assert_eq!(a, want, "{what}");
                    assert_eq!(b, want, "portable, {what}");
                }
            }
        }
    }
}
