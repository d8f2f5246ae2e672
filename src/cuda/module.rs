//! The fatbins of `kernels/*.cu` (built by `build.rs`), loaded once per device with every
//! function handle and the device's limits ([`Limits`]) resolved then; a launch reads
//! nothing else (no environment, no lock but the one that finds the device's entry).

use crate::cuda_params::{TD_BLOCK, TD_BLOCK_ROW_BYTES, TD_TINY_ROW};
use crate::plan::{tiny_smem, Dtype, Kernel, Limits, Width, WidthLimits};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaModule, CudaStream};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{DeviceId, WrapErr};
use candle_core::{bail, CudaDevice, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

const WEIGHT_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weight.fatbin"));
const UNIT_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unit.fatbin"));
const NM_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nm.fatbin"));
const WEIGHT_V5_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weight_v5.fatbin"));
/// The lowest compute capability the fatbins load on (major * 10 + minor), and their
/// targets, as `build.rs` chose them.
const MIN_CC: u32 = parse_u32(env!("TD_CUDA_MIN_CC"));
const TARGETS: &str = env!("TD_CUDA_TARGETS");

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

/// The weight kernels of one element width.
struct WeightFns {
    tiny: CudaFunction,
    block: CudaFunction,
    long_hist: CudaFunction,
    long_apply: CudaFunction,
    unit_apply: CudaFunction,
}

/// The unit-score kernels of one dtype.
struct ScoreFns {
    tiny: CudaFunction,
    block: CudaFunction,
}

/// The loaded modules of one device and everything a launch needs to know about it.
pub(super) struct Kernels {
    _modules: [Arc<CudaModule>; 4],
    /// The kernels of `kernels/weight_v5.cu`, by kernel.
    v5: HashMap<Kernel, CudaFunction>,
    /// By width: u16 (f16, bf16), u32, u64.
    weight: [WeightFns; 3],
    /// By score dtype: f32, f16, bf16, f64.
    scores: [ScoreFns; 4],
    /// The N:M kernels by width (u16, u32, u64) and register size (4, 8, 16, 32).
    nm: [[CudaFunction; 4]; 3],
    pub limits: Limits,
}

/// A device's entry: its kernels, and a weak reference to its stream that tells whether the
/// device still exists (entries of dropped devices are released).
struct Entry {
    kernels: Arc<Kernels>,
    stream: Weak<CudaStream>,
}

static LOADED: OnceLock<Mutex<HashMap<DeviceId, Entry>>> = OnceLock::new();

impl Kernels {
    /// The kernels of `dev`, loaded on its first use.
    pub fn of(dev: &CudaDevice) -> Result<Arc<Kernels>> {
        let map = LOADED.get_or_init(Default::default);
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(&dev.id()) {
            if e.stream.strong_count() > 0 {
                return Ok(e.kernels.clone());
            }
        }
        // Release the kernels of devices that no longer exist.
        map.retain(|_, e| e.stream.strong_count() > 0);
        let stream = dev.cuda_stream();
        let k = Arc::new(Kernels::load(&stream)?);
        map.insert(
            dev.id(),
            Entry {
                kernels: k.clone(),
                stream: Arc::downgrade(&stream),
            },
        );
        Ok(k)
    }

    /// The function of a kernel of the plan.
    pub fn func(&self, k: Kernel) -> Result<&CudaFunction> {
        let score = |d: Dtype| match d {
            Dtype::F32 => &self.scores[0],
            Dtype::F16 => &self.scores[1],
            Dtype::Bf16 => &self.scores[2],
            Dtype::F64 => &self.scores[3],
        };
        Ok(match k {
            Kernel::Tiny(w) => &self.weight[w.index()].tiny,
            Kernel::Block(w) => &self.weight[w.index()].block,
            Kernel::LongHist(w) => &self.weight[w.index()].long_hist,
            Kernel::LongApply(w) => &self.weight[w.index()].long_apply,
            Kernel::UnitApply(w) => &self.weight[w.index()].unit_apply,
            Kernel::ScoresTiny(d) => &score(d).tiny,
            Kernel::ScoresBlock(d) => &score(d).block,
            Kernel::Nm(w, maxm) => &self.nm[w.index()][maxm.trailing_zeros() as usize - 2],
            Kernel::Block5(..)
            | Kernel::Tiny5(_)
            | Kernel::Bwd5(_)
            | Kernel::LongCount5(_)
            | Kernel::LongResolve5(_)
            | Kernel::LongApply5(_) => match self.v5.get(&k) {
                Some(f) => f,
                None => bail!(
                    "targeted dropout on CUDA: internal error, kernel {} is not loaded",
                    k.name()
                ),
            },
        })
    }

    fn load(stream: &Arc<CudaStream>) -> Result<Kernels> {
        let ctx = stream.context();
        let attr = |a| ctx.attribute(a).w();
        use sys::CUdevice_attribute as A;
        let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32;
        let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32;
        if major * 10 + minor < MIN_CC {
            bail!(
                "targeted dropout on CUDA: the device has compute capability {major}.{minor}, and \
                 this build's kernels ({TARGETS}) need {}.{} or newer; build with \
                 CUDA_COMPUTE_CAP={major}{minor} for this GPU (7.5 is the oldest nvcc 13 targets)",
                MIN_CC / 10,
                MIN_CC % 10
            )
        }
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let l2_bytes = attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u64;
        let optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u64;
        let load = |bin: &[u8], what: &str| -> Result<Arc<CudaModule>> {
            ctx.load_module(Ptx::from_binary(bin.to_vec()))
                .map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "targeted dropout on CUDA: loading the {what} kernels ({TARGETS}) on a \
                         device of compute capability {major}.{minor} failed: {e}"
                    ))
                })
        };
        let wm = load(WEIGHT_FATBIN, "weight")?;
        let um = load(UNIT_FATBIN, "unit")?;
        let nmm = load(NM_FATBIN, "N:M")?;
        let vm = load(WEIGHT_V5_FATBIN, "v5 weight")?;
        let func = |m: &Arc<CudaModule>, k: Kernel| m.load_function(&k.name()).w();
        // The most dynamic shared memory `f` may use (what its static shared memory leaves of
        // the device's per-block limit, at most `want`), set as its attribute once.
        let limit = |f: &CudaFunction, want: u64| -> Result<u32> {
            let stat = f.shared_size_bytes().w()? as u64;
            let lim = optin.saturating_sub(stat).min(want) as u32;
            let a = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(a, lim as i32).w()?;
            Ok(lim)
        };
        let weight_fns = |w: Width| -> Result<(WeightFns, WidthLimits)> {
            let tiny = func(&wm, Kernel::Tiny(w))?;
            let block = func(&wm, Kernel::Block(w))?;
            let tiny_smem = limit(&tiny, tiny_smem(TD_TINY_ROW as u64, w.size()))?;
            let block_smem = limit(&block, TD_BLOCK_ROW_BYTES as u64)?;
            let block_per_sm = (0..=block_smem.div_ceil(1024))
                .map(|kb| {
                    let smem = (kb * 1024).min(block_smem) as usize;
                    let b = block
                        .occupancy_max_active_blocks_per_multiprocessor(TD_BLOCK, smem, None)
                        .w()?;
                    if b == 0 {
                        bail!(
                            "targeted dropout on CUDA: {} fits no block on a multiprocessor \
                             with {smem} bytes of shared memory",
                            Kernel::Block(w).name()
                        )
                    }
                    Ok(b)
                })
                .collect::<Result<Vec<u32>>>()?;
            let fns = WeightFns {
                tiny,
                block,
                long_hist: func(&wm, Kernel::LongHist(w))?,
                long_apply: func(&wm, Kernel::LongApply(w))?,
                unit_apply: func(&um, Kernel::UnitApply(w))?,
            };
            let lim = WidthLimits {
                tiny_smem,
                block_smem,
                block_per_sm,
            };
            Ok((fns, lim))
        };
        let score_fns = |d: Dtype| -> Result<ScoreFns> {
            Ok(ScoreFns {
                tiny: func(&um, Kernel::ScoresTiny(d))?,
                block: func(&um, Kernel::ScoresBlock(d))?,
            })
        };
        let nm_fns = |w: Width| -> Result<[CudaFunction; 4]> {
            Ok([
                func(&nmm, Kernel::Nm(w, 4))?,
                func(&nmm, Kernel::Nm(w, 8))?,
                func(&nmm, Kernel::Nm(w, 16))?,
                func(&nmm, Kernel::Nm(w, 32))?,
            ])
        };
        let v5 = Kernel::all_v5()
            .into_iter()
            .map(|k| Ok((k, func(&vm, k)?)))
            .collect::<Result<HashMap<Kernel, CudaFunction>>>()?;
        let (w16, l16) = weight_fns(Width::U16)?;
        let (w32, l32) = weight_fns(Width::U32)?;
        let (w64, l64) = weight_fns(Width::U64)?;
        Ok(Kernels {
            weight: [w16, w32, w64],
            scores: [
                score_fns(Dtype::F32)?,
                score_fns(Dtype::F16)?,
                score_fns(Dtype::Bf16)?,
                score_fns(Dtype::F64)?,
            ],
            nm: [
                nm_fns(Width::U16)?,
                nm_fns(Width::U32)?,
                nm_fns(Width::U64)?,
            ],
            _modules: [wm, um, nmm, vm],
            v5,
            limits: Limits {
                sms,
                l2_bytes,
                widths: [l16, l32, l64],
            },
        })
    }
}
