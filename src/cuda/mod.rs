//! The CUDA path: executes the launch plan ([`crate::plan`]) of each op with the kernels of
//! `kernels/weight.cu` (selection and output of weight dropout) and `kernels/unit.cu` (unit
//! scores and output), which `build.rs` compiles into fatbins (see the README's CUDA section
//! for the targets). `module.rs` loads them once per device with the device's limits;
//! `exec.rs` runs a plan on the device's stream.
//!
//! Every kernel takes its device buffers as separate arguments and then one struct of launch
//! parameters by value, generated from `kernels/params.h` into `crate::cuda_params` (so the
//! two sides cannot disagree on an argument's place or a constant). Every kernel works on raw
//! bits, so f16 and bf16 share the 16-bit kernels; the unit scores have a kernel per dtype.
//! Arguments are checked in Rust before any launch, limits included.

mod exec;
mod module;

use crate::op::{filters, Output, TargetedOp};
use crate::plan::{self, Buf, Dtype, OpSpec};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};
use exec::{execute, execute_bound, execute_many, execute_raw, slice_ptr_mut, Inputs};
use module::Kernels;

/// The contiguous view of a slice under a layout.
fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str, op: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: internal error, {what} is not contiguous")
    };
    Ok(s.slice(start..end))
}

/// The op on one dtype: the values (`T`) or the mask.
fn run<T: DeviceRepr + ValidAsZeroBits>(
    op: &TargetedOp,
    storage: &CudaStorage,
    w: (&CudaSlice<T>, &Layout),
    vals: Option<(&CudaSlice<T>, &Layout)>,
    wrap: fn(CudaSlice<T>) -> CudaStorageSlice,
) -> Result<CudaStorageSlice> {
    let dev = storage.device();
    let dtype = Dtype::of(op.name(), storage.dtype())?;
    let mut spec = OpSpec::new(op, dtype, w.1.shape(), vals.is_some());
    // A CudaSlice is a whole allocation (aligned to at least 256 bytes): a view is 16-byte
    // aligned when its first element's byte offset is.
    let at16 = |l: &Layout| {
        l.contiguous_offsets()
            .is_some_and(|(start, _)| (start as u64 * dtype.size()).is_multiple_of(16))
    };
    spec.aligned16 = at16(w.1) && vals.is_none_or(|(_, vl)| at16(vl));
    // Limits, before anything is loaded, allocated or launched.
    spec.check()?;
    let wv = view(w.0, w.1, "w", op.name())?;
    let vv = match vals {
        None => None,
        Some((v, vl)) => Some(view(v, vl, "the gradient", op.name())?),
    };
    let kern = Kernels::of(dev)?;
    let plan = plan::forward(&spec, &kern.limits)?;
    let stream = dev.cuda_stream();
    let inputs = Inputs {
        w: &wv,
        vals: vv.as_ref(),
    };
    Ok(match op.output {
        Output::Values => wrap(execute::<T, T>(&kern, &stream, &plan, inputs, Buf::Out)?),
        Output::Mask => {
            CudaStorageSlice::U8(execute::<T, u8>(&kern, &stream, &plan, inputs, Buf::Mask)?)
        }
    })
}

/// The CUDA forward of [`TargetedOp`]: selection on `w`, values from `vals` (the backward
/// pass) or `w`.
pub(crate) fn forward(
    op: &TargetedOp,
    w: &CudaStorage,
    wl: &Layout,
    vals: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    use CudaStorageSlice as S;
    let vslice = vals.map(|(s, l)| (&s.slice, l));
    let slice = match (&w.slice, vslice) {
        (S::F32(x), None) => run(op, w, (x, wl), None, S::F32)?,
        (S::F16(x), None) => run(op, w, (x, wl), None, S::F16)?,
        (S::BF16(x), None) => run(op, w, (x, wl), None, S::BF16)?,
        (S::F64(x), None) => run(op, w, (x, wl), None, S::F64)?,
        (S::F32(x), Some((S::F32(v), l))) => run(op, w, (x, wl), Some((v, l)), S::F32)?,
        (S::F16(x), Some((S::F16(v), l))) => run(op, w, (x, wl), Some((v, l)), S::F16)?,
        (S::BF16(x), Some((S::BF16(v), l))) => run(op, w, (x, wl), Some((v, l)), S::BF16)?,
        (S::F64(x), Some((S::F64(v), l))) => run(op, w, (x, wl), Some((v, l)), S::F64)?,
        _ => bail!(
            "{}: unsupported dtypes on CUDA: w is {:?}{} (expected f16, bf16, f32 or f64, the gradient of the same dtype)",
            op.name(),
            w.dtype(),
            vals.map(|(v, _)| format!(", the gradient {:?}", v.dtype())).unwrap_or_default()
        ),
    };
    let device = w.device().clone();
    Ok((CudaStorage { slice, device }, wl.shape().clone()))
}

/// The device address of element `start` of a float slice, and its guard.
fn input_ptr<'a>(
    s: &'a CudaStorageSlice,
    start: usize,
    stream: &'a std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
) -> Result<(
    u64,
    candle_core::cuda_backend::cudarc::driver::SyncOnDrop<'a>,
)> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    use CudaStorageSlice as S;
    let ((p, g), size) = match s {
        S::F16(x) => (x.device_ptr(stream), 2),
        S::BF16(x) => (x.device_ptr(stream), 2),
        S::F32(x) => (x.device_ptr(stream), 4),
        S::F64(x) => (x.device_ptr(stream), 8),
        _ => bail!("targeted dropout on CUDA: internal error, an input that is not float"),
    };
    Ok((p + (start * size) as u64, g))
}

/// Whether a contiguous view starts 16-byte aligned (a CudaSlice is a whole allocation,
/// aligned to at least 256 bytes).
fn aligned16(dtype: Dtype, l: &Layout) -> bool {
    l.contiguous_offsets()
        .is_some_and(|(start, _)| (start as u64 * dtype.size()).is_multiple_of(16))
}

/// Many ops with values out in one call (`crate::targeted_dropout_many`,
/// `crate::VarMapDropout`): the items' plans grouped (`plan::group`: one block launch per
/// kernel width for every item it serves), then each item's remaining steps, on the first
/// item's device. Returns each output and, where `keep[i]`, the bit mask its plan kept
/// (`None` where the kernel serving it writes none).
pub(crate) fn forward_many(
    items: &[(&TargetedOp, &CudaStorage, &Layout)],
    keep: &[bool],
) -> Result<Vec<(CudaStorage, Option<CudaSlice<u32>>)>> {
    let Some((_, first, _)) = items.first() else {
        return Ok(Vec::new());
    };
    let dev = first.device().clone();
    let kern = Kernels::of(&dev)?;
    let stream = dev.cuda_stream();
    let mut plans = Vec::with_capacity(items.len());
    for ((op, s, l), &bits) in items.iter().zip(keep) {
        if op.output != Output::Values {
            bail!(
                "{}: internal error, a grouped call writes values",
                op.name()
            )
        }
        if s.device().id() != dev.id() {
            bail!("targeted_dropout_many: the tensors of one call are on different devices")
        }
        let dtype = Dtype::of(op.name(), s.dtype())?;
        let mut spec = OpSpec::new(op, dtype, l.shape(), false);
        spec.bits = bits;
        spec.aligned16 = aligned16(dtype, l);
        spec.check()?;
        plans.push(plan::forward(&spec, &kern.limits)?);
    }
    let grouped = plan::group(&mut plans);
    let results = {
        let mut guards = Vec::with_capacity(items.len());
        let mut inputs = Vec::with_capacity(items.len());
        for (_, s, l) in items {
            let Some((start, _)) = l.contiguous_offsets() else {
                bail!("targeted_dropout_many: internal error, w is not contiguous")
            };
            let (p, g) = input_ptr(&s.slice, start, &stream)?;
            inputs.push(vec![(Buf::W, p)]);
            guards.push(g);
        }
        let like: Vec<&CudaStorageSlice> = items.iter().map(|(_, s, _)| &s.slice).collect();
        let r = execute_many(&kern, &stream, &plans, &grouped, &inputs, &like)?;
        drop(guards);
        r
    };
    Ok(results
        .into_iter()
        .map(|(slice, bits)| {
            let device = dev.clone();
            (CudaStorage { slice, device }, bits)
        })
        .collect())
}

/// [`forward`] with values out, keeping the bit mask of the dropped elements where the
/// kernel serving the op writes one (weight dropout).
pub(crate) fn forward_kept(
    op: &TargetedOp,
    s: &CudaStorage,
    l: &Layout,
) -> Result<(CudaStorage, Option<CudaSlice<u32>>)> {
    let mut r = forward_many(&[(op, s, l)], &[true])?;
    Ok(r.remove(0))
}

/// The backward from a kept bit mask (`td_bwd_*`): the gradient `g` (contiguous, 16-byte
/// aligned) with the elements whose bit is set zeroed, one read and one write.
pub(crate) fn backward_bits(
    g: &CudaStorage,
    l: &Layout,
    bits: &CudaSlice<u32>,
) -> Result<CudaStorage> {
    const OP: &str = "targeted-dropout-backward";
    let dev = g.device().clone();
    let dtype = Dtype::of(OP, g.dtype())?;
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{OP}: internal error, the gradient is not contiguous")
    };
    if !aligned16(dtype, l) || bits.len() * 32 < end - start {
        bail!("{OP}: internal error, an unaligned gradient or a short mask for td_bwd")
    }
    let kern = Kernels::of(&dev)?;
    let stream = dev.cuda_stream();
    let plans = [plan::backward_bits(
        dtype,
        (end - start) as u64,
        &kern.limits,
    )];
    let mut r = {
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        let (gp, gg) = input_ptr(&g.slice, start, &stream)?;
        let (bp, bg) = bits.device_ptr(&stream);
        let inputs = [vec![(Buf::Vals, gp), (Buf::Bits, bp)]];
        let r = execute_many(&kern, &stream, &plans, &[], &inputs, &[&g.slice])?;
        drop((gg, bg));
        r
    };
    let (slice, _) = r.remove(0);
    Ok(CudaStorage { slice, device: dev })
}

/// The dropped elements of `w` (those whose bit is set in `bits`) packed in element order,
/// with the chunks' offsets: `td_pack_count`, the counts read back (the one device-to-host
/// read: the held buffer is sized to the dropped count, which is random), their prefix sums
/// copied to the device, `td_pack_*`. What `VarMapDropout` holds between `apply` and `finish`.
pub(crate) fn pack(w: &CudaStorage, l: &Layout, bits: &CudaSlice<u32>) -> Result<CudaStorage> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    const OP: &str = "VarMapDropout::apply (pack)";
    let dev = w.device().clone();
    let dtype = Dtype::of(OP, w.dtype())?;
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{OP}: internal error, the weight is not contiguous")
    };
    let numel = (end - start) as u64;
    if (bits.len() as u64) < numel.div_ceil(32) {
        bail!(
            "{OP}: internal error, a mask of {} words for {numel} elements",
            bits.len()
        )
    }
    let kern = Kernels::of(&dev)?;
    let stream = dev.cuda_stream();
    let (offsets, held) = pack_offsets(&kern, &stream, bits, numel)?;
    let plan = plan::pack(dtype, numel, held, &kern.limits);
    let (wp, wg) = input_ptr(&w.slice, start, &stream)?;
    let (bp, bg) = bits.device_ptr(&stream);
    let (op, og) = offsets.device_ptr(&stream);
    let inputs = [(Buf::W, wp), (Buf::Bits, bp), (Buf::Offsets, op)];
    let slice = execute_like(&kern, &stream, &plan, &inputs, Buf::Held, &w.slice)?;
    drop((wg, bg, og));
    Ok(CudaStorage { slice, device: dev })
}

/// [`execute_raw`] with its result of `like`'s float type.
fn execute_like(
    kern: &Kernels,
    stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    plan: &plan::Plan,
    inputs: &[(Buf, u64)],
    result: Buf,
    like: &CudaStorageSlice,
) -> Result<CudaStorageSlice> {
    use CudaStorageSlice as S;
    Ok(match like {
        S::F16(_) => S::F16(execute_raw(kern, stream, plan, inputs, result)?),
        S::BF16(_) => S::BF16(execute_raw(kern, stream, plan, inputs, result)?),
        S::F32(_) => S::F32(execute_raw(kern, stream, plan, inputs, result)?),
        S::F64(_) => S::F64(execute_raw(kern, stream, plan, inputs, result)?),
        _ => bail!("targeted dropout on CUDA: internal error, a slice that is not float"),
    })
}

/// The elements of a float slice.
pub(crate) fn float_len(s: &CudaStorageSlice) -> Result<usize> {
    use CudaStorageSlice as S;
    Ok(match s {
        S::F16(x) => x.len(),
        S::BF16(x) => x.len(),
        S::F32(x) => x.len(),
        S::F64(x) => x.len(),
        _ => bail!("targeted dropout on CUDA: internal error, a slice that is not float"),
    })
}

/// Where each chunk's dropped values start (`td_pack_count`, the counts read back and summed
/// on the host, the sums copied to the device) and their total.
fn pack_offsets(
    kern: &Kernels,
    stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    bits: &CudaSlice<u32>,
    numel: u64,
) -> Result<(CudaSlice<u64>, u64)> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let counts: CudaSlice<u32> = {
        let (bp, bg) = bits.device_ptr(stream);
        let plan = plan::pack_counts(numel, &kern.limits);
        let r = execute_raw(kern, stream, &plan, &[(Buf::Bits, bp)], Buf::Counts)?;
        drop(bg);
        r
    };
    let counts = stream.clone_dtoh(&counts).w()?;
    let (offsets, held) = plan::pack_offsets(&counts);
    Ok((stream.clone_htod(&offsets).w()?, held))
}

/// The inverse of [`pack`], in place: the elements of `d` (the variable's storage, holding
/// the dropped weight) whose bit is set taken from `held` in order (the chunk offsets again,
/// then `td_unpack_*` writes only those). The offsets are recomputed rather than held, so
/// that a step holds the mask and the dropped values only.
pub(crate) fn unpack(
    d: &mut CudaStorage,
    l: &Layout,
    bits: &CudaSlice<u32>,
    held: &CudaStorage,
) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    const OP: &str = "VarMapDropout::finish (unpack)";
    let dev = d.device().clone();
    let dtype = Dtype::of(OP, d.dtype())?;
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{OP}: internal error, the weight is not contiguous")
    };
    let numel = (end - start) as u64;
    let count = float_len(&held.slice)? as u64;
    let kern = Kernels::of(&dev)?;
    let stream = dev.cuda_stream();
    let (offsets, total) = pack_offsets(&kern, &stream, bits, numel)?;
    if total != count {
        bail!("{OP}: internal error, {count} held values for a mask of {total}")
    }
    let plan = plan::unpack(dtype, numel, count, &kern.limits);
    let (hp, hg) = input_ptr(&held.slice, 0, &stream)?;
    let (bp, bg) = bits.device_ptr(&stream);
    let (op, og) = offsets.device_ptr(&stream);
    let (dp, dg) = slice_ptr_mut(&mut d.slice, &stream)?;
    let out = dp + start as u64 * dtype.size();
    let bound = [
        (Buf::Bits, bp),
        (Buf::Offsets, op),
        (Buf::Held, hp),
        (Buf::Out, out),
    ];
    execute_bound(&kern, &stream, &plan, &bound)?;
    drop((dg, hg, bg, og));
    Ok(())
}

/// The unit scores of `w` (DESIGN.md, "Targeted unit dropout", step 1): one per filter, f32
/// for f16, bf16 and f32 input and f64 for f64 input, in the documented reduction order.
pub(crate) fn unit_scores(w: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    const OP: &str = "unit_scores";
    let dev = w.device().clone();
    let dtype = Dtype::of(OP, w.dtype())?;
    let (d0, n) = filters(l.shape());
    let kern = Kernels::of(&dev)?;
    let plan = plan::unit_scores(dtype, d0 as u64, n as u64, &kern.limits);
    let stream = dev.cuda_stream();
    macro_rules! go {
        ($w:expr, $acc:ty, $variant:ident) => {{
            let wv = view($w, l, "w", OP)?;
            let inputs = Inputs { w: &wv, vals: None };
            let s = execute::<_, $acc>(&kern, &stream, &plan, inputs, Buf::Scores)?;
            CudaStorageSlice::$variant(s)
        }};
    }
    let slice = match &w.slice {
        CudaStorageSlice::F32(w) => go!(w, f32, F32),
        CudaStorageSlice::F16(w) => go!(w, f32, F32),
        CudaStorageSlice::BF16(w) => go!(w, f32, F32),
        CudaStorageSlice::F64(w) => go!(w, f64, F64),
        _ => bail!(
            "{OP}: unsupported dtype on CUDA: {:?} (expected f16, bf16, f32 or f64)",
            w.dtype()
        ),
    };
    Ok(CudaStorage { slice, device: dev })
}
