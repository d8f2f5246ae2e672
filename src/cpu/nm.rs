//! N:M targeted dropout on the host (DESIGN.md, "N:M targeted dropout").
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
//! 2. writes its output once, in memory order, through the masked-output writer.

use super::mask::{write_masked, BitsOut, Flags, Kept, Part};
use crate::config::NmPattern;
use crate::element::Element;
use crate::philox::Bernoulli;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::AtomicU32;

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

/// A tile's keys: element `j` of lane `l` at `[j][l]`.
type TileKeys<K> = [[K; LANES]; MAX_M];

/// Flags one [`Tile`] of `x` (see [`Tile`]); `keys` is scratch, reused across tiles (its 2 KiB
/// are cleared once a task, not once a tile).
#[inline(always)]
fn flag_tile<T: Element>(x: &[T], flags: &mut [u8], tile: Tile, keys: &mut TileKeys<T::Key>) {
    let Tile {
        base,
        ls,
        js,
        lanes,
        m,
        targeted,
    } = tile;
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
    // Lanes past a tile's `lanes` keep keys of an earlier tile (or 0): their ranks are
    // counted and never written.
    let mut keys = [[T::Key::default(); LANES]; MAX_M];
    if s == 1 {
        // Groups are contiguous: lanes are consecutive groups.
        let groups = x.len() / m;
        // Groups of four f32 with AVX2: a group is a 128-bit lane, ranked in registers.
        #[cfg(target_arch = "x86_64")]
        let first = if m == 4 {
            flag4_f32(x, flags, t) / 4
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let first = 0;
        for g0 in (first..groups).step_by(LANES) {
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
                &mut keys,
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
                    &mut keys,
                );
            }
        }
    }
}

/// Flags the groups of four (`s = 1`) of an f32 `x` with AVX2, 32 elements at a time
/// ([`x86::flag4_f32_avx2`]); returns how many elements it flagged (a multiple of 32; 0 for
/// other types or without AVX2).
#[cfg(target_arch = "x86_64")]
fn flag4_f32<T: Element>(x: &[T], flags: &mut [u8], targeted: usize) -> usize {
    use std::any::TypeId;
    if TypeId::of::<T>() != TypeId::of::<f32>() || !std::arch::is_x86_feature_detected!("avx2") {
        return 0;
    }
    // SAFETY: `T` is f32 (checked above): f32 and u32 have one size and alignment and every
    // bit pattern is valid as either. The processor has AVX2.
    unsafe {
        let x = std::slice::from_raw_parts(x.as_ptr().cast::<u32>(), x.len());
        x86::flag4_f32_avx2(x, flags, targeted as i32)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Whether element `j` of a group ranks each other element as before it on a tie: for the
    /// element `r` places on (rotation `r`), `(j + r) % 4 < j`, i.e. `j >= 4 - r`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn tie_before(r: i32) -> __m256i {
        let l = |j: i32| if j >= 4 - r { -1 } else { 0 };
        _mm256_setr_epi32(l(0), l(1), l(2), l(3), l(0), l(1), l(2), l(3))
    }

    /// The ranks within their groups of four of eight keys (two groups, one a 128-bit lane):
    /// how many of the group order before each (smaller keys, and equal keys at lower
    /// indices).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn ranks(k: __m256i, ties: &[__m256i; 3]) -> __m256i {
        // Rotations by 1, 2, 3 within each lane: element j meets element (j + r) % 4.
        let o = [
            _mm256_shuffle_epi32::<0b00_11_10_01>(k),
            _mm256_shuffle_epi32::<0b01_00_11_10>(k),
            _mm256_shuffle_epi32::<0b10_01_00_11>(k),
        ];
        let mut rank = _mm256_setzero_si256();
        for (o, t) in o.iter().zip(ties) {
            // Keys are below 2^31: the signed comparison orders them.
            let before = _mm256_or_si256(
                _mm256_cmpgt_epi32(k, *o),
                _mm256_and_si256(_mm256_cmpeq_epi32(k, *o), *t),
            );
            rank = _mm256_sub_epi32(rank, before);
        }
        rank
    }

    /// Flags (0 or 0xff) the elements of `x` (f32 bits, groups of four consecutive elements)
    /// whose rank in their group is below `targeted`, 32 elements at a time; returns how many
    /// it flagged (the rest, fewer than 32, are the caller's).
    ///
    /// # Safety
    /// The processor must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn flag4_f32_avx2(x: &[u32], flags: &mut [u8], targeted: i32) -> usize {
        let sign = _mm256_set1_epi32(0x7fff_ffff);
        let t = _mm256_set1_epi32(targeted);
        let ties = [tie_before(1), tie_before(2), tie_before(3)];
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let n = x.len() / 32 * 32;
        for (xs, fs) in x[..n].chunks_exact(32).zip(flags[..n].chunks_exact_mut(32)) {
            let mut f = [_mm256_setzero_si256(); 4];
            for (q, f) in f.iter_mut().enumerate() {
                // SAFETY: `xs` holds 32 u32: eight at `8q`.
                let k = unsafe { _mm256_loadu_si256(xs[8 * q..8 * q + 8].as_ptr().cast()) };
                *f = _mm256_cmpgt_epi32(t, ranks(_mm256_and_si256(k, sign), &ties));
            }
            // i32 -> i16 -> i8, each pack working within 128-bit lanes; the dword order
            // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7 put back in order.
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(f[0], f[1]),
                _mm256_packs_epi32(f[2], f[3]),
            );
            let p = _mm256_permutevar8x32_epi32(p, order);
            // SAFETY: `fs` holds 32 bytes.
            unsafe { _mm256_storeu_si256(fs.as_mut_ptr().cast(), p) };
        }
        n
    }
}

/// N:M targeted dropout of `w` (`[outer, c, s]` row-major, `c` a multiple of `m`) into every
/// element of `out`: `dropped` where an element is dropped, its kept value elsewhere; and the
/// bit mask of the dropped elements into `bits`, if given (zeroed, see [`BitsOut`]).
pub(super) fn nm_into<T: Element, O: Copy + Send + Sync, K: Kept<O>>(
    w: &[T],
    out: &mut [MaybeUninit<O>],
    (kept, dropped): (K, O),
    (p, s): (NmPattern, usize),
    draws: &Bernoulli,
    bits: Option<&[AtomicU32]>,
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
                    flag_slabs(x, flags, p, s);
                }
                let part = Part {
                    kept: kept.part(start, len),
                    dropped,
                    targets: Flags(flags),
                    first_e: start as u64,
                    bits: bits.map(|words| BitsOut { words, base: 0 }),
                };
                write_masked(o, part, draws, words);
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::mask::Fill;

    /// The mask of every pattern (alpha = 1: the targeted set itself) against a sort of each
    /// group by `(key, index)`, over group strides 1, 3 and 17 and keys drawn from a few
    /// values (ties everywhere); many times over for groups of four.
    #[test]
    fn groups_match_a_sort() {
        for round in 0..20u64 {
            groups_match_a_sort_once(round);
        }
    }

    fn groups_match_a_sort_once(round: u64) {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ round.wrapping_mul(0x2545_f491_4f6c_dd1d);
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
                    // Groups of four side by side: past 32 elements (the AVX2 path's block),
                    // with a tail.
                    let slabs = if m == 4 && s == 1 {
                        1 + (next() % 90) as usize
                    } else {
                        1 + (next() % 3) as usize
                    };
                    let len = slabs * m * s;
                    let w: Vec<f32> = (0..len)
                        .map(|_| values[(next() % values.len() as u64) as usize])
                        .collect();
                    let mut out = vec![MaybeUninit::new(9u8); len];
                    nm_into(
                        &w,
                        &mut out,
                        (Fill(0u8), 1u8),
                        (p, s),
                        &Bernoulli::always(),
                        None,
                    );
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
