//! The fatbins of `kernels/*.cu` (built by `build.rs`), loaded once per device with every
//! function handle and the device's limits ([`Limits`]) resolved then; a launch reads
//! nothing else (no environment, no lock but the one that finds the device's entry).

use crate::plan::{Kernel, Limits};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaModule, CudaStream};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{DeviceId, WrapErr};
use candle_core::{bail, CudaDevice, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

const WEIGHT_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weight.fatbin"));
const UNIT_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unit.fatbin"));
const NM_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nm.fatbin"));
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

/// The loaded modules of one device, every kernel's handle, and the device's limits.
pub(super) struct Kernels {
    _modules: [Arc<CudaModule>; 3],
    fns: HashMap<Kernel, CudaFunction>,
    pub limits: Limits,
}

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
        match self.fns.get(&k) {
            Some(f) => Ok(f),
            None => bail!(
                "targeted dropout on CUDA: internal error, kernel {} is not loaded",
                k.name()
            ),
        }
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
        let fns = Kernel::all()
            .into_iter()
            .map(|k| {
                let m = match k.file() {
                    "unit" => &um,
                    "nm" => &nmm,
                    _ => &wm,
                };
                Ok((k, m.load_function(&k.name()).w()?))
            })
            .collect::<Result<HashMap<Kernel, CudaFunction>>>()?;
        Ok(Kernels {
            _modules: [wm, um, nmm],
            fns,
            limits: Limits { sms },
        })
    }
}
