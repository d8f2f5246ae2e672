//! N:M targeted dropout on the host (DESIGN.md, "N:M targeted dropout").
//!
//! A weight is seen as `[outer, c, s]`, `c` the group axis: a group is `m` elements
//! `(o, c0 + j, x)`, `j = 0 .. m`, `s` apart in memory. The `m * s` elements of one
//! `(o, c0)` are contiguous (a *slab*), and the tensor is its slabs in order, so the work
//! splits over the rayon pool by slabs. Each task:
//! 1. flags the targeted elements of its slabs into a per-task buffer
//!    ([`flag_groups_dispatch`]: 16 groups side by side, each element's rank within its group
//!    counted by `m - 1` comparisons over all the lanes at once; no sort, no allocation per
//!    group);
//! 2. writes its output once, in memory order, through the masked-output writer.

use super::mask::{write_masked, Flags, Kept, Part};
use crate::config::NmPattern;
use crate::element::Element;
use crate::philox::Bernoulli;
use crate::select::flag_groups_dispatch;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per rayon task (whole slabs, at least one).
const TASK_ELEMS: usize = 1 << 14;

/// N:M targeted dropout of `w` (`[outer, c, s]` row-major, `c` a multiple of `m`) into every
/// element of `out`: `dropped` where an element is dropped, its kept value elsewhere.
pub(super) fn nm_into<T: Element, O: Copy + Send + Sync, K: Kept<O>>(
    w: &[T],
    kept: K,
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
            || (Vec::new(), Vec::new()),
            |(flags, words): &mut (Vec<u8>, Vec<u32>), (c, (o, x))| {
                let (start, len) = (c * task, o.len());
                if flags.len() < len {
                    flags.resize(len, 0);
                }
                let flags = &mut flags[..len];
                if copy_only {
                    flags.fill(0);
                } else {
                    flag_groups_dispatch(x, flags, p.m, s, p.targeted());
                }
                let part = Part {
                    kept: kept.part(start, len),
                    dropped,
                    targets: Flags(flags),
                    first_e: start as u64,
                };
                write_masked(o, part, draws, words);
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_M;
    use crate::cpu::mask::Fill;

    /// The mask of every pattern (alpha = 1: the targeted set itself) against a sort of each
    /// group by `(key, index)`, over group strides 1, 3 and 17 and keys drawn from a few
    /// values (ties everywhere).
    #[test]
    fn groups_match_a_sort() {
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
                    let mut out = vec![MaybeUninit::new(9u8); len];
                    nm_into(&w, Fill(0u8), &mut out, 1u8, p, s, &Bernoulli::always());
                    // SAFETY: every element was initialised (to 9, then written).
                    let flags: Vec<u8> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
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
