//! Executes a launch plan ([`crate::plan`]) on the emulator: the op's CPU storage copied into
//! host buffers that stand for device memory, the plan's buffers allocated (uninitialised
//! ones poisoned, so that an element no kernel writes shows), its launches run through
//! `td_emu_launch` and its result returned as CPU storage.

use super::ffi::{
    td_emu_last_traffic, td_emu_launch, TdEmuSchedule, TdEmuTraffic, TD_EMU_COUNT_TRAFFIC,
    TD_EMU_INTERLEAVE,
};
use super::{Context, Schedule, ThreadOrder};
use crate::cuda_params::{TdBlockParams, TdLongParams, TdTinyParams};
use crate::op::{filters, Output, TargetedOp};
use crate::plan::{self, Arg, Buf, Dtype, Init, Launch, OpSpec, Params, Plan, Step};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use half::{bf16, f16};
use std::alloc::{alloc, dealloc, Layout as Alloc};
use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// cudaMalloc's alignment: the emulated kernels see the alignments a GPU's would.
const ALIGN: usize = 256;
/// What an uninitialised buffer holds: all bits set (a NaN in every float type, a count no
/// histogram reaches).
const POISON: u8 = 0xff;

/// A buffer of "device memory" on the host.
struct DevBuf {
    alloc: NonNull<u8>,
    layout: Alloc,
    /// Where the data starts (the allocation plus the offset that keeps the alignment of a
    /// view into a larger storage).
    start: usize,
    len: usize,
}

// SAFETY: a DevBuf owns its allocation (no aliasing handle exists outside it), like a Vec.
unsafe impl Send for DevBuf {}

impl DevBuf {
    fn new(start: usize, len: usize, fill: u8) -> Result<DevBuf> {
        let Ok(layout) = Alloc::from_size_align((start + len).max(1), ALIGN) else {
            bail!("emulated CUDA: a buffer of {len} bytes is too large for this machine")
        };
        // SAFETY: the layout has a non-zero size.
        let Some(alloc) = NonNull::new(unsafe { alloc(layout) }) else {
            bail!("emulated CUDA: could not allocate {len} bytes")
        };
        // SAFETY: the allocation holds layout.size() bytes.
        unsafe { alloc.as_ptr().write_bytes(fill, layout.size()) };
        Ok(DevBuf {
            alloc,
            layout,
            start,
            len,
        })
    }

    /// A copy of `data`, starting `start` bytes past an aligned address.
    fn from_bytes(data: &[u8], start: usize) -> Result<DevBuf> {
        let mut b = DevBuf::new(start, data.len(), POISON)?;
        b.bytes_mut().copy_from_slice(data);
        Ok(b)
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: start is within the allocation (start + len <= its size).
        unsafe { self.alloc.as_ptr().add(self.start) }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: len initialised bytes from ptr() are owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in DevBuf::new with this layout, freed once.
        unsafe { dealloc(self.alloc.as_ptr(), self.layout) }
    }
}

/// The bytes of a slice of plain numbers.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: T is one of f16, bf16, f32, f64, u32 (no padding, every byte initialised); the
    // slice is borrowed for the result's lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Numbers from their bytes.
fn from_bytes<T: Copy + Default>(b: &[u8]) -> Vec<T> {
    let n = b.len() / std::mem::size_of::<T>();
    let mut v = vec![T::default(); n];
    // SAFETY: v holds n * size_of::<T>() bytes, b at least as many; every bit pattern is a
    // valid value of the float and integer types this is called with.
    unsafe {
        std::ptr::copy_nonoverlapping(
            b.as_ptr(),
            v.as_mut_ptr().cast::<u8>(),
            n * std::mem::size_of::<T>(),
        )
    };
    v
}

/// The contiguous elements of a storage under a layout, as bytes, and the byte offset of the
/// first one from the storage's start modulo the alignment (a GPU's view would start there).
fn input(op: &str, what: &str, s: &CpuStorage, l: &Layout) -> Result<(Vec<u8>, usize)> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: internal error, {what} is not contiguous")
    };
    let (bytes, size) = match s {
        CpuStorage::F16(v) => (as_bytes(&v[start..end]), 2),
        CpuStorage::BF16(v) => (as_bytes(&v[start..end]), 2),
        CpuStorage::F32(v) => (as_bytes(&v[start..end]), 4),
        CpuStorage::F64(v) => (as_bytes(&v[start..end]), 8),
        other => bail!(
            "{op}: unsupported dtype {:?} (expected f16, bf16, f32 or f64)",
            other.dtype()
        ),
    };
    Ok((bytes.to_vec(), (start * size) % ALIGN))
}

static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// The emulator's schedule of the next launch; `count_traffic` for a launch that
/// [`super::run_traced`] records. [`Schedule::Rotate`] switches fibers at every memory access
/// on every fourth launch (a non-atomic read-modify-write of two threads is then torn).
fn schedule(s: Schedule, count_traffic: bool) -> TdEmuSchedule {
    let mut flags = if count_traffic {
        TD_EMU_COUNT_TRAFFIC
    } else {
        0
    };
    let (order, warp_runahead, block_workers, seed) = match s {
        Schedule::Rotate => {
            let c = LAUNCHES.fetch_add(1, Ordering::Relaxed);
            let order = [
                ThreadOrder::Forward,
                ThreadOrder::Reverse,
                ThreadOrder::Random,
            ];
            let seed = 0x7d5eed ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if c % 4 == 3 {
                flags |= TD_EMU_INTERLEAVE;
            }
            (order[(c % 3) as usize], (c / 3) % 2 == 1, 2, seed)
        }
        Schedule::Fixed {
            order,
            warp_runahead,
            block_workers,
            seed,
        } => (order, warp_runahead, block_workers.max(1), seed),
    };
    TdEmuSchedule {
        thread_order: match order {
            ThreadOrder::Forward => 0,
            ThreadOrder::Reverse => 1,
            ThreadOrder::Random => 2,
        },
        block_workers,
        warp_runahead: warp_runahead as u32,
        flags,
        seed,
        barrier_timeout_ms: 0,
    }
}

/// The buffers of a plan under execution, by role.
struct Bufs(Vec<(Buf, DevBuf)>);

impl Bufs {
    fn get(&self, buf: Buf) -> Result<&DevBuf> {
        match self.0.iter().find(|(b, _)| *b == buf) {
            Some((_, d)) => Ok(d),
            None => bail!("emulated CUDA: internal error, the plan has no buffer {buf:?}"),
        }
    }

    fn take(&mut self, buf: Buf) -> Result<DevBuf> {
        match self.0.iter().position(|(b, _)| *b == buf) {
            Some(i) => Ok(self.0.swap_remove(i).1),
            None => bail!("emulated CUDA: internal error, the plan has no buffer {buf:?}"),
        }
    }

    /// The address of a pointer argument (null for [`Arg::Null`]).
    fn address(&self, a: Arg) -> Result<u64> {
        match a {
            Arg::Null => Ok(0),
            Arg::Buf(b, off) => {
                let d = self.get(b)?;
                if off as usize > d.len {
                    bail!(
                        "emulated CUDA: internal error, {b:?} + {off} is past its {} bytes",
                        d.len
                    )
                }
                Ok(d.ptr() as u64 + off)
            }
        }
    }
}

/// One launch on the emulator; a fault is an error naming the op, the kernel and the launch.
fn launch(op: &str, ctx: &Context, bufs: &Bufs, l: &Launch) -> Result<()> {
    launch_with(op, ctx, l, |_, a| bufs.address(a))
}

/// One launch whose pointer arguments resolve through `addr(segment, arg)` (the segment of a
/// grouped launch whose buffers an argument names; 0 for the kernel's own arguments).
fn launch_with(
    op: &str,
    ctx: &Context,
    l: &Launch,
    addr: impl Fn(usize, Arg) -> Result<u64>,
) -> Result<()> {
    let name = l.kernel.name();
    let mut values = l
        .args
        .iter()
        .map(|a| addr(0, *a))
        .collect::<Result<Vec<u64>>>()?;
    let mut params = l.params.clone();
    for (i, seg) in l.segs.iter().enumerate() {
        params.set_seg(i, seg.resolve(|a| addr(i, a))?);
    }
    let mut args: Vec<*mut c_void> = values
        .iter_mut()
        .map(|v| (v as *mut u64).cast::<c_void>())
        .collect();
    args.push(match &mut params {
        Params::Scores(p) => p as *mut _ as *mut c_void,
        Params::UnitApply(p) => p as *mut _ as *mut c_void,
        Params::Nm(p) => p as *mut _ as *mut c_void,
        Params::Block(p) => &mut **p as *mut TdBlockParams as *mut c_void,
        Params::Tiny(p) => &mut **p as *mut TdTinyParams as *mut c_void,
        Params::Long(p) => &mut **p as *mut TdLongParams as *mut c_void,
        Params::Numel(p) => p as *mut _ as *mut c_void,
        Params::Pack(p) => p as *mut _ as *mut c_void,
    });
    let sched = schedule(ctx.schedule, ctx.trace.is_some());
    let cname = CString::new(name.clone()).expect("kernel names have no NUL");
    let mut err = vec![0u8; 4096];
    // SAFETY: every pointer argument is the address of a live buffer of the plan (or null
    // where the kernel takes an absent buffer), sized by the plan for what the launch
    // touches; args[i] points at argument i's value (values and params outlive the call);
    // err holds err.len() bytes; the call blocks until the launch is done.
    let rc = unsafe {
        td_emu_launch(
            cname.as_ptr(),
            l.grid.0,
            l.grid.1,
            l.grid.2,
            l.block.0,
            l.block.1,
            l.block.2,
            l.smem,
            args.as_mut_ptr(),
            args.len() as u32,
            &sched,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if rc != 0 {
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        bail!(
            "{op} on the emulated {}: kernel {name} (grid {:?}, block {:?}, {} bytes of dynamic \
             shared memory; schedule {sched:?}) failed: {}",
            ctx.gpu.name,
            l.grid,
            l.block,
            l.smem,
            String::from_utf8_lossy(&err[..end])
        )
    }
    if let Some(trace) = ctx.trace {
        let mut t = TdEmuTraffic::default();
        // SAFETY: t is a valid TdEmuTraffic to write; the launch above ran on this thread.
        unsafe { td_emu_last_traffic(&mut t) };
        super::record(
            trace,
            super::Launch {
                kernel: name,
                grid: [l.grid.0, l.grid.1, l.grid.2],
                block: [l.block.0, l.block.1, l.block.2],
                dynamic_smem: l.smem,
                load_bytes: t.load_bytes,
                store_bytes: t.store_bytes,
                load_sectors: t.load_sectors,
                store_sectors: t.store_sectors,
            },
        );
    }
    Ok(())
}

/// Runs `plan` with `inputs` bound to their roles; returns every buffer.
fn execute(op: &str, ctx: &Context, plan: &Plan, inputs: Vec<(Buf, DevBuf)>) -> Result<Bufs> {
    let mut bufs = allocate(plan, inputs)?;
    run_steps(op, ctx, plan, &mut bufs)?;
    Ok(bufs)
}

/// The buffers of `plan`: `inputs` bound to their roles and the plan's own allocations.
fn allocate(plan: &Plan, inputs: Vec<(Buf, DevBuf)>) -> Result<Bufs> {
    let mut bufs = Bufs(inputs);
    for a in &plan.allocs {
        let fill = match a.init {
            Init::Zeroed => 0,
            Init::Uninit => POISON,
        };
        bufs.0
            .push((a.buf, DevBuf::new(0, a.bytes as usize, fill)?));
    }
    Ok(bufs)
}

/// The steps of `plan`, in order, on its buffers.
fn run_steps(op: &str, ctx: &Context, plan: &Plan, bufs: &mut Bufs) -> Result<()> {
    for step in &plan.steps {
        match step {
            Step::Launch(l) => launch(op, ctx, bufs, l)?,
            Step::Copy { from, to, bytes } => {
                let n = *bytes as usize;
                let src = bufs.get(*from)?.bytes()[..n].to_vec();
                let i = bufs.0.iter().position(|(b, _)| b == to);
                let Some(i) = i else {
                    bail!("emulated CUDA: internal error, no buffer {to:?}")
                };
                bufs.0[i].1.bytes_mut()[..n].copy_from_slice(&src);
            }
            Step::Zero { buf, bytes } => {
                let i = bufs.0.iter().position(|(b, _)| b == buf);
                let Some(i) = i else {
                    bail!("emulated CUDA: internal error, no buffer {buf:?}")
                };
                bufs.0[i].1.bytes_mut()[..*bytes as usize].fill(0);
            }
        }
    }
    Ok(())
}

/// A storage of `dtype` from its bytes.
fn storage(dtype: Dtype, b: &[u8]) -> CpuStorage {
    match dtype {
        Dtype::F16 => CpuStorage::F16(from_bytes::<f16>(b)),
        Dtype::Bf16 => CpuStorage::BF16(from_bytes::<bf16>(b)),
        Dtype::F32 => CpuStorage::F32(from_bytes::<f32>(b)),
        Dtype::F64 => CpuStorage::F64(from_bytes::<f64>(b)),
    }
}

/// The emulated forward of [`TargetedOp`]: selection on `w`, values from `vals` (the
/// backward pass) or `w`, as `crate::cuda::forward` runs it on a GPU of the profile.
pub(crate) fn forward(
    op: &TargetedOp,
    ctx: &Context,
    w: &CpuStorage,
    wl: &Layout,
    vals: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let name = op.name();
    let dtype = Dtype::of(name, w.dtype())?;
    if let Some((v, _)) = vals {
        if v.dtype() != w.dtype() {
            bail!(
                "{name}: w is {:?} and the gradient {:?}; both must be the same float dtype",
                w.dtype(),
                v.dtype()
            )
        }
    }
    let (plan, inputs) = prepare(op, w, wl, vals, false, &ctx.gpu.limits()?)?;
    let mut bufs = execute(name, ctx, &plan, inputs)?;
    let (out, _) = results(op, dtype, &mut bufs)?;
    Ok((out, wl.shape().clone()))
}

/// The plan of `op` on `w` (and `vals`) and its input buffers, as `crate::cuda` makes them:
/// the bit mask kept when `bits`.
fn prepare(
    op: &TargetedOp,
    w: &CpuStorage,
    wl: &Layout,
    vals: Option<(&CpuStorage, &Layout)>,
    bits: bool,
    lim: &plan::Limits,
) -> Result<(Plan, Vec<(Buf, DevBuf)>)> {
    let name = op.name();
    let dtype = Dtype::of(name, w.dtype())?;
    let mut spec = OpSpec::new(op, dtype, wl.shape(), vals.is_some());
    spec.bits = bits;
    spec.check()?;
    let (wb, at) = input(name, "w", w, wl)?;
    let mut inputs = vec![(Buf::W, DevBuf::from_bytes(&wb, at)?)];
    let mut aligned16 = at % 16 == 0;
    if let Some((v, vl)) = vals {
        let (vb, at) = input(name, "the gradient", v, vl)?;
        aligned16 &= at % 16 == 0;
        inputs.push((Buf::Vals, DevBuf::from_bytes(&vb, at)?));
    }
    spec.aligned16 = aligned16;
    Ok((plan::forward(&spec, lim)?, inputs))
}

/// The output of an executed forward plan and its kept bit mask, if the plan wrote one.
fn results(
    op: &TargetedOp,
    dtype: Dtype,
    bufs: &mut Bufs,
) -> Result<(CpuStorage, Option<Vec<u32>>)> {
    let out = match op.output {
        Output::Values => storage(dtype, bufs.take(Buf::Out)?.bytes()),
        Output::Mask => CpuStorage::U8(bufs.take(Buf::Mask)?.bytes().to_vec()),
    };
    let bits = match bufs.0.iter().any(|(b, _)| *b == Buf::Bits) {
        true => Some(from_bytes::<u32>(bufs.take(Buf::Bits)?.bytes())),
        false => None,
    };
    Ok((out, bits))
}

/// The emulated forward of many ops in one call (`crate::targeted_dropout_many`,
/// `crate::VarMapDropout`): the items' plans grouped ([`plan::group`]: one block launch
/// per kernel width for all the items it serves), then each item's remaining steps. Returns
/// each item's output and, where `keep[i]`, the bit mask its plan kept (`None` where the
/// kernel serving it writes none).
pub(crate) fn forward_many(
    ctx: &Context,
    items: &[(&TargetedOp, &CpuStorage, &Layout)],
    keep: &[bool],
) -> Result<Vec<(CpuStorage, Option<Vec<u32>>)>> {
    const OP: &str = "targeted_dropout_many";
    let lim = ctx.gpu.limits()?;
    let mut plans = Vec::with_capacity(items.len());
    let mut bufs = Vec::with_capacity(items.len());
    for ((op, w, wl), &bits) in items.iter().zip(keep) {
        let (plan, inputs) = prepare(op, w, wl, None, bits, &lim)?;
        plans.push(plan);
        bufs.push(inputs);
    }
    let grouped = plan::group(&mut plans);
    let mut bufs = plans
        .iter()
        .zip(bufs)
        .map(|(p, inputs)| allocate(p, inputs))
        .collect::<Result<Vec<Bufs>>>()?;
    for g in &grouped {
        launch_with(OP, ctx, &g.launch, |seg, a| bufs[g.items[seg]].address(a))?;
    }
    let mut out = Vec::with_capacity(items.len());
    for ((plan, b), (op, w, _)) in plans.iter().zip(&mut bufs).zip(items) {
        run_steps(op.name(), ctx, plan, b)?;
        out.push(results(op, Dtype::of(op.name(), w.dtype())?, b)?);
    }
    Ok(out)
}

/// The emulated forward of one op keeping its bit mask (`None` where the kernel serving it
/// writes none), as `crate::cuda::forward_kept` runs it.
pub(crate) fn forward_kept(
    op: &TargetedOp,
    ctx: &Context,
    w: &CpuStorage,
    wl: &Layout,
) -> Result<(CpuStorage, Option<Vec<u32>>)> {
    let mut r = forward_many(ctx, &[(op, w, wl)], &[true])?;
    Ok(r.remove(0))
}

/// The emulated backward from a kept bit mask (`td_bwd_*`): the gradient `g` with the
/// elements whose bit is set zeroed. `None` when the gradient does not start 16-byte aligned
/// (the kernel's vectors need it): the caller recomputes the selection instead, as on a GPU.
pub(crate) fn backward_bits(
    ctx: &Context,
    g: &CpuStorage,
    gl: &Layout,
    bits: &[u32],
) -> Result<Option<CpuStorage>> {
    const OP: &str = "targeted-dropout-backward";
    let dtype = Dtype::of(OP, g.dtype())?;
    let (gb, at) = input(OP, "the gradient", g, gl)?;
    if at % 16 != 0 {
        return Ok(None);
    }
    let numel = gl.shape().elem_count() as u64;
    if bits.len() as u64 * 32 < numel {
        bail!(
            "{OP}: internal error, a kept mask of {} words for {numel} elements",
            bits.len()
        )
    }
    let plan = plan::backward_bits(dtype, numel, &ctx.gpu.limits()?);
    let inputs = vec![
        (Buf::Vals, DevBuf::from_bytes(&gb, at)?),
        (Buf::Bits, DevBuf::from_bytes(as_bytes(bits), 0)?),
    ];
    let mut bufs = execute(OP, ctx, &plan, inputs)?;
    Ok(Some(storage(dtype, bufs.take(Buf::Out)?.bytes())))
}

/// The emulated pack of the dropped elements of `w` (those whose bit is set in `bits`), as
/// `crate::cuda::pack` runs it: the chunk counts (`td_pack_count`), their prefix sums on the
/// host, the packed values (`td_pack_*`).
pub(crate) fn pack(ctx: &Context, w: &CpuStorage, wl: &Layout, bits: &[u32]) -> Result<CpuStorage> {
    const OP: &str = "VarMapDropout::apply (pack)";
    let dtype = Dtype::of(OP, w.dtype())?;
    let numel = wl.shape().elem_count() as u64;
    if (bits.len() as u64) < numel.div_ceil(32) {
        bail!(
            "{OP}: internal error, a mask of {} words for {numel} elements",
            bits.len()
        )
    }
    let lim = ctx.gpu.limits()?;
    let mask = || DevBuf::from_bytes(as_bytes(bits), 0);
    let (offsets, held) = pack_offsets(OP, ctx, bits, numel)?;
    let (wb, at) = input(OP, "the weight", w, wl)?;
    let inputs = vec![
        (Buf::W, DevBuf::from_bytes(&wb, at)?),
        (Buf::Bits, mask()?),
        (Buf::Offsets, DevBuf::from_bytes(as_bytes(&offsets), 0)?),
    ];
    let mut b = execute(OP, ctx, &plan::pack(dtype, numel, held, &lim), inputs)?;
    Ok(storage(dtype, b.take(Buf::Held)?.bytes()))
}

/// The chunks' offsets of a pack (`td_pack_count`, then the host's sums) and their total.
fn pack_offsets(op: &str, ctx: &Context, bits: &[u32], numel: u64) -> Result<(Vec<u64>, u64)> {
    let lim = ctx.gpu.limits()?;
    let inputs = vec![(Buf::Bits, DevBuf::from_bytes(as_bytes(bits), 0)?)];
    let mut b = execute(op, ctx, &plan::pack_counts(numel, &lim), inputs)?;
    let counts: Vec<u32> = from_bytes(b.take(Buf::Counts)?.bytes());
    Ok(plan::pack_offsets(&counts))
}

/// The emulated inverse of [`pack`], in place, as `crate::cuda::unpack` runs it: the
/// elements of `d` (the dropped weight) whose bit is set taken from `held` in order.
pub(crate) fn unpack(
    ctx: &Context,
    d: &mut CpuStorage,
    dl: &Layout,
    bits: &[u32],
    held: &CpuStorage,
) -> Result<()> {
    const OP: &str = "VarMapDropout::finish (unpack)";
    let dtype = Dtype::of(OP, d.dtype())?;
    let numel = dl.shape().elem_count() as u64;
    let count = float_len(held)?;
    let (offsets, total) = pack_offsets(OP, ctx, bits, numel)?;
    if total != count as u64 {
        bail!("{OP}: internal error, {count} held values for a mask of {total}")
    }
    let (db, at) = input(OP, "the weight", d, dl)?;
    let (hb, hat) = input(OP, "the held values", held, &Layout::contiguous(count))?;
    let inputs = vec![
        (Buf::Out, DevBuf::from_bytes(&db, at)?),
        (Buf::Bits, DevBuf::from_bytes(as_bytes(bits), 0)?),
        (Buf::Offsets, DevBuf::from_bytes(as_bytes(&offsets), 0)?),
        (Buf::Held, DevBuf::from_bytes(&hb, hat)?),
    ];
    let plan = plan::unpack(dtype, numel, count as u64, &ctx.gpu.limits()?);
    let mut b = execute(OP, ctx, &plan, inputs)?;
    let out = b.take(Buf::Out)?;
    let Some((start, end)) = dl.contiguous_offsets() else {
        bail!("{OP}: internal error, the weight is not contiguous")
    };
    match d {
        CpuStorage::F16(v) => v[start..end].copy_from_slice(&from_bytes::<f16>(out.bytes())),
        CpuStorage::BF16(v) => v[start..end].copy_from_slice(&from_bytes::<bf16>(out.bytes())),
        CpuStorage::F32(v) => v[start..end].copy_from_slice(&from_bytes::<f32>(out.bytes())),
        CpuStorage::F64(v) => v[start..end].copy_from_slice(&from_bytes::<f64>(out.bytes())),
        other => bail!("{OP}: unsupported dtype {:?}", other.dtype()),
    }
    Ok(())
}

/// The elements of a float CPU storage.
pub(crate) fn float_len(s: &CpuStorage) -> Result<usize> {
    Ok(match s {
        CpuStorage::F16(v) => v.len(),
        CpuStorage::BF16(v) => v.len(),
        CpuStorage::F32(v) => v.len(),
        CpuStorage::F64(v) => v.len(),
        other => bail!(
            "emulated CUDA: internal error, a storage of {:?}",
            other.dtype()
        ),
    })
}

/// The emulated unit scores of `w`, as `crate::cuda::unit_scores` computes them.
pub(crate) fn unit_scores(
    ctx: &Context,
    w: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    const OP: &str = "unit_scores";
    let dtype = Dtype::of(OP, w.dtype())?;
    let (d0, n) = filters(l.shape());
    let plan = plan::unit_scores(dtype, d0 as u64, n as u64, &ctx.gpu.limits()?);
    let (wb, at) = input(OP, "w", w, l)?;
    let inputs = vec![(Buf::W, DevBuf::from_bytes(&wb, at)?)];
    let mut bufs = execute(OP, ctx, &plan, inputs)?;
    let scores = storage(dtype.score(), bufs.take(Buf::Scores)?.bytes());
    Ok((scores, Shape::from(d0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda_params::{TdBwdParams, UnitApplyParams};
    use crate::plan::{Kernel, Width};

    fn ctx() -> Context {
        Context {
            gpu: crate::plan::Gpu::sm86(),
            schedule: Schedule::Rotate,
            trace: None,
        }
    }

    /// A launch the emulator refuses is an error naming the op, the kernel and the profile.
    #[test]
    fn a_refused_launch_names_the_kernel() {
        let l = Launch {
            kernel: Kernel::UnitApply(Width::U32),
            grid: (1, 1, 1),
            block: (256, 1, 1),
            smem: 0,
            args: vec![Arg::Null, Arg::Null],
            params: Params::UnitApply(UnitApplyParams { numel: 0, n: 1 }),
            segs: Vec::new(),
        };
        let e = launch("targeted-unit-dropout", &ctx(), &Bufs(vec![]), &l)
            .unwrap_err()
            .to_string();
        for want in [
            "targeted-unit-dropout",
            "td_unit_apply_u32",
            "sm_86",
            "arguments",
        ] {
            assert!(e.contains(want), "{want} in: {e}");
        }
    }

    /// A launch past what a GPU allows (here 1 GB of dynamic shared memory, which no plan
    /// asks for) is an error naming the op, the kernel and the limit, and runs nothing.
    #[test]
    fn a_launch_past_the_limits_names_the_kernel() {
        let numel = 1024u64;
        let bufs = Bufs(vec![
            (Buf::Bits, DevBuf::new(0, (numel / 8) as usize, 0).unwrap()),
            (Buf::Mask, DevBuf::new(0, numel as usize, 7).unwrap()),
        ]);
        let l = Launch {
            kernel: Kernel::MaskU8,
            grid: (1, 1, 1),
            block: (256, 1, 1),
            smem: 1 << 30,
            args: vec![Arg::Buf(Buf::Bits, 0), Arg::Buf(Buf::Mask, 0)],
            params: Params::Numel(TdBwdParams { numel }),
            segs: Vec::new(),
        };
        let e = launch("targeted-weight-dropout-mask", &ctx(), &bufs, &l)
            .unwrap_err()
            .to_string();
        for want in [
            "targeted-weight-dropout-mask",
            "td_mask_u8",
            "dynamic shared memory",
        ] {
            assert!(e.contains(want), "{want} in: {e}");
        }
        assert!(
            bufs.0[1].1.bytes().iter().all(|&b| b == 7),
            "the mask is untouched"
        );
    }
}
