//! What `VarMapDropout` holds on a device between `apply` and `finish`: the dropped
//! elements' original values packed by the kept bit mask (`td_pack_count`, `td_pack_*`) and
//! put back in place (`td_pack_count` again, `td_unpack_*`: only the held elements written),
//! as candle ops (no autograd) on the weight's device. On a GPU the held buffer is sized to the
//! dropped count, which is random: the chunk counts are read back once per weight at `apply`
//! and once at `finish`. Under the emulator the same kernels run on the host.

use crate::custom_op::Bits;
use candle_core::{bail, CpuStorage, CustomOp1, InplaceOp2, Layout, Result, Shape, Tensor};

const PACK: &str = "targeted-dropout-pack";
const UNPACK: &str = "targeted-dropout-unpack";

struct Pack<'a> {
    bits: &'a Bits,
}

impl CustomOp1 for Pack<'_> {
    fn name(&self) -> &'static str {
        PACK
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        #[cfg(feature = "emulate")]
        if let (Some(ctx), Some(bits)) = (crate::emulate::active(), self.bits.host()) {
            let held = crate::emulate::pack(&ctx, _s, _l, bits)?;
            let n = crate::emulate::float_len(&held)?;
            return Ok((held, Shape::from(n)));
        }
        bail!("{PACK}: internal error, the kernels' pack outside a GPU or the emulator")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Bits::Cuda(bits) = self.bits else {
            bail!("{PACK}: internal error, a host mask for a CUDA weight")
        };
        let held = crate::cuda::pack(s, l, bits)?;
        let n = crate::cuda::float_len(&held.slice)?;
        Ok((held, Shape::from(n)))
    }
}

/// The dropped elements of `w` (contiguous; those whose bit is set in `bits`, the mask the
/// kernels kept) packed in element order on `w`'s device: a rank-1 tensor of `w`'s dtype.
pub(crate) fn pack(w: &Tensor, bits: &Bits) -> Result<Tensor> {
    w.apply_op1_no_bwd(&Pack { bits })
}

struct Unpack<'a> {
    bits: &'a Bits,
}

impl InplaceOp2 for Unpack<'_> {
    fn name(&self) -> &'static str {
        UNPACK
    }

    fn cpu_fwd(
        &self,
        _d: &mut CpuStorage,
        _dl: &Layout,
        _h: &CpuStorage,
        _hl: &Layout,
    ) -> Result<()> {
        #[cfg(feature = "emulate")]
        if let (Some(ctx), Some(bits)) = (crate::emulate::active(), self.bits.host()) {
            return crate::emulate::unpack(&ctx, _d, _dl, bits, _h);
        }
        bail!("{UNPACK}: internal error, the kernels' unpack outside a GPU or the emulator")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        d: &mut candle_core::CudaStorage,
        dl: &Layout,
        h: &candle_core::CudaStorage,
        _hl: &Layout,
    ) -> Result<()> {
        let Bits::Cuda(bits) = self.bits else {
            bail!("{UNPACK}: internal error, a host mask for a CUDA weight")
        };
        crate::cuda::unpack(d, dl, bits, h)
    }
}

/// `d` (the dropped weight, contiguous) given back the weight [`pack`] was given, in place:
/// the elements whose bit is set taken from `held` in order, no other element written.
pub(crate) fn unpack(d: &Tensor, held: &Tensor, bits: &Bits) -> Result<()> {
    d.inplace_op2(held, &Unpack { bits })
}
