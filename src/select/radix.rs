//! The radix primitives: one MSB-first pass over a set of candidates (the digit window
//! below their highest differing bit, its histogram, the bin that holds the wanted rank) and
//! the in-place select that repeats it until one key is left. Every selection path ends here.

use crate::element::RadixKey;

/// Candidates at or below this count are finished by counting instead of histograms.
const FINISH_BY_COUNTING: usize = 16;

/// The boundary of a row's targeted set: every element with `key < kth` is targeted, and of
/// the `ties` elements with `key == kth` the `take` with the lowest indices are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Threshold<K> {
    pub kth: K,
    pub take: usize,
    pub ties: usize,
}

impl<K: RadixKey> Threshold<K> {
    /// Whether every tie is targeted, so that `key <= kth` decides alone.
    pub fn takes_all_ties(&self) -> bool {
        self.take == self.ties
    }
}

/// The outcome of one radix pass.
pub(super) enum Pass<K> {
    /// The candidates all share one key: the threshold is found.
    Done(Threshold<K>),
    /// Rank `r` lies among the candidates whose digit `(key >> shift) & (2^bits - 1)` is `bin`.
    Narrow {
        shift: u32,
        bits: u32,
        bin: usize,
        r: usize,
    },
}

/// Whether `key`'s digit in the window `(shift, bits)` is `bin`.
#[inline(always)]
pub(super) fn in_bin<K: RadixKey>(key: K, shift: u32, bits: u32, bin: usize) -> bool {
    ((key.to_u64() >> shift) & ((1u64 << bits) - 1)) as usize == bin
}

/// One radix pass over `len` candidates whose keys differ in the bits of `diff` (`some` is
/// one of them), looking for rank `r`: the digit window just below the highest differing bit
/// (the bits above it are common to all candidates and need no pass), its histogram from
/// `histogram(shift, bits, &mut hist)`, and the bin that holds rank `r`.
pub(super) fn pass<K: RadixKey>(
    len: usize,
    diff: u64,
    some: K,
    r: usize,
    histogram: impl FnOnce(u32, u32, &mut [u32; 256]),
) -> Pass<K> {
    if diff == 0 {
        return Pass::Done(Threshold {
            kth: some,
            take: r + 1,
            ties: len,
        });
    }
    let high_bit = 63 - diff.leading_zeros();
    // Fewer bins for few candidates (about four per bin): the per-pass cost stays
    // proportional to the work.
    let bits = (usize::BITS - len.leading_zeros())
        .saturating_sub(2)
        .clamp(4, 8);
    let shift = (high_bit + 1).saturating_sub(bits);
    let mut hist = [0u32; 256];
    histogram(shift, bits, &mut hist);
    let mut below = 0usize;
    for (bin, &c) in hist[..1 << bits].iter().enumerate() {
        let c = c as usize;
        if r < below + c {
            return Pass::Narrow {
                shift,
                bits,
                bin,
                r: r - below,
            };
        }
        below += c;
    }
    unreachable!("rank {r} is outside a histogram of {below} keys")
}

/// The bits in which `keys` differ from `first`: `OR` of `key ^ first`.
#[inline]
pub(super) fn spread<T, K: RadixKey>(items: &[T], key: impl Fn(&T) -> K, first: K) -> u64 {
    let x0 = first.to_u64();
    items.iter().fold(0u64, |a, x| a | (key(x).to_u64() ^ x0))
}

/// The histogram of the keys `key(x)` of `items` in the window `(shift, bits)`.
#[inline]
pub(super) fn histogram<I, K: RadixKey>(
    items: &[I],
    key: impl Fn(&I) -> K,
    shift: u32,
    bits: u32,
    hist: &mut [u32; 256],
) {
    let mask = (1u64 << bits) - 1;
    let bins = 1usize << bits;
    hist[..bins].fill(0);
    if items.len() < 8192 {
        for x in items {
            hist[((key(x).to_u64() >> shift) & mask) as usize] += 1;
        }
        return;
    }
    // Four sub-histograms break the dependency between neighbours of the same bin.
    let mut h = [[0u32; 256]; 4];
    let mut chunks = items.chunks_exact(4);
    for c in &mut chunks {
        for (q, x) in c.iter().enumerate() {
            h[q][((key(x).to_u64() >> shift) & mask) as usize] += 1;
        }
    }
    for x in chunks.remainder() {
        h[0][((key(x).to_u64() >> shift) & mask) as usize] += 1;
    }
    for b in 0..bins {
        hist[b] = h[0][b] + h[1][b] + h[2][b] + h[3][b];
    }
}

/// One radix pass of a row given a prefix, for callers that split a row's selection
/// themselves (the sharded ops, a row split over devices or tasks): the histogram of the digit
/// `(key >> shift) & (2^bits - 1)` of the elements of `row` whose key agrees with `prefix` on
/// every bit above the digit (bits `shift + bits ..`; `prefix`'s bits below that are
/// ignored). `hist[..2^bits]` is cleared, then counted; `1 <= bits <= 16`, `shift + bits <=
/// 64`. Returns how many elements matched the prefix (the histogram's total).
///
/// The MSB-first select is this pass repeated: start with `prefix = 0` and the top digit
/// window, find the bin holding the wanted rank (summing the histograms of every part), put
/// that bin into the prefix, move the window down. With `shift + bits = Key::BITS` every
/// element matches (the first pass).
// The sharded ops' entry point; until they call it, only its test does.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn prefix_histogram<T: crate::element::Element>(
    row: &[T],
    prefix: u64,
    shift: u32,
    bits: u32,
    hist: &mut [u32],
) -> usize {
    assert!(
        (1..=16).contains(&bits) && shift + bits <= 64 && hist.len() >= 1 << bits,
        "prefix_histogram: a digit of {bits} bits at {shift} into {} bins",
        hist.len()
    );
    let mask = (1u64 << bits) - 1;
    let top = shift + bits;
    let above = |k: u64| if top >= 64 { 0 } else { k >> top };
    let want = above(prefix);
    let hist = &mut hist[..1 << bits];
    hist.fill(0);
    let mut matched = 0;
    for x in row {
        let k = x.key().to_u64();
        if above(k) == want {
            hist[((k >> shift) & mask) as usize] += 1;
            matched += 1;
        }
    }
    matched
}

/// The key of rank `r` among a few candidates, by counting.
fn finish_by_counting<K: RadixKey>(cand: &[K], r: usize) -> Threshold<K> {
    for &c in cand {
        let less = cand.iter().filter(|&&x| x < c).count();
        let eq = cand.iter().filter(|&&x| x == c).count();
        if less <= r && r < less + eq {
            return Threshold {
                kth: c,
                take: r - less + 1,
                ties: eq,
            };
        }
    }
    unreachable!("rank {r} is outside {} candidates", cand.len())
}

/// The key of rank `r` (0-based) among `cand` by MSB-first radix select; `cand` is used as
/// scratch (compacted in place pass after pass). Linear in `cand.len()`.
pub(crate) fn select_in_place<K: RadixKey>(cand: &mut [K], mut r: usize) -> Threshold<K> {
    let mut len = cand.len();
    loop {
        let c = &mut cand[..len];
        if len <= FINISH_BY_COUNTING {
            return finish_by_counting(c, r);
        }
        let diff = spread(c, |&x| x, c[0]);
        match pass(len, diff, c[0], r, |s, b, h| histogram(c, |&x| x, s, b, h)) {
            Pass::Done(t) => return t,
            Pass::Narrow {
                shift,
                bits,
                bin,
                r: rr,
            } => {
                r = rr;
                // Branch-free compaction: every key is written, the cursor advances on a match.
                let mut w = 0;
                for i in 0..len {
                    let x = c[i];
                    c[w] = x;
                    w += in_bin(x, shift, bits, bin) as usize;
                }
                len = w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn radix_select<K: RadixKey>(keys: &[K], k: usize) -> Threshold<K> {
        select_in_place(&mut keys.to_vec(), k - 1)
    }

    #[test]
    fn select_small() {
        let keys = [5u32, 1, 3, 3, 9, 0, 3];
        // sorted: 0 1 3 3 3 5 9
        let t = radix_select(&keys, 4);
        assert_eq!(
            t,
            Threshold {
                kth: 3,
                take: 2,
                ties: 3
            }
        );
        let t = radix_select(&keys, 7);
        assert_eq!(
            t,
            Threshold {
                kth: 9,
                take: 1,
                ties: 1
            }
        );
        assert_eq!(radix_select(&keys, 1).kth, 0);
    }

    /// The prefix histogram against a direct count, and the select it builds (two 8-bit
    /// passes below a prefix, summed over two halves of a row) against a sort.
    #[test]
    fn prefix_histogram_counts_the_prefix_only() {
        let row: Vec<f32> = (0..3000u32)
            .map(|i| f32::from_bits(0x3f80_0000 | (i.wrapping_mul(2654435761) & 0x3ffff)))
            .collect();
        let mut sorted: Vec<u32> = row.iter().map(|x| x.to_bits() & 0x7fff_ffff).collect();
        sorted.sort();
        let r = 1234;
        // Every key shares bits 31..18; find the digit of bits 17..10, then 9..2, then 1..0.
        let (mut prefix, mut r_left) = (0x3f80_0000u64, r);
        for (shift, bits) in [(10u32, 8u32), (2, 8), (0, 2)] {
            let mut total = [0u32; 256];
            for half in row.chunks(1500) {
                let mut h = [0u32; 256];
                let m = prefix_histogram(half, prefix, shift, bits, &mut h);
                let direct = half
                    .iter()
                    .filter(|x| (x.to_bits() as u64 >> (shift + bits)) == prefix >> (shift + bits))
                    .count();
                assert_eq!(m, direct, "shift {shift}");
                total.iter_mut().zip(h).for_each(|(t, c)| *t += c);
            }
            let mut below = 0;
            let bin = (0..1usize << bits)
                .find(|&b| {
                    let c = total[b] as usize;
                    let hit = r_left < below + c;
                    if !hit {
                        below += c;
                    }
                    hit
                })
                .expect("a bin");
            r_left -= below;
            prefix = (prefix & !(((1u64 << bits) - 1) << shift)) | ((bin as u64) << shift);
        }
        assert_eq!(prefix as u32, sorted[r]);
    }

    #[test]
    fn select_u64_and_u16() {
        let keys: Vec<u64> = (0..1000u64).map(|i| ((i * 7919) % 1000) << 40).collect();
        assert_eq!(radix_select(&keys, 500).kth, 499 << 40);
        let keys: Vec<u16> = (0..300u16).rev().collect();
        assert_eq!(radix_select(&keys, 1).kth, 0);
        assert_eq!(radix_select(&keys, 300).kth, 299);
        // Many ties and a long row: past the counting finish.
        let keys: Vec<u32> = (0..5000u32).map(|i| (i % 7) << 20 | (i % 3)).collect();
        let t = radix_select(&keys, 2500);
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(t.kth, sorted[2499]);
        let less = sorted.iter().filter(|&&x| x < t.kth).count();
        assert_eq!(t.take, 2500 - less);
        assert_eq!(t.ties, sorted.iter().filter(|&&x| x == t.kth).count());
    }
}
