//! GPU benchmark: targeted weight dropout, pruning, unit dropout and 2:4 dropout and pruning
//! through the crate's CUDA kernels, side by side with the measured copy ceiling and with
//! candle's own tensor ops written the obvious way, in one run on one GPU.
//!
//! `cargo run --release --features cuda --example gpu_bench -- [results.csv]`
//!
//! Each case: warm-up, then the median of many calls timed with CUDA events around the
//! call (launches and allocations included, as a user sees them); the inputs rotate over
//! enough copies that they do not sit in the L2. GB/s counts one read and one write of the
//! tensor; "share" is that over the copy bandwidth measured in the same run.
use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_targeted_dropout::{
    prune_nm, prune_weights, targeted_dropout_many, targeted_nm_dropout, targeted_unit_dropout,
    targeted_weight_dropout, TargetedDropout,
};
use std::io::Write;

const ITERS: usize = 30;

/// One benchmarked op at gamma = alpha = 0.5.
type Op = fn(&Tensor) -> Result<Tensor>;

fn stream(
    dev: &Device,
) -> Result<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>> {
    Ok(dev.as_cuda_device()?.cuda_stream())
}

/// Median milliseconds of `f` over ITERS calls (after 3 warm-up calls), each between two
/// events on the device's stream.
fn time_ms(dev: &Device, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    let s = stream(dev)?;
    let ctx = s.context();
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    for i in 0..3 {
        f(i)?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(ITERS);
    for i in 0..ITERS {
        let a = ctx.new_event(flags).map_err(candle_core::Error::wrap)?;
        let b = ctx.new_event(flags).map_err(candle_core::Error::wrap)?;
        a.record(&s).map_err(candle_core::Error::wrap)?;
        f(i + 3)?;
        b.record(&s).map_err(candle_core::Error::wrap)?;
        b.synchronize().map_err(candle_core::Error::wrap)?;
        times.push(a.elapsed_ms(&b).map_err(candle_core::Error::wrap)? as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[ITERS / 2])
}

/// Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB buffer.
fn copy_ceiling(dev: &Device) -> Result<f64> {
    let n = 1usize << 28; // f32: 1 GiB
    let a = Tensor::ones(n, DType::F32, dev)?;
    let s = stream(dev)?;
    let mut b = unsafe { s.alloc::<f32>(n) }.map_err(candle_core::Error::wrap)?;
    let (st, _) = a.storage_and_layout();
    let src = match &*st {
        candle_core::Storage::Cuda(c) => c.as_cuda_slice::<f32>()?.clone(),
        _ => unreachable!(),
    };
    drop(st);
    let ms = time_ms(dev, |_| {
        s.memcpy_dtod(&src, &mut b)
            .map_err(candle_core::Error::wrap)
    })?;
    Ok(2.0 * (n * 4) as f64 / (ms * 1e-3))
}

/// Inputs: enough random copies of `shape` to cover 256 MB (at most 64).
fn inputs(shape: &[usize], dt: DType, dev: &Device) -> Result<Vec<Tensor>> {
    let bytes = shape.iter().product::<usize>() * dt.size_in_bytes();
    let copies = (256usize << 20).div_ceil(bytes).clamp(2, 64);
    (0..copies)
        .map(|_| Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dt))
        .collect()
}

/// Targeted weight dropout with candle's tensor ops, the way a user would write it.
fn candle_composite(w: &Tensor, gamma: f64, alpha: f64) -> Result<Tensor> {
    let w2 = w.flatten_from(1)?;
    let n = w2.dim(1)?;
    let k = (gamma * n as f64).floor() as usize;
    let a = w2.abs()?;
    let idx = a.arg_sort_last_dim(true)?;
    let kth = idx.narrow(1, k - 1, 1)?.contiguous()?;
    let thr = a.gather(&kth, D::Minus1)?;
    let targeted = a.broadcast_le(&thr)?;
    let r = Tensor::rand(0f32, 1f32, w2.shape(), w.device())?;
    let drop = (targeted.to_dtype(DType::U8)? * r.lt(alpha)?)?;
    let out = drop.where_cond(&w2.zeros_like()?, &w2)?;
    out.reshape(w.shape())
}

/// Keeps freed device memory in the default pool across synchronizations (release threshold
/// = max), as PyTorch's caching allocator does: otherwise every call of a timed loop maps
/// its output's memory afresh, and the benchmark measures the driver's allocator.
fn keep_pool(dev: &Device) -> Result<()> {
    let s = stream(dev)?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: plain driver calls on the device of a live context, with valid out-pointers.
    unsafe {
        let r = sys::cuDeviceGetDefaultMemPool(&mut pool, s.context().cu_device());
        if r != sys::CUresult::CUDA_SUCCESS {
            candle_core::bail!("cuDeviceGetDefaultMemPool: {r:?}")
        }
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        let r = sys::cuMemPoolSetAttribute(pool, attr, &mut threshold as *mut u64 as *mut _);
        if r != sys::CUresult::CUDA_SUCCESS {
            candle_core::bail!("cuMemPoolSetAttribute: {r:?}")
        }
    }
    Ok(())
}

/// `--profile`: each op once (after a warm-up) on a few shapes, for `ncu`.
fn profile(dev: &Device) -> Result<()> {
    let cases: [(Vec<usize>, DType); 4] = [
        (vec![4096, 4096], DType::F32),
        (vec![1 << 20, 9], DType::BF16),
        (vec![128, 1 << 20], DType::F32),
        (vec![11008, 4096], DType::BF16),
    ];
    for (shape, dt) in cases {
        let w = Tensor::randn(0f32, 1.0, shape.as_slice(), dev)?.to_dtype(dt)?;
        for _ in 0..2 {
            targeted_weight_dropout(&w, 0.5, 0.5)?;
            prune_weights(&w, 0.5)?;
        }
        for _ in 0..2 {
            targeted_unit_dropout(&w, 0.5, 0.5)?;
        }
        dev.synchronize()?;
        println!("profiled {shape:?} {dt:?}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let csv_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "gpu_bench.csv".into());
    let dev = Device::new_cuda(0)?;
    keep_pool(&dev)?;
    if csv_path == "--profile" {
        return profile(&dev);
    }
    let ceiling = copy_ceiling(&dev)?;
    println!(
        "copy ceiling: {:.0} GB/s (device-to-device, read + write)",
        ceiling / 1e9
    );
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("resnet32-like [32x288]", vec![32, 32, 3, 3]),
        ("resnet32-like [64x576]", vec![64, 64, 3, 3]),
        ("resnet32-like [128x1152]", vec![128, 128, 3, 3]),
        ("[4096x4096]", vec![4096, 4096]),
        ("[11008x4096]", vec![11008, 4096]),
        ("[128x2^20]", vec![128, 1 << 20]),
        ("[2^20x9]", vec![1 << 20, 9]),
    ];
    let mut csv = std::fs::File::create(&csv_path)?;
    writeln!(csv, "op,shape,dtype,ms,gbps,share,candle_ms")?;
    let mut rows = Vec::new();
    for (name, shape) in &shapes {
        for dt in [DType::F32, DType::BF16] {
            let xs = inputs(shape, dt, &dev)?;
            let bytes = 2.0 * (xs[0].elem_count() * dt.size_in_bytes()) as f64;
            let r = xs.len();
            let ops: [(&str, Op); 5] = [
                ("weight_dropout", |w| targeted_weight_dropout(w, 0.5, 0.5)),
                ("prune_weights", |w| prune_weights(w, 0.5)),
                ("unit_dropout", |w| targeted_unit_dropout(w, 0.5, 0.5)),
                ("nm_2:4_dropout", |w| targeted_nm_dropout(w, 2, 4, 0.5)),
                ("prune_2:4", |w| prune_nm(w, 2, 4)),
            ];
            // N:M needs a group axis (axis 1) that groups of four divide.
            let nm_fits = shape[1].is_multiple_of(4);
            for (op, f) in ops.iter().filter(|(op, _)| nm_fits || !op.contains("2:4")) {
                let ms = time_ms(&dev, |i| f(&xs[i % r]).map(drop))?;
                let candle = if *op == "weight_dropout" {
                    match time_ms(&dev, |i| candle_composite(&xs[i % r], 0.5, 0.5).map(drop)) {
                        Ok(ms) => format!("{ms:.4}"),
                        Err(e) => {
                            let e = e.to_string();
                            eprintln!(
                                "candle composite fails on {name} {dt:?}: {}",
                                e.lines().next().unwrap_or("")
                            );
                            "fails".to_string()
                        }
                    }
                } else {
                    "-".to_string()
                };
                let gbps = bytes / (ms * 1e-3) / 1e9;
                let share = 100.0 * bytes / (ms * 1e-3) / ceiling;
                writeln!(
                    csv,
                    "{op},{name},{dt:?},{ms:.4},{gbps:.0},{share:.1},{candle}"
                )?;
                rows.push(format!(
                    "{op:15} {name:26} {:5} {ms:9.4} ms {gbps:6.0} GB/s {share:5.1}% of copy  candle: {candle}",
                    format!("{dt:?}")
                ));
            }
        }
    }
    // The weights of a ResNet-32 (CIFAR, 6n + 2 layers with n = 5): conv1 [16,3,3,3], five
    // blocks of two 3x3 convs per stage at 16, 32 and 64 channels (the first conv of stages 2
    // and 3 widening; identity shortcuts, no weights), the [10, 64] classifier: 32 weights.
    // The grouped call against the single calls, in the same run.
    let mut resnet: Vec<Vec<usize>> = vec![vec![16, 3, 3, 3]];
    for (c_in, c) in [(16, 16), (16, 32), (32, 64)] {
        for b in 0..5 {
            resnet.push(vec![c, if b == 0 { c_in } else { c }, 3, 3]);
            resnet.push(vec![c, c, 3, 3]);
        }
    }
    resnet.push(vec![10, 64]);
    let ws: Vec<Tensor> = resnet
        .iter()
        .map(|s| Tensor::randn(0f32, 1.0, s.as_slice(), &dev))
        .collect::<Result<_>>()?;
    let td = TargetedDropout::weight(0.5, 0.5)?;
    let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().map(|w| (w, td)).collect();
    let grouped = time_ms(&dev, |_| targeted_dropout_many(&items).map(drop))?;
    let single = time_ms(&dev, |_| {
        ws.iter()
            .try_for_each(|w| targeted_weight_dropout(w, 0.5, 0.5).map(drop))
    })?;
    writeln!(
        csv,
        "many_weight_dropout,resnet32 ({} weights),F32,{grouped:.4},,,",
        ws.len()
    )?;
    writeln!(
        csv,
        "single_weight_dropout,resnet32 ({} weights),F32,{single:.4},,,",
        ws.len()
    )?;
    rows.push(format!(
        "resnet32 ({} weights) f32: targeted_dropout_many {:.1} us, {} single calls {:.1} us",
        ws.len(),
        grouped * 1e3,
        ws.len(),
        single * 1e3
    ));
    println!("\n{}", rows.join("\n"));
    println!("results written to {csv_path}");
    Ok(())
}
