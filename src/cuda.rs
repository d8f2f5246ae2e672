//! The CUDA path: launches the kernels of `kernels/targeted_dropout.cu` (compiled by
//! `build.rs` into a fatbin with sm_90 machine code and compute_80 PTX) for the custom ops.
//!
//! Every kernel works on raw bits, so f16 and bf16 share the 16-bit selection kernels; the
//! unit scores have a kernel per dtype. Arguments are checked in Rust before any launch.

use crate::op::{filters, DropoutKind, Output, TargetedOp};
use crate::philox::THRESHOLD_ALWAYS;
use crate::select::targeted_count;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/targeted_dropout.fatbin"));

/// Threads per block of every kernel (`BLOCK` in the .cu file).
const BLOCK: u32 = 256;
/// Rows up to 32 elements go to the thread-per-row kernel.
const TINY_ROW: u64 = 32;
/// Rows whose bytes fit here are staged in shared memory, one block per row.
const BLOCK_ROW_BYTES: u64 = 64 * 1024;
/// Elements per block in the long-row kernels.
const LONG_CHUNK: u32 = 4 * 1024;

/// The loaded module of one device and what the launches need to know about the device.
pub struct Kernels {
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    stream: Arc<CudaStream>,
    sms: u32,
    l2_bytes: u64,
}

static LOADED: OnceLock<Mutex<HashMap<candle_core::cuda_backend::DeviceId, Arc<Kernels>>>> =
    OnceLock::new();

impl Kernels {
    /// The kernels of `dev`, loaded on first use.
    pub fn of(dev: &CudaDevice) -> Result<Arc<Kernels>> {
        let map = LOADED.get_or_init(Default::default);
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = map.get(&dev.id()) {
            return Ok(k.clone());
        }
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        let module = ctx.load_module(Ptx::from_binary(FATBIN.to_vec())).w()?;
        let attr = |a| ctx.attribute(a).w();
        let sms = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let l2 = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u64;
        let k = Arc::new(Kernels {
            module,
            functions: Mutex::new(HashMap::new()),
            stream,
            sms,
            l2_bytes: l2,
        });
        map.insert(dev.id(), k.clone());
        Ok(k)
    }

    fn func(&self, name: &str) -> Result<CudaFunction> {
        let mut f = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(func) = f.get(name) {
            return Ok(func.clone());
        }
        let func = self.module.load_function(name).w()?;
        f.insert(name.to_string(), func.clone());
        Ok(func)
    }

    /// Number of multiprocessors of the device.
    pub fn multiprocessors(&self) -> u32 {
        self.sms
    }
}

fn cfg(grid: (u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0.max(1), grid.1.max(1), 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// The draws of one call, as the kernels take them.
#[derive(Clone, Copy)]
struct Draw {
    seed: u64,
    offset: u64,
    thr: u32,
}

/// Bits of an element type, for the kernel names.
trait Width: DeviceRepr {
    const NAME: &'static str;
}
impl Width for half::f16 {
    const NAME: &'static str = "u16";
}
impl Width for half::bf16 {
    const NAME: &'static str = "u16";
}
impl Width for f32 {
    const NAME: &'static str = "u32";
}
impl Width for f64 {
    const NAME: &'static str = "u64";
}

const NULL: u64 = 0;

/// Kernel variants for benchmarking (`TD_KERNEL_OPTS`, a bit set; 0 by default): bit 0
/// aggregates the histogram atomics of a warp with `__match_any_sync`; bit 1 stages short
/// rows with one load in flight per thread instead of two.
fn kernel_options() -> u32 {
    std::env::var("TD_KERNEL_OPTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Raises a kernel's dynamic shared memory limit when it needs more than the default 48 KB.
fn allow_smem(func: &CudaFunction, smem: u32) -> Result<()> {
    if smem > 48 * 1024 {
        let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        func.set_attribute(attr, smem as i32).w()?;
    }
    Ok(())
}

/// Weight-dropout selection over `rows` rows of `n` elements of `w`: writes the masked
/// `vals` (or `w` when `vals` is `None`) into `out` and the dropped flags into `mask`.
#[allow(clippy::too_many_arguments)]
fn select_rows<T: Width>(
    kern: &Kernels,
    w: &CudaView<T>,
    vals: Option<&CudaView<T>>,
    mut out: Option<&mut CudaSlice<T>>,
    mut mask: Option<&mut CudaSlice<u8>>,
    rows: u64,
    n: u64,
    k: u64,
    d: Draw,
) -> Result<()> {
    let stream = &kern.stream;
    if n >= u32::MAX as u64 {
        bail!("targeted dropout on CUDA: rows of {n} elements are too long (at most 2^32 - 2)")
    }
    if k == 0 || d.thr == 0 {
        // Nothing is dropped: the output is a copy.
        if let Some(o) = out.as_deref_mut() {
            match vals {
                Some(v) => stream.memcpy_dtod(v, o).w()?,
                None => stream.memcpy_dtod(w, o).w()?,
            }
        }
        if let Some(m) = mask.as_deref_mut() {
            stream.memset_zeros(m).w()?
        }
        return Ok(());
    }
    let size = std::mem::size_of::<T>() as u64;
    let (n32, k32) = (n as u32, k as u32);
    let opts = kernel_options();
    macro_rules! io_args {
        ($b:ident) => {
            $b.arg(w);
            match vals {
                Some(v) => $b.arg(v),
                None => $b.arg(&NULL),
            };
            match out.as_deref_mut() {
                Some(o) => $b.arg(o),
                None => $b.arg(&NULL),
            };
            match mask.as_deref_mut() {
                Some(m) => $b.arg(m),
                None => $b.arg(&NULL),
            };
        };
    }
    if n <= TINY_ROW {
        let func = kern.func(&format!("tdw_tiny_{}", T::NAME))?;
        let smem = (BLOCK as u64 * (n | 1) * size) as u32;
        allow_smem(&func, smem)?;
        let grid = rows.div_ceil(BLOCK as u64).min(kern.sms as u64 * 8) as u32;
        let mut b = stream.launch_builder(&func);
        io_args!(b);
        b.arg(&rows)
            .arg(&n32)
            .arg(&k32)
            .arg(&d.seed)
            .arg(&d.offset)
            .arg(&d.thr);
        // SAFETY: the pointers cover rows * n elements (checked by the caller), the shared
        // memory is what the kernel indexes (256 rows of an odd stride >= n).
        unsafe { b.launch(cfg((grid, 1), smem)) }.w()?;
    } else if n * size <= BLOCK_ROW_BYTES {
        // Bit 1 of the options: the previous version, one load in flight per thread.
        let version = if opts & 2 != 0 {
            "tdw_block1"
        } else {
            "tdw_block"
        };
        let func = kern.func(&format!("{version}_{}", T::NAME))?;
        let smem = (n.div_ceil(4) * 4 * size) as u32;
        allow_smem(&func, smem)?;
        let per_sm = func
            .occupancy_max_active_blocks_per_multiprocessor(BLOCK, smem as usize, None)
            .w()?
            .max(1);
        let grid = rows.min(kern.sms as u64 * per_sm as u64) as u32;
        let mut b = stream.launch_builder(&func);
        io_args!(b);
        b.arg(&rows)
            .arg(&n32)
            .arg(&k32)
            .arg(&d.seed)
            .arg(&d.offset)
            .arg(&d.thr);
        b.arg(&opts);
        // SAFETY: as above; the shared memory holds the row rounded up to four elements.
        unsafe { b.launch(cfg((grid, 1), smem)) }.w()?;
    } else {
        // Rows processed in groups that fit in half the L2, so that the histogram passes
        // after the first one and the output pass read the L2, not device memory.
        let passes = size as u32; // 8-bit digits: one pass per byte of the key
        let chunks = n.div_ceil(LONG_CHUNK as u64) as u32;
        let group = ((kern.l2_bytes / 2) / (n * size)).clamp(1, rows.min(65_535));
        let mut hist = stream
            .alloc_zeros::<u32>((rows * passes as u64 * 256) as usize)
            .w()?;
        // SAFETY: every (row, chunk, bin) of a group is written by the last histogram pass
        // before the output pass reads it.
        let mut chunk_hist =
            unsafe { stream.alloc::<u32>((group * chunks as u64 * 256) as usize) }.w()?;
        let hist_fn = kern.func(&format!("tdw_long_hist_{}", T::NAME))?;
        let apply_fn = kern.func(&format!("tdw_long_apply_{}", T::NAME))?;
        let mut row0 = 0u64;
        while row0 < rows {
            let g = group.min(rows - row0);
            let mut hist_g = hist.slice_mut((row0 * passes as u64 * 256) as usize..);
            for pass in 0..passes as i32 {
                let mut b = stream.launch_builder(&hist_fn);
                b.arg(w)
                    .arg(&row0)
                    .arg(&n32)
                    .arg(&LONG_CHUNK)
                    .arg(&k32)
                    .arg(&pass);
                b.arg(&mut hist_g).arg(&mut chunk_hist).arg(&opts);
                // SAFETY: rows row0 .. row0 + g exist; hist_g holds g * passes * 256 counts
                // and chunk_hist g * chunks * 256.
                unsafe { b.launch(cfg((chunks, g as u32), 0)) }.w()?;
            }
            let mut b = stream.launch_builder(&apply_fn);
            io_args!(b);
            b.arg(&row0).arg(&n32).arg(&LONG_CHUNK).arg(&k32);
            b.arg(&mut hist_g).arg(&chunk_hist);
            b.arg(&d.seed).arg(&d.offset).arg(&d.thr);
            // SAFETY: as above.
            unsafe { b.launch(cfg((chunks, g as u32), 0)) }.w()?;
            row0 += g;
        }
    }
    Ok(())
}

/// The unit scores and the dropped flag of each of the `d0` units.
fn unit_mask<T: Width>(
    kern: &Kernels,
    w: &CudaView<T>,
    score_name: &str,
    d0: u64,
    n: u64,
    gamma: f64,
    d: Draw,
) -> Result<CudaSlice<u8>> {
    let stream = &kern.stream;
    let mut umask = stream.alloc_zeros::<u8>(d0 as usize).w()?;
    let k = targeted_count(gamma, d0 as usize) as u64;
    if k == 0 || d.thr == 0 {
        return Ok(umask);
    }
    macro_rules! scores {
        ($acc:ty) => {{
            let mut scores = stream.alloc_zeros::<$acc>(d0 as usize).w()?;
            let (name, grid) = if n <= TINY_ROW {
                ("tiny", d0.div_ceil(BLOCK as u64).min(kern.sms as u64 * 8))
            } else {
                ("block", d0.min(kern.sms as u64 * 8))
            };
            let func = kern.func(&format!("unit_scores_{name}_{score_name}"))?;
            let n32 = n as u32;
            let mut b = stream.launch_builder(&func);
            b.arg(w).arg(&mut scores).arg(&d0).arg(&n32);
            // SAFETY: w holds d0 * n elements, scores d0.
            unsafe { b.launch(cfg((grid as u32, 1), 0)) }.w()?;
            // The scores are non-negative (or the canonical NaN): their bits order like the
            // magnitude keys, so the weight selection over one row of d0 scores, with draw
            // index = unit index, is the unit selection.
            let view = scores.slice(..);
            select_rows(kern, &view, None, None, Some(&mut umask), 1, d0, k, d)?;
        }};
    }
    if std::mem::size_of::<T>() == 8 {
        scores!(f64)
    } else {
        scores!(f32)
    }
    Ok(umask)
}

/// What an op wrote: the values, or the u8 mask.
type Outputs<T> = (Option<CudaSlice<T>>, Option<CudaSlice<u8>>);

fn run<T: Width>(
    op: &TargetedOp,
    dev: &CudaDevice,
    w: &CudaSlice<T>,
    wl: &Layout,
    vals: Option<(&CudaSlice<T>, &Layout)>,
    score_name: &str,
) -> Result<Outputs<T>> {
    let kern = Kernels::of(dev)?;
    let stream = kern.stream.clone();
    let Some((ws, we)) = wl.contiguous_offsets() else {
        bail!("{}: internal error, w is not contiguous", op.name())
    };
    let w = w.slice(ws..we);
    let vals_view;
    let vals = match vals {
        None => None,
        Some((v, vl)) => {
            let Some((vs, ve)) = vl.contiguous_offsets() else {
                bail!(
                    "{}: internal error, the gradient is not contiguous",
                    op.name()
                )
            };
            vals_view = v.slice(vs..ve);
            Some(&vals_view)
        }
    };
    let numel = (we - ws) as u64;
    let (d0, n) = filters(wl.shape());
    let (d0, n) = (d0 as u64, n as u64);
    let d = Draw {
        seed: op.draws.seed,
        offset: op.draws.offset,
        thr: op.draws.threshold.min(THRESHOLD_ALWAYS),
    };
    // SAFETY: every element of the outputs is written by the launches below (each kernel
    // writes all elements of its rows, or the copy / memset paths do).
    let mut out = match op.output {
        Output::Values => Some(unsafe { stream.alloc::<T>(numel as usize) }.w()?),
        Output::Mask => None,
    };
    let mut mask = match op.output {
        Output::Values => None,
        Output::Mask => Some(unsafe { stream.alloc::<u8>(numel as usize) }.w()?),
    };
    match op.kind {
        DropoutKind::Weight => {
            let k = targeted_count(op.gamma, n as usize) as u64;
            select_rows(&kern, &w, vals, out.as_mut(), mask.as_mut(), d0, n, k, d)?;
        }
        DropoutKind::Unit => {
            let umask = unit_mask(&kern, &w, score_name, d0, n, op.gamma, d)?;
            let func = kern.func(&format!("unit_apply_{}", T::NAME))?;
            let groups = numel.div_ceil(4);
            let grid = groups.div_ceil(BLOCK as u64).min(kern.sms as u64 * 16) as u32;
            let mut b = stream.launch_builder(&func);
            match vals {
                Some(v) => b.arg(v),
                None => b.arg(&w),
            };
            match out.as_mut() {
                Some(o) => b.arg(o),
                None => b.arg(&NULL),
            };
            match mask.as_mut() {
                Some(m) => b.arg(m),
                None => b.arg(&NULL),
            };
            b.arg(&umask).arg(&numel).arg(&n);
            // SAFETY: vals and out hold numel elements, umask d0 = numel / n flags.
            unsafe { b.launch(cfg((grid, 1), 0)) }.w()?;
        }
    }
    Ok((out, mask))
}

/// The CUDA forward of [`TargetedOp`]: selection on `w`, values from `vals` (the backward
/// pass) or `w`.
pub(crate) fn forward(
    op: &TargetedOp,
    w: &CudaStorage,
    wl: &Layout,
    vals: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let dev = w.device().clone();
    macro_rules! go {
        ($w:expr, $v:expr, $variant:ident, $score:literal) => {{
            let (out, mask) = run(op, &dev, $w, wl, $v, $score)?;
            match (out, mask) {
                (Some(o), _) => CudaStorageSlice::$variant(o),
                (None, Some(m)) => CudaStorageSlice::U8(m),
                (None, None) => unreachable!("an op writes values or a mask"),
            }
        }};
    }
    let vslice = vals.map(|(s, l)| (&s.slice, l));
    let slice = match (&w.slice, vslice) {
        (CudaStorageSlice::F32(w), None) => go!(w, None, F32, "f32"),
        (CudaStorageSlice::F16(w), None) => go!(w, None, F16, "f16"),
        (CudaStorageSlice::BF16(w), None) => go!(w, None, BF16, "bf16"),
        (CudaStorageSlice::F64(w), None) => go!(w, None, F64, "f64"),
        (CudaStorageSlice::F32(w), Some((CudaStorageSlice::F32(v), l))) => {
            go!(w, Some((v, l)), F32, "f32")
        }
        (CudaStorageSlice::F16(w), Some((CudaStorageSlice::F16(v), l))) => {
            go!(w, Some((v, l)), F16, "f16")
        }
        (CudaStorageSlice::BF16(w), Some((CudaStorageSlice::BF16(v), l))) => {
            go!(w, Some((v, l)), BF16, "bf16")
        }
        (CudaStorageSlice::F64(w), Some((CudaStorageSlice::F64(v), l))) => {
            go!(w, Some((v, l)), F64, "f64")
        }
        _ => bail!(
            "{}: unsupported dtypes on CUDA: w is {:?}{} (expected f16, bf16, f32 or f64, the gradient of the same dtype)",
            op.name(),
            w.dtype(),
            vals.map(|(v, _)| format!(", the gradient {:?}", v.dtype())).unwrap_or_default()
        ),
    };
    Ok((CudaStorage { slice, device: dev }, wl.shape().clone()))
}
