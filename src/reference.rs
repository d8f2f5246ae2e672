//! The plain, obviously-correct oracle: every op by a full sort of each filter. Only the
//! tests and the benchmarks use it; it is as slow as the paper's own code.

use crate::cpu::{unit_score, Scored};
use crate::philox::Bernoulli;
use crate::select::{targeted_count, Element};

/// The targeted indices of a row: sort `(key, index)` and take the first `k`.
pub fn targeted_by_sort<T: Element>(row: &[T], k: usize) -> Vec<usize> {
    let mut order: Vec<(T::Key, usize)> = row.iter().map(|x| x.key()).zip(0..).collect();
    order.sort_unstable();
    order[..k].iter().map(|&(_, i)| i).collect()
}

/// Targeted weight dropout on a row-major buffer with rows of `n`: selection on `w`,
/// values from `vals`.
pub fn weight_dropout<T: Element>(
    w: &[T],
    vals: &[T],
    n: usize,
    gamma: f64,
    draws: &Bernoulli,
) -> Vec<T> {
    let mut out = vals.to_vec();
    if n == 0 {
        return out;
    }
    let k = targeted_count(gamma, n);
    for (r, (o, row)) in out.chunks_mut(n).zip(w.chunks(n)).enumerate() {
        drop_row(o, row, k, (r * n) as u64, draws);
    }
    out
}

/// Zeroes the targeted elements of one row (first flat index `first_e`) whose draw drops.
fn drop_row<T: Element>(out: &mut [T], row: &[T], k: usize, first_e: u64, draws: &Bernoulli) {
    for i in targeted_by_sort(row, k) {
        if draws.drops(first_e + i as u64) {
            out[i] = T::ZERO
        }
    }
}

/// Targeted unit dropout: sort the units by `(score, index)` and drop the first `k` whose
/// draw falls under alpha.
pub fn unit_dropout<T: Scored>(
    w: &[T],
    vals: &[T],
    n: usize,
    gamma: f64,
    draws: &Bernoulli,
) -> Vec<T> {
    let mut out = vals.to_vec();
    if n == 0 {
        return out;
    }
    let scores: Vec<T::Acc> = w.chunks(n).map(unit_score).collect();
    let k = targeted_count(gamma, scores.len());
    for i in targeted_by_sort(&scores, k) {
        if draws.drops(i as u64) {
            out[i * n..(i + 1) * n].fill(T::ZERO)
        }
    }
    out
}

/// [`weight_dropout`] with the rows spread over the rayon pool: the same bits, for
/// benchmarks that compare the selection algorithms with the same threads.
pub fn weight_dropout_par<T: Element>(
    w: &[T],
    vals: &[T],
    n: usize,
    gamma: f64,
    draws: &Bernoulli,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vals.to_vec();
    if n == 0 {
        return out;
    }
    let k = targeted_count(gamma, n);
    out.par_chunks_mut(n)
        .zip(w.par_chunks(n))
        .enumerate()
        .for_each(|(r, (o, row))| drop_row(o, row, k, (r * n) as u64, draws));
    out
}
