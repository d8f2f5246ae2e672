//! The crate's CUDA kernels on the CPU, under an emulation of the CUDA execution model
//! (feature `emulate`; test support, needs a C++ compiler, never needed by a user of the
//! library).
//!
//! [`run`] applies a closure with every op of this crate that the closure applies to CPU
//! tensors (the seeded and plain functions, pruning, [`crate::unit_scores`],
//! [`crate::targeted_unit_dropout_from_scores`], [`crate::targeted_weight_dropout_rows`],
//! [`crate::targeted_dropout_many`], [`crate::VarMapDropout`], the backward pass) executed by
//! the real kernel sources of `kernels/*.cu`, compiled with the host C++ compiler: the launch
//! plan that a GPU of the given profile gets (the same kernels, grids, blocks, dynamic shared
//! memory and parameters as the `cuda` feature launches on it), each CUDA thread of a block
//! running concurrently with the others between barriers, warp intrinsics synchronising
//! their lanes, shared memory per block and bounds-checked. The results come back as CPU
//! tensors, so a test compares them with the CPU path bit for bit by wrapping the same code:
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_targeted_dropout::emulate::{self, Gpu};
//! use candle_targeted_dropout::targeted_weight_dropout_seeded;
//! # fn main() -> candle_core::Result<()> {
//! let w = Tensor::randn(0f32, 1.0, (64, 300), &Device::Cpu)?;
//! let cpu = targeted_weight_dropout_seeded(&w, 0.5, 0.5, 7, 0)?;
//! for gpu in [Gpu::h200(), Gpu::sm86()] {
//!     let kernels = emulate::run(&gpu, || targeted_weight_dropout_seeded(&w, 0.5, 0.5, 7, 0))?;
//!     assert_eq!(kernels.to_vec2::<f32>()?, cpu.to_vec2::<f32>()?);
//! }
//! # Ok(()) }
//! ```
//!
//! What it proves and what it cannot: the kernels' logic, their indexing and bounds, their
//! barriers (under the schedules of [`Schedule`]) and the plan's dispatch, on both profiles.
//! Not speed, not the hardware's own scheduling and memory ordering beyond barriers and
//! atomics, not register limits (`scripts/launchability.sh` checks those statically).
//!
//! The emulation applies on the thread that calls [`run`] and on the rayon threads of the
//! grouped call ([`crate::targeted_dropout_many`]) inside it; ops on other devices' tensors
//! run there as usual.

mod exec;
mod ffi;

pub use crate::plan::Gpu;
pub(crate) use exec::{
    backward_bits, float_len, forward, forward_kept, forward_many, pack, unit_scores, unpack,
};

use candle_core::Result;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The order in which the emulator runs the threads of a block between two barriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadOrder {
    /// Thread 0 first.
    Forward,
    /// The last thread first.
    Reverse,
    /// A random order from the schedule's seed.
    Random,
}

/// How the emulator schedules threads and blocks: the choices that expose a missing barrier
/// or a race without a sanitizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Each launch takes the next of the six combinations of [`ThreadOrder`] and warp
    /// run-ahead, with a fresh seed, and two workers interleave the blocks (the default); every
    /// fourth launch also switches threads at every shared- and global-memory access, not only
    /// at barriers and warp intrinsics (a non-atomic read-modify-write is torn).
    #[default]
    Rotate,
    /// One schedule for every launch.
    Fixed {
        /// The order of the threads of a block.
        order: ThreadOrder,
        /// Whether warps may run ahead of each other up to the next barrier.
        warp_runahead: bool,
        /// OS threads that run blocks concurrently (at least 1).
        block_workers: u32,
        /// The seed of the random order and of the garbage in fresh shared memory.
        seed: u64,
    },
}

/// The emulation in force on this thread: the profile and the schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub gpu: Gpu,
    pub schedule: Schedule,
    /// The trace of [`run_traced`] that records this context's launches, if any.
    pub trace: Option<u64>,
}

/// One kernel launch made under [`run_traced`]: what a GPU of the profile would launch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Launch {
    /// The kernel's `extern "C"` name (as in the fatbin).
    pub kernel: String,
    /// The grid, in blocks.
    pub grid: [u32; 3],
    /// The block, in threads.
    pub block: [u32; 3],
    /// Dynamic shared memory, in bytes.
    pub dynamic_smem: u32,
    /// Global-memory bytes the launch's threads loaded (as requested by the lanes).
    pub load_bytes: u64,
    /// Global-memory bytes the launch's threads stored.
    pub store_bytes: u64,
    /// Distinct 32-byte sectors loaded, counted per warp and per instruction instance as the
    /// hardware coalesces them.
    pub load_sectors: u64,
    /// Distinct 32-byte sectors stored, counted as `load_sectors`.
    pub store_sectors: u64,
}

/// The launches recorded per live trace of [`run_traced`].
static TRACES: Mutex<Option<HashMap<u64, Vec<Launch>>>> = Mutex::new(None);
static NEXT_TRACE: AtomicU64 = AtomicU64::new(1);

/// Records `l` in `trace` (a launch made under [`run_traced`]).
pub(crate) fn record(trace: u64, l: Launch) {
    let mut g = TRACES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = g.get_or_insert_with(HashMap::new).get_mut(&trace) {
        v.push(l);
    }
}

thread_local! {
    static ACTIVE: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// The emulation in force on this thread, if any.
pub(crate) fn active() -> Option<Context> {
    ACTIVE.with(|a| *a.borrow())
}

/// Runs `f` with `ctx` in force on this thread (and restores what was in force before, even
/// when `f` panics).
pub(crate) fn within<R>(ctx: Option<Context>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Context>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| *a.borrow_mut() = self.0);
        }
    }
    let _restore = Restore(ACTIVE.with(|a| a.replace(ctx)));
    f()
}

/// Runs `f` with every op of this crate on CPU tensors executed by the CUDA kernels under
/// emulation, with the launch plan of `gpu`; returns what `f` returns. The threads of each
/// launch are scheduled by [`Schedule::Rotate`]. Nested calls: the innermost profile applies.
///
/// A kernel fault (an out-of-bounds shared-memory access, a barrier that not every thread
/// reaches, a warp intrinsic reached by only some lanes of its mask) is an error that names
/// the op, the kernel, its launch and the block and thread.
pub fn run<T>(gpu: &Gpu, f: impl FnOnce() -> Result<T>) -> Result<T> {
    run_with(gpu, Schedule::Rotate, f)
}

/// [`run`] with a chosen [`Schedule`].
pub fn run_with<T>(gpu: &Gpu, schedule: Schedule, f: impl FnOnce() -> Result<T>) -> Result<T> {
    within(
        Some(Context {
            gpu: *gpu,
            schedule,
            trace: None,
        }),
        f,
    )
}

/// [`run`], and every kernel launch the closure made, in order: on its own thread and on the
/// worker threads the crate's ops use inside it (the grouped call's pool). A test asserts a
/// launch plan with it, e.g. that a grouped call is one launch:
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::emulate::{self, Gpu};
/// use candle_targeted_dropout::targeted_weight_dropout_seeded;
/// # fn main() -> candle_core::Result<()> {
/// let w = Tensor::randn(0f32, 1.0, (64, 300), &Device::Cpu)?;
/// let (_, launches) =
///     emulate::run_traced(&Gpu::h200(), || targeted_weight_dropout_seeded(&w, 0.5, 0.5, 7, 0))?;
/// assert!(!launches.is_empty());
/// # Ok(()) }
/// ```
pub fn run_traced<T>(gpu: &Gpu, f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<Launch>)> {
    let id = NEXT_TRACE.fetch_add(1, Ordering::Relaxed);
    TRACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(id, Vec::new());
    struct Take(u64);
    impl Drop for Take {
        fn drop(&mut self) {
            let mut g = TRACES.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = g.as_mut() {
                m.remove(&self.0);
            }
        }
    }
    let take = Take(id);
    let out = within(
        Some(Context {
            gpu: *gpu,
            schedule: Schedule::Rotate,
            trace: Some(id),
        }),
        f,
    )?;
    let launches = TRACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|m| m.remove(&id))
        .unwrap_or_default();
    drop(take);
    Ok((out, launches))
}
