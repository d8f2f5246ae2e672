//! `VarMapDropout` on a plain candle_nn model: the step's weights and gradients bit for bit
//! against the functional ops, restoring, pruning and its report, saving, resuming, replicas
//! and shards, the grouped call. A binary of its own: every test that uses the process-wide
//! generator takes `GENERATOR_LOCK`.
mod common;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{linear, VarBuilder, VarMap};
use candle_targeted_dropout::*;
use common::*;
use std::sync::{Mutex, MutexGuard};

static GENERATOR_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    GENERATOR_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A three-layer MLP built by candle_nn from a VarMap, its variables set from `seed`.
struct Mlp {
    varmap: VarMap,
    layers: Vec<candle_nn::Linear>,
}

fn mlp(seed: u64, dev: &Device) -> Result<Mlp> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let layers = vec![
        linear(12, 16, vb.pp("fc1"))?,
        linear(16, 8, vb.pp("fc2"))?,
        linear(8, 3, vb.pp("head"))?,
    ];
    let mut rng = Rng(seed);
    for (name, var) in sorted_vars(&varmap) {
        let t = tensor(&mut rng, var.dims(), DType::F32, Data::Plain)?;
        var.set(&t.to_device(dev)?)?;
        let _ = name;
    }
    Ok(Mlp { varmap, layers })
}

fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let data = vm.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn var(vm: &VarMap, name: &str) -> Var {
    vm.data().lock().unwrap().get(name).unwrap().clone()
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.layers[0].forward(x)?.relu()?;
        let h = self.layers[1].forward(&h)?.relu()?;
        self.layers[2].forward(&h)
    }
}

/// fc1 gets weight dropout, fc2 unit dropout, the head none.
fn select(name: &str, w: &Tensor) -> Option<TargetedDropout> {
    match name {
        "fc1.weight" => Some(TargetedDropout::weight(0.5, 0.6).unwrap()),
        "fc2.weight" => Some(TargetedDropout::unit(0.4, 0.7).unwrap()),
        _ => {
            let _ = w;
            None
        }
    }
}

fn input(dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut rng = Rng(99);
    let x = tensor(&mut rng, &[5, 12], DType::F32, Data::Plain)?.to_device(dev)?;
    let t = tensor(&mut rng, &[5, 3], DType::F32, Data::Plain)?.to_device(dev)?;
    Ok((x, t))
}

fn step_matches_the_functional_ops(dev: &Device) -> Result<()> {
    let m = mlp(1, dev)?;
    let vd = VarMapDropout::new(&m.varmap, select)?;
    assert_eq!(vd.names().collect::<Vec<_>>(), ["fc1.weight", "fc2.weight"]);
    let (x, target) = input(dev)?;
    let before: Vec<Vec<u64>> = sorted_vars(&m.varmap)
        .iter()
        .map(|(_, v)| bits(v.as_tensor()))
        .collect::<Result<_>>()?;

    // The functional reference: the same model with the ops in its forward pass.
    set_seed(42);
    let (w1, w2) = (var(&m.varmap, "fc1.weight"), var(&m.varmap, "fc2.weight"));
    let d1 = targeted_weight_dropout(&w1, 0.5, 0.6)?;
    let d2 = targeted_unit_dropout(&w2, 0.4, 0.7)?;
    let b = |n: &str| var(&m.varmap, n).as_tensor().clone();
    let h = candle_nn::Linear::new(d1.clone(), Some(b("fc1.bias")))
        .forward(&x)?
        .relu()?;
    let h = candle_nn::Linear::new(d2.clone(), Some(b("fc2.bias")))
        .forward(&h)?
        .relu()?;
    let y = m.layers[2].forward(&h)?;
    let want_grads = (y - &target)?.sqr()?.mean_all()?.backward()?;

    // The VarMapDropout step.
    set_seed(42);
    let step = vd.apply()?;
    assert_eq!(
        generator_state(),
        (42, 2),
        "one offset per selected variable"
    );
    assert_eq!(bits(w1.as_tensor())?, bits(&d1)?, "fc1 during the step");
    assert_eq!(bits(w2.as_tensor())?, bits(&d2)?, "fc2 during the step");
    let loss = (m.forward(&x)? - &target)?.sqr()?.mean_all()?;
    let mut grads = loss.backward()?;
    step.finish(&mut grads)?;
    for (name, v) in sorted_vars(&m.varmap) {
        let got = grads.get(v.as_tensor()).expect("a gradient");
        let want = want_grads.get(v.as_tensor()).expect("a gradient");
        assert_same_bits(got, want, &format!("gradient of {name}"))?;
    }
    let after: Vec<Vec<u64>> = sorted_vars(&m.varmap)
        .iter()
        .map(|(_, v)| bits(v.as_tensor()))
        .collect::<Result<_>>()?;
    assert_eq!(before, after, "the weights are restored bit for bit");

    // Dropping a step without finish (an error path) restores the weights too.
    {
        let _step = vd.apply()?;
        assert_ne!(bits(w1.as_tensor())?, before[1], "dropped during the step");
    }
    assert_eq!(bits(w1.as_tensor())?, before[1], "restored on drop");
    Ok(())
}

#[test]
fn varmap_step_matches_the_functional_ops() -> Result<()> {
    let _g = lock();
    for t in targets() {
        t.run(|| step_matches_the_functional_ops(&t.device()))?;
    }
    Ok(())
}

#[test]
fn configs_change_between_steps() -> Result<()> {
    let _g = lock();
    let m = mlp(2, &Device::Cpu)?;
    let mut vd = VarMapDropout::new(&m.varmap, select)?;
    let w1 = var(&m.varmap, "fc1.weight");
    let orig = w1.as_tensor().copy()?;
    let ramp = RampSchedule::with_steps(0.8, 1.0, 10, 20)?;
    vd.set_all(TargetedDropout::weight(0.0, 0.0)?.at_step(&ramp, 20)?)?;
    assert_eq!(
        vd.config("fc2.weight"),
        Some(TargetedDropout::weight(0.8, 1.0)?)
    );
    let step = vd.apply()?;
    // alpha = 1: the step's fc1 is its pruning at gamma 0.8.
    assert_same_bits(w1.as_tensor(), &prune_weights(&orig, 0.8)?, "ramped config")?;
    step.restore()?;
    vd.set_config("fc1.weight", TargetedDropout::unit(0.5, 1.0)?)?;
    let step = vd.apply()?;
    assert_same_bits(w1.as_tensor(), &prune_units(&orig, 0.5)?, "one config")?;
    drop(step);
    let e = vd
        .set_config("head.weight", TargetedDropout::weight(0.5, 0.5)?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("head.weight"), "{e}");
    Ok(())
}

#[test]
fn bad_selections_are_errors_naming_the_variable() -> Result<()> {
    let vm = VarMap::new();
    vm.data().lock().unwrap().insert(
        "steps".into(),
        Var::from_tensor(&Tensor::zeros(4, DType::U32, &Device::Cpu)?)?,
    );
    vm.data().lock().unwrap().insert(
        "scale".into(),
        Var::from_tensor(&Tensor::new(1f32, &Device::Cpu)?)?,
    );
    let all = |_: &str, _: &Tensor| TargetedDropout::weight(0.5, 0.5).ok();
    let e = VarMapDropout::new(&vm, all).unwrap_err().to_string();
    assert!(e.contains("scale") && e.contains("rank"), "{e}");
    let only_steps =
        |n: &str, _: &Tensor| (n == "steps").then(|| TargetedDropout::weight(0.5, 0.5).unwrap());
    let e = VarMapDropout::new(&vm, only_steps).unwrap_err().to_string();
    assert!(e.contains("steps") && e.contains("U32"), "{e}");
    let none = |_: &str, _: &Tensor| None;
    let e = VarMapDropout::new(&vm, none).unwrap_err().to_string();
    assert!(e.contains("matched none of the 2 variables"), "{e}");
    // A bad config cannot reach `new`: its constructor is the error, naming the value.
    let e = TargetedDropout::weight(1.5, 0.5).unwrap_err().to_string();
    assert!(e.contains("gamma") && e.contains("1.5"), "{e}");
    Ok(())
}

#[test]
fn prune_reports_saves_and_restores() -> Result<()> {
    let m = mlp(3, &Device::Cpu)?;
    let vd = VarMapDropout::new(&m.varmap, select)?;
    let (w1, w2) = (var(&m.varmap, "fc1.weight"), var(&m.varmap, "fc2.weight"));
    let (o1, o2) = (w1.as_tensor().copy()?, w2.as_tensor().copy()?);
    // Temporary pruning at another rate restores the weights, also when the closure fails.
    let acc = vd.with_pruned(TargetedDropout::weight(0.75, 1.0)?, |r| {
        assert_eq!(r.vars[0].zeros, 16 * 9);
        assert_same_bits(w1.as_tensor(), &prune_weights(&o1, 0.75)?, "temporary")?;
        Ok(r.total().fraction())
    })?;
    assert!((acc - 0.75).abs() < 0.02, "{acc}");
    assert_same_bits(w1.as_tensor(), &o1, "restored after with_pruned")?;
    let failed: Result<()> = vd.with_pruned(TargetedDropout::unit(0.5, 1.0)?, |_| {
        candle_core::bail!("boom")
    });
    let e = failed.unwrap_err().to_string();
    assert!(e.contains("boom"), "{e}");
    assert_same_bits(w2.as_tensor(), &o2, "restored after a failing closure")?;

    // In place: the configs' kinds and gammas.
    let report = vd.prune()?;
    assert_same_bits(w1.as_tensor(), &prune_weights(&o1, 0.5)?, "fc1 pruned")?;
    assert_same_bits(w2.as_tensor(), &prune_units(&o2, 0.4)?, "fc2 pruned")?;
    assert_eq!(report.vars.len(), 2);
    assert_eq!(
        (report.vars[0].zeros, report.vars[0].numel),
        (16 * 6, 16 * 12)
    );
    assert_eq!(
        (report.vars[1].zeros, report.vars[1].numel),
        (3 * 16, 8 * 16)
    );
    assert_eq!(report.vars[1].shape, [8, 16]);
    assert_eq!(report.total().zeros, 96 + 48);
    let table = report.to_string();
    assert!(
        table.contains("fc1.weight") && table.contains("[16, 12]") && table.contains("50.00%"),
        "{table}"
    );
    assert!(
        table.lines().last().unwrap().starts_with("total"),
        "{table}"
    );

    // The pruned model saves and loads as safetensors, bit for bit.
    let dir = std::env::temp_dir().join(format!("td-varmap-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("pruned.safetensors");
    m.varmap.save(&path)?;
    let mut loaded = mlp(4, &Device::Cpu)?;
    loaded.varmap.load(&path)?;
    for (name, v) in sorted_vars(&m.varmap) {
        assert_same_bits(var(&loaded.varmap, &name).as_tensor(), v.as_tensor(), &name)?;
    }
    let x = input(&Device::Cpu)?.0;
    assert_same_bits(&loaded.forward(&x)?, &m.forward(&x)?, "the reloaded model")?;
    loaded.layers.clear();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `steps` SGD steps (candle_nn's SGD keeps no state) through VarMapDropout.
fn train(m: &Mlp, vd: &VarMapDropout, steps: usize) -> Result<()> {
    use candle_nn::Optimizer;
    let mut opt = candle_nn::SGD::new(m.varmap.all_vars(), 0.05)?;
    let (x, target) = input(&Device::Cpu)?;
    for _ in 0..steps {
        let step = vd.apply()?;
        let loss = (m.forward(&x)? - &target)?.sqr()?.mean_all()?;
        let mut grads = loss.backward()?;
        step.finish(&mut grads)?;
        opt.step(&grads)?;
    }
    Ok(())
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_one() -> Result<()> {
    let _g = lock();
    let whole = mlp(5, &Device::Cpu)?;
    set_seed(11);
    train(&whole, &VarMapDropout::new(&whole.varmap, select)?, 8)?;

    let first = mlp(5, &Device::Cpu)?;
    set_seed(11);
    train(&first, &VarMapDropout::new(&first.varmap, select)?, 5)?;
    let dir = std::env::temp_dir().join(format!("td-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    first.varmap.save(dir.join("ckpt.safetensors"))?;
    let state = generator_state();
    set_seed(12345); // anything else happens meanwhile

    let mut resumed = mlp(6, &Device::Cpu)?;
    resumed.varmap.load(dir.join("ckpt.safetensors"))?;
    set_generator_state(state.0, state.1);
    train(&resumed, &VarMapDropout::new(&resumed.varmap, select)?, 3)?;
    for (name, v) in sorted_vars(&whole.varmap) {
        assert_same_bits(
            var(&resumed.varmap, &name).as_tensor(),
            v.as_tensor(),
            &name,
        )?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn replicas_sharing_the_seed_draw_the_same_masks() -> Result<()> {
    // Two threads stand for two devices, each with its replica and its own (seed, offset).
    let run = || -> Result<Vec<Vec<u64>>> {
        let m = mlp(7, &Device::Cpu)?;
        let vd = VarMapDropout::new(&m.varmap, select)?;
        let mut seen = Vec::new();
        for offset in [0u64, 2, 4] {
            let step = vd.apply_seeded(2024, offset)?;
            seen.push(bits(var(&m.varmap, "fc1.weight").as_tensor())?);
            seen.push(bits(var(&m.varmap, "fc2.weight").as_tensor())?);
            step.restore()?;
        }
        Ok(seen)
    };
    let a = std::thread::spawn(run);
    let b = std::thread::spawn(run);
    let (a, b) = (a.join().unwrap()?, b.join().unwrap()?);
    assert_eq!(a, b);
    assert_ne!(a[0], a[2], "the next offsets draw fresh masks");
    Ok(())
}

fn unit_shards(dev: &Device) -> Result<()> {
    let mut rng = Rng(8);
    for dt in DTYPES {
        let w = tensor(&mut rng, &[37, 3, 5], dt, Data::Edgy)?.to_device(dev)?;
        let whole = targeted_unit_dropout_seeded(&w, 0.6, 0.5, 3, 9)?;
        let cuts = [0usize, 10, 11, 30, 37];
        let parts: Vec<Tensor> = cuts
            .windows(2)
            .map(|c| w.narrow(0, c[0], c[1] - c[0]))
            .collect::<Result<_>>()?;
        let scores = Tensor::cat(
            &parts.iter().map(unit_scores).collect::<Result<Vec<_>>>()?,
            0,
        )?;
        assert_same_bits(&scores, &unit_scores(&w)?, "gathered scores")?;
        for (c, p) in cuts.windows(2).zip(&parts) {
            let got = targeted_unit_dropout_from_scores(p, &scores, 0.6, 0.5, 3, 9, c[0])?;
            let want = whole.narrow(0, c[0], c[1] - c[0])?;
            assert_same_bits(&got, &want, &format!("{dt:?} units {}..{}", c[0], c[1]))?;
        }
        let e = targeted_unit_dropout_from_scores(&parts[3], &scores, 0.6, 0.5, 3, 9, 31)
            .unwrap_err()
            .to_string();
        assert!(e.contains("31") && e.contains("37"), "{e}");
    }
    Ok(())
}

#[test]
fn unit_dropout_of_row_shards_from_gathered_scores() -> Result<()> {
    for t in targets() {
        t.run(|| unit_shards(&t.device()))?;
    }
    Ok(())
}

fn grouped(dev: &Device) -> Result<()> {
    let mut rng = Rng(12);
    let ws: Vec<Tensor> = [
        &[16usize, 3, 3, 3][..],
        &[16, 16, 3, 3],
        &[32, 16, 3, 3],
        &[10, 64],
        &[5],
        &[8, 16, 3, 3],
    ]
    .iter()
    .map(|s| tensor(&mut rng, s, DType::F32, Data::Edgy)?.to_device(dev))
    .collect::<Result<_>>()?;
    let cfgs = [
        TargetedDropout::weight(0.5, 0.5)?,
        TargetedDropout::unit(0.3, 0.9)?,
        TargetedDropout::weight(0.9, 1.0)?,
        TargetedDropout::weight(0.0, 0.5)?,
        TargetedDropout::unit(1.0, 0.2)?,
        TargetedDropout::nm(2, 4, 0.6)?,
    ];
    let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().zip(cfgs).collect();
    let many = targeted_dropout_many_seeded(&items, 77, 100)?;
    for (i, ((w, c), got)) in items.iter().zip(&many).enumerate() {
        let off = 100 + i as u64;
        let want = match c.kind() {
            DropoutKind::Weight => {
                targeted_weight_dropout_seeded(w, c.gamma(), c.alpha(), 77, off)?
            }
            DropoutKind::Unit => targeted_unit_dropout_seeded(w, c.gamma(), c.alpha(), 77, off)?,
            DropoutKind::Nm { n, m } => targeted_nm_dropout_seeded(w, n, m, c.alpha(), 77, off)?,
        };
        assert_same_bits(got, &want, &format!("tensor {i}"))?;
    }
    // Bad input anywhere: an error naming the tensor, before any draw.
    let ints = Tensor::zeros((3, 4), DType::U32, ws[0].device())?;
    let bad = [(&ws[0], cfgs[0]), (&ints, cfgs[1])];
    let e = targeted_dropout_many_seeded(&bad, 0, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor 1") && e.contains("U32"), "{e}");
    Ok(())
}

#[test]
fn grouped_call_equals_single_calls() -> Result<()> {
    for t in targets() {
        t.run(|| grouped(&t.device()))?;
    }
    Ok(())
}

#[test]
fn grouped_call_takes_consecutive_offsets_and_keeps_autograd() -> Result<()> {
    let _g = lock();
    let mut rng = Rng(13);
    let a = Var::from_tensor(&tensor(&mut rng, &[8, 9], DType::F32, Data::Plain)?)?;
    let b = Var::from_tensor(&tensor(&mut rng, &[6, 4], DType::F32, Data::Plain)?)?;
    let cfg = TargetedDropout::weight(0.5, 0.5)?;
    set_seed(3);
    let many = targeted_dropout_many(&[(&a, cfg), (&b, cfg)])?;
    assert_eq!(generator_state(), (3, 2));
    set_seed(3);
    let one = [
        targeted_weight_dropout(&a, 0.5, 0.5)?,
        targeted_weight_dropout(&b, 0.5, 0.5)?,
    ];
    for (m, o) in many.iter().zip(&one) {
        assert_same_bits(m, o, "grouped vs single")?;
    }
    let grads = (many[0].sum_all()? + many[1].sum_all()?)?.backward()?;
    let mask = targeted_dropout_mask(&b, TargetedDropout::weight(0.5, 0.5)?, 3, 1)?;
    let gb = grads.get(&b).expect("b has a gradient");
    let want = mask.where_cond(&b.zeros_like()?, &b.ones_like()?)?;
    assert_same_bits(gb, &want, "gradient through the grouped call")?;
    // A failing call leaves the generator where it was.
    set_seed(3);
    let scalar = Tensor::new(1f32, &Device::Cpu)?;
    let e = targeted_dropout_many(&[(&a, cfg), (&scalar, cfg)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor 1") && e.contains("rank"), "{e}");
    assert_eq!(generator_state(), (3, 0));
    Ok(())
}

/// Shards of tiny, block and long rows (fewer and shorter rows on the emulator: the same
/// kernel paths at its speed).
fn weight_shards(dev: &Device, small: bool) -> Result<()> {
    let mut rng = Rng(14);
    let shapes: [&[usize]; 4] = if small {
        [&[37, 3, 5], &[9, 7], &[6, 1030], &[2, 17_000]]
    } else {
        [&[37, 3, 5], &[9, 7], &[40, 1030], &[5, 70_000]]
    };
    for dt in DTYPES {
        for shape in shapes {
            let w = tensor(&mut rng, shape, dt, Data::Edgy)?.to_device(dev)?;
            let whole = targeted_weight_dropout_seeded(&w, 0.6, 0.5, 3, 9)?;
            let d0 = shape[0];
            for (r0, r1) in [(0, d0), (1, d0 / 2), (d0 / 2, d0), (d0 - 1, d0)] {
                let part = w.narrow(0, r0, r1 - r0)?;
                let got = targeted_weight_dropout_rows(&part, 0.6, 0.5, 3, 9, r0)?;
                let want = whole.narrow(0, r0, r1 - r0)?;
                assert_same_bits(&got, &want, &format!("{dt:?} {shape:?} rows {r0}..{r1}"))?;
            }
        }
    }
    let w = Tensor::ones((4, 8), DType::F32, dev)?;
    let e = targeted_weight_dropout_rows(&w, 0.5, 0.5, 0, 0, usize::MAX / 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2^64"), "{e}");
    Ok(())
}

#[test]
fn weight_dropout_of_row_shards_equals_the_whole() -> Result<()> {
    for t in targets() {
        t.run(|| weight_shards(&t.device(), t.is_emulated()))?;
    }
    Ok(())
}

#[test]
fn one_step_at_a_time_and_empty_variables() -> Result<()> {
    let _g = lock();
    let m = mlp(15, &Device::Cpu)?;
    let vd = VarMapDropout::new(&m.varmap, select)?;
    let w1 = var(&m.varmap, "fc1.weight");
    let orig = w1.as_tensor().copy()?;
    let step = vd.apply()?;
    for e in [
        vd.apply().err().map(|e| e.to_string()),
        vd.apply_seeded(1, 2).err().map(|e| e.to_string()),
        vd.prune().err().map(|e| e.to_string()),
        vd.with_pruned(TargetedDropout::weight(0.5, 1.0)?, |_| Ok(()))
            .err()
            .map(|e| e.to_string()),
    ] {
        let e = e.expect("an error while a step is live");
        assert!(e.contains("a step is live"), "{e}");
    }
    // Each error names the call that raised it.
    let e = vd.apply_seeded(1, 2).err().expect("live").to_string();
    assert!(
        e.contains("VarMapDropout::apply_seeded") && e.contains("fc1.weight"),
        "{e}"
    );
    let e = vd.apply().err().expect("live").to_string();
    assert!(e.contains("VarMapDropout::apply:"), "{e}");
    step.restore()?;
    assert_same_bits(w1.as_tensor(), &orig, "restored")?;
    // After the step, everything works again.
    vd.apply()?.restore()?;
    assert_same_bits(w1.as_tensor(), &orig, "restored again")?;

    // An empty selected variable: steps and pruning leave it alone.
    let vm = VarMap::new();
    vm.data().lock().unwrap().insert(
        "empty.weight".into(),
        Var::from_tensor(&Tensor::zeros((0, 4), DType::F32, &Device::Cpu)?)?,
    );
    let vd = VarMapDropout::new(&vm, select_all)?;
    vd.apply()?.restore()?;
    let r = vd.prune()?;
    assert_eq!((r.total().zeros, r.total().numel), (0, 0));
    Ok(())
}

fn select_all(_: &str, _: &Tensor) -> Option<TargetedDropout> {
    TargetedDropout::weight(0.5, 0.5).ok()
}

#[test]
fn scores_are_checked_and_nans_canonical() -> Result<()> {
    let w = Tensor::ones((3, 2), DType::F32, &Device::Cpu)?;
    let bad = Tensor::new(&[1f32, -1.0, 2.0], &Device::Cpu)?;
    let e = targeted_unit_dropout_from_scores(&w, &bad, 0.5, 1.0, 0, 0, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("negative"), "{e}");
    // Two NaN scores with different payloads tie: the lower unit index is targeted first.
    let nans = Tensor::new(
        &[
            f32::from_bits(0x7fc0_0001),
            f32::from_bits(0x7fc0_0000),
            5.0,
        ],
        &Device::Cpu,
    )?;
    let got = targeted_unit_dropout_from_scores(&w, &nans, 0.67, 1.0, 0, 0, 0)?;
    assert_eq!(got.to_vec2::<f32>()?, [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]);
    Ok(())
}

#[test]
fn two_varmap_dropouts_over_one_varmap_do_not_step_at_once() -> Result<()> {
    let _g = lock();
    let m = mlp(16, &Device::Cpu)?;
    let a = VarMapDropout::new(&m.varmap, select)?;
    let b = VarMapDropout::new(&m.varmap, select_all)?;
    let vars: Vec<(String, Var)> = sorted_vars(&m.varmap);
    let orig: Vec<Vec<u64>> = vars
        .iter()
        .map(|(_, v)| bits(v.as_tensor()))
        .collect::<Result<_>>()?;
    set_seed(4);
    let step = a.apply()?;
    // b selects a's variables too: every call of b that would touch them is an error naming
    // the call and a variable, and b's refused apply takes no offset.
    for (e, call) in [
        (b.apply().err(), "apply"),
        (b.apply_seeded(0, 0).err(), "apply_seeded"),
        (b.prune().err(), "prune"),
        (
            b.with_pruned(TargetedDropout::weight(0.5, 1.0)?, |_| Ok(()))
                .err(),
            "with_pruned",
        ),
    ] {
        let e = e.expect("an error while a's step is live").to_string();
        assert!(
            e.contains(&format!("VarMapDropout::{call}:")) && e.contains("a step is live"),
            "{e}"
        );
    }
    assert_eq!(generator_state(), (4, 2), "only a's two offsets");
    // A clone of a is refused the same way.
    let e = a.clone().apply().err().expect("refused").to_string();
    assert!(e.contains("a step is live on variable fc1.weight"), "{e}");
    step.restore()?;
    for ((name, v), o) in vars.iter().zip(&orig) {
        assert_eq!(&bits(v.as_tensor())?, o, "{name} restored");
    }
    // Once a's step is over, b steps (over all six variables).
    b.apply()?.restore()?;
    // Selections that share no variable step together: each restores its own.
    let head = VarMapDropout::new(&m.varmap, |n: &str, _: &Tensor| {
        (n == "head.weight").then(|| TargetedDropout::weight(0.5, 1.0).unwrap())
    })?;
    let s1 = a.apply_seeded(1, 0)?;
    let s2 = head.apply_seeded(1, 5)?;
    let hw = var(&m.varmap, "head.weight");
    assert_same_bits(
        hw.as_tensor(),
        &targeted_weight_dropout_seeded(
            &Tensor::from_vec(orig_of(&vars, &orig, "head.weight"), (3, 8), &Device::Cpu)?,
            0.5,
            1.0,
            1,
            5,
        )?,
        "head during its step",
    )?;
    s1.restore()?;
    s2.restore()?;
    for ((name, v), o) in vars.iter().zip(&orig) {
        assert_eq!(&bits(v.as_tensor())?, o, "{name} restored after two steps");
    }
    Ok(())
}

/// The f32 values of variable `name` as `orig` saved them.
fn orig_of(vars: &[(String, Var)], orig: &[Vec<u64>], name: &str) -> Vec<f32> {
    let i = vars
        .iter()
        .position(|(n, _)| n == name)
        .expect("a variable");
    orig[i].iter().map(|&b| f32::from_bits(b as u32)).collect()
}

/// `finish` masks the gradient of variable `i` with the mask of offset `first + i` (wrapping
/// past 2^64), wherever the step's offsets start: explicit ones and the generator's.
#[test]
fn finish_masks_each_gradient_at_its_own_offset() -> Result<()> {
    let _g = lock();
    let (x, target) = input(&Device::Cpu)?;
    let cases: [(u64, Option<u64>); 4] = [
        (9, Some(0)),
        (9, Some(1000)),
        (u64::MAX, Some(u64::MAX)),
        (33, None),
    ];
    for (seed, first) in cases {
        let m = mlp(17, &Device::Cpu)?;
        let vd = VarMapDropout::new(&m.varmap, select)?;
        let names: Vec<String> = vd.names().map(String::from).collect();
        let vars: Vec<Var> = names.iter().map(|n| var(&m.varmap, n)).collect();
        let origs: Vec<Tensor> = vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<Result<_>>()?;
        let (step, first) = match first {
            Some(f) => (vd.apply_seeded(seed, f)?, f),
            None => {
                // Mid-run: the generator has moved three offsets already.
                set_seed(seed);
                for _ in 0..3 {
                    let _ = targeted_weight_dropout(&origs[0], 0.5, 0.5)?;
                }
                (vd.apply()?, 3)
            }
        };
        let loss = (m.forward(&x)? - &target)?.sqr()?.mean_all()?;
        let mut grads = loss.backward()?;
        let raw: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).expect("a gradient").copy())
            .collect::<Result<_>>()?;
        step.finish(&mut grads)?;
        for (i, ((name, v), (o, g))) in names
            .iter()
            .zip(&vars)
            .zip(origs.iter().zip(&raw))
            .enumerate()
        {
            let c = vd.config(name).expect("selected");
            let off = first.wrapping_add(i as u64);
            let mask = targeted_dropout_mask(o, c, seed, off)?;
            let want = mask.where_cond(&g.zeros_like()?, g)?;
            let got = grads.get(v.as_tensor()).expect("a gradient");
            let what = format!("{name}, seed {seed}, offset {off}");
            assert_same_bits(got, &want, &what)?;
            // Not the mask of a neighbouring offset (the masks differ there).
            let other = targeted_dropout_mask(o, c, seed, off.wrapping_add(1))?;
            if bits(&other)? != bits(&mask)? {
                let wrong = other.where_cond(&g.zeros_like()?, g)?;
                assert_ne!(bits(got)?, bits(&wrong)?, "{what}: the next offset's mask");
            }
        }
    }
    Ok(())
}

/// The grouped call: tensor `i` draws at `first + i` (wrapping past 2^64) whatever comes
/// before it in the list, and an empty list takes no offset.
#[test]
fn grouped_call_offsets_are_first_plus_index() -> Result<()> {
    let _g = lock();
    let mut rng = Rng(18);
    let ws: Vec<Tensor> = (0..3)
        .map(|_| tensor(&mut rng, &[6, 20], DType::F32, Data::Plain))
        .collect::<Result<_>>()?;
    let cfg = TargetedDropout::weight(0.5, 0.5)?;
    for first in [0u64, 41, u64::MAX - 1] {
        let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().map(|w| (w, cfg)).collect();
        let many = targeted_dropout_many_seeded(&items, 5, first)?;
        for (i, (w, got)) in ws.iter().zip(&many).enumerate() {
            let off = first.wrapping_add(i as u64);
            let want = targeted_weight_dropout_seeded(w, 0.5, 0.5, 5, off)?;
            assert_same_bits(got, &want, &format!("first {first}, tensor {i}"))?;
        }
        // The last tensor alone, at its offset, draws what it drew third in the list.
        let last = targeted_dropout_many_seeded(&items[2..], 5, first.wrapping_add(2))?;
        assert_same_bits(&last[0], &many[2], &format!("first {first}, alone"))?;
        // The same tensor at two positions of one list draws two masks.
        let twice = targeted_dropout_many_seeded(&[(&ws[0], cfg), (&ws[0], cfg)], 5, first)?;
        assert_ne!(bits(&twice[0])?, bits(&twice[1])?, "first {first}");
    }
    set_seed(8);
    assert!(targeted_dropout_many(&[])?.is_empty());
    assert_eq!(generator_state(), (8, 0), "an empty list takes no offset");
    let _ = targeted_dropout_many(&[(&ws[0], cfg), (&ws[1], cfg), (&ws[2], cfg)])?;
    assert_eq!(generator_state(), (8, 3));
    Ok(())
}
