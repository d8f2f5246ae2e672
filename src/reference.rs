//! The oracle: every op computed the slow, obvious way, straight from DESIGN.md, sharing no
//! code with the implementation it checks (its own key, unit score, Philox and draw layout).
//! Each filter is sorted in full by `(key, index)`, as the paper's own code sorts. Only the
//! tests and the benchmarks use it; it is hidden from the documentation.

use half::{bf16, f16};

/// A float type as raw bits, for the oracle.
pub trait Float: Copy + Send + Sync {
    /// Width in bits.
    const WIDTH: u32;
    /// Whether unit scores accumulate in f64 (f64 input) rather than f32.
    const F64_SCORES: bool;
    /// The IEEE bits.
    fn bits(self) -> u64;
    /// From IEEE bits.
    fn from_bits(b: u64) -> Self;
    /// The value as f64 (exact for every type here).
    fn to_f64(self) -> f64;
}

macro_rules! float {
    ($t:ty, $w:expr, $f64:expr, $bits:expr, $from:expr, $to:expr) => {
        impl Float for $t {
            const WIDTH: u32 = $w;
            const F64_SCORES: bool = $f64;
            fn bits(self) -> u64 {
                $bits(self)
            }
            fn from_bits(b: u64) -> Self {
                $from(b)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
        }
    };
}
float!(
    f32,
    32,
    false,
    |x: f32| x.to_bits() as u64,
    |b| f32::from_bits(b as u32),
    |x| x as f64
);
float!(f64, 64, true, |x: f64| x.to_bits(), f64::from_bits, |x| x);
float!(
    f16,
    16,
    false,
    |x: f16| x.to_bits() as u64,
    |b| f16::from_bits(b as u16),
    f16::to_f64
);
float!(
    bf16,
    16,
    false,
    |x: bf16| x.to_bits() as u64,
    |b| bf16::from_bits(b as u16),
    bf16::to_f64
);

/// The magnitude key: the bits with the sign bit cleared.
pub fn key<T: Float>(x: T) -> u64 {
    x.bits() & !(1u64 << (T::WIDTH - 1))
}

/// `k = floor(gamma * n)`, in f64.
pub fn count(gamma: f64, n: usize) -> usize {
    (gamma * n as f64).floor() as usize
}

/// Philox4x32-10, written out from Salmon et al. (SC'11).
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for round in 0..10 {
        if round > 0 {
            k = [
                k[0].wrapping_add(0x9E37_79B9),
                k[1].wrapping_add(0xBB67_AE85),
            ];
        }
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// The draws of one call: `(seed, offset)` and the drop rate.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    /// The Philox key.
    pub seed: u64,
    /// The upper half of the counter.
    pub offset: u64,
    /// The drop rate among the targeted: 1 prunes.
    pub alpha: f64,
}

impl Draws {
    /// Pruning: every targeted element dropped.
    pub const PRUNE: Draws = Draws {
        seed: 0,
        offset: 0,
        alpha: 1.0,
    };

    /// Whether the targeted element (or unit) of draw index `e` is dropped.
    pub fn drops(&self, e: u64) -> bool {
        let c = e / 4;
        let block = philox4x32_10(
            [
                c as u32,
                (c >> 32) as u32,
                self.offset as u32,
                (self.offset >> 32) as u32,
            ],
            [self.seed as u32, (self.seed >> 32) as u32],
        );
        let r = block[(e % 4) as usize];
        let t = (self.alpha * 16_777_216.0).ceil() as u64;
        ((r >> 8) as u64) < t
    }
}

/// The targeted indices of a row: sort `(key, index)` and take the first `k`.
pub fn targeted_by_sort<T: Float>(row: &[T], k: usize) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = row.iter().map(|&x| key(x)).zip(0..).collect();
    order.sort();
    order[..k].iter().map(|&(_, i)| i).collect()
}

/// The squared L2 norm of a unit in the documented order: 1024 lanes, lane `j` summing
/// `x[j + 1024 m]^2` in turn from +0.0 (every square and sum rounded to the accumulator),
/// then the lanes folded pairwise at strides 512, 256, ..., 1. Returned as f64 (an f32
/// score converts exactly).
pub fn unit_score<T: Float>(unit: &[T]) -> f64 {
    if T::F64_SCORES {
        lanes_then_folds(unit.iter().map(|x| x.to_f64()))
    } else {
        lanes_then_folds(unit.iter().map(|x| x.to_f64() as f32)) as f64
    }
}

/// The documented reduction of the values' squares, in the accumulator type `A`.
fn lanes_then_folds<A>(values: impl Iterator<Item = A>) -> A
where
    A: Copy + Default + std::ops::Add<Output = A> + std::ops::Mul<Output = A>,
{
    let mut lanes = [A::default(); 1024]; // +0.0
    for (i, v) in values.enumerate() {
        let sq = v * v;
        lanes[i % 1024] = lanes[i % 1024] + sq;
    }
    let mut s = 512;
    while s >= 1 {
        for j in 0..s {
            lanes[j] = lanes[j] + lanes[j + s];
        }
        s /= 2;
    }
    lanes[0]
}

/// Targeted weight dropout on a row-major buffer with rows of `n`: selection on `w`,
/// values from `vals`, dropped elements +0.0.
pub fn weight_dropout<T: Float>(w: &[T], vals: &[T], n: usize, gamma: f64, d: Draws) -> Vec<T> {
    let mut out = vals.to_vec();
    if n == 0 {
        return out;
    }
    let k = count(gamma, n);
    for (r, (o, row)) in out.chunks_mut(n).zip(w.chunks(n)).enumerate() {
        drop_row(o, row, k, (r * n) as u64, d);
    }
    out
}

fn drop_row<T: Float>(out: &mut [T], row: &[T], k: usize, first_e: u64, d: Draws) {
    for i in targeted_by_sort(row, k) {
        if d.drops(first_e + i as u64) {
            out[i] = T::from_bits(0)
        }
    }
}

/// Targeted unit dropout: sort the units by `(score, index)` (a NaN score above every
/// number) and zero the first `k` whose draw (draw index = unit index) drops.
pub fn unit_dropout<T: Float>(w: &[T], vals: &[T], n: usize, gamma: f64, d: Draws) -> Vec<T> {
    let mut out = vals.to_vec();
    if n == 0 {
        return out;
    }
    let mut units: Vec<(f64, usize)> = w.chunks(n).map(unit_score).zip(0..).collect();
    let k = count(gamma, units.len());
    units.sort_by(|a, b| {
        let nan = |s: f64| (s.is_nan(), if s.is_nan() { 0.0 } else { s });
        let (an, av) = nan(a.0);
        let (bn, bv) = nan(b.0);
        an.cmp(&bn)
            .then(av.partial_cmp(&bv).expect("no NaN left"))
            .then(a.1.cmp(&b.1))
    });
    for &(_, i) in &units[..k] {
        if d.drops(i as u64) {
            out[i * n..(i + 1) * n].fill(T::from_bits(0))
        }
    }
    out
}

/// [`weight_dropout`] with the rows spread over the rayon pool: the same bits, for
/// benchmarks that compare the selection algorithms with the same threads.
pub fn weight_dropout_par<T: Float>(w: &[T], vals: &[T], n: usize, gamma: f64, d: Draws) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vals.to_vec();
    if n == 0 {
        return out;
    }
    let k = count(gamma, n);
    out.par_chunks_mut(n)
        .zip(w.par_chunks(n))
        .enumerate()
        .for_each(|(r, (o, row))| drop_row(o, row, k, (r * n) as u64, d));
    out
}

/// The groups of N:M dropout, as lists of flat indices in group order: the group axis is
/// axis 0 of a rank-1 tensor and axis 1 otherwise; a group is `m` consecutive positions of
/// that axis with every other index fixed.
pub fn nm_groups(dims: &[usize], m: usize) -> Vec<Vec<usize>> {
    let axis = if dims.len() == 1 { 0 } else { 1 };
    let stride: usize = dims[axis + 1..].iter().product();
    let len: usize = dims.iter().product();
    let mut groups = Vec::new();
    for e in 0..len {
        // e opens a group when its group-axis index is a multiple of m.
        let pos = (e / stride) % dims[axis];
        if pos.is_multiple_of(m) {
            groups.push((0..m).map(|j| e + j * stride).collect());
        }
    }
    groups
}

/// N:M targeted dropout of `w` (shape `dims`, row-major): in each group the `m - n`
/// smallest `(key, flat index)` are targeted, and each is dropped (+0.0 in `vals`) when its
/// draw (draw index = flat index) falls under alpha.
pub fn nm_dropout<T: Float>(
    w: &[T],
    vals: &[T],
    dims: &[usize],
    n: usize,
    m: usize,
    d: Draws,
) -> Vec<T> {
    let mut out = vals.to_vec();
    for g in nm_groups(dims, m) {
        let mut order: Vec<(u64, usize)> = g.iter().map(|&e| (key(w[e]), e)).collect();
        order.sort();
        for &(_, e) in &order[..m - n] {
            if d.drops(e as u64) {
                out[e] = T::from_bits(0);
            }
        }
    }
    out
}

/// Whether every N:M group of `w` holds at most `n` elements that are not ±0.0.
pub fn is_nm<T: Float>(w: &[T], dims: &[usize], n: usize, m: usize) -> bool {
    nm_groups(dims, m)
        .iter()
        .all(|g| g.iter().filter(|&&e| key(w[e]) != 0).count() <= n)
}
