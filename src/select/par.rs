//! A long row selected with all of the rayon pool's threads: the first radix pass and the
//! tie count split into chunks of [`PAR_CHUNK`] elements. The bits are those of the one-thread
//! row path.

use super::cut::Cut;
use super::radix::{histogram, in_bin, pass, select_in_place, spread, Pass, Threshold};
use super::PAR_CHUNK;
use crate::element::{Element, RadixKey};
use rayon::prelude::*;

/// The threshold of `k` (`1 <= k < row.len()`) targeted elements of a long row, its first
/// (full) pass split over the rayon pool.
fn threshold_par<T: Element>(row: &[T], k: usize) -> Threshold<T::Key> {
    let first = row[0].key();
    let diff = row
        .par_chunks(PAR_CHUNK)
        .map(|c| spread(c, |x| x.key(), first))
        .reduce(|| 0, |a, b| a | b);
    let histo = |shift, bits, hist: &mut [u32; 256]| {
        *hist = row
            .par_chunks(PAR_CHUNK)
            .map(|c| {
                let mut h = [0u32; 256];
                histogram(c, |x| x.key(), shift, bits, &mut h);
                h
            })
            .reduce(
                || [0u32; 256],
                |mut a, b| {
                    a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y);
                    a
                },
            )
    };
    match pass(row.len(), diff, first, k - 1, histo) {
        Pass::Done(t) => t,
        Pass::Narrow {
            shift,
            bits,
            bin,
            r,
        } => {
            let mut cand: Vec<T::Key> = row
                .par_chunks(PAR_CHUNK)
                .flat_map_iter(|c| {
                    c.iter()
                        .map(|x| x.key())
                        .filter(move |&x| in_bin(x, shift, bits, bin))
                })
                .collect();
            select_in_place(&mut cand, r)
        }
    }
}

impl<K: RadixKey> Cut<K> {
    /// [`Cut::of_threshold`] for a long row, the ties counted over the rayon pool.
    fn of_threshold_par<T: Element<Key = K>>(row: &[T], th: Threshold<K>) -> Self {
        if th.takes_all_ties() {
            return Cut {
                kth: th.kth,
                cut: row.len(),
            };
        }
        let counts: Vec<usize> = row
            .par_chunks(PAR_CHUNK)
            .map(|c| c.iter().filter(|x| x.key() == th.kth).count())
            .collect();
        let mut before = 0;
        for (c, &n) in counts.iter().enumerate() {
            if before + n >= th.take {
                let start = c * PAR_CHUNK;
                let end = (start + PAR_CHUNK).min(row.len());
                let part = Self::of_threshold(
                    &row[start..end],
                    Threshold {
                        take: th.take - before,
                        ..th
                    },
                );
                return Cut {
                    kth: th.kth,
                    cut: start + part.cut,
                };
            }
            before += n;
        }
        unreachable!("fewer than {} ties of {:?}", th.take, th.kth)
    }
}

/// The cut of a long row, its selection split over the rayon pool.
pub(crate) fn row_cut_par<T: Element>(row: &[T], k: usize) -> Cut<T::Key> {
    if k == 0 {
        return Cut::nothing();
    }
    if k >= row.len() {
        return Cut::everything(row.len());
    }
    Cut::of_threshold_par(row, threshold_par(row, k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::row::{row_cut_body, Scratch};
    use crate::select::LONG_ROW;

    #[test]
    fn serial_and_parallel_first_pass_agree() {
        // A long row with heavy ties: the serial cut (11-bit first digit) and the pool's (radix
        // passes over chunks) are the same, and each targets exactly k.
        let row: Vec<f32> = (0..LONG_ROW + 77)
            .map(|i| ((i * 2654435761usize) % 1000) as f32 * 0.25)
            .collect();
        for k in [1, 17, row.len() / 2, row.len() - 1] {
            let a = row_cut_body(&row, k, &mut Scratch::default());
            let b = row_cut_par(&row, k);
            assert_eq!(a, b, "k = {k}");
            let targeted = row
                .iter()
                .enumerate()
                .filter(|&(i, x)| a.targeted(x.key(), i));
            assert_eq!(targeted.count(), k);
        }
    }
}
