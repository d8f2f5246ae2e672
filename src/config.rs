//! The configuration of targeted dropout and the one place where its arguments are checked:
//! [`TargetedDropout`] (a kind, gamma and alpha) and the checks of gamma, alpha and the
//! weight's dtype and rank that every public entry point runs, with errors that name the
//! entry point and the value. A leaf: everything that takes a config uses this module, and it
//! uses only `op` (for [`DropoutKind`]).

use crate::op::DropoutKind;
use candle_core::{bail, DType, Result, Tensor};

/// gamma or alpha: a number in [0, 1] (NaN is not).
pub(crate) fn check_fraction(op: &str, name: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{op}: {name} must be a number in [0, 1], got {v}")
    }
    Ok(())
}

/// gamma and alpha, in that order.
pub(crate) fn check_fractions(op: &str, gamma: f64, alpha: f64) -> Result<()> {
    check_fraction(op, "gamma", gamma)?;
    check_fraction(op, "alpha", alpha)
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

/// Everything one application checks: gamma, alpha, then the tensor.
pub(crate) fn check_args(op: &str, w: &Tensor, gamma: f64, alpha: f64) -> Result<()> {
    check_fractions(op, gamma, alpha)?;
    check_tensor(op, w)
}

/// Targeted dropout of one kind at `gamma` (the targeted fraction) and `alpha` (the drop
/// rate among the targeted).
///
/// In training it drops at random ([`targeted_weight_dropout`](crate::targeted_weight_dropout)
/// or [`targeted_unit_dropout`](crate::targeted_unit_dropout)); in evaluation it prunes the
/// whole targeted set, as the paper's code does.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::TargetedDropout;
/// # fn main() -> candle_core::Result<()> {
/// let td = TargetedDropout::weight(0.5, 0.5)?;
/// let w = Tensor::new(&[[1f32, -0.1, 0.2, -3.0]], &Device::Cpu)?;
/// assert_eq!(td.apply(&w, false)?.to_vec2::<f32>()?, [[1.0, 0.0, 0.0, -3.0]]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetedDropout {
    /// Weights or whole units.
    pub kind: DropoutKind,
    /// The targeted fraction of each filter (weights) or of the filters (units), in [0, 1].
    pub gamma: f64,
    /// The drop rate among the targeted, in [0, 1].
    pub alpha: f64,
}

impl TargetedDropout {
    /// A config of `kind`; gamma and alpha must be in [0, 1].
    pub fn new(kind: DropoutKind, gamma: f64, alpha: f64) -> Result<Self> {
        check_fractions("TargetedDropout", gamma, alpha)?;
        Ok(Self { kind, gamma, alpha })
    }

    /// Targeted weight dropout at `gamma` and `alpha`.
    pub fn weight(gamma: f64, alpha: f64) -> Result<Self> {
        Self::new(DropoutKind::Weight, gamma, alpha)
    }

    /// Targeted unit dropout at `gamma` and `alpha`.
    pub fn unit(gamma: f64, alpha: f64) -> Result<Self> {
        Self::new(DropoutKind::Unit, gamma, alpha)
    }
}
