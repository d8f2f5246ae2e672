//! The one communication primitive of the sharded ops: an element-wise sum over the ranks of
//! a group ([`Collective`]), and [`LocalGroup`], a group of threads in one process (tests,
//! examples without MPI). The MPI and NCCL groups live in `mpi.rs` and `nccl.rs`.

use candle_core::{bail, DType, Device, Result, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A group of ranks that can sum a tensor element-wise over all of them (an all-reduce).
///
/// Every rank of the group must make the same calls in the same order, with tensors of the
/// same dtype and shape; the sharded ops guarantee that for their own calls (their first call
/// is a fixed-size check of the arguments of every rank, so ranks that disagree get an error,
/// not a hang). Implemented for [`LocalGroup`] (threads of one process), `MpiCollective`
/// (feature `mpi`) and `NcclCollective` (feature `nccl`).
pub trait Collective {
    /// This rank's index, `0 .. world_size()`.
    fn rank(&self) -> usize;
    /// The number of ranks in the group.
    fn world_size(&self) -> usize;
    /// The element-wise sum over the ranks of `t` (u32, f32 or f64, on this rank's device), on
    /// the same device. The sharded ops only sum u32 counts, and floats of which at most one
    /// rank holds a non-zero value per element, so their results do not depend on the order
    /// in which an implementation adds.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
}

/// Checks the dtype of an all-reduce's tensor: u32, f32 or f64.
pub(crate) fn check_reduce_dtype(who: &str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::U32 | DType::F32 | DType::F64 => Ok(()),
        dt => bail!("{who}: all_reduce_sum takes u32, f32 or f64 tensors, got {dt:?}"),
    }
}

/// One rank's contribution: the data on the host.
#[derive(Debug, Clone)]
enum Payload {
    U32(Vec<u32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Payload {
    fn of(t: &Tensor) -> Result<Self> {
        let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
        Ok(match t.dtype() {
            DType::U32 => Payload::U32(flat.to_vec1()?),
            DType::F32 => Payload::F32(flat.to_vec1()?),
            DType::F64 => Payload::F64(flat.to_vec1()?),
            dt => bail!("LocalGroup: all_reduce_sum takes u32, f32 or f64 tensors, got {dt:?}"),
        })
    }

    /// `self += other`, element-wise (u32 wrapping, as MPI and NCCL sum unsigned integers).
    fn add(&mut self, other: &Payload) {
        match (self, other) {
            (Payload::U32(a), Payload::U32(b)) => a
                .iter_mut()
                .zip(b)
                .for_each(|(x, y)| *x = x.wrapping_add(*y)),
            (Payload::F32(a), Payload::F32(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += y),
            (Payload::F64(a), Payload::F64(b)) => a.iter_mut().zip(b).for_each(|(x, y)| *x += y),
            _ => unreachable!("dtypes checked equal before the sum"),
        }
    }

    fn tensor(self, dims: &[usize], device: &Device) -> Result<Tensor> {
        let t = match self {
            Payload::U32(v) => Tensor::from_vec(v, dims, &Device::Cpu)?,
            Payload::F32(v) => Tensor::from_vec(v, dims, &Device::Cpu)?,
            Payload::F64(v) => Tensor::from_vec(v, dims, &Device::Cpu)?,
        };
        t.to_device(device)
    }
}

/// The state of the group's current all-reduce.
#[derive(Debug)]
struct Round {
    /// Each rank's contribution (dtype, shape, data) once it has arrived.
    slots: Vec<Option<(DType, Vec<usize>, Payload)>>,
    arrived: usize,
    /// The sum (or the error every participant gets), once known.
    result: Option<std::result::Result<Payload, String>>,
    /// Participants that have taken the result; the round resets when all have.
    taken: usize,
    /// Ranks whose handle was dropped: a round they never join fails instead of waiting.
    departed: Vec<bool>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    round: Mutex<Round>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Round> {
        // A rank that panicked while holding the lock leaves a consistent round (it only
        // panics outside the critical sections): carry on.
        self.round.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Round>) -> MutexGuard<'a, Round> {
        self.changed.wait(g).unwrap_or_else(|e| e.into_inner())
    }
}

/// A group of `world` ranks in one process, one handle per rank, each moved into its rank's
/// thread: the [`Collective`] of the tests and of single-machine runs without MPI.
///
/// The sum adds the ranks' tensors in rank order. A rank whose handle is dropped (its thread
/// returned or panicked) makes every later all-reduce of the others an error naming it, so a
/// rank that leaves early cannot hang the rest; ranks that pass tensors of different dtypes
/// or shapes all get an error naming each rank's.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::{Collective, LocalGroup};
/// let sums: Vec<Vec<u32>> = std::thread::scope(|s| {
///     let ranks: Vec<_> = LocalGroup::new(3)
///         .into_iter()
///         .map(|g| s.spawn(move || {
///             let t = Tensor::new(&[g.rank() as u32, 1], &Device::Cpu).unwrap();
///             g.all_reduce_sum(&t).unwrap().to_vec1::<u32>().unwrap()
///         }))
///         .collect();
///     ranks.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, vec![vec![3, 3]; 3]);
/// ```
#[derive(Debug)]
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalGroup {
    /// `world` handles, rank `i` at index `i`. `world = 0` gives none.
    pub fn new(world: usize) -> Vec<LocalGroup> {
        let shared = Arc::new(Shared {
            world,
            round: Mutex::new(Round {
                slots: vec![None; world],
                arrived: 0,
                result: None,
                taken: 0,
                departed: vec![false; world],
            }),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// The sum of the slots, or the error naming every rank's dtype and shape.
    fn reduce(round: &Round) -> std::result::Result<Payload, String> {
        let slots: Vec<_> = round.slots.iter().flatten().collect();
        let (dt0, dims0, _) = slots[0];
        if slots.iter().any(|(dt, dims, _)| dt != dt0 || dims != dims0) {
            let each: Vec<String> = slots
                .iter()
                .enumerate()
                .map(|(r, (dt, dims, _))| format!("rank {r}: {dt:?} {dims:?}"))
                .collect();
            return Err(format!(
                "LocalGroup: the ranks' tensors differ in dtype or shape ({})",
                each.join(", ")
            ));
        }
        let mut sum = slots[0].2.clone();
        for (_, _, p) in &slots[1..] {
            sum.add(p);
        }
        Ok(sum)
    }

    /// Fails the current round if a rank that has not arrived has left.
    fn check_departed(round: &mut Round) {
        // Nobody waits yet (the round is decided by the first rank to arrive), or decided.
        if round.arrived == 0 || round.result.is_some() {
            return;
        }
        let gone: Vec<usize> = (0..round.slots.len())
            .filter(|&r| round.departed[r] && round.slots[r].is_none())
            .collect();
        if !gone.is_empty() {
            round.result = Some(Err(format!(
                "LocalGroup: rank(s) {gone:?} left the group (handle dropped) before this all-reduce"
            )));
        }
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        check_reduce_dtype("LocalGroup", t)?;
        let payload = Payload::of(t)?;
        let sh = &*self.shared;
        let mut g = sh.lock();
        // The previous round is still being collected: wait for it to reset.
        while g.result.is_some() {
            g = sh.wait(g);
        }
        g.slots[self.rank] = Some((t.dtype(), t.dims().to_vec(), payload));
        g.arrived += 1;
        if g.arrived == sh.world {
            let r = Self::reduce(&g);
            g.result = Some(r);
        } else {
            Self::check_departed(&mut g);
        }
        sh.changed.notify_all();
        while g.result.is_none() {
            g = sh.wait(g);
            Self::check_departed(&mut g);
        }
        let out = g.result.clone().expect("set above");
        g.taken += 1;
        if g.taken == g.arrived {
            g.slots.iter_mut().for_each(|s| *s = None);
            g.arrived = 0;
            g.taken = 0;
            g.result = None;
        }
        sh.changed.notify_all();
        drop(g);
        match out {
            Ok(p) => p.tensor(t.dims(), t.device()),
            Err(e) => bail!("rank {}: {e}", self.rank),
        }
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        let sh = &*self.shared;
        let mut g = sh.lock();
        g.departed[self.rank] = true;
        Self::check_departed(&mut g);
        sh.changed.notify_all();
    }
}
