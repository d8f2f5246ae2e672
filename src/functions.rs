//! The public functions: each validates its arguments (errors name the value and the
//! accepted range), takes its draws from the caller or the process-wide generator, and
//! applies the op.

use crate::generator::next_draw_state;
use crate::op::{DropoutKind, Output, TargetedOp};
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
