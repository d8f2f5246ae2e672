//! The tests that use the process-wide generator (the plain functions, the layers in
//! training), in a binary of their own: no other test binary's calls can move it. Each test
//! here takes `GENERATOR_LOCK`, so the tests of this binary cannot move it under each other
//! either, whatever `--test-threads` says.
mod common;

use candle_core::{DType, Device, Result, Tensor};
use candle_targeted_dropout::*;
use common::*;
use std::sync::{Mutex, MutexGuard};

static GENERATOR_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    GENERATOR_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process-wide generator, in one test so that no other test moves it meanwhile.
#[test]
fn set_seed_repeats_a_run() -> Result<()> {
    let _g = lock();
    let mut rng = Rng(6);
    let w = tensor(&mut rng, &[32, 100], DType::F32, Data::Plain)?;
    let run = || -> Result<Vec<Vec<u64>>> {
        (0..3)
            .map(|i| {
                if i == 1 {
                    bits(&targeted_unit_dropout(&w, 0.5, 0.5)?)
                } else {
                    bits(&targeted_weight_dropout(&w, 0.5, 0.5)?)
                }
            })
            .collect()
    };
    set_seed(1234);
    assert_eq!(generator_state(), (1234, 0));
    let first = run()?;
    assert_eq!(generator_state(), (1234, 3), "one offset per call");
    // Pruning draws nothing and does not move the generator.
    prune_weights(&w, 0.5)?;
    assert_eq!(generator_state(), (1234, 3));
    set_seed(1234);
    assert_eq!(run()?, first, "a re-seeded run repeats itself");
    assert_ne!(first[0], first[2], "consecutive calls draw fresh masks");
    // The plain call at (seed, offset) equals the seeded one.
    set_seed(99);
    let a = targeted_weight_dropout(&w, 0.5, 0.5)?;
    let b = targeted_weight_dropout_seeded(&w, 0.5, 0.5, 99, 0)?;
    assert_same_bits(&a, &b, "plain vs seeded")?;
    Ok(())
}

#[test]
fn layers_train_and_eval() -> Result<()> {
    let _g = lock();
    use candle_core::ModuleT;
    use candle_nn::{VarBuilder, VarMap};
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let td = TargetedDropout::weight(0.5, 0.5)?;
    let lin = linear(6, 4, Some(td), vb.pp("l"))?;
    let x = Tensor::ones((2, 6), DType::F32, &Device::Cpu)?;
    // Evaluation prunes exactly the targeted half of every row, and draws nothing.
    set_seed(21);
    let y = lin.forward_t(&x, false)?;
    assert_eq!(generator_state(), (21, 0), "evaluation draws nothing");
    let pruned = prune_weights(lin.weight(), 0.5)?;
    let want = candle_nn::Linear::new(pruned, lin.bias().cloned()).forward_t(&x, false)?;
    assert_same_bits(&y, &want, "eval forward")?;
    // Training is the functional op at the generator's next offset, and the weight's
    // gradient is the incoming one (the column sums of x: 2) zeroed where the mask dropped.
    let y = lin.forward_t(&x, true)?;
    assert_eq!(generator_state(), (21, 1), "one offset per training call");
    let dropped = targeted_weight_dropout_seeded(lin.weight(), 0.5, 0.5, 21, 0)?;
    let want = candle_nn::Linear::new(dropped, lin.bias().cloned()).forward_t(&x, false)?;
    assert_same_bits(&y, &want, "train forward")?;
    let grads = y.sum_all()?.backward()?;
    let gw = grads.get(lin.weight()).expect("the weight has a gradient");
    let mask = targeted_dropout_mask(lin.weight(), TargetedDropout::weight(0.5, 0.5)?, 21, 0)?;
    let two = Tensor::full(2f32, (4, 6), &Device::Cpu)?;
    assert_same_bits(gw, &mask.where_cond(&two.zeros_like()?, &two)?, "gradient")?;
    let m = mask.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    assert!(
        0.0 < m && m < 12.0,
        "alpha 0.5 drops some of the 12 targeted: {m}"
    );

    let conv = conv2d(
        3,
        5,
        3,
        Default::default(),
        Some(TargetedDropout::unit(0.4, 1.0)?),
        vb.pp("c"),
    )?;
    let img = Tensor::ones((1, 3, 8, 8), DType::F32, &Device::Cpu)?;
    let y = conv.forward_t(&img, false)?;
    assert_eq!(y.dims(), [1, 5, 6, 6]);
    // Two of five filters pruned: their output channels are their bias alone, the others not.
    let w = prune_units(conv.weight(), 0.4)?;
    let zero: Vec<bool> = w
        .abs()?
        .sum((1, 2, 3))?
        .to_vec1::<f32>()?
        .iter()
        .map(|&s| s == 0.0)
        .collect();
    assert_eq!(zero.iter().filter(|&&z| z).count(), 2, "{zero:?}");
    let bias = conv.bias().expect("a bias").to_vec1::<f32>()?;
    for (c, &z) in zero.iter().enumerate() {
        let out = y.get(0)?.get(c)?.flatten_all()?.to_vec1::<f32>()?;
        let bias_alone = out.iter().all(|&v| v.to_bits() == bias[c].to_bits());
        assert_eq!(
            bias_alone, z,
            "channel {c}: {out:?} against bias {}",
            bias[c]
        );
    }
    // Unit dropout at alpha = 1 in training is the same pruning (and takes one offset).
    let before = generator_state();
    assert_same_bits(&conv.forward_t(&img, true)?, &y, "alpha 1 trains pruned")?;
    assert_eq!(generator_state(), (before.0, before.1 + 1));
    Ok(())
}

#[test]
fn set_generator_state_resumes_a_run() -> Result<()> {
    let _g = lock();
    let mut rng = Rng(9);
    let w = tensor(&mut rng, &[16, 40], DType::F32, Data::Plain)?;
    set_seed(5);
    let _ = targeted_weight_dropout(&w, 0.5, 0.5)?;
    let saved = generator_state();
    assert_eq!(saved, (5, 1));
    let next = bits(&targeted_weight_dropout(&w, 0.5, 0.5)?)?;
    set_seed(77);
    set_generator_state(saved.0, saved.1);
    assert_eq!(generator_state(), saved);
    assert_eq!(bits(&targeted_weight_dropout(&w, 0.5, 0.5)?)?, next);
    Ok(())
}

#[test]
fn results_do_not_depend_on_the_thread_count() -> Result<()> {
    // Seeded calls (no generator), but kept here with the other pool-sensitive checks.
    let _g = lock();
    let mut rng = Rng(10);
    let cases: Vec<(Vec<usize>, DType)> = vec![
        (vec![64, 300], DType::F32),
        (vec![3, 70_000], DType::F32),
        (vec![70_000, 3], DType::BF16),
        (vec![1, 200_000], DType::F16),
        (vec![9, 17, 3], DType::F64),
    ];
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let four = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .expect("a four-thread pool");
    for (shape, dt) in cases {
        let w = tensor(&mut rng, &shape, dt, Data::Edgy)?;
        let run = || -> Result<Vec<Vec<u64>>> {
            Ok(vec![
                bits(&targeted_weight_dropout_seeded(&w, 0.5, 0.5, 1, 2)?)?,
                bits(&targeted_unit_dropout_seeded(&w, 0.5, 0.5, 1, 2)?)?,
                bits(&prune_weights(&w, 0.3)?)?,
            ])
        };
        let default = run()?;
        assert_eq!(one.install(run)?, default, "{shape:?} {dt:?}: 1 thread");
        assert_eq!(four.install(run)?, default, "{shape:?} {dt:?}: 4 threads");
    }
    Ok(())
}
