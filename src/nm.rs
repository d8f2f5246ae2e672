//! N:M targeted dropout on the host (DESIGN.md, "N:M targeted dropout"): the group geometry,
//! the argument checks and the CPU op.
//!
//! A weight is seen as `[outer, c, s]`, `c` the group axis: a group is `m` elements
//! `(o, c0 + j, x)`, `j = 0 .. m`, `s` apart in memory. The `m * s` elements of one
//! `(o, c0)` are contiguous (a *slab*), and the tensor is its slabs in order, so the work
//! splits over the rayon pool by slabs. Each task:
//! 1. flags the targeted elements of its slabs into a per-task buffer: tiles of
//!    [`LANES`] groups side by side (consecutive groups when `s = 1`, consecutive `x` of one
//!    slab otherwise), their keys transposed into a stack array, each element's rank within
//!    its group counted by `m - 1` comparisons over all the lanes at once (no sort, no
//!    allocation per group);
//! 2. writes its output once, in memory order: Philox blocks only for the 32-element batches
//!    that hold a targeted element (eight blocks in AVX2 lanes where the processor has
//!    AVX2), then one vectorised select per element.

use crate::config::NmPattern;
use crate::element::Element;
use crate::philox::{Bernoulli, THRESHOLD_ALWAYS};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The largest group: ranks fit a `u8` and a tile's keys the stack.
const MAX_M: usize = crate::config::MAX_M;

/// Groups ranked side by side in one tile.
const LANES: usize = 16;

/// Elements per rayon task (whole slabs, at least one).
const TASK_ELEMS: usize = 1 << 14;

/// One tile: `lanes` groups whose element `j` of lane `l` is at `base + l * ls + j * js` of
/// `x`; sets `flags` at the same places to 1 where the element is among the `targeted`
/// smallest `(key, j)` of its group, 0 elsewhere.
#[derive(Clone, Copy)]
struct Tile {
    base: usize,
    ls: usize,
    js: usize,
    lanes: usize,
    m: usize,
    targeted: usize,
}

/// Flags one [`Tile`] of `x` (see [`Tile`]).
#[inline(always)]
fn flag_tile<T: Element>(x: &[T], flags: &mut [u8], tile: Tile) {
    let Tile {
        base,
        ls,
        js,
        lanes,
        m,
        targeted,
    } = tile;
    let mut keys = [[T::Key::default(); LANES]; MAX_M];
    for (j, kj) in keys[..m].iter_mut().enumerate() {
        for (l, k) in kj[..lanes].iter_mut().enumerate() {
            *k = x[base + l * ls + j * js].key();
        }
    }
    let targeted = targeted as u8;
    for j in 0..m {
        // rank = how many of the group order before element j: smaller keys, and equal keys
        // at lower indices (flat indices grow with j within a group).
        let mut rank = [0u8; LANES];
        let kj = keys[j];
        for ki in &keys[..j] {
            for l in 0..LANES {
                rank[l] += (ki[l] <= kj[l]) as u8;
            }
        }
        for ki in &keys[j + 1..m] {
            for l in 0..LANES {
                rank[l] += (ki[l] < kj[l]) as u8;
            }
        }
        for (l, r) in rank[..lanes].iter().enumerate() {
            flags[base + l * ls + j * js] = (*r < targeted) as u8;
        }
    }
}

/// The targeted flags of whole slabs `x` (`m * s` elements each) into `flags`.
fn flag_slabs<T: Element>(x: &[T], flags: &mut [u8], p: NmPattern, s: usize) {
    let (m, t) = (p.m, p.targeted());
    if s == 1 {
        // Groups are contiguous: lanes are consecutive groups.
        let groups = x.len() / m;
        for g0 in (0..groups).step_by(LANES) {
            let lanes = LANES.min(groups - g0);
            flag_tile(
                x,
                flags,
                Tile {
                    base: g0 * m,
                    ls: m,
                    js: 1,
                    lanes,
                    m,
                    targeted: t,
                },
            );
        }
    } else {
        // Lanes are consecutive positions x of one slab.
        for slab in (0..x.len()).step_by(m * s) {
            for x0 in (0..s).step_by(LANES) {
                let lanes = LANES.min(s - x0);
                flag_tile(
                    x,
                    flags,
                    Tile {
                        base: slab + x0,
                        ls: 1,
                        js: s,
                        lanes,
                        m,
                        targeted: t,
                    },
                );
            }
        }
    }
}

/// Writes a part of the output: element `i` becomes `dropped` when `flags[i]` is set and its
/// draw (flat index `first_e + i`) falls under alpha, `kept[i]` otherwise. Each output
/// element is written once.
#[inline]
fn write_flagged<O: Copy>(
    out: &mut [MaybeUninit<O>],
    part: Flagged<'_, O>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2, the only feature the function enables.
        return unsafe { write_flagged_avx2(out, part, draws, words) };
    }
    write_flagged_body(out, part, draws, words, |c| draws.blocks8_scalar(c))
}

/// What [`write_flagged`] writes from: the targeted flags, the kept values and the dropped
/// value of the part, and the flat index of its first element.
#[derive(Clone, Copy)]
struct Flagged<'a, O> {
    flags: &'a [u8],
    kept: &'a [O],
    dropped: O,
    first_e: u64,
}

/// [`write_flagged`] compiled for AVX2.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn write_flagged_avx2<O: Copy>(
    out: &mut [MaybeUninit<O>],
    part: Flagged<'_, O>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
) {
    write_flagged_body(out, part, draws, words, |c| {
        // SAFETY: this function only runs on processors with AVX2.
        unsafe { crate::philox::x86::blocks8_avx2(draws, c) }
    })
}

/// The body of [`write_flagged`]; `blocks8(c)` gives the words of Philox blocks `c .. c + 8`.
#[inline(always)]
fn write_flagged_body<O: Copy>(
    out: &mut [MaybeUninit<O>],
    part: Flagged<'_, O>,
    draws: &Bernoulli,
    words: &mut Vec<u32>,
    blocks8: impl Fn(u64) -> [u32; 32],
) {
    let Flagged {
        flags,
        kept,
        dropped,
        first_e,
    } = part;
    let len = out.len();
    let (flags, kept) = (&flags[..len], &kept[..len]);
    let t = draws.threshold;
    if t == 0 {
        for (o, &v) in out.iter_mut().zip(kept) {
            o.write(v);
        }
        return;
    }
    if t == THRESHOLD_ALWAYS {
        for ((o, &f), &v) in out.iter_mut().zip(flags).zip(kept) {
            o.write(if f != 0 { dropped } else { v });
        }
        return;
    }
    // The draws first (only for batches that hold a targeted element), then one select each.
    let words = crate::cpu::draw_targeted(words, first_e, len, draws, &blocks8, |r| {
        flags[r].iter().fold(0u8, |a, &x| a | x) != 0
    });
    for (((o, &f), &v), &w) in out.iter_mut().zip(flags).zip(kept).zip(&*words) {
        let d = (f != 0) & ((w >> 8) < t);
        o.write(if d { dropped } else { v });
    }
}

/// N:M targeted dropout of `w` (`[outer, c, s]` row-major, `c` a multiple of `m`) into every
/// element of `out`: `dropped` where an element is dropped, `kept[e]` elsewhere (or the
/// default: a mask).
pub(crate) fn nm_into<T: Element, O: Copy + Send + Sync + Default>(
    w: &[T],
    kept: Option<&[O]>,
    out: &mut [MaybeUninit<O>],
    dropped: O,
    p: NmPattern,
    s: usize,
    draws: &Bernoulli,
) {
    if w.is_empty() {
        return;
    }
    let slab = p.m * s;
    debug_assert_eq!(w.len() % slab, 0, "whole slabs of {slab}");
    let task = (TASK_ELEMS / slab).max(1) * slab;
    // Nothing targeted (n = m) or nothing dropped (alpha = 0): every output is its kept value.
    let copy_only = p.targeted() == 0 || draws.threshold == 0;
    out.par_chunks_mut(task)
        .zip(w.par_chunks(task))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(flags, words, defaults): &mut (Vec<u8>, Vec<u32>, Vec<O>), (c, (o, x))| {
                let start = c * task;
                let len = o.len();
                let kept = match kept {
                    Some(k) => &k[start..start + len],
                    None => {
                        if defaults.len() < len {
                            defaults.resize(len, O::default());
                        }
                        &defaults[..len]
                    }
                };
                if flags.len() < len {
                    flags.resize(len, 0);
                }
                let flags = &mut flags[..len];
                if copy_only {
                    flags.fill(0);
                } else {
                    flag_slabs(x, flags, p, s);
                }
                write_flagged(
                    o,
                    Flagged {
                        flags,
                        kept,
                        dropped,
                        first_e: start as u64,
                    },
                    draws,
                    words,
                );
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of one group against a sort by `(key, index)`, over every pattern and
    /// every group of keys drawn from a few values (ties everywhere).
    #[test]
    fn tile_ranks_match_a_sort() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let values = [0.0f32, -0.0, 1.0, -1.0, 2.0, f32::NAN, f32::INFINITY, 0.5];
        for m in 1..=MAX_M {
            for n in 0..=m {
                let p = NmPattern { n, m };
                for s in [1usize, 3, 17] {
                    let slabs = 1 + (next() % 3) as usize;
                    let len = slabs * m * s;
                    let w: Vec<f32> = (0..len)
                        .map(|_| values[(next() % values.len() as u64) as usize])
                        .collect();
                    let mut flags = vec![9u8; len];
                    flag_slabs(&w, &mut flags, p, s);
                    for sl in 0..slabs {
                        for i in 0..s {
                            let idx: Vec<usize> = (0..m).map(|j| sl * m * s + j * s + i).collect();
                            let mut order: Vec<(u32, usize)> =
                                idx.iter().map(|&e| (w[e].key(), e)).collect();
                            order.sort();
                            for (r, &(_, e)) in order.iter().enumerate() {
                                assert_eq!(flags[e], (r < m - n) as u8, "m {m} n {n} s {s} e {e}");
                            }
                        }
                    }
                }
            }
        }
    }
}
