//! The public functions: each validates its arguments (errors name the value and the
//! accepted range), takes its draws from the caller or the process-wide generator, and
//! applies the op.

use crate::generator::next_draw_state;
use crate::op::{filters, DropoutKind, Output, TargetedOp, UnitScoresOp};
use crate::philox::Bernoulli;
use candle_core::{bail, DType, Result, Tensor};
/// gamma and alpha: a number in [0, 1] (NaN is not).
pub(crate) fn check_fraction(op: &str, name: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{op}: {name} must be a number in [0, 1], got {v}")
    }
    Ok(())
}

/// A float tensor of rank >= 1.
pub(crate) fn check_tensor(op: &str, w: &Tensor) -> Result<()> {
    match w.dtype() {
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 => {}
        dt => bail!("{op}: w must be f16, bf16, f32 or f64, got {dt:?}"),
    }
    if w.rank() == 0 {
        bail!("{op}: w must have rank >= 1 (filters along dim 0), got a rank-0 tensor")
    }
    Ok(())
}

fn apply(w: &Tensor, op: TargetedOp) -> Result<Tensor> {
    if w.elem_count() == 0 {
        return match op.output {
            Output::Values => Ok(w.clone()),
            Output::Mask => w.to_dtype(DType::U8),
        };
    }
    let w = w.contiguous()?;
    match op.output {
        Output::Values => w.apply_op1(op),
        Output::Mask => w.apply_op1_no_bwd(&op),
    }
}

fn validated(
    op: &str,
    w: &Tensor,
    kind: DropoutKind,
    gamma: f64,
    alpha: f64,
    state: Option<(u64, u64)>,
    output: Output,
) -> Result<TargetedOp> {
    check_fraction(op, "gamma", gamma)?;
    check_fraction(op, "alpha", alpha)?;
    check_tensor(op, w)?;
    let (seed, offset) = state.unwrap_or_else(next_draw_state);
    Ok(TargetedOp {
        kind,
        gamma,
        draws: Bernoulli::new(seed, offset, alpha),
        output,
    })
}

/// Targeted weight dropout: in each filter (`w[i]` flattened), the `floor(gamma * n)`
/// smallest-magnitude weights are targeted and each is zeroed with probability `alpha`.
/// The draws come from the process-wide generator (see [`set_seed`](crate::set_seed)); each call advances it.
///
/// Differentiable: the gradient of `w` is the incoming gradient with the same elements
/// zeroed.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::{set_seed, targeted_weight_dropout};
/// # fn main() -> candle_core::Result<()> {
/// set_seed(42);
/// let w = Tensor::new(&[[0.1f32, -2.0, 0.3, 4.0], [5.0, 0.0, -0.7, 0.2]], &Device::Cpu)?;
/// let d = targeted_weight_dropout(&w, 0.5, 1.0)?; // alpha = 1: the targeted half is zeroed
/// assert_eq!(d.to_vec2::<f32>()?, [[0.0, -2.0, 0.0, 4.0], [5.0, 0.0, -0.7, 0.0]]);
/// # Ok(()) }
/// ```
pub fn targeted_weight_dropout(w: &Tensor, gamma: f64, alpha: f64) -> Result<Tensor> {
    let op = "targeted_weight_dropout";
    let o = validated(
        op,
        w,
        DropoutKind::Weight,
        gamma,
        alpha,
        None,
        Output::Values,
    )?;
    apply(w, o)
}

/// Targeted unit dropout: the `floor(gamma * d0)` filters with the smallest L2 norm are
/// targeted and each is zeroed as a whole with probability `alpha`. Draws as in
/// [`targeted_weight_dropout`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::targeted_unit_dropout_seeded;
/// # fn main() -> candle_core::Result<()> {
/// let w = Tensor::new(&[[1f32, 1.0], [0.1, 0.1], [3.0, 0.0]], &Device::Cpu)?;
/// let d = targeted_unit_dropout_seeded(&w, 0.34, 1.0, 0, 0)?; // one unit: the weakest
/// assert_eq!(d.to_vec2::<f32>()?, [[1.0, 1.0], [0.0, 0.0], [3.0, 0.0]]);
/// # Ok(()) }
/// ```
pub fn targeted_unit_dropout(w: &Tensor, gamma: f64, alpha: f64) -> Result<Tensor> {
    let op = "targeted_unit_dropout";
    let o = validated(op, w, DropoutKind::Unit, gamma, alpha, None, Output::Values)?;
    apply(w, o)
}

/// [`targeted_weight_dropout`] with explicit Philox `seed` and `offset`; the process-wide
/// generator is neither read nor advanced. The same arguments give the same bits on every
/// device.
pub fn targeted_weight_dropout_seeded(
    w: &Tensor,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
) -> Result<Tensor> {
    let op = "targeted_weight_dropout_seeded";
    let s = Some((seed, offset));
    let o = validated(op, w, DropoutKind::Weight, gamma, alpha, s, Output::Values)?;
    apply(w, o)
}

/// [`targeted_unit_dropout`] with explicit Philox `seed` and `offset`.
pub fn targeted_unit_dropout_seeded(
    w: &Tensor,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
) -> Result<Tensor> {
    let op = "targeted_unit_dropout_seeded";
    let s = Some((seed, offset));
    let o = validated(op, w, DropoutKind::Unit, gamma, alpha, s, Output::Values)?;
    apply(w, o)
}

/// Magnitude pruning per filter: zeroes the `floor(gamma * n)` smallest-magnitude weights of
/// each filter (ties by index). No random draws; the generator is untouched.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::prune_weights;
/// # fn main() -> candle_core::Result<()> {
/// let w = Tensor::new(&[3f32, -1.0, 2.0, 0.5], &Device::Cpu)?;
/// assert_eq!(prune_weights(&w, 0.5)?.to_vec1::<f32>()?, [3.0, 0.0, 2.0, 0.0]);
/// # Ok(()) }
/// ```
pub fn prune_weights(w: &Tensor, gamma: f64) -> Result<Tensor> {
    prune("prune_weights", w, DropoutKind::Weight, gamma)
}

/// Unit pruning: zeroes the `floor(gamma * d0)` filters with the smallest L2 norm.
pub fn prune_units(w: &Tensor, gamma: f64) -> Result<Tensor> {
    prune("prune_units", w, DropoutKind::Unit, gamma)
}

/// The whole targeted set removed: alpha = 1 without draws or generator.
fn prune(op: &str, w: &Tensor, kind: DropoutKind, gamma: f64) -> Result<Tensor> {
    let mut o = validated(op, w, kind, gamma, 1.0, Some((0, 0)), Output::Values)?;
    o.draws = Bernoulli::always();
    apply(w, o)
}

/// The mask of [`targeted_weight_dropout_seeded`] or [`targeted_unit_dropout_seeded`] as a
/// `u8` tensor of `w`'s shape, 1 where an element is dropped. Not differentiable.
pub fn targeted_dropout_mask(
    w: &Tensor,
    kind: DropoutKind,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
) -> Result<Tensor> {
    let s = Some((seed, offset));
    let o = validated(
        "targeted_dropout_mask",
        w,
        kind,
        gamma,
        alpha,
        s,
        Output::Mask,
    )?;
    apply(w, o)
}

/// The fraction of elements of `w` that are exactly zero (either sign).
pub fn sparsity(w: &Tensor) -> Result<f64> {
    if w.elem_count() == 0 {
        return Ok(0.0);
    }
    let zeros = w.eq(0.0)?.to_dtype(DType::F64)?.sum_all()?;
    Ok(zeros.to_scalar::<f64>()? / w.elem_count() as f64)
}

/// The unit scores of `w`: the squared L2 norm of each of its `d0` filters (rank 1: one
/// filter), in the reduction order that DESIGN.md fixes and every device follows, as a
/// `[d0]` tensor of f32 (f16, bf16 and f32 input) or f64 (f64 input). Unit dropout targets
/// the units with the smallest scores; under tensor parallelism, where each device holds some
/// of the columns of a unit, the scores are what the devices must combine (see
/// [`targeted_unit_dropout_from_scores`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::unit_scores;
/// # fn main() -> candle_core::Result<()> {
/// let w = Tensor::new(&[[3f32, 4.0], [1.0, -1.0]], &Device::Cpu)?;
/// assert_eq!(unit_scores(&w)?.to_vec1::<f32>()?, [25.0, 2.0]);
/// # Ok(()) }
/// ```
pub fn unit_scores(w: &Tensor) -> Result<Tensor> {
    check_tensor("unit_scores", w)?;
    let (d0, _) = filters(w.shape());
    let acc = if w.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    if w.elem_count() == 0 {
        return Tensor::zeros(d0, acc, w.device());
    }
    w.contiguous()?.apply_op1_no_bwd(&UnitScoresOp)
}

/// Targeted unit dropout of a row shard `w` (units `first_unit .. first_unit + d0` of a
/// larger weight, e.g. under tensor parallelism) given the scores of **all** the weight's
/// units (`[D]`, from [`unit_scores`] on each shard, gathered in unit order): the same bits
/// as [`targeted_unit_dropout_seeded`] on the whole weight, restricted to the shard. With
/// `first_unit = 0` and the scores of `w` itself it is that function. Differentiable.
///
/// The scores are compared as [`unit_scores`] gives them (non-negative, NaN canonical).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::*;
/// # fn main() -> candle_core::Result<()> {
/// let w = Tensor::new(&[[3f32, 4.0], [0.1, 0.1], [1.0, 1.0], [0.2, 0.0]], &Device::Cpu)?;
/// let whole = targeted_unit_dropout_seeded(&w, 0.5, 1.0, 9, 0)?;
/// let (top, bottom) = (w.narrow(0, 0, 2)?, w.narrow(0, 2, 2)?);
/// let scores = Tensor::cat(&[unit_scores(&top)?, unit_scores(&bottom)?], 0)?;
/// let shard = targeted_unit_dropout_from_scores(&bottom, &scores, 2, 0.5, 1.0, 9, 0)?;
/// assert_eq!(shard.to_vec2::<f32>()?, whole.narrow(0, 2, 2)?.to_vec2::<f32>()?);
/// # Ok(()) }
/// ```
pub fn targeted_unit_dropout_from_scores(
    w: &Tensor,
    scores: &Tensor,
    first_unit: usize,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
) -> Result<Tensor> {
    let op = "targeted_unit_dropout_from_scores";
    check_fraction(op, "gamma", gamma)?;
    check_fraction(op, "alpha", alpha)?;
    check_tensor(op, w)?;
    if scores.rank() != 1 || !matches!(scores.dtype(), DType::F32 | DType::F64) {
        bail!(
            "{op}: scores must be a rank-1 f32 or f64 tensor (one score per unit), got {:?} {:?}",
            scores.dtype(),
            scores.dims()
        )
    }
    let (d0, _) = filters(w.shape());
    let total = scores.dim(0)?;
    if first_unit.checked_add(d0).is_none_or(|end| end > total) {
        bail!("{op}: units {first_unit}..{first_unit}+{d0} of the shard are outside the {total} scores")
    }
    if w.elem_count() == 0 {
        return Ok(w.clone());
    }
    // The scores as one filter: the weight selection over it, with draw index = unit index,
    // is the unit selection (non-negative floats order like their bits).
    let mask = targeted_dropout_mask(scores, DropoutKind::Weight, gamma, alpha, seed, offset)?
        .narrow(0, first_unit, d0)?;
    let mut dims = vec![1usize; w.rank()];
    dims[0] = d0;
    let mask = mask.reshape(dims)?.broadcast_as(w.shape())?;
    mask.where_cond(&w.zeros_like()?, w)
}
