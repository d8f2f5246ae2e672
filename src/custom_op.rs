//! The candle glue: [`TargetedOp`] as a `CustomOp1` (the forward pass, differentiable) and
//! as a `CustomOp2` over `(w, gradient)` (the backward pass: the selection on `w` applied to
//! the gradient). Each backend's forward dispatches on the dtype and calls `cpu.rs` or
//! `cuda/`; with the `emulate` feature, the CPU forward inside `emulate::run` runs the CUDA
//! kernels' plan on the emulator instead.

use crate::cpu::unit_scores;
use crate::op::{filters, TargetedOp, UnitScoresOp};
use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor,
};

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
