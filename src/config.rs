//! The configuration of targeted dropout and the one place where its arguments are checked:
//! [`TargetedDropout`] (a kind, gamma and alpha) and the checks of gamma, alpha and the
//! weight's dtype and rank that every public entry point runs, with errors that name the
//! entry point and the value; for N:M also the pattern (`1 <= m <= 32`, `n <= m`), its gamma
//! and the weight's group axis. A leaf: everything that takes a config uses this module, and it
//! uses only `op` (for [`DropoutKind`]).

use crate::op::{nm_geometry, DropoutKind};
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

/// An N:M pattern: at most `n` non-zeros in every group of `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NmPattern {
    /// Non-zeros kept per group.
    pub(crate) n: usize,
    /// The group size, 1 to 32.
    pub(crate) m: usize,
}

impl NmPattern {
    /// The pattern `n:m`: an error naming the values unless `1 <= m <= 32` and `n <= m`.
    pub(crate) fn new(op: &str, n: usize, m: usize) -> Result<Self> {
        if m == 0 || m > MAX_M {
            bail!("{op}: m = {m} is not a group size in 1..=32 (N:M with n = {n}, m = {m})")
        }
        if n > m {
            bail!("{op}: n = {n} is larger than m = {m}: a group of {m} has at most {m} non-zeros")
        }
        Ok(Self { n, m })
    }

    /// Targeted elements per group.
    pub(crate) fn targeted(&self) -> usize {
        self.m - self.n
    }

    /// The kind of this pattern.
    pub(crate) fn kind(&self) -> DropoutKind {
        DropoutKind::Nm {
            n: self.n,
            m: self.m,
        }
    }

    /// The targeted fraction, `(m - n) / m`.
    pub(crate) fn fraction(&self) -> f64 {
        self.targeted() as f64 / self.m as f64
    }
}

impl std::fmt::Display for NmPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.n, self.m)
    }
}

/// The largest N:M group.
pub(crate) const MAX_M: usize = 32;

/// The pattern of an N:M `kind` (`None` for the other kinds), checked, with `gamma` checked
/// to be its fraction `(m - n) / m`: the one gamma an N:M config has.
pub(crate) fn check_kind(op: &str, kind: DropoutKind, gamma: f64) -> Result<Option<NmPattern>> {
    let DropoutKind::Nm { n, m } = kind else {
        return Ok(None);
    };
    let p = NmPattern::new(op, n, m)?;
    if gamma != p.fraction() {
        bail!(
            "{op}: the gamma of N:M = {p} is (m - n) / m = {}, got {gamma}",
            p.fraction()
        )
    }
    Ok(Some(p))
}

/// The shape checks of the N:M ops: rank >= 1 and a group axis divisible by `m`.
pub(crate) fn check_shape(op: &str, dims: &[usize], p: NmPattern) -> Result<()> {
    let Some((_, c, _)) = nm_geometry(dims) else {
        bail!("{op}: N:M needs a tensor of rank >= 1 (a group axis), got a scalar")
    };
    if c % p.m != 0 {
        let axis = if dims.len() == 1 { 0 } else { 1 };
        bail!(
            "{op}: the group axis (axis {axis}) of shape {dims:?} has {c} elements, not a multiple \
             of m = {} (N:M = {p})",
            p.m
        )
    }
    Ok(())
}

/// Everything one application checks: gamma, alpha, then the tensor.
pub(crate) fn check_args(op: &str, w: &Tensor, gamma: f64, alpha: f64) -> Result<()> {
    check_fractions(op, gamma, alpha)?;
    check_tensor(op, w)
}

/// [`check_args`] for a config of `kind`: an N:M kind also checks its pattern, its gamma
/// (the pattern's fraction) and the tensor's group axis.
pub(crate) fn check_kind_args(
    op: &str,
    w: &Tensor,
    kind: DropoutKind,
    gamma: f64,
    alpha: f64,
) -> Result<()> {
    let nm = check_kind(op, kind, gamma)?;
    check_args(op, w, gamma, alpha)?;
    match nm {
        Some(p) => check_shape(op, w.dims(), p),
        None => Ok(()),
    }
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
///
/// Its fields are private: a `TargetedDropout` comes only from its validating constructors
/// ([`new`](Self::new), [`weight`](Self::weight), [`unit`](Self::unit), [`nm`](Self::nm)), so
/// every one a function receives holds a valid gamma and alpha.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetedDropout {
    /// Weights, whole units or N:M groups.
    pub(crate) kind: DropoutKind,
    /// The targeted fraction of each filter (weights) or of the filters (units), in [0, 1].
    pub(crate) gamma: f64,
    /// The drop rate among the targeted, in [0, 1].
    pub(crate) alpha: f64,
}

impl TargetedDropout {
    /// A config of `kind`; gamma and alpha must be in [0, 1]. An N:M kind's gamma is its
    /// targeted fraction `(m - n) / m` (see [`TargetedDropout::nm`]).
    pub fn new(kind: DropoutKind, gamma: f64, alpha: f64) -> Result<Self> {
        check_kind("TargetedDropout", kind, gamma)?;
        check_fractions("TargetedDropout", gamma, alpha)?;
        Ok(Self { kind, gamma, alpha })
    }

    /// Weights, whole units or N:M groups.
    pub fn kind(&self) -> DropoutKind {
        self.kind
    }

    /// The targeted fraction: of each filter (weights), of the filters (units), or an N:M
    /// pattern's `(m - n) / m`.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// The drop rate among the targeted.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Targeted weight dropout at `gamma` and `alpha`.
    pub fn weight(gamma: f64, alpha: f64) -> Result<Self> {
        Self::new(DropoutKind::Weight, gamma, alpha)
    }

    /// Targeted unit dropout at `gamma` and `alpha`.
    pub fn unit(gamma: f64, alpha: f64) -> Result<Self> {
        Self::new(DropoutKind::Unit, gamma, alpha)
    }

    /// N:M targeted dropout at `alpha` ([`targeted_nm_dropout`](crate::targeted_nm_dropout)):
    /// in training the `m - n` smallest of every group of `m` are each dropped with
    /// probability alpha, in evaluation they are pruned, leaving exactly N:M. Its gamma is the
    /// targeted fraction `(m - n) / m`; a [`RampSchedule`](crate::RampSchedule) ramps its
    /// alpha only. `1 <= m <= 32` and `n <= m`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use candle_targeted_dropout::{is_nm_sparse, TargetedDropout};
    /// # fn main() -> candle_core::Result<()> {
    /// let td = TargetedDropout::nm(2, 4, 0.5)?;
    /// let w = Tensor::new(&[[1f32, -0.1, 0.2, -3.0, 0.5, 0.6, -0.7, 0.8]], &Device::Cpu)?;
    /// let pruned = td.apply(&w, false)?;
    /// assert_eq!(pruned.to_vec2::<f32>()?, [[1.0, 0.0, 0.0, -3.0, 0.0, 0.0, -0.7, 0.8]]);
    /// assert!(is_nm_sparse(&pruned, 2, 4)?);
    /// # Ok(()) }
    /// ```
    pub fn nm(n: usize, m: usize, alpha: f64) -> Result<Self> {
        let p = NmPattern::new("TargetedDropout::nm", n, m)?;
        check_fraction("TargetedDropout::nm", "alpha", alpha)?;
        Ok(Self {
            kind: p.kind(),
            gamma: p.fraction(),
            alpha,
        })
    }
}
