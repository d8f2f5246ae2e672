//! The candle glue: [`TargetedOp`] as a `CustomOp1` (the forward pass, differentiable) and
//! as a `CustomOp2` over `(w, gradient)` (the backward pass: the selection on `w` applied to
//! the gradient). Each backend's forward dispatches on the dtype and calls `cpu.rs` or
//! `cuda/`; with the `emulate` feature, the CPU forward inside `emulate::run` runs the CUDA
//! kernels' plan on the emulator instead.

use crate::cpu::{held, unit_scores};
use crate::op::{filters, TargetedOp, UnitScoresOp};
use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor,
};
use std::sync::{Arc, Mutex, OnceLock};

const BACKWARD: &str = "targeted-dropout-backward";

fn same_shape(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.shape() != l2.shape() {
        bail!(
            "{BACKWARD}: w has shape {:?} but the gradient {:?}",
            l1.shape(),
            l2.shape()
        )
    }
    Ok(())
}

impl TargetedOp {
    /// The op on CPU storages: selection on `w`, values from `vals` (the backward pass: the
    /// gradient, of `w`'s dtype) or `w` itself.
    fn cpu_storage(
        &self,
        w: &CpuStorage,
        wl: &Layout,
        vals: Option<(&CpuStorage, &Layout)>,
    ) -> Result<CpuStorage> {
        macro_rules! go {
            ($variant:ident, $w:expr) => {{
                let vals = match vals {
                    None => None,
                    Some((CpuStorage::$variant(g), gl)) => Some((&g[..], gl)),
                    Some((g, _)) => bail!(
                        "{BACKWARD}: w is {:?} and the gradient {:?}; both must be the same float dtype",
                        w.dtype(),
                        g.dtype()
                    ),
                };
                self.cpu($w, wl, vals, CpuStorage::$variant)
            }};
        }
        match w {
            CpuStorage::F32(w) => go!(F32, w),
            CpuStorage::F64(w) => go!(F64, w),
            CpuStorage::F16(w) => go!(F16, w),
            CpuStorage::BF16(w) => go!(BF16, w),
            other => bail!(
                "{}: unsupported dtype {:?} (expected f16, bf16, f32 or f64)",
                self.name(),
                other.dtype()
            ),
        }
    }
}

impl TargetedOp {
    /// The values on CPU storage with the bit mask of the dropped elements, written in the
    /// same pass (the kept forward's mask on the CPU).
    fn cpu_storage_kept(&self, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Vec<u32>)> {
        match w {
            CpuStorage::F32(w) => self.cpu_kept(w, wl, CpuStorage::F32),
            CpuStorage::F64(w) => self.cpu_kept(w, wl, CpuStorage::F64),
            CpuStorage::F16(w) => self.cpu_kept(w, wl, CpuStorage::F16),
            CpuStorage::BF16(w) => self.cpu_kept(w, wl, CpuStorage::BF16),
            other => bail!(
                "{}: unsupported dtype {:?} (expected f16, bf16, f32 or f64)",
                self.name(),
                other.dtype()
            ),
        }
    }
}

impl CustomOp1 for TargetedOp {
    fn name(&self) -> &'static str {
        TargetedOp::name(self)
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        #[cfg(feature = "emulate")]
        if let Some(ctx) = crate::emulate::active() {
            return crate::emulate::forward(self, &ctx, s, l, None);
        }
        Ok((self.cpu_storage(s, l, None)?, l.shape().clone()))
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

impl CustomOp2 for TargetedOp {
    fn name(&self) -> &'static str {
        BACKWARD
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(l1, l2)?;
        #[cfg(feature = "emulate")]
        if let Some(ctx) = crate::emulate::active() {
            return crate::emulate::forward(self, &ctx, s1, l1, Some((s2, l2)));
        }
        let out = self.cpu_storage(s1, l1, Some((s2, l2)))?;
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
        same_shape(l1, l2)?;
        crate::cuda::forward(self, s1, l1, Some((s2, l2)))
    }
}

/// A kept bit mask of the dropped elements (bit `e % 32` of u32 word `e / 32`): on the host
/// (the CPU, and the emulator's device memory) or on a CUDA device.
#[derive(Clone)]
pub(crate) enum Bits {
    Host(Arc<Vec<u32>>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<candle_core::cuda_backend::cudarc::driver::CudaSlice<u32>>),
}

impl Bits {
    /// The bytes it holds.
    pub fn bytes(&self) -> usize {
        match self {
            Bits::Host(v) => v.len() * 4,
            #[cfg(feature = "cuda")]
            Bits::Cuda(s) => s.len() * 4,
        }
    }

    /// The words of a host mask (`None` for a device mask, which the host never reads).
    pub fn host(&self) -> Option<&[u32]> {
        match self {
            Bits::Host(v) => Some(v),
            #[cfg(feature = "cuda")]
            Bits::Cuda(_) => None,
        }
    }
}

/// An output a grouped call has computed already, waiting for its tensor (only the
/// kernels' paths group: without `emulate` or `cuda` none is made).
#[cfg_attr(not(feature = "emulate"), allow(dead_code))]
pub(crate) enum Ready {
    Cpu(CpuStorage),
    #[cfg(feature = "cuda")]
    Cuda(candle_core::CudaStorage),
}

/// The differentiable forward of [`TargetedOp`] with values out: the op (or the output that
/// a grouped call computed for it, `ready`), and the bit mask of the dropped elements that the
/// kernel serving it wrote (the weight kernels on a GPU or the emulator) or the CPU wrote
/// with the values, kept for the backward pass: `td_bwd` (or one pass on the CPU) then masks
/// the gradient with no selection. Without a kept mask (the paths of other kernels) the
/// backward recomputes the selection.
pub(crate) struct KeptForward {
    pub op: TargetedOp,
    pub ready: Mutex<Option<Ready>>,
    pub bits: OnceLock<Bits>,
}

impl KeptForward {
    pub fn new(op: TargetedOp) -> Self {
        KeptForward {
            op,
            ready: Mutex::new(None),
            bits: OnceLock::new(),
        }
    }

    /// An op whose output (and mask) a grouped call has computed.
    #[cfg_attr(not(any(feature = "emulate", feature = "cuda")), allow(dead_code))]
    pub fn ready(op: TargetedOp, out: Ready, bits: Option<Bits>) -> Self {
        let k = KeptForward {
            op,
            ready: Mutex::new(Some(out)),
            bits: OnceLock::new(),
        };
        if let Some(b) = bits {
            let _ = k.bits.set(b);
        }
        k
    }

    fn take(&self) -> Option<Ready> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl CustomOp1 for KeptForward {
    fn name(&self) -> &'static str {
        self.op.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        match self.take() {
            Some(Ready::Cpu(out)) => return Ok((out, l.shape().clone())),
            #[cfg(feature = "cuda")]
            Some(Ready::Cuda(_)) => bail!(
                "{}: internal error, a CUDA output for a CPU tensor",
                self.op.name()
            ),
            None => {}
        }
        #[cfg(feature = "emulate")]
        if let Some(ctx) = crate::emulate::active() {
            let (out, bits) = crate::emulate::forward_kept(&self.op, &ctx, s, l)?;
            if let Some(b) = bits {
                let _ = self.bits.set(Bits::Host(Arc::new(b)));
            }
            return Ok((out, l.shape().clone()));
        }
        // The CPU writes the bit mask with the values: the backward is one pass.
        let (out, bits) = self.op.cpu_storage_kept(s, l)?;
        let _ = self.bits.set(Bits::Host(Arc::new(bits)));
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.take() {
            Some(Ready::Cuda(out)) => return Ok((out, l.shape().clone())),
            Some(Ready::Cpu(_)) => bail!(
                "{}: internal error, a CPU output for a CUDA tensor",
                self.op.name()
            ),
            None => {}
        }
        let (out, bits) = crate::cuda::forward_kept(&self.op, s, l)?;
        if let Some(b) = bits {
            let _ = self.bits.set(Bits::Cuda(Arc::new(b)));
        }
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        if let Some(bits) = self.bits.get() {
            if let Some(g) = masked_by_bits(&grad, bits)? {
                return Ok(Some(g));
            }
        }
        // No kept mask: the mask is a constant of the step, recomputed from `w` and the same
        // draws and applied to the incoming gradient.
        Ok(Some(arg.apply_op2_no_bwd(&grad, &self.op)?))
    }
}

/// `grad` (contiguous) with the elements whose bit is set zeroed: `td_bwd` on a GPU or the
/// emulator, one pass on the CPU. `None` where `td_bwd` cannot take the gradient (a view
/// that does not start 16-byte aligned): the caller recomputes the selection.
pub(crate) fn masked_by_bits(grad: &Tensor, bits: &Bits) -> Result<Option<Tensor>> {
    let size = grad.dtype().size_in_bytes();
    let aligned = (grad.layout().start_offset() * size).is_multiple_of(16);
    let on_kernel = !grad.device().is_cpu() || emulated();
    if on_kernel && !aligned {
        return Ok(None);
    }
    if grad.elem_count() == 0 {
        return Ok(Some(grad.clone()));
    }
    Ok(Some(
        grad.apply_op1_no_bwd(&MaskedGrad { bits: bits.clone() })?,
    ))
}

/// `grad` with the elements whose bit is set in a host mask zeroed, on the host (any
/// alignment; a CPU gradient).
pub(crate) fn mask_on_host(grad: &Tensor, bits: &[u32]) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    let (s, l) = grad.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        bail!(
            "{BACKWARD}: internal error, a host mask for a gradient on {:?}",
            grad.device()
        )
    };
    let out = MaskedGrad {
        bits: Bits::Host(Arc::new(Vec::new())),
    }
    .host(s, l, bits)?;
    let (shape, cpu) = (l.shape().clone(), &candle_core::Device::Cpu);
    match out {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::F16(v) => Tensor::from_vec(v, shape, cpu),
        CpuStorage::BF16(v) => Tensor::from_vec(v, shape, cpu),
        other => bail!("{BACKWARD}: unsupported dtype {:?}", other.dtype()),
    }
}

/// Whether the emulation is in force on this thread.
pub(crate) fn emulated() -> bool {
    #[cfg(feature = "emulate")]
    return crate::emulate::active().is_some();
    #[cfg(not(feature = "emulate"))]
    false
}

/// The backward from a kept bit mask, as an op on the gradient.
struct MaskedGrad {
    bits: Bits,
}

impl CustomOp1 for MaskedGrad {
    fn name(&self) -> &'static str {
        BACKWARD
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some(bits) = self.bits.host() else {
            bail!("{BACKWARD}: internal error, a device mask for a CPU gradient")
        };
        #[cfg(feature = "emulate")]
        if let Some(ctx) = crate::emulate::active() {
            return match crate::emulate::backward_bits(&ctx, s, l, bits)? {
                Some(out) => Ok((out, l.shape().clone())),
                None => bail!("{BACKWARD}: internal error, an unaligned gradient for td_bwd"),
            };
        }
        Ok((self.host(s, l, bits)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Bits::Cuda(bits) = &self.bits else {
            bail!("{BACKWARD}: internal error, a host mask for a CUDA gradient")
        };
        Ok((crate::cuda::backward_bits(s, l, bits)?, l.shape().clone()))
    }
}

impl MaskedGrad {
    /// The masked gradient on the host.
    fn host(&self, s: &CpuStorage, l: &Layout, bits: &[u32]) -> Result<CpuStorage> {
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("{BACKWARD}: internal error, the gradient is not contiguous")
        };
        if bits.len() * 32 < end - start {
            bail!(
                "{BACKWARD}: internal error, a kept mask of {} words for {} elements",
                bits.len(),
                end - start
            )
        }
        let out = match s {
            CpuStorage::F32(g) => CpuStorage::F32(held::mask_values(&g[start..end], bits)),
            CpuStorage::F64(g) => CpuStorage::F64(held::mask_values(&g[start..end], bits)),
            CpuStorage::F16(g) => CpuStorage::F16(held::mask_values(&g[start..end], bits)),
            CpuStorage::BF16(g) => CpuStorage::BF16(held::mask_values(&g[start..end], bits)),
            other => bail!(
                "{BACKWARD}: unsupported dtype {:?} (expected f16, bf16, f32 or f64)",
                other.dtype()
            ),
        };
        Ok(out)
    }
}

impl CustomOp1 for UnitScoresOp {
    fn name(&self) -> &'static str {
        "targeted-dropout-unit-scores"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        #[cfg(feature = "emulate")]
        if let Some(ctx) = crate::emulate::active() {
            return crate::emulate::unit_scores(&ctx, s, l);
        }
        let Some((start, end)) = l.contiguous_offsets() else {
            bail!("{}: internal error, w is not contiguous", self.name())
        };
        let (d0, n) = filters(l.shape());
        let out = match s {
            CpuStorage::F32(w) => CpuStorage::F32(unit_scores(&w[start..end], n)),
            CpuStorage::F64(w) => CpuStorage::F64(unit_scores(&w[start..end], n)),
            CpuStorage::F16(w) => CpuStorage::F32(unit_scores(&w[start..end], n)),
            CpuStorage::BF16(w) => CpuStorage::F32(unit_scores(&w[start..end], n)),
            other => bail!(
                "{}: unsupported dtype {:?} (expected f16, bf16, f32 or f64)",
                self.name(),
                other.dtype()
            ),
        };
        Ok((out, Shape::from(d0)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (d0, _) = filters(l.shape());
        Ok((crate::cuda::unit_scores(s, l)?, Shape::from(d0)))
    }
}
