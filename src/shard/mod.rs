//! Targeted dropout on sharded weights (tensor parallelism): each rank holds a [`Shard`] of a
//! rank-2 weight `[out, in]` (a convolution's flattened to `[out, in * kh * kw]`, sharded on
//! its input channels), and the sharded ops return exactly what the unsharded seeded op
//! returns on the full weight, restricted to the shard (DESIGN.md, "Sharded weights"):
//! - a shard of rows (a column-parallel linear: whole filters per rank) needs no
//!   communication for weight dropout, pruning and N:M; unit dropout gathers the units' scores;
//! - a shard of columns (a row-parallel linear: every filter split across the ranks)
//!   all-reduces the radix select's per-row digit histograms (weight dropout, pruning), so
//!   every rank finds the same k-th magnitude, and the unit scores' lanes (unit dropout); N:M
//!   needs none when the shards hold whole groups.
//!
//! Every call first checks, with one small all-reduce, that the ranks agree on the op, gamma,
//! alpha, seed, offset and the full shape, and that the shards tile it: an error names the
//! value of every rank, on every rank, never a hang.
//!
//! The communication goes through a [`Collective`]: [`LocalGroup`] (threads of one process),
//! `MpiCollective` (feature `mpi`), `NcclCollective` (feature `nccl`).

mod check;
mod collective;
mod host;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod varmap;

pub use collective::{Collective, LocalGroup};
#[cfg(feature = "mpi")]
pub use mpi::MpiCollective;
#[cfg(feature = "nccl")]
pub use nccl::NcclCollective;
pub use varmap::ShardedStep;

use crate::element::Element;
use crate::functions::{
    prune_weights, targeted_unit_dropout_from_scores, targeted_weight_dropout_rows, unit_scores,
};
use crate::philox::Bernoulli;
use candle_core::{bail, DType, Device, Result, Tensor, WithDType};
use check::{check, Agreed, Args, ShardOp};

/// Which dimension of a rank-2 weight `[out, in]` is split across the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardDim {
    /// Each rank holds some of the rows (whole filters): a column-parallel linear, whose
    /// output features are split.
    Rows,
    /// Each rank holds some of the columns of every row: a row-parallel linear, whose input
    /// features are split (each filter is split across the ranks).
    Cols,
}

/// The part of a rank-2 weight of shape `full` that one rank holds: rows (or columns)
/// `start .. start + len` along `dim`, `len` being the local tensor's size along `dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// The dimension split across the ranks.
    pub dim: ShardDim,
    /// The shard's first row or column in the full weight.
    pub start: usize,
    /// The full weight's shape `(out, in)`.
    pub full: (usize, usize),
}

impl Shard {
    /// The shard of `rank` when `full`'s `dim` is split into `world` contiguous parts of
    /// `extent / world` (the first `extent % world` ranks one more), in rank order.
    pub fn even(dim: ShardDim, full: (usize, usize), rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            bail!("Shard::even: rank {rank} is not in a world of {world}")
        }
        let extent = self::extent(dim, full);
        let (q, r) = (extent / world, extent % world);
        let start = rank * q + rank.min(r);
        Ok(Shard { dim, start, full })
    }

    /// The length along `dim` of [`Shard::even`]'s shard of `rank` in a world of `world`.
    pub fn even_len(dim: ShardDim, full: (usize, usize), rank: usize, world: usize) -> usize {
        let extent = self::extent(dim, full);
        extent / world + usize::from(rank < extent % world)
    }

    /// This shard cut out of the full weight `w` (`[out, in]`), `len` rows or columns long.
    pub fn narrow(&self, w: &Tensor, len: usize) -> Result<Tensor> {
        let axis = match self.dim {
            ShardDim::Rows => 0,
            ShardDim::Cols => 1,
        };
        w.narrow(axis, self.start, len)
    }
}

fn extent(dim: ShardDim, full: (usize, usize)) -> usize {
    match dim {
        ShardDim::Rows => full.0,
        ShardDim::Cols => full.1,
    }
}

/// The shard's mask applied: dropped elements +0.0, every other element its bits. The
/// gradient (through `where_cond`) is the incoming gradient with the same elements zeroed.
fn apply_mask(w: &Tensor, dropped: Vec<bool>) -> Result<Tensor> {
    let mask: Vec<u8> = dropped.into_iter().map(u8::from).collect();
    let mask = Tensor::from_vec(mask, w.dims(), &Device::Cpu)?.to_device(w.device())?;
    mask.where_cond(&w.zeros_like()?, w)
}

/// The shard's elements on the host, row-major.
fn host<T: WithDType>(w: &Tensor) -> Result<Vec<T>> {
    w.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<T>()
}

macro_rules! by_dtype {
    ($w:expr, $f:ident ( $($arg:expr),* )) => {
        match $w.dtype() {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            dt => bail!("unsupported dtype {dt:?}, checked before"),
        }
    };
}

/// Weight dropout at `(alpha, seed, offset)`, or pruning (`None`), of a shard, once checked.
fn weight(
    w: &Tensor,
    gamma: f64,
    draw: Option<(f64, u64, u64)>,
    s: &Shard,
    a: &Agreed,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    match (s.dim, draw) {
        // Whole filters: the unsharded op on the rows, drawing at their flat indices.
        (ShardDim::Rows, None) => prune_weights(w, gamma),
        (ShardDim::Rows, Some((alpha, seed, offset))) => {
            targeted_weight_dropout_rows(w, gamma, alpha, seed, offset, s.start)
        }
        (ShardDim::Cols, _) => {
            let k = host::targeted_count(gamma, s.full.1);
            fn go<T: Element + WithDType>(
                w: &Tensor,
                rows: usize,
                cols: usize,
                k: usize,
                s: &Shard,
                a: &Agreed,
                comm: &dyn Collective,
            ) -> Result<Vec<bool>> {
                host::targeted_cols(&host::<T>(w)?, rows, cols, k, s.full.1, a, comm, w.device())
            }
            let mut dropped = by_dtype!(w, go(w, rows, cols, k, s, a, comm))?;
            let draws = match draw {
                Some((alpha, seed, offset)) => Bernoulli::new(seed, offset, alpha),
                None => Bernoulli::always(),
            };
            host::draw_cols(&mut dropped, cols, s.start, s.full.1, &draws);
            apply_mask(w, dropped)
        }
    }
}

/// Targeted weight dropout of a shard: exactly [`crate::targeted_weight_dropout_seeded`] on
/// the full weight, restricted to the shard (the draw of an element is the draw of its flat
/// index in the full weight). `w` is this rank's part of a `[out, in]` weight of shape
/// `shard.full` (rows or columns `shard.start ..`); every rank of `comm` calls with its own
/// shard and the same gamma, alpha, seed and offset. Differentiable: the gradient is masked
/// like the weight.
///
/// Communication: one check of the arguments (`world x 20` f64); for a shard of columns the
/// radix select's histograms (passes x rows x 16 u32: 8 passes for f32, 4 for f16 and bf16,
/// 16 for f64) and the tie counts (`world x rows` u32). Rows: nothing more.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::*;
/// # fn main() -> candle_core::Result<()> {
/// let full = Tensor::randn(0f32, 1.0, (8, 10), &Device::Cpu)?;
/// let whole = targeted_weight_dropout_seeded(&full, 0.5, 0.5, 7, 3)?;
/// let parts: Vec<Tensor> = std::thread::scope(|s| {
///     let ranks: Vec<_> = LocalGroup::new(2).into_iter().map(|comm| {
///         let full = full.clone();
///         s.spawn(move || {
///             let shard = Shard::even(ShardDim::Cols, (8, 10), comm.rank(), 2)?;
///             let w = shard.narrow(&full, 5)?;
///             targeted_weight_dropout_sharded(&w, 0.5, 0.5, 7, 3, &shard, &comm)
///         })
///     }).collect();
///     ranks.into_iter().map(|h| h.join().unwrap()).collect::<candle_core::Result<_>>()
/// })?;
/// assert_eq!(Tensor::cat(&parts, 1)?.to_vec2::<f32>()?, whole.to_vec2::<f32>()?);
/// # Ok(()) }
/// ```
pub fn targeted_weight_dropout_sharded(
    w: &Tensor,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
    shard: &Shard,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let args = Args {
        op: ShardOp::WeightDropout,
        gamma,
        alpha,
        seed,
        offset,
        nm: (0, 0),
    };
    let agreed = check(w, &args, shard, comm)?;
    if w.elem_count() == 0 && shard.dim == ShardDim::Rows {
        return Ok(w.clone());
    }
    weight(w, gamma, Some((alpha, seed, offset)), shard, &agreed, comm)
        .map_err(|e| e.context(ShardOp::WeightDropout.name()))
}

/// Magnitude pruning of a shard: exactly [`crate::prune_weights`] on the full weight,
/// restricted to the shard. Communication as [`targeted_weight_dropout_sharded`].
pub fn prune_weights_sharded(
    w: &Tensor,
    gamma: f64,
    shard: &Shard,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let args = Args {
        op: ShardOp::PruneWeights,
        gamma,
        alpha: 1.0,
        seed: 0,
        offset: 0,
        nm: (0, 0),
    };
    let agreed = check(w, &args, shard, comm)?;
    if w.elem_count() == 0 && shard.dim == ShardDim::Rows {
        return Ok(w.clone());
    }
    weight(w, gamma, None, shard, &agreed, comm)
        .map_err(|e| e.context(ShardOp::PruneWeights.name()))
}

/// Unit dropout (or pruning, `alpha = 1` without draws) of a shard, once checked.
#[allow(clippy::too_many_arguments)]
fn unit(
    w: &Tensor,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
    s: &Shard,
    a: &Agreed,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let acc = if w.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let scores = match s.dim {
        ShardDim::Rows => {
            // Whole units: the local scores are the unsharded scores; gather them (each rank
            // writes its units, zeros elsewhere: exact in any order of addition).
            let mine = unit_scores(w)?.to_dtype(acc)?;
            let before = Tensor::zeros(s.start, acc, w.device())?;
            let after = Tensor::zeros(s.full.0 - s.start - rows, acc, w.device())?;
            comm.all_reduce_sum(&Tensor::cat(&[&before, &mine, &after], 0)?)?
        }
        ShardDim::Cols => {
            fn go<T: host::Scored + WithDType>(
                w: &Tensor,
                rows: usize,
                cols: usize,
                s: &Shard,
                a: &Agreed,
                comm: &dyn Collective,
            ) -> Result<Tensor> {
                let v = host::unit_scores_cols(
                    &host::<T>(w)?,
                    rows,
                    cols,
                    s.start,
                    s.full.1,
                    a,
                    comm,
                    w.device(),
                )?;
                Tensor::from_vec(v, rows, &Device::Cpu)?.to_device(w.device())
            }
            by_dtype!(w, go(w, rows, cols, s, a, comm))?
        }
    };
    let first = match s.dim {
        ShardDim::Rows => s.start,
        ShardDim::Cols => 0,
    };
    targeted_unit_dropout_from_scores(w, &scores, gamma, alpha, seed, offset, first)
}

/// Targeted unit dropout of a shard: exactly [`crate::targeted_unit_dropout_seeded`] on the
/// full weight, restricted to the shard. Rows: the units' scores are gathered (one
/// all-reduce of `out` accumulators). Columns: the scores' lanes travel (DESIGN.md, "Sharded
/// weights": one all-reduce of `out x in` accumulators when `in <= 1024`, else `world`
/// all-reduces of `out x 1024`). Differentiable.
pub fn targeted_unit_dropout_sharded(
    w: &Tensor,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
    shard: &Shard,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let args = Args {
        op: ShardOp::UnitDropout,
        gamma,
        alpha,
        seed,
        offset,
        nm: (0, 0),
    };
    let agreed = check(w, &args, shard, comm)?;
    if shard.full.0 * shard.full.1 == 0 {
        return Ok(w.clone());
    }
    unit(w, gamma, alpha, seed, offset, shard, &agreed, comm)
        .map_err(|e| e.context(ShardOp::UnitDropout.name()))
}

/// Unit pruning of a shard: exactly [`crate::prune_units`] on the full weight, restricted to
/// the shard. Communication as [`targeted_unit_dropout_sharded`].
pub fn prune_units_sharded(
    w: &Tensor,
    gamma: f64,
    shard: &Shard,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let args = Args {
        op: ShardOp::PruneUnits,
        gamma,
        alpha: 1.0,
        seed: 0,
        offset: 0,
        nm: (0, 0),
    };
    let agreed = check(w, &args, shard, comm)?;
    if shard.full.0 * shard.full.1 == 0 {
        return Ok(w.clone());
    }
    // alpha = 1 drops every targeted unit whatever the draws (threshold 2^24).
    unit(w, gamma, 1.0, 0, 0, shard, &agreed, comm)
        .map_err(|e| e.context(ShardOp::PruneUnits.name()))
}

/// N:M of a shard, once checked: no communication.
fn nm(w: &Tensor, n: usize, m: usize, draws: Bernoulli, s: &Shard) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let (row0, col0) = match s.dim {
        ShardDim::Rows => (s.start, 0),
        ShardDim::Cols => (0, s.start),
    };
    fn go<T: Element + WithDType>(
        w: &Tensor,
        dims: (usize, usize, usize, usize, usize),
        n: usize,
        m: usize,
        draws: &Bernoulli,
    ) -> Result<Vec<bool>> {
        let (rows, cols, row0, col0, full1) = dims;
        Ok(host::nm_dropped(
            &host::<T>(w)?,
            rows,
            cols,
            row0,
            col0,
            full1,
            n,
            m,
            draws,
        ))
    }
    let dims = (rows, cols, row0, col0, s.full.1);
    let dropped = by_dtype!(w, go(w, dims, n, m, &draws))?;
    apply_mask(w, dropped)
}

/// N:M targeted dropout of a shard: exactly [`crate::targeted_nm_dropout_seeded`] on the full
/// weight (groups of `m` consecutive columns), restricted to the shard. No communication
/// besides the check: a shard of columns must start and end on a multiple of `m` (an error
/// naming the rank and its columns otherwise). Differentiable.
#[allow(clippy::too_many_arguments)]
pub fn targeted_nm_dropout_sharded(
    w: &Tensor,
    n: usize,
    m: usize,
    alpha: f64,
    seed: u64,
    offset: u64,
    shard: &Shard,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let args = Args {
        op: ShardOp::NmDropout,
        gamma: 0.0,
        alpha,
        seed,
        offset,
        nm: (n, m),
    };
    check(w, &args, shard, comm)?;
    nm(w, n, m, Bernoulli::new(seed, offset, alpha), shard)
        .map_err(|e| e.context(ShardOp::NmDropout.name()))
}

/// N:M pruning of a shard: exactly [`crate::prune_nm`] on the full weight, restricted to the
/// shard. As [`targeted_nm_dropout_sharded`], without draws.
pub fn prune_nm_sharded(
    w: &Tensor,
    n: usize,
    m: usize,
    shard: &Shard,
    comm: &dyn Collective,
) -> Result<Tensor> {
    let args = Args {
        op: ShardOp::PruneNm,
        gamma: 0.0,
        alpha: 1.0,
        seed: 0,
        offset: 0,
        nm: (n, m),
    };
    check(w, &args, shard, comm)?;
    nm(w, n, m, Bernoulli::always(), shard).map_err(|e| e.context(ShardOp::PruneNm.name()))
}
