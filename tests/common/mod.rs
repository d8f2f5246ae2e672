//! Shared test helpers: seeded data with edge values, the devices the build has, and the
//! comparison against the full-sort oracle.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, WithDType};
use candle_targeted_dropout::reference::{self, Draws, Float};
use candle_targeted_dropout::DropoutKind;
use half::{bf16, f16};

/// splitmix64: a tiny seeded generator for test data.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One of `xs`, uniformly.
pub fn pick<T: Copy>(rng: &mut Rng, xs: &[T]) -> T {
    xs[rng.below(xs.len() as u64) as usize]
}

/// The number of random cases: the environment variable `var` when it is set, else
/// `default`. A value that is not a whole number fails the test, naming the variable and the
/// value: a knob that fell back to its default unseen would let CI run what it does not say.
pub fn cases(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Err(_) => default,
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a number of cases")),
    }
}

/// The devices this build can run on: the CPU always, CUDA device 0 when the build has the
/// feature and a device opens (otherwise a message says the GPU cases are skipped).
///
/// With `TD_ONLY_CUDA` set, only the CUDA device (the GPU machine's run: the CPU path is
/// checked where there is no GPU), and a CUDA device that does not open is a failure: a GPU
/// run must not pass having run nothing.
pub fn devices() -> Vec<Device> {
    if std::env::var_os("TD_ONLY_CUDA").is_some() {
        match cuda() {
            Some(d) => return vec![d],
            None => panic!("TD_ONLY_CUDA is set but no CUDA device opens (see the message above)"),
        }
    }
    let mut d = vec![Device::Cpu];
    if let Some(c) = cuda() {
        d.push(c)
    }
    d
}

pub fn cuda() -> Option<Device> {
    #[cfg(feature = "cuda")]
    {
        match Device::new_cuda(0) {
            Ok(d) => return Some(d),
            Err(e) => eprintln!("no CUDA device opens ({e}); the GPU cases are skipped"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    eprintln!("built without the `cuda` feature; the GPU cases are skipped");
    None
}

/// Where a test's ops run: a candle device, or (feature `emulate`) the CPU with the CUDA
/// kernels under emulation, with the launch plan of a GPU profile.
#[derive(Debug, Clone)]
pub enum Target {
    Device(Device),
    #[cfg(feature = "emulate")]
    Emulated(candle_targeted_dropout::emulate::Gpu),
}

impl Target {
    /// The device the test's tensors live on (the CPU for the emulator).
    pub fn device(&self) -> Device {
        match self {
            Target::Device(d) => d.clone(),
            #[cfg(feature = "emulate")]
            Target::Emulated(_) => Device::Cpu,
        }
    }

    /// `f` with the target's ops: on the device as they are, or under the emulator.
    pub fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match self {
            Target::Device(_) => f(),
            #[cfg(feature = "emulate")]
            Target::Emulated(gpu) => candle_targeted_dropout::emulate::run(gpu, f),
        }
    }

    pub fn is_emulated(&self) -> bool {
        !matches!(self, Target::Device(_))
    }
}

/// Every target of this build: [`devices`], then with the `emulate` feature the emulated
/// kernels with an H200's and a small sm_86 GPU's launch plans (not with TD_ONLY_CUDA: the
/// GPU machine's run checks the GPU).
pub fn targets() -> Vec<Target> {
    // Pushed to only with the `emulate` feature.
    #[cfg_attr(not(feature = "emulate"), allow(unused_mut))]
    let mut t: Vec<Target> = devices().into_iter().map(Target::Device).collect();
    #[cfg(feature = "emulate")]
    if std::env::var_os("TD_ONLY_CUDA").is_none() {
        use candle_targeted_dropout::emulate::Gpu;
        t.push(Target::Emulated(Gpu::h200()));
        t.push(Target::Emulated(Gpu::sm86()));
    }
    t
}

/// What kind of values a test tensor holds.
#[derive(Debug, Clone, Copy)]
pub enum Data {
    /// Normal values only.
    Plain,
    /// Normal values mixed with ties, ±0, subnormals, NaN and ±Inf.
    Edgy,
    /// Values from a pool of four magnitudes: almost everything ties.
    Ties,
}

/// Random IEEE bits of a float type of `width` bits (16 with `bf` for bf16), as u64.
fn edge_bits(rng: &mut Rng, dt: DType, data: Data, pool: &[f64]) -> u64 {
    let normal = |x: f64| -> u64 {
        match dt {
            DType::F32 => (x as f32).to_bits() as u64,
            DType::F64 => x.to_bits(),
            DType::F16 => f16::from_f64(x).to_bits() as u64,
            DType::BF16 => bf16::from_f64(x).to_bits() as u64,
            _ => unreachable!(),
        }
    };
    let (sign, exp_shift, mant_bits, exp_all) = match dt {
        DType::F32 => (1u64 << 31, 23, 23, 0xffu64),
        DType::F64 => (1u64 << 63, 52, 52, 0x7ff),
        DType::F16 => (1u64 << 15, 10, 10, 0x1f),
        DType::BF16 => (1u64 << 15, 7, 7, 0xff),
        _ => unreachable!(),
    };
    let mant = |r: &mut Rng| r.next_u64() & ((1u64 << mant_bits) - 1);
    let s = if rng.below(2) == 0 { 0 } else { sign };
    let cat = match data {
        Data::Plain => 0,
        Data::Ties => 10,
        Data::Edgy => rng.below(20),
    };
    match cat {
        0..=9 => normal(rng.normal() * 2.0),
        10..=13 => normal(pool[rng.below(pool.len() as u64) as usize]) | s,
        14 | 15 => s,                                       // ±0
        16 | 17 => s | mant(rng).max(1),                    // subnormal
        18 => s | (exp_all << exp_shift),                   // ±Inf
        _ => s | (exp_all << exp_shift) | mant(rng).max(1), // NaN, any payload
    }
}

/// A seeded tensor of `shape` and `dt` on the CPU.
pub fn tensor(rng: &mut Rng, shape: &[usize], dt: DType, data: Data) -> Result<Tensor> {
    let numel: usize = shape.iter().product();
    let pool = [0.5, 1.0, 1.5, 0.25];
    let bits: Vec<u64> = (0..numel)
        .map(|_| edge_bits(rng, dt, data, &pool))
        .collect();
    match dt {
        DType::F32 => from_bits(&bits, |b| f32::from_bits(b as u32), shape),
        DType::F64 => from_bits(&bits, f64::from_bits, shape),
        DType::F16 => from_bits(&bits, |b| f16::from_bits(b as u16), shape),
        DType::BF16 => from_bits(&bits, |b| bf16::from_bits(b as u16), shape),
        dt => candle_core::bail!("tensor: {dt:?} is not a float dtype"),
    }
}

/// The CPU tensor of `shape` whose elements are `f` of each of `bits`.
fn from_bits<T: WithDType>(bits: &[u64], f: impl Fn(u64) -> T, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(
        bits.iter().map(|&b| f(b)).collect::<Vec<_>>(),
        shape,
        &Device::Cpu,
    )
}

/// The raw bits of every element, in logical order.
pub fn bits(t: &Tensor) -> Result<Vec<u64>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::F64 => t.to_vec1::<f64>()?.iter().map(|x| x.to_bits()).collect(),
        DType::F16 => t
            .to_vec1::<f16>()?
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::BF16 => t
            .to_vec1::<bf16>()?
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::U8 => t.to_vec1::<u8>()?.iter().map(|&x| x as u64).collect(),
        dt => panic!("bits of {dt:?}"),
    })
}

/// `(d0, n)` of a shape, per DESIGN.md.
pub fn filters(shape: &[usize]) -> (usize, usize) {
    let numel: usize = shape.iter().product();
    if shape.len() <= 1 || shape[0] == 0 {
        (1.min(numel), numel)
    } else {
        (shape[0], numel / shape[0])
    }
}

fn oracle_t<T: Float + WithDType>(
    w: &Tensor,
    vals: &Tensor,
    kind: DropoutKind,
    gamma: f64,
    draws: Draws,
) -> Result<Tensor> {
    let shape = w.dims().to_vec();
    let (_, n) = filters(&shape);
    let wv = w.flatten_all()?.to_vec1::<T>()?;
    let vv = vals.flatten_all()?.to_vec1::<T>()?;
    let out = match kind {
        DropoutKind::Weight => reference::weight_dropout(&wv, &vv, n, gamma, draws),
        DropoutKind::Unit => reference::unit_dropout(&wv, &vv, n, gamma, draws),
        DropoutKind::Nm { n, m } => reference::nm_dropout(&wv, &vv, &shape, n, m, draws),
    };
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// The full-sort oracle of an op: selection on `w` (on the CPU), values from `vals`.
pub fn oracle(
    w: &Tensor,
    vals: &Tensor,
    kind: DropoutKind,
    gamma: f64,
    draws: Draws,
) -> Result<Tensor> {
    let w = w.to_device(&Device::Cpu)?;
    let vals = vals.to_device(&Device::Cpu)?;
    match w.dtype() {
        DType::F32 => oracle_t::<f32>(&w, &vals, kind, gamma, draws),
        DType::F64 => oracle_t::<f64>(&w, &vals, kind, gamma, draws),
        DType::F16 => oracle_t::<f16>(&w, &vals, kind, gamma, draws),
        DType::BF16 => oracle_t::<bf16>(&w, &vals, kind, gamma, draws),
        dt => panic!("oracle of {dt:?}"),
    }
}

/// Asserts two tensors hold the same bits, naming the first difference.
pub fn assert_same_bits(got: &Tensor, want: &Tensor, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtypes differ");
    let (g, w) = (bits(got)?, bits(want)?);
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        let diffs = (0..g.len()).filter(|&i| g[i] != w[i]).count();
        panic!(
            "{what}: {diffs} of {} elements differ; first at flat index {i}: got {:#x}, want {:#x}",
            g.len(),
            g[i],
            w[i]
        );
    }
    Ok(())
}

pub const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];
