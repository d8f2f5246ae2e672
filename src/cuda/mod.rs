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
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};
use exec::{execute, Inputs};
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
