//! Per-filter selection of the targeted set: the `k` elements with the smallest
//! `(key, index)`, where the key is the magnitude's bit pattern (DESIGN.md).
//!
//! The k-th key is found by an MSB-first radix select, the algorithm the CUDA kernels run:
//! a histogram of the highest digit in which the candidates differ, the bin that holds rank
//! `k - 1`, then the next digit among the elements of that bin only, and so on. Each pass
//! only looks at the candidates left by the previous one, so the work is linear in the row
//! length.
//!
//! Every row is selected with [`row_cut`] (and [`row_cut_par`] for a few long rows; unit
//! dropout runs them over the row of unit scores): the first digit fixed at 11 bits (bits
//! 30..20 of an f32 key, 14..4 of a 16-bit key) and counted while the row is read, the
//! elements of its bin compacted and resolved alone, and the result a [`Cut`]: the tie cut as
//! an index, so the output pass compares and needs no scan. Rows of up to 64 count ranks in
//! AVX2 lanes instead, rows up to 256 use `select_nth_unstable` on a copy of their keys.
//! After the first digit, `radix::pass` is the one radix pass that every path runs.
//!
//! The files: `radix` (the radix pass, the in-place select, and [`prefix_histogram`]: one
//! pass of a row given a prefix, for callers that split a row themselves), `cut` (the row's
//! targeted set as a cut), `row` (the one-thread row dispatch), `par` (a long row over the
//! rayon pool) and `simd` (the unsafe AVX2 rank counting, alone).
//!
//! The runtime dispatch to AVX2 (`row_cut` here, `write_masked` in `cpu/mask.rs`, the Philox
//! blocks in `philox.rs`) is written by hand rather than with the `multiversion` crate: there
//! is one target (x86 AVX2) and three call sites, each an `is_x86_feature_detected!` (std
//! caches the answer) and a `#[target_feature(enable = "avx2")]` copy of a safe body; the AVX2
//! copies are not plain recompilations (the rank counting and the Philox lanes are intrinsics
//! that only that copy may call), which `multiversion` would express with the same
//! per-target `cfg`s; and it would add a proc-macro dependency to a crate whose dependencies
//! are candle, half and rayon, for no change in the code that runs.

mod cut;
mod par;
mod radix;
mod row;
mod simd;

pub(crate) use cut::Cut;
pub(crate) use par::row_cut_par;
#[allow(unused_imports)] // the sharded ops' entry point (a row split over parts)
pub(crate) use radix::prefix_histogram;
#[cfg(test)]
pub(crate) use row::FIRST_DIGIT;
pub(crate) use row::{row_cut, Scratch};

/// Rows at least this long are selected with all the pool's threads.
pub(crate) const LONG_ROW: usize = 1 << 16;

/// Elements per task when one row is split over the rayon pool.
pub(crate) const PAR_CHUNK: usize = 1 << 14;

/// `k = floor(gamma * n)` in f64, as DESIGN.md fixes it.
pub(crate) fn targeted_count(gamma: f64, n: usize) -> usize {
    ((gamma * n as f64).floor() as usize).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_floor() {
        assert_eq!(targeted_count(0.5, 9), 4);
        assert_eq!(targeted_count(1.0, 9), 9);
        assert_eq!(targeted_count(0.0, 9), 0);
        assert_eq!(targeted_count(0.3, 10), 3);
    }
}
