//! What a `VarMapDropout` step holds between `apply` and `finish`, measured by a counting
//! global allocator: at most the bit mask of each variable's dropped elements and their
//! original values (`ceil(n / 32) * 4 + dropped * size` bytes), not a copy of the weights;
//! and the step still gives back the original weights and the masked gradients bit for bit.
//! On the CPU, and (feature `emulate`) on the emulated GPU, whose device memory is the host's.
mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use candle_targeted_dropout::*;
use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator with the same arguments; the counter
// only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        // SAFETY: forwarded as given.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::SeqCst);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

const SHAPES: [[usize; 2]; 4] = [[512, 1024], [256, 2304], [1000, 17], [10, 4096]];

/// One measured step on `vm` (CPU variables): the held bytes, the bound, the bytes of a full
/// copy; the dropped weights, gradients and restored weights checked against the functional
/// ops.
/// Runs a closure (as it is, or under the emulator).
type Runner<'a> = &'a dyn Fn(&dyn Fn() -> Result<()>) -> Result<()>;

fn measure(vm: &VarMap, run: Runner<'_>) -> Result<()> {
    let (gamma, alpha, seed, first) = (0.5, 0.5, 77u64, 5u64);
    let vd = VarMapDropout::new(vm, |_: &str, _: &Tensor| {
        Some(TargetedDropout::weight(gamma, alpha).unwrap())
    })?;
    let vars: Vec<Var> = vd
        .names()
        .map(|n| vm.data().lock().unwrap()[n].clone())
        .collect();
    let originals: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<Result<_>>()?;
    // The bound from the functional masks, computed before the measurement.
    let mut bound = 0usize;
    let mut dropped_values = 0usize;
    let mut full = 0usize;
    let mut want_dropped = Vec::new();
    for (i, w) in originals.iter().enumerate() {
        let off = first + i as u64;
        let mask = targeted_dropout_mask(w, TargetedDropout::weight(gamma, alpha)?, seed, off)?;
        let dropped = mask.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize;
        let size = w.dtype().size_in_bytes();
        bound += w.elem_count().div_ceil(32) * 4 + dropped * size;
        dropped_values += dropped * size;
        full += w.elem_count() * size;
        want_dropped.push(targeted_weight_dropout_seeded(w, gamma, alpha, seed, off)?);
    }
    run(&|| {
        // A warm-up step (thread pools, lazily built tables), then the measured one.
        vd.apply_seeded(seed, first)?.restore()?;
        let before = live();
        let step = vd.apply_seeded(seed, first)?;
        let held = (live() - before) as usize;
        println!(
            "held {held} bytes (held_bytes {}), bound {bound} (dropped values {dropped_values}), full copy {full}",
            step.held_bytes()
        );
        // A few hundred bytes of bookkeeping (the step's vectors, the reservation) beside it.
        assert!(held <= bound + 4096, "held {held} > bound {bound}");
        assert!(
            held >= dropped_values,
            "held {held} < the dropped values {dropped_values}"
        );
        assert!(step.held_bytes() <= bound && step.held_bytes() >= dropped_values);
        for (v, want) in vars.iter().zip(&want_dropped) {
            assert_same_bits(v.as_tensor(), want, "dropped weight")?;
        }
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for (i, v) in vars.iter().enumerate() {
            loss = (loss + (v.as_tensor().to_dtype(DType::F32)? * (i as f64 + 1.0))?.sum_all()?)?;
        }
        let mut grads = loss.backward()?;
        step.finish(&mut grads)?;
        for (i, (v, o)) in vars.iter().zip(&originals).enumerate() {
            assert_same_bits(v.as_tensor(), o, "restored weight")?;
            // The functional op's gradient of the same loss term.
            let x = Var::from_tensor(o)?;
            let off = first + i as u64;
            let d = targeted_weight_dropout_seeded(x.as_tensor(), gamma, alpha, seed, off)?;
            let g = (d.to_dtype(DType::F32)? * (i as f64 + 1.0))?
                .sum_all()?
                .backward()?;
            assert_same_bits(
                grads.get(v.as_tensor()).unwrap(),
                g.get(x.as_tensor()).unwrap(),
                "masked gradient",
            )?;
        }
        Ok(())
    })
}

fn varmap(dt: DType) -> Result<VarMap> {
    let mut rng = Rng(0x4e1d);
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().unwrap();
        for (i, s) in SHAPES.iter().enumerate() {
            let t = tensor(&mut rng, s, dt, Data::Ties)?;
            data.insert(format!("l{i}.weight"), Var::from_tensor(&t)?);
        }
    }
    Ok(vm)
}

/// One test (the allocator counts every thread: the measurements must not overlap).
#[test]
fn a_step_holds_the_mask_and_the_dropped_values() -> Result<()> {
    for dt in [DType::F32, DType::BF16, DType::F64] {
        measure(&varmap(dt)?, &|f| f())?;
        #[cfg(feature = "emulate")]
        {
            use candle_targeted_dropout::emulate::{self, Gpu};
            measure(&varmap(dt)?, &|f| emulate::run(&Gpu::h200(), f))?;
        }
    }
    Ok(())
}
