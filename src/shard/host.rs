//! The host side of the sharded ops: the radix select of column shards with its histograms
//! all-reduced, the unit scores' lanes passed from shard to shard, and the N:M groups. Each
//! returns the shard's mask (1 = dropped), which `mod.rs` applies.

use super::check::Agreed;
use super::Collective;
use crate::element::{Element, RadixKey};
use crate::philox::Bernoulli;
use candle_core::{Device, Result, Tensor};
use half::{bf16, f16};

/// Bits per digit of the distributed radix select: 16 bins per row and pass. Fewer bins
/// mean more passes (latency), more bins more bytes; 4 bits send 8 x 16 x 4 = 512 bytes per
/// row for an f32 weight (DESIGN.md, "Sharded weights").
pub(crate) const DIGIT: u32 = 4;
const BINS: usize = 1 << DIGIT;

/// The digit windows of a key of `T`, from the top: `(shift, bits)`. The sign bit is clear,
/// so the key has `BITS - 1` bits; the first window takes the remainder.
pub(crate) fn windows<T: Element>() -> Vec<(u32, u32)> {
    let bits = <T::Key as RadixKey>::BITS - 1;
    let mut out = Vec::new();
    let mut hi = bits;
    let first = match bits % DIGIT {
        0 => DIGIT,
        r => r,
    };
    let mut w = first;
    while hi > 0 {
        out.push((hi - w, w));
        hi -= w;
        w = DIGIT;
    }
    out
}

/// The targeted set of every row of a column shard (`rows x cols`, columns
/// `start .. start + cols` of rows of `full1`), `k` per full row, as flags: the `k` smallest
/// `(key, flat index)` of each full row that fall in this shard.
///
/// The k-th key is found digit by digit: each rank counts its candidates' digits per row,
/// the counts are all-reduced (u32, exact), and every rank picks the same bin. Then the
/// ties: each rank's count of keys equal to the k-th is gathered (one all-reduce of
/// `world x rows` u32), and a tie is targeted when the ties before it in the full row (on the
/// shards that start before this one, then in this shard) are fewer than the ties to take.
#[allow(clippy::too_many_arguments)]
pub(crate) fn targeted_cols<T: Element>(
    w: &[T],
    rows: usize,
    cols: usize,
    k: usize,
    full1: usize,
    agreed: &Agreed,
    comm: &dyn Collective,
    device: &Device,
) -> Result<Vec<bool>> {
    if k == 0 {
        return Ok(vec![false; rows * cols]);
    }
    if k >= full1 {
        return Ok(vec![true; rows * cols]);
    }
    // Per row: the key prefix found so far, the rank sought among the candidates, the count
    // of keys below the candidates.
    let mut prefix = vec![0u64; rows];
    let mut want = vec![(k - 1) as u64; rows];
    let mut less = vec![0u64; rows];
    // The candidates of each row: local column indices (all of them at first).
    let mut cand: Vec<Vec<u32>> = vec![(0..cols as u32).collect(); rows];
    let key = |r: usize, c: u32| w[r * cols + c as usize].key().to_u64();
    for (shift, bits) in windows::<T>() {
        let mask = (1u64 << bits) - 1;
        let mut hist = vec![0u32; rows * BINS];
        for r in 0..rows {
            let h = &mut hist[r * BINS..(r + 1) * BINS];
            for &c in &cand[r] {
                h[((key(r, c) >> shift) & mask) as usize] += 1;
            }
        }
        let t = Tensor::from_vec(hist, (rows, BINS), &Device::Cpu)?.to_device(device)?;
        let hist: Vec<u32> = comm
            .all_reduce_sum(&t)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        for r in 0..rows {
            let h = &hist[r * BINS..(r + 1) * BINS];
            let mut below = 0u64;
            let mut bin = BINS;
            for (b, &n) in h.iter().enumerate() {
                if want[r] < below + n as u64 {
                    bin = b;
                    break;
                }
                below += n as u64;
            }
            if bin == BINS {
                candle_core::bail!(
                    "sharded select: row {r}: rank {} of the full row is outside the all-reduced histogram of {below} keys (do the ranks hold the same weight's shards?)",
                    want[r]
                )
            }
            want[r] -= below;
            less[r] += below;
            prefix[r] |= (bin as u64) << shift;
            cand[r].retain(|&c| (key(r, c) >> shift) & mask == bin as u64);
        }
    }
    // `prefix` is the k-th key; `cand` holds this shard's ties with it; `k - less` are taken.
    let world = comm.world_size();
    let mut ties = vec![0u32; world * rows];
    for r in 0..rows {
        ties[comm.rank() * rows + r] = cand[r].len() as u32;
    }
    let t = Tensor::from_vec(ties, (world, rows), &Device::Cpu)?.to_device(device)?;
    let ties: Vec<u32> = comm
        .all_reduce_sum(&t)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let me = comm.rank();
    let earlier: Vec<usize> = agreed
        .in_order()
        .into_iter()
        .take_while(|&q| q != me)
        .collect();
    let mut out = vec![false; rows * cols];
    for r in 0..rows {
        let take = k as u64 - less[r];
        let mut before: u64 = earlier.iter().map(|&q| ties[q * rows + r] as u64).sum();
        let kth = prefix[r];
        let o = &mut out[r * cols..(r + 1) * cols];
        for (c, x) in w[r * cols..(r + 1) * cols].iter().enumerate() {
            let key = x.key().to_u64();
            o[c] = key < kth
                || (key == kth && {
                    before += 1;
                    before <= take
                });
        }
    }
    Ok(out)
}

/// The accumulator of a dtype's unit scores (DESIGN.md, "Targeted unit dropout", step 1).
pub(crate) trait Scored: Element {
    type Acc: Copy
        + Default
        + std::ops::Add<Output = Self::Acc>
        + std::ops::AddAssign
        + std::ops::Mul<Output = Self::Acc>
        + candle_core::WithDType;
    fn acc(self) -> Self::Acc;
}

impl Scored for f32 {
    type Acc = f32;
    fn acc(self) -> f32 {
        self
    }
}
impl Scored for f64 {
    type Acc = f64;
    fn acc(self) -> f64 {
        self
    }
}
impl Scored for f16 {
    type Acc = f32;
    fn acc(self) -> f32 {
        self.to_f32()
    }
}
impl Scored for bf16 {
    type Acc = f32;
    fn acc(self) -> f32 {
        self.to_f32()
    }
}

/// The lanes of the unit scores' reduction order: lane `j` sums `x[j + 1024 m]^2`.
pub(crate) const LANES: usize = 1024;

/// The unit scores of the full rows of a column shard, bit for bit the unsharded scores.
///
/// The order (1024 lanes, lane `j` summing the squares of columns `j, j + 1024, ...` in turn,
/// then folded pairwise) has strided lanes, so no contiguous column range is a subtree of
/// it: the lanes themselves travel. When every lane's columns lie on one shard (rows of at
/// most 1024 elements) one all-reduce gathers them (each rank writes its columns' lanes,
/// zeros elsewhere: x + 0 = x, so the sum is exact in any order). Longer rows chain each
/// lane across the shards: in the shards' column order, each rank in turn continues the
/// lanes from the state the previous all-reduce gave and contributes the result alone;
/// `world` all-reduces of `rows x 1024` accumulators. Then every rank folds the same lanes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn unit_scores_cols<T: Scored>(
    w: &[T],
    rows: usize,
    cols: usize,
    start: usize,
    full1: usize,
    agreed: &Agreed,
    comm: &dyn Collective,
    device: &Device,
) -> Result<Vec<T::Acc>> {
    let lanes = LANES.min(full1.max(1));
    let zero = T::Acc::default();
    let continue_lanes = |state: &mut [T::Acc]| {
        for r in 0..rows {
            let l = &mut state[r * lanes..(r + 1) * lanes];
            for (c, x) in w[r * cols..(r + 1) * cols].iter().enumerate() {
                let v = x.acc();
                let j = (start + c) % LANES;
                l[j] += v * v;
            }
        }
    };
    let all_reduce = |state: Vec<T::Acc>| -> Result<Vec<T::Acc>> {
        let t = Tensor::from_vec(state, (rows, lanes), &Device::Cpu)?.to_device(device)?;
        comm.all_reduce_sum(&t)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()
    };
    let state = if full1 <= LANES {
        let mut mine = vec![zero; rows * lanes];
        continue_lanes(&mut mine);
        all_reduce(mine)?
    } else {
        let mut state = vec![zero; rows * lanes];
        for q in agreed.in_order() {
            let mine = if q == comm.rank() {
                let mut s = state.clone();
                continue_lanes(&mut s);
                s
            } else {
                vec![zero; rows * lanes]
            };
            state = all_reduce(mine)?;
        }
        state
    };
    Ok(state
        .chunks(lanes)
        .map(|l| {
            let mut f = [zero; LANES];
            f[..lanes].copy_from_slice(l);
            let mut s = LANES / 2;
            while s >= 1 {
                for j in 0..s {
                    f[j] += f[j + s];
                }
                s /= 2;
            }
            f[0]
        })
        .collect())
}

/// The N:M targeted set of a shard `rows x cols` whose element `(r, c)` is element
/// `(row0 + r, col0 + c)` of the full weight (`col0` and `cols` multiples of `m`), with the
/// draws of its flat index in the full weight (rows of `full1`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn nm_dropped<T: Element>(
    w: &[T],
    rows: usize,
    cols: usize,
    row0: usize,
    col0: usize,
    full1: usize,
    n: usize,
    m: usize,
    draws: &Bernoulli,
) -> Vec<bool> {
    let mut out = vec![false; rows * cols];
    let drop = m - n;
    if drop == 0 {
        return out;
    }
    let mut order: Vec<(u64, usize)> = Vec::with_capacity(m);
    for r in 0..rows {
        let base = ((row0 + r) * full1 + col0) as u64;
        for g in (0..cols).step_by(m) {
            order.clear();
            order.extend((g..g + m).map(|c| (w[r * cols + c].key().to_u64(), c)));
            order.sort_unstable();
            for &(_, c) in &order[..drop] {
                out[r * cols + c] = draws.drops(base + c as u64);
            }
        }
    }
    out
}

/// The dropped flags of a column shard's targeted flags: the draw of element `(r, c)` is its
/// flat index `r * full1 + start + c` in the full weight.
pub(crate) fn draw_cols(
    targeted: &mut [bool],
    cols: usize,
    start: usize,
    full1: usize,
    draws: &Bernoulli,
) {
    if cols == 0 {
        return;
    }
    for (r, row) in targeted.chunks_mut(cols).enumerate() {
        let base = (r * full1 + start) as u64;
        for (c, t) in row.iter_mut().enumerate() {
            if *t {
                *t = draws.drops(base + c as u64);
            }
        }
    }
}

/// `k = floor(gamma * n)` in f64 (DESIGN.md, "Targeted weight dropout", step 1).
pub(crate) fn targeted_count(gamma: f64, n: usize) -> usize {
    ((gamma * n as f64).floor() as usize).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::check::Agreed;
    use crate::shard::LocalGroup;

    /// The lanes passed from shard to shard give the unsharded scores bit for bit (the unit
    /// dropout tests only see the scores through the selection, which rounding rarely moves).
    #[test]
    fn column_shard_scores_are_the_unsharded_scores() {
        for (rows, full1) in [(3, 700), (4, 1024), (3, 1025), (2, 5000)] {
            let mut x = 0x1234_5678_9abc_def1u64;
            let w: Vec<f32> = (0..rows * full1)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Values in [1, 2) with random mantissas: every lane's rounding shows in
                    // the score (wide magnitudes would let the largest squares hide it).
                    f32::from_bits(0x3f80_0000 | (x as u32 & 0x7f_ffff))
                })
                .collect();
            // Row 0: only lane 0 holds values, 1 then 2^-12s: the chain rounds each 2^-24
            // square away, partial sums added afterwards would not (the fold adds zeros).
            let mut w = w;
            for (c, x) in w.iter_mut().enumerate().take(full1) {
                *x = match c {
                    0 => 1.0,
                    c if c % LANES == 0 => 1.0 / 4096.0,
                    _ => 0.0,
                };
            }
            let full = Tensor::from_vec(w.clone(), (rows, full1), &Device::Cpu).unwrap();
            let want: Vec<f32> = crate::functions::unit_scores(&full)
                .unwrap()
                .to_vec1()
                .unwrap();
            for world in [2, 3, 4] {
                // Uneven starts, none a multiple of 1024.
                let mut starts: Vec<usize> =
                    (0..world).map(|r| r * full1 / world + r * 7).collect();
                starts[0] = 0;
                starts.push(full1);
                let agreed = Agreed {
                    shards: (0..world)
                        .map(|r| (starts[r], starts[r + 1] - starts[r]))
                        .collect(),
                };
                let got: Vec<Vec<f32>> = std::thread::scope(|s| {
                    let hs: Vec<_> = LocalGroup::new(world)
                        .into_iter()
                        .map(|g| {
                            let (w, starts, agreed) = (&w, &starts, &agreed);
                            s.spawn(move || {
                                let r = g.rank();
                                let (a, b) = (starts[r], starts[r + 1]);
                                let part: Vec<f32> = (0..rows)
                                    .flat_map(|i| w[i * full1 + a..i * full1 + b].to_vec())
                                    .collect();
                                unit_scores_cols(
                                    &part,
                                    rows,
                                    b - a,
                                    a,
                                    full1,
                                    agreed,
                                    &g,
                                    &Device::Cpu,
                                )
                                .unwrap()
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                for (r, g) in got.iter().enumerate() {
                    let (gb, wb): (Vec<u32>, Vec<u32>) = (
                        g.iter().map(|x| x.to_bits()).collect(),
                        want.iter().map(|x| x.to_bits()).collect(),
                    );
                    assert_eq!(gb, wb, "rows {rows} x {full1}, world {world}, rank {r}");
                }
            }
        }
    }
}
