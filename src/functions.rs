//! The public functions: each validates its arguments with `config`'s checks (errors name
//! the value and the accepted range), takes its draws from the caller or the process-wide
//! generator, and applies the op.

use crate::config::{
    check_args, check_kind_args, check_shape, check_tensor, NmPattern, TargetedDropout,
};
#[cfg(any(feature = "emulate", feature = "cuda"))]
use crate::custom_op::Ready;
use crate::custom_op::{Bits, KeptForward};
use crate::generator::{next_draw_state, take_offsets};
use crate::op::{filters, DropoutKind, Output, TargetedOp, UnitScoresOp};
use crate::philox::Bernoulli;
use candle_core::{bail, DType, Result, Tensor};

fn apply(w: &Tensor, op: TargetedOp) -> Result<Tensor> {
    if w.elem_count() == 0 {
        return match op.output {
            Output::Values => Ok(w.clone()),
            Output::Mask => w.to_dtype(DType::U8),
        };
    }
    let w = w.contiguous()?;
    match op.output {
        // Under autograd the forward keeps its bit mask for the backward pass where the
        // kernel serving it writes one.
        Output::Values if w.track_op() => w.apply_op1(KeptForward::new(op)),
        Output::Values => w.apply_op1(op),
        Output::Mask => w.apply_op1_no_bwd(&op),
    }
}

/// A config as the caller gave it, not yet checked: [`validated`] checks it.
fn config(kind: DropoutKind, gamma: f64, alpha: f64) -> TargetedDropout {
    TargetedDropout { kind, gamma, alpha }
}

/// The op of `td` on `w` once the arguments are checked, drawing at `state` (or at the
/// process-wide generator's next offset, taken only when the arguments are good).
fn validated(
    op: &str,
    w: &Tensor,
    td: TargetedDropout,
    state: Option<(u64, u64)>,
    output: Output,
) -> Result<TargetedOp> {
    let TargetedDropout { kind, gamma, alpha } = td;
    check_kind_args(op, w, kind, gamma, alpha)?;
    let (seed, offset) = state.unwrap_or_else(next_draw_state);
    Ok(TargetedOp {
        kind,
        gamma,
        draws: Bernoulli::new(seed, offset, alpha),
        output,
        elem_base: 0,
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
    let td = config(DropoutKind::Weight, gamma, alpha);
    let o = validated(op, w, td, None, Output::Values)?;
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
    let td = config(DropoutKind::Unit, gamma, alpha);
    let o = validated(op, w, td, None, Output::Values)?;
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
    let td = config(DropoutKind::Weight, gamma, alpha);
    let o = validated(op, w, td, s, Output::Values)?;
    apply(w, o)
}

/// [`targeted_weight_dropout_seeded`] of a row shard: `w` holds rows `first_row ..` of a
/// larger weight (e.g. one device's rows under tensor parallelism), and draws exactly what the
/// whole weight's call draws for those rows: element `i` of local row `r` takes the draw of
/// flat index `(first_row + r) * n + i` (DESIGN.md, "Row shards"). `first_row = 0` is
/// [`targeted_weight_dropout_seeded`]. Differentiable.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::*;
/// # fn main() -> candle_core::Result<()> {
/// let w = Tensor::randn(0f32, 1.0, (6, 10), &Device::Cpu)?;
/// let whole = targeted_weight_dropout_seeded(&w, 0.5, 0.5, 7, 0)?;
/// let shard = targeted_weight_dropout_rows(&w.narrow(0, 4, 2)?, 0.5, 0.5, 7, 0, 4)?;
/// assert_eq!(shard.to_vec2::<f32>()?, whole.narrow(0, 4, 2)?.to_vec2::<f32>()?);
/// # Ok(()) }
/// ```
pub fn targeted_weight_dropout_rows(
    w: &Tensor,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
    first_row: usize,
) -> Result<Tensor> {
    let op = "targeted_weight_dropout_rows";
    let s = Some((seed, offset));
    let td = config(DropoutKind::Weight, gamma, alpha);
    let mut o = validated(op, w, td, s, Output::Values)?;
    let (d0, n) = crate::op::filters(w.shape());
    let last = (first_row as u64).checked_add(d0 as u64);
    match last.and_then(|l| l.checked_mul(n as u64)) {
        Some(_) => o.elem_base = first_row as u64 * n as u64,
        None => bail!(
            "{op}: rows {first_row}.. of {n} elements are past the 2^64 draw indices of Philox"
        ),
    }
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
    let td = config(DropoutKind::Unit, gamma, alpha);
    let o = validated(op, w, td, s, Output::Values)?;
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
    let td = config(kind, gamma, 1.0);
    let mut o = validated(op, w, td, Some((0, 0)), Output::Values)?;
    o.draws = Bernoulli::always();
    apply(w, o)
}

/// The mask that `td` draws on `w` at `seed` and `offset` (that of
/// [`targeted_weight_dropout_seeded`], [`targeted_unit_dropout_seeded`] or
/// [`targeted_nm_dropout_seeded`]) as a `u8` tensor of `w`'s shape, 1 where an element is
/// dropped. Not differentiable.
pub fn targeted_dropout_mask(
    w: &Tensor,
    td: TargetedDropout,
    seed: u64,
    offset: u64,
) -> Result<Tensor> {
    let s = Some((seed, offset));
    let o = validated("targeted_dropout_mask", w, td, s, Output::Mask)?;
    apply(w, o)
}

/// The fraction of elements of `w` that are exactly zero (either sign).
pub fn sparsity(w: &Tensor) -> Result<f64> {
    if w.elem_count() == 0 {
        return Ok(0.0);
    }
    Ok(zero_count(w)? as f64 / w.elem_count() as f64)
}

/// How many elements of `w` are exactly zero (either sign).
pub(crate) fn zero_count(w: &Tensor) -> Result<usize> {
    let zeros = w.eq(0.0)?.to_dtype(DType::F64)?.sum_all()?;
    Ok(zeros.to_scalar::<f64>()? as usize)
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
/// let shard = targeted_unit_dropout_from_scores(&bottom, &scores, 0.5, 1.0, 9, 0, 2)?;
/// assert_eq!(shard.to_vec2::<f32>()?, whole.narrow(0, 2, 2)?.to_vec2::<f32>()?);
/// # Ok(()) }
/// ```
pub fn targeted_unit_dropout_from_scores(
    w: &Tensor,
    scores: &Tensor,
    gamma: f64,
    alpha: f64,
    seed: u64,
    offset: u64,
    first_unit: usize,
) -> Result<Tensor> {
    let op = "targeted_unit_dropout_from_scores";
    check_args(op, w, gamma, alpha)?;
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
    // Scores are squared norms: a negative one is not a score. NaNs become the canonical NaN
    // (one key, so NaN scores tie and rank by index, as DESIGN.md's `(score, i)` says).
    let negative = scores
        .lt(0.0)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    if negative > 0.0 {
        bail!("{op}: scores are squared norms, but {negative} of the {total} scores are negative")
    }
    let nan = scores.ne(scores)?;
    let scores = nan.where_cond(
        &Tensor::full(f32::NAN, total, scores.device())?.to_dtype(scores.dtype())?,
        scores,
    )?;
    // The scores as one filter: the weight selection over it, with draw index = unit index,
    // is the unit selection (non-negative floats order like their bits).
    let mask = targeted_dropout_mask(
        &scores,
        config(DropoutKind::Weight, gamma, alpha),
        seed,
        offset,
    )?
    .narrow(0, first_unit, d0)?;
    let mut dims = vec![1usize; w.rank()];
    dims[0] = d0;
    let mask = mask.reshape(dims)?.broadcast_as(w.shape())?;
    mask.where_cond(&w.zeros_like()?, w)
}

/// Targeted dropout on many tensors in one call, each with its own config (kind, gamma,
/// alpha): tensor `i` takes offset `offset + i` of the process-wide generator, so the results
/// are bit-identical to calling [`targeted_weight_dropout`] / [`targeted_unit_dropout`] on
/// each in order. Each result keeps its own autograd. Every argument is checked before any
/// draw: on an error the generator has not moved.
///
/// On the CPU the tensors are computed in parallel. On a GPU (and under the emulator) the
/// tensors that one kernel serves are one launch (the block kernel: up to 62 tensors per
/// launch, their table passed by value, no copy to the device; rows of at most 32 take one
/// tiny-row launch per tensor, the other paths their own launches), and each result keeps
/// its bit mask for the backward pass while it is under autograd.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::*;
/// # fn main() -> candle_core::Result<()> {
/// let a = Tensor::randn(0f32, 1.0, (16, 27), &Device::Cpu)?;
/// let b = Tensor::randn(0f32, 1.0, (10, 64), &Device::Cpu)?;
/// let (wd, ud) = (TargetedDropout::weight(0.5, 0.5)?, TargetedDropout::unit(0.3, 1.0)?);
/// set_seed(1);
/// let many = targeted_dropout_many(&[(&a, wd), (&b, ud)])?;
/// set_seed(1);
/// let one = targeted_weight_dropout(&a, 0.5, 0.5)?;
/// assert_eq!(many[0].to_vec2::<f32>()?, one.to_vec2::<f32>()?);
/// # Ok(()) }
/// ```
pub fn targeted_dropout_many(items: &[(&Tensor, TargetedDropout)]) -> Result<Vec<Tensor>> {
    many("targeted_dropout_many", items, None)
}

/// [`targeted_dropout_many`] with an explicit seed: tensor `i` draws at
/// `(seed, first_offset + i)`, like [`targeted_weight_dropout_seeded`] on each. The process-wide
/// generator is neither read nor advanced (data-parallel replicas that each track the same
/// `(seed, offset)` draw the same masks).
pub fn targeted_dropout_many_seeded(
    items: &[(&Tensor, TargetedDropout)],
    seed: u64,
    first_offset: u64,
) -> Result<Vec<Tensor>> {
    many(
        "targeted_dropout_many_seeded",
        items,
        Some((seed, first_offset)),
    )
}

/// The op of a config at `(seed, offset)`.
fn configured(op: &str, w: &Tensor, td: TargetedDropout, state: (u64, u64)) -> Result<TargetedOp> {
    validated(op, w, td, Some(state), Output::Values)
}

/// The ops of a call over many items: every item validated first (an error names the
/// tensor and takes no offset), then the offsets (`state`, or the generator's next ones):
/// item `i` draws at `(seed, first + i)`.
pub(crate) fn many_ops(
    op: &str,
    items: &[(&Tensor, TargetedDropout)],
    state: Option<(u64, u64)>,
) -> Result<Vec<TargetedOp>> {
    let mut ops = items
        .iter()
        .enumerate()
        .map(|(i, &(w, td))| configured(&format!("{op}: tensor {i}"), w, td, (0, 0)))
        .collect::<Result<Vec<_>>>()?;
    let (seed, first) = state.unwrap_or_else(|| take_offsets(items.len() as u64));
    for (i, o) in ops.iter_mut().enumerate() {
        o.draws.seed = seed;
        o.draws.offset = first.wrapping_add(i as u64);
    }
    Ok(ops)
}

/// The ops of [`many_ops`], then the outputs: grouped where the kernels serve the call,
/// in parallel on the CPU.
fn many(
    op: &str,
    items: &[(&Tensor, TargetedDropout)],
    state: Option<(u64, u64)>,
) -> Result<Vec<Tensor>> {
    use rayon::prelude::*;
    let ops = many_ops(op, items, state)?;
    if let Some(out) = grouped(items, &ops, &|_| false)? {
        return Ok(out.into_iter().map(|(t, _)| t).collect());
    }
    // The items run on rayon threads: they inherit the caller's emulation, if any.
    #[cfg(feature = "emulate")]
    let emulated = crate::emulate::active();
    let one = |(&(w, _), o): (&(&Tensor, TargetedDropout), TargetedOp)| {
        #[cfg(feature = "emulate")]
        return crate::emulate::within(emulated, || apply(w, o));
        #[cfg(not(feature = "emulate"))]
        apply(w, o)
    };
    if items.iter().all(|(w, _)| w.device().is_cpu()) {
        items.par_iter().zip(ops).map(one).collect()
    } else {
        items.iter().zip(ops).map(one).collect()
    }
}

/// One output of a grouped call and the bit mask it kept, if any.
pub(crate) type Served = (Tensor, Option<Bits>);

/// Where the kernels serve a call (CUDA tensors of one device, or CPU tensors under the
/// emulator): the items' outputs from one grouped plan (one block launch per kernel width
/// for every item it serves, `plan::group`), each as a tensor with its own autograd (its
/// kept bit mask for the backward pass when `keep(i)`, or when the tensor is tracked), and
/// the kept masks. `None` where the call is not served so (the CPU, mixed devices).
#[cfg(not(any(feature = "emulate", feature = "cuda")))]
pub(crate) fn grouped(
    _items: &[(&Tensor, TargetedDropout)],
    _ops: &[TargetedOp],
    _keep: &dyn Fn(usize) -> bool,
) -> Result<Option<Vec<Served>>> {
    Ok(None)
}

/// See above.
#[cfg(any(feature = "emulate", feature = "cuda"))]
pub(crate) fn grouped(
    items: &[(&Tensor, TargetedDropout)],
    ops: &[TargetedOp],
    keep: &dyn Fn(usize) -> bool,
) -> Result<Option<Vec<Served>>> {
    use candle_core::{Device, Storage};
    use std::sync::Arc;
    let Some((first, _)) = items.first() else {
        return Ok(None);
    };
    let served = match first.device() {
        Device::Cpu => emulated(),
        Device::Cuda(_) => cfg!(feature = "cuda"),
        _ => false,
    };
    if !served
        || !items
            .iter()
            .all(|(w, _)| w.device().same_device(first.device()))
    {
        return Ok(None);
    }
    let ws = items
        .iter()
        .map(|(w, _)| w.contiguous())
        .collect::<Result<Vec<Tensor>>>()?;
    // Empty tensors take no launch (as in `apply`).
    let live: Vec<usize> = (0..ws.len()).filter(|&i| ws[i].elem_count() > 0).collect();
    let guards: Vec<_> = live.iter().map(|&i| ws[i].storage_and_layout()).collect();
    let keeps: Vec<bool> = live.iter().map(|&i| keep(i) || ws[i].track_op()).collect();
    let mut outs: Vec<(Ready, Option<Bits>)> = Vec::with_capacity(live.len());
    let internal = || {
        candle_core::Error::Msg(
            "targeted_dropout_many: internal error, the tensors left their device".into(),
        )
    };
    match first.device() {
        #[cfg(feature = "emulate")]
        Device::Cpu if !live.is_empty() => {
            let ctx = crate::emulate::active().ok_or_else(internal)?;
            let mut args = Vec::with_capacity(live.len());
            for (&i, g) in live.iter().zip(&guards) {
                let Storage::Cpu(s) = &*g.0 else {
                    return Err(internal());
                };
                args.push((&ops[i], s, g.1));
            }
            for (out, bits) in crate::emulate::forward_many(&ctx, &args, &keeps)? {
                outs.push((Ready::Cpu(out), bits.map(|b| Bits::Host(Arc::new(b)))));
            }
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) if !live.is_empty() => {
            let mut args = Vec::with_capacity(live.len());
            for (&i, g) in live.iter().zip(&guards) {
                let Storage::Cuda(s) = &*g.0 else {
                    return Err(internal());
                };
                args.push((&ops[i], s, g.1));
            }
            for (out, bits) in crate::cuda::forward_many(&args, &keeps)? {
                outs.push((Ready::Cuda(out), bits.map(|b| Bits::Cuda(Arc::new(b)))));
            }
        }
        _ => {}
    }
    drop(guards);
    let mut outs = outs.into_iter();
    let mut result = Vec::with_capacity(ws.len());
    for (i, w) in ws.iter().enumerate() {
        if w.elem_count() == 0 {
            result.push((apply(w, ops[i])?, None));
            continue;
        }
        let (out, bits) = outs.next().expect("one output per live item");
        let op = KeptForward::ready(ops[i], out, bits.clone());
        let t = if w.track_op() {
            w.apply_op1(op)?
        } else {
            w.apply_op1_no_bwd(&op)?
        };
        result.push((t, bits));
    }
    Ok(Some(result))
}

/// Whether the emulation is in force on this thread.
#[cfg(any(feature = "emulate", feature = "cuda"))]
fn emulated() -> bool {
    #[cfg(feature = "emulate")]
    return crate::emulate::active().is_some();
    #[cfg(not(feature = "emulate"))]
    false
}

/// The values of `op` on `w` (no autograd: a weight a `VarMapDropout` step sets).
pub(crate) fn values_of(w: &Tensor, mut op: TargetedOp) -> Result<Tensor> {
    op.output = Output::Values;
    apply(&w.detach(), op)
}

/// The gradient that autograd gives `w` through targeted dropout at `(seed, offset)`: `grad`
/// with the dropped elements zeroed. For [`crate::VarMapDropout`], whose model saw the
/// dropped weights directly.
pub(crate) fn masked_gradient(
    w: &Tensor,
    grad: &Tensor,
    td: TargetedDropout,
    seed: u64,
    offset: u64,
) -> Result<Tensor> {
    let o = configured("targeted dropout backward", w, td, (seed, offset))?;
    if w.elem_count() == 0 {
        return Ok(grad.clone());
    }
    w.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &o)
}

/// N:M targeted dropout (DESIGN.md, "N:M targeted dropout"): in every group of `m`
/// consecutive weights along a filter's input axis (the last axis of `[out, in]`, the input
/// channels of a convolution weight `[out, in, kh, kw]`, the only axis of a rank-1 tensor),
/// the `m - n` with the smallest magnitude are targeted and each is zeroed with probability
/// `alpha`. Draws from the process-wide generator, one offset per call, the same draw per
/// element as [`targeted_weight_dropout`]. Differentiable: the gradient is masked the same way.
///
/// Errors name the values: `m` of 0 or above 32, `n > m`, a group axis that `m` does not
/// divide, alpha outside [0, 1], a rank-0 or non-float tensor.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::{is_nm_sparse, targeted_nm_dropout};
/// # fn main() -> candle_core::Result<()> {
/// let w = Tensor::new(&[[0.1f32, -2.0, 0.3, 4.0, 5.0, 0.0, -0.7, 0.2]], &Device::Cpu)?;
/// let d = targeted_nm_dropout(&w, 2, 4, 1.0)?; // alpha = 1: exactly 2:4
/// assert_eq!(d.to_vec2::<f32>()?, [[0.0, -2.0, 0.0, 4.0, 5.0, 0.0, -0.7, 0.0]]);
/// assert!(is_nm_sparse(&d, 2, 4)?);
/// # Ok(()) }
/// ```
pub fn targeted_nm_dropout(w: &Tensor, n: usize, m: usize, alpha: f64) -> Result<Tensor> {
    let op = "targeted_nm_dropout";
    let p = NmPattern::new(op, n, m)?;
    let o = validated(
        op,
        w,
        config(p.kind(), p.fraction(), alpha),
        None,
        Output::Values,
    )?;
    apply(w, o)
}

/// [`targeted_nm_dropout`] with explicit Philox `seed` and `offset`; the process-wide
/// generator is neither read nor advanced. The same arguments give the same bits on every
/// device.
pub fn targeted_nm_dropout_seeded(
    w: &Tensor,
    n: usize,
    m: usize,
    alpha: f64,
    seed: u64,
    offset: u64,
) -> Result<Tensor> {
    let op = "targeted_nm_dropout_seeded";
    let p = NmPattern::new(op, n, m)?;
    let s = Some((seed, offset));
    let o = validated(
        op,
        w,
        config(p.kind(), p.fraction(), alpha),
        s,
        Output::Values,
    )?;
    apply(w, o)
}

/// N:M magnitude pruning: zeroes the `m - n` smallest-magnitude weights of every group of
/// [`targeted_nm_dropout`] (ties by index), leaving at most `n` non-zeros per group, the
/// pattern that sparse tensor cores (2:4), cuSPARSELt and TensorRT take. No random draws.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::prune_nm;
/// # fn main() -> candle_core::Result<()> {
/// // A conv weight [out 1, in 4, kh 1, kw 2]: the groups run over the 4 input channels.
/// let w = Tensor::new(&[4f32, -1.0, 3.0, 2.0, -2.0, 8.0, 1.0, 0.5], &Device::Cpu)?
///     .reshape((1, 4, 1, 2))?;
/// let p = prune_nm(&w, 2, 4)?.flatten_all()?;
/// assert_eq!(p.to_vec1::<f32>()?, [4.0, 0.0, 3.0, 2.0, 0.0, 8.0, 0.0, 0.0]);
/// # Ok(()) }
/// ```
pub fn prune_nm(w: &Tensor, n: usize, m: usize) -> Result<Tensor> {
    let op = "prune_nm";
    let p = NmPattern::new(op, n, m)?;
    prune(op, w, p.kind(), p.fraction())
}

/// Whether `w` is N:M sparse: at most `n` elements that are not zero (either sign; NaN is not
/// zero) in every group of `m` of [`targeted_nm_dropout`]. The arguments are checked as there.
pub fn is_nm_sparse(w: &Tensor, n: usize, m: usize) -> Result<bool> {
    let op = "is_nm_sparse";
    let p = NmPattern::new(op, n, m)?;
    check_tensor(op, w)?;
    check_shape(op, w.dims(), p)?;
    if w.elem_count() == 0 {
        return Ok(true);
    }
    let (outer, c, s) = crate::op::nm_geometry(w.dims()).expect("rank >= 1, checked");
    let per_group = w
        .ne(0.0)?
        .to_dtype(DType::U32)?
        .reshape((outer, c / m, m, s))?
        .sum(2)?;
    Ok(per_group.max_all()?.to_scalar::<u32>()? as usize <= n)
}
