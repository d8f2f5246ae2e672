//! [`Collective`] over MPI (feature `mpi`): the `mpi` crate (rsmpi) on the system's MPI
//! (Debian's Open MPI in CI), CPU tensors. Run with `mpirun -n <world> <program>`.

use super::collective::check_reduce_dtype;
use super::Collective;
use candle_core::{bail, DType, Device, Result, Tensor};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

/// The ranks of an MPI communicator (usually `MPI_COMM_WORLD`: [`MpiCollective::world`]).
/// The sum is `MPI_Allreduce` with `MPI_SUM`; tensors on another device are summed on the
/// host and put back.
pub struct MpiCollective {
    comm: SimpleCommunicator,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MpiCollective(rank {} of {})",
            self.comm.rank(),
            self.comm.size()
        )
    }
}

impl MpiCollective {
    /// The ranks of `comm`.
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self { comm }
    }

    /// The world of an initialized MPI (`mpi::initialize()`, whose `Universe` must outlive
    /// the collective: MPI is finalized when it drops).
    pub fn world(universe: &mpi::environment::Universe) -> Self {
        Self::new(universe.world())
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        check_reduce_dtype("MpiCollective", t)?;
        let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
        let sum = SystemOperation::sum();
        let out = match t.dtype() {
            DType::U32 => {
                let send: Vec<u32> = flat.to_vec1()?;
                let mut recv = vec![0u32; send.len()];
                self.comm.all_reduce_into(&send[..], &mut recv[..], sum);
                Tensor::from_vec(recv, t.dims(), &Device::Cpu)?
            }
            DType::F32 => {
                let send: Vec<f32> = flat.to_vec1()?;
                let mut recv = vec![0f32; send.len()];
                self.comm.all_reduce_into(&send[..], &mut recv[..], sum);
                Tensor::from_vec(recv, t.dims(), &Device::Cpu)?
            }
            DType::F64 => {
                let send: Vec<f64> = flat.to_vec1()?;
                let mut recv = vec![0f64; send.len()];
                self.comm.all_reduce_into(&send[..], &mut recv[..], sum);
                Tensor::from_vec(recv, t.dims(), &Device::Cpu)?
            }
            dt => bail!("MpiCollective: unsupported dtype {dt:?}"),
        };
        out.to_device(t.device())
    }
}
