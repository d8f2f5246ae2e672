//! The targeted set of a row as a cut: the k-th key and, among its ties, the index after the
//! last targeted one, so that the output pass decides every element by one comparison.

use super::radix::Threshold;
use crate::element::{Element, RadixKey};

/// A row's targeted set as a cut: element `i` is targeted iff `key < kth`, or `key == kth` and
/// `i < cut` (the tie cut as an index, so that writing the output needs no scan of the ties).
/// Equivalently: `key < kth + 1` before index `cut`, `key < kth` from `cut` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut<K> {
    pub kth: K,
    pub cut: usize,
}

impl<K: RadixKey> Cut<K> {
    /// `k = 0`: nothing targeted.
    pub fn nothing() -> Self {
        Cut {
            kth: K::default(),
            cut: 0,
        }
    }

    /// `k = n`: everything targeted (every key is at most the largest key, the sign bit
    /// clear).
    pub fn everything(n: usize) -> Self {
        Cut {
            kth: K::from_u64((1u64 << (K::BITS - 1)) - 1),
            cut: n,
        }
    }

    /// Whether element `i` with key `key` is targeted.
    #[cfg(test)]
    pub fn targeted(&self, key: K, i: usize) -> bool {
        key < self.kth || (key == self.kth && i < self.cut)
    }

    /// The two strict limits: `key < before` targets before index `cut`, `key < after` from
    /// `cut` on. Keys keep the sign bit clear, so `kth + 1` does not overflow.
    #[inline]
    pub fn limits(&self) -> (K, K) {
        (K::from_u64(self.kth.to_u64() + 1), self.kth)
    }

    /// The cut of a threshold on `row`: after the `take`-th tie, or past the row when every
    /// tie is taken.
    pub(super) fn of_threshold<T: Element<Key = K>>(row: &[T], th: Threshold<K>) -> Self {
        if th.takes_all_ties() {
            return Cut {
                kth: th.kth,
                cut: row.len(),
            };
        }
        let mut seen = 0;
        for (i, x) in row.iter().enumerate() {
            seen += (x.key() == th.kth) as usize;
            if seen == th.take {
                return Cut {
                    kth: th.kth,
                    cut: i + 1,
                };
            }
        }
        unreachable!("fewer than {} ties of {:?}", th.take, th.kth)
    }
}
