//! [`Collective`] over NCCL (feature `nccl`): cudarc's NCCL bindings on candle's CUDA device
//! and its stream, one process (or thread) per GPU. The all-reduce runs on the stream that
//! candle's kernels run on, so it is ordered after the ops that produced its input.

use super::collective::check_reduce_dtype;
use super::Collective;
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Device, Result, Storage, Tensor};
use core::ffi::c_char;
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

/// The ranks of an NCCL communicator, one GPU each.
///
/// Rank 0 makes the communicator's id ([`NcclCollective::new_id`]) and hands its 128 bytes to
/// the other processes (a file, an MPI broadcast, an environment variable); each then calls
/// [`NcclCollective::new`] with its rank and its CUDA device:
///
/// ```no_run
/// # fn main() -> candle_core::Result<()> {
/// use candle_targeted_dropout::NcclCollective;
/// let (rank, world) = (0, 2); // from the launcher
/// let device = candle_core::Device::new_cuda(rank)?;
/// let id = NcclCollective::new_id()?; // on rank 0, sent to the others
/// let comm = NcclCollective::new(&device, rank, world, id)?;
/// # Ok(()) }
/// ```
pub struct NcclCollective {
    comm: Comm,
    device: CudaDevice,
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclCollective(rank {} of {})", self.rank, self.world)
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("NcclCollective: {what}: {e:?}"))
}

impl NcclCollective {
    /// A new communicator id (`ncclGetUniqueId`), as the 128 bytes the other ranks need.
    pub fn new_id() -> Result<[c_char; 128]> {
        let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        Ok(*id.internal())
    }

    /// Joins the communicator `id` (from rank 0's [`NcclCollective::new_id`]) as `rank` of
    /// `world`, on `device` (a CUDA device) and its stream.
    pub fn new(device: &Device, rank: usize, world: usize, id: [c_char; 128]) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            bail!("NcclCollective: the device must be a CUDA device, got {device:?}")
        };
        if rank >= world {
            bail!("NcclCollective: rank {rank} is not in a world of {world}")
        }
        let id = Id::uninit(id);
        let comm = Comm::from_rank(dev.cuda_stream(), rank, world, id)
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self {
            comm,
            device: dev.clone(),
            rank,
            world,
        })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        check_reduce_dtype("NcclCollective", t)?;
        // CPU tensors (the sharded ops' small tables) go through the device and back.
        let on_device = t.device().is_cuda();
        let t = t
            .to_device(&Device::Cuda(self.device.clone()))?
            .contiguous()?;
        let n = t.elem_count();
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            bail!("NcclCollective: internal error, the tensor is not on the GPU")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("NcclCollective: internal error, the tensor is not contiguous")
        };
        macro_rules! reduce {
            ($t:ty) => {{
                let src = s.as_cuda_slice::<$t>()?.slice(start..end);
                let mut dst = self.device.alloc_zeros::<$t>(n)?;
                self.comm
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(|e| nccl_err("ncclAllReduce", e))?;
                CudaStorage::wrap_cuda_slice(dst, self.device.clone())
            }};
        }
        let out = match t.dtype() {
            DType::U32 => reduce!(u32),
            DType::F32 => reduce!(f32),
            DType::F64 => reduce!(f64),
            dt => bail!("NcclCollective: unsupported dtype {dt:?}"),
        };
        drop(storage);
        let out = Tensor::from_storage(Storage::Cuda(out), t.shape(), BackpropOp::none(), false);
        if on_device {
            Ok(out)
        } else {
            out.to_device(&Device::Cpu)
        }
    }
}
