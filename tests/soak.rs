//! Memory does not grow with the number of training steps: many `VarMapDropout` steps, and the
//! functional ops under autograd, each followed by an optimizer step, leave the live heap where
//! it was after the warm-up. The heap is measured exactly, by a counting global allocator in this
//! test binary, so the check does not depend on what the C allocator returns to the kernel.
//!
//! A leak of the kind this guards against: an optimizer that keeps state computed from the
//! variables (a momentum velocity from `var.as_tensor()`) holds each step's graph, and through
//! the previous state every earlier step's. `the_meter_sees_a_step_that_outlives_itself` runs
//! exactly that optimizer and asserts that the meter sees it grow, so the flat checks cannot
//! pass by measuring nothing.
use candle_core::{backprop::GradStore, DType, Device, Module, Result, Tensor, Var};
use candle_nn::{linear, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use candle_targeted_dropout::{
    prune_weights, set_seed, targeted_dropout_many, targeted_unit_dropout, targeted_weight_dropout,
    TargetedDropout, VarMapDropout,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counter only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout is passed through (non-zero size per the contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from System) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from System with `layout`; the caller guarantees `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this binary share the counter: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

const WARMUP: usize = 10;
const STEPS: usize = 50;
/// What a flat loop may still grow by (allocator-independent bytes): a little for lazily
/// created thread-local buffers. A leaked step of the models below is about 1 MB.
const MARGIN: isize = 2 << 20;

/// Live heap growth over `STEPS` calls of `step`, after `WARMUP` calls.
fn growth(mut step: impl FnMut() -> Result<()>) -> Result<isize> {
    for _ in 0..WARMUP {
        step()?;
    }
    let before = live();
    for _ in 0..STEPS {
        step()?;
    }
    let g = live() - before;
    eprintln!("live heap growth over {STEPS} steps: {g} bytes");
    Ok(g)
}

/// SGD with momentum and weight decay, as the examples write it. `detach: false` is the leak:
/// the velocity computed from the tracked variable, kept across steps.
struct Momentum {
    vars: Vec<Var>,
    velocity: Vec<Tensor>,
    detach: bool,
}

impl Momentum {
    fn new(vars: Vec<Var>, detach: bool) -> Result<Self> {
        let velocity = vars.iter().map(|v| v.zeros_like()).collect::<Result<_>>()?;
        Ok(Self {
            vars,
            velocity,
            detach,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (var, vel) in self.vars.iter().zip(self.velocity.iter_mut()) {
            let g = match grads.get(var) {
                Some(g) => g.clone(),
                None => var.zeros_like()?,
            };
            if self.detach {
                let w = var.as_tensor().detach();
                let d = (g + (&w * 5e-4)?)?;
                *vel = ((&*vel * 0.9)? + d)?.detach();
                var.set(&(w - (&*vel * 0.01)?)?)?;
            } else {
                let d = (g + (var.as_tensor() * 5e-4)?)?;
                *vel = ((&*vel * 0.9)? + d)?;
                var.set(&(var.as_tensor() - (&*vel * 0.01)?)?)?;
            }
        }
        Ok(())
    }
}

/// A 256-256-256-10 MLP in a fresh VarMap, and a seeded batch.
fn mlp(vm: &VarMap) -> Result<(impl Module, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let vb = VarBuilder::from_varmap(vm, DType::F32, &dev);
    let (a, b, c) = (
        linear(256, 256, vb.pp("fc1"))?,
        linear(256, 256, vb.pp("fc2"))?,
        linear(256, 10, vb.pp("fc3"))?,
    );
    let net = move |x: &Tensor| -> Result<Tensor> {
        c.forward(&b.forward(&a.forward(x)?.relu()?)?.relu()?)
    };
    let x = Tensor::randn(0f32, 1.0, (32, 256), &dev)?;
    let y = Tensor::from_vec((0..32u32).map(|i| i % 10).collect(), 32, &dev)?;
    Ok((candle_nn::Func::new(net), x, y))
}

fn select(name: &str) -> Option<TargetedDropout> {
    match name {
        "fc1.weight" => Some(TargetedDropout::weight(0.5, 0.5).unwrap()),
        "fc2.weight" => Some(TargetedDropout::unit(0.5, 0.5).unwrap()),
        _ => None,
    }
}

/// `VarMapDropout` steps with the examples' momentum SGD; `detach` as in [`Momentum`].
fn varmap_growth(detach: bool) -> Result<isize> {
    set_seed(1);
    let vm = VarMap::new();
    let (net, x, y) = mlp(&vm)?;
    let vd = VarMapDropout::new(&vm, |n, _| select(n))?;
    let mut opt = Momentum::new(vm.all_vars(), detach)?;
    growth(|| {
        let step = vd.apply()?;
        let loss = candle_nn::loss::cross_entropy(&net.forward(&x)?, &y)?;
        let mut grads = loss.backward()?;
        step.finish(&mut grads)?;
        opt.step(&grads)
    })
}

#[test]
fn varmap_dropout_steps_do_not_grow() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = varmap_growth(true)?;
    assert!(
        g < MARGIN,
        "{STEPS} VarMapDropout steps grew the live heap by {g} bytes"
    );
    Ok(())
}

#[test]
fn the_meter_sees_a_step_that_outlives_itself() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = varmap_growth(false)?;
    // Each leaked step keeps at least one velocity of fc1 and fc2 (2 x 256 KB).
    assert!(
        g > (STEPS as isize) * (512 << 10),
        "the undetached velocity should hold every step's graph, yet the heap grew by {g} bytes"
    );
    Ok(())
}

#[test]
fn varmap_dropout_with_candle_adamw_does_not_grow() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_seed(2);
    let vm = VarMap::new();
    let (net, x, y) = mlp(&vm)?;
    let mut vd = VarMapDropout::new(&vm, |n, _| select(n))?;
    let mut opt = AdamW::new(vm.all_vars(), ParamsAdamW::default())?;
    let mut t = 0u32;
    let g = growth(|| {
        // A changing config, as a ramp sets it, and an evaluation under pruning between steps.
        t += 1;
        vd.set_config(
            "fc1.weight",
            TargetedDropout::weight(0.5 * (t % 10) as f64 / 10.0, 0.5)?,
        )?;
        let step = vd.apply()?;
        let loss = candle_nn::loss::cross_entropy(&net.forward(&x)?, &y)?;
        let mut grads = loss.backward()?;
        step.finish(&mut grads)?;
        opt.step(&grads)?;
        vd.with_pruned(TargetedDropout::weight(0.9, 1.0)?, |_| {
            net.forward(&x)?.sum_all()?.to_scalar::<f32>()
        })?;
        Ok(())
    })?;
    assert!(
        g < MARGIN,
        "{STEPS} VarMapDropout steps with AdamW grew the live heap by {g} bytes"
    );
    Ok(())
}

#[test]
fn functional_ops_under_autograd_do_not_grow() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_seed(3);
    let dev = Device::Cpu;
    let w1 = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (256, 256), &dev)? * 0.06)?)?;
    let w2 = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (256, 256), &dev)? * 0.06)?)?;
    let w3 = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (10, 256), &dev)? * 0.06)?)?;
    let x = Tensor::randn(0f32, 1.0, (32, 256), &dev)?;
    let mut opt = Momentum::new(vec![w1.clone(), w2.clone(), w3.clone()], true)?;
    let g = growth(|| {
        let d1 = targeted_weight_dropout(&w1, 0.5, 0.5)?;
        let d2 = targeted_unit_dropout(&w2, 0.5, 0.5)?;
        let many = targeted_dropout_many(&[
            (w1.as_tensor(), TargetedDropout::unit(0.25, 0.5)?),
            (w3.as_tensor(), TargetedDropout::weight(0.5, 0.5)?),
        ])?;
        let h = x.matmul(&d1.t()?)?.relu()?;
        let h = (h.matmul(&d2.t()?)?.relu()? + x.matmul(&many[0].t()?)?)?;
        let out = h.matmul(&many[1].t()?)?;
        let pruned = prune_weights(&w3, 0.9)?;
        let loss = (out.sqr()?.mean_all()? + h.matmul(&pruned.t()?)?.sqr()?.mean_all()?)?;
        opt.step(&loss.backward()?)
    })?;
    assert!(
        g < MARGIN,
        "{STEPS} steps of the functional ops grew the live heap by {g} bytes"
    );
    Ok(())
}
