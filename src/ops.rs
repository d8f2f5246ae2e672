//! The candle custom ops and the public functions that validate their arguments and apply
//! them.

use crate::cpu::{par_default, unit_dropout_into, unit_dropped, weight_dropout_into, Scored};
use crate::philox::Bernoulli;
use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape,
    Tensor,
};
use std::sync::Mutex;

/// Which elements a targeted dropout targets: single weights, or whole units (filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropoutKind {
    /// The `floor(gamma * n)` smallest-magnitude weights of each filter.
    Weight,
    /// The `floor(gamma * d0)` filters with the smallest L2 norm.
    Unit,
}

/// What an op writes: the masked values, or a `u8` mask (1 = dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Values,
    Mask,
}

/// One application of targeted dropout: the selection, the draws and what to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetedOp {
    pub kind: DropoutKind,
    pub gamma: f64,
    pub draws: Bernoulli,
    pub output: Output,
}

/// `(d0, n)`: the number of filters and their length (DESIGN.md, "Filters").
pub(crate) fn filters(shape: &Shape) -> (usize, usize) {
    let dims = shape.dims();
    let numel = shape.elem_count();
    match dims {
        [] | [_] => (1, numel),
        [d0, ..] if *d0 == 0 => (0, 0),
        [d0, ..] => (*d0, numel / d0),
    }
}

fn contiguous_data<'a, T: Clone>(data: &'a [T], layout: &Layout) -> std::borrow::Cow<'a, [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => std::borrow::Cow::Borrowed(&data[start..end]),
        None => {
            // Walk the logical row-major order with an odometer over the strides.
            let dims = layout.dims();
            let stride = layout.stride();
            let numel = layout.shape().elem_count();
            let mut idx = vec![0usize; dims.len()];
            let mut out = Vec::with_capacity(numel);
            let mut pos = layout.start_offset();
            for _ in 0..numel {
                out.push(data[pos].clone());
                for d in (0..dims.len()).rev() {
                    idx[d] += 1;
                    pos += stride[d];
                    if idx[d] < dims[d] {
                        break;
                    }
                    pos -= stride[d] * dims[d];
                    idx[d] = 0;
                }
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

impl TargetedOp {
    #[cfg(feature = "cuda")]
    pub(crate) fn kind_name(&self) -> &'static str {
        self.name()
    }

    fn name(&self) -> &'static str {
        match (self.kind, self.output) {
            (DropoutKind::Weight, Output::Values) => "targeted-weight-dropout",
            (DropoutKind::Unit, Output::Values) => "targeted-unit-dropout",
            (DropoutKind::Weight, Output::Mask) => "targeted-weight-mask",
            (DropoutKind::Unit, Output::Mask) => "targeted-unit-mask",
        }
    }

    /// Selection on `w`; the output holds `kept` where not dropped (the values), or is a
    /// mask (`O = u8`, 1 = dropped) when `kept` is `None`.
    fn run<T: Scored, O: Copy + Send + Sync + Default>(
        &self,
        w: &[T],
        kept: Option<&[O]>,
        dropped: O,
        shape: &Shape,
    ) -> Vec<O> {
        let (_, n) = filters(shape);
        let mut out = par_default(w.len());
        match self.kind {
            DropoutKind::Weight => {
                weight_dropout_into(w, kept, &mut out, dropped, n, self.gamma, &self.draws)
            }
            DropoutKind::Unit => {
                let units = unit_dropped(w, n, self.gamma, &self.draws);
                unit_dropout_into(kept, &mut out, dropped, n, &units)
            }
        }
        out
    }

    fn cpu<T: Scored>(
        &self,
        w: &[T],
        wl: &Layout,
        vals: Option<(&[T], &Layout)>,
        wrap: fn(Vec<T>) -> CpuStorage,
    ) -> CpuStorage {
        let w = contiguous_data(w, wl);
        match self.output {
            Output::Mask => CpuStorage::U8(self.run::<T, u8>(&w, None, 1, wl.shape())),
            Output::Values => match vals {
                None => wrap(self.run(&w, Some(&w), T::ZERO, wl.shape())),
                Some((v, vl)) => {
                    let v = contiguous_data(v, vl);
                    wrap(self.run(&w, Some(&v), T::ZERO, wl.shape()))
                }
            },
        }
    }
}

impl CustomOp1 for TargetedOp {
    fn name(&self) -> &'static str {
        TargetedOp::name(self)
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(w) => self.cpu(w, l, None, CpuStorage::F32),
            CpuStorage::F64(w) => self.cpu(w, l, None, CpuStorage::F64),
            CpuStorage::F16(w) => self.cpu(w, l, None, CpuStorage::F16),
            CpuStorage::BF16(w) => self.cpu(w, l, None, CpuStorage::BF16),
            other => bail!(
                "{}: unsupported dtype {:?} (expected f16, bf16, f32 or f64)",
                self.name(),
                other.dtype()
            ),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::forward(self, s, l, None)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // The mask is a constant of the step: recompute it from `w` and the same draws and
        // apply it to the incoming gradient.
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, self)?))
    }
}

/// `(w, vals)`: the selection on `w` applied to `vals`. The backward pass.
impl CustomOp2 for TargetedOp {
    fn name(&self) -> &'static str {
        "targeted-dropout-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "{}: w has shape {:?} but the gradient {:?}",
                CustomOp2::name(self),
                l1.shape(),
                l2.shape()
            )
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(w), CpuStorage::F32(v)) => {
                self.cpu(w, l1, Some((v, l2)), CpuStorage::F32)
            }
            (CpuStorage::F64(w), CpuStorage::F64(v)) => {
                self.cpu(w, l1, Some((v, l2)), CpuStorage::F64)
            }
            (CpuStorage::F16(w), CpuStorage::F16(v)) => {
                self.cpu(w, l1, Some((v, l2)), CpuStorage::F16)
            }
            (CpuStorage::BF16(w), CpuStorage::BF16(v)) => {
                self.cpu(w, l1, Some((v, l2)), CpuStorage::BF16)
            }
            (a, b) => bail!(
                "{}: w is {:?} and the gradient {:?}; both must be the same float dtype",
                CustomOp2::name(self),
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "{}: w has shape {:?} but the gradient {:?}",
                CustomOp2::name(self),
                l1.shape(),
                l2.shape()
            )
        }
        crate::cuda::forward(self, s1, l1, Some((s2, l2)))
    }
}

// ---------------------------------------------------------------------------------------
// The process-wide generator.

static GENERATOR: Mutex<(u64, u64)> = Mutex::new((0, 0));

fn generator() -> std::sync::MutexGuard<'static, (u64, u64)> {
    // A panic elsewhere while holding the lock leaves a valid (seed, offset): keep using it.
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

/// Restarts the process-wide generator at `(seed, 0)`: the plain functions that follow
/// repeat the masks of an earlier run seeded the same way.
pub fn set_seed(seed: u64) {
    *generator() = (seed, 0);
}

/// The `(seed, offset)` that the next plain call will use.
pub fn generator_state() -> (u64, u64) {
    *generator()
}

fn next_draw_state() -> (u64, u64) {
    let mut g = generator();
    let s = *g;
    g.1 = g.1.wrapping_add(1);
    s
}

// ---------------------------------------------------------------------------------------
// Validation and the public functions.

fn check_fraction(op: &str, name: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{op}: {name} must be a number in [0, 1], got {v}")
    }
    Ok(())
}

fn check_tensor(op: &str, w: &Tensor) -> Result<()> {
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
/// The draws come from the process-wide generator (see [`set_seed`]); each call advances it.
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
