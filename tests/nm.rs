//! N:M targeted dropout: hand-computed answers (ties, NaN, signed zeros, a conv weight's
//! channel groups), every dtype, shape and pattern against the oracle, the draws shared with
//! weight dropout, autograd, the grouped call, the layers, `VarMapDropout` with its report,
//! the ramp, the safetensors export and the bad arguments. A binary of its own: every test
//! that uses the process-wide generator takes `GENERATOR_LOCK`.
mod common;

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use candle_targeted_dropout::reference::{self, Draws};
use candle_targeted_dropout::*;
use common::*;
use std::sync::{Mutex, MutexGuard};

static GENERATOR_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    GENERATOR_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn f32_bits(v: &[f32]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits() as u64).collect()
}

#[test]
fn two_four_by_hand_ties_nan_signed_zeros() -> Result<()> {
    for t in targets() {
        let dev = t.device();
        // The ops on the target (the emulated kernels too); the checks on the CPU.
        let prune = |w: &Tensor, n, m| t.run(|| prune_nm(w, n, m));
        let seeded =
            |w: &Tensor, n, m, a, s, o| t.run(|| targeted_nm_dropout_seeded(w, n, m, a, s, o));
        let w = Tensor::new(
            &[
                [0.5f32, -0.0, 0.0, 1.0, f32::NAN, 3.0, -3.0, 2.0],
                [1.0, 1.0, 1.0, 1.0, -f32::INFINITY, f32::NAN, -0.0, 5.0],
            ],
            &dev,
        )?;
        // Row 0, group 0: -0.0 and +0.0 tie at key 0, the smallest: both go (a dropped -0.0
        // becomes +0.0). Group 1: 2.0 is the smallest, 3.0 and -3.0 tie and the lower index
        // goes; NaN ranks above everything.
        // Row 1, group 0: four ties, the two lowest indices go. Group 1: -0.0 and 5.0 are
        // the two smallest (-Inf ranks below NaN, above every finite value).
        let want = f32_bits(&[
            0.5,
            0.0,
            0.0,
            1.0,
            f32::NAN,
            0.0,
            -3.0,
            0.0,
            0.0,
            0.0,
            1.0,
            1.0,
            -f32::INFINITY,
            f32::NAN,
            0.0,
            0.0,
        ]);
        assert_eq!(bits(&prune(&w, 2, 4)?)?, want, "{t:?}");
        assert_eq!(bits(&seeded(&w, 2, 4, 1.0, 5, 6)?)?, want);
        // The oracle agrees.
        let wv = w.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        let o = reference::nm_dropout(&wv, &wv, &[2, 8], 2, 4, Draws::PRUNE);
        assert_eq!(f32_bits(&o), want, "oracle");
        // 1:4 keeps the largest of each group; 3:4 drops only the smallest.
        let want1 = f32_bits(&[
            0.0,
            0.0,
            0.0,
            1.0,
            f32::NAN,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            1.0,
            0.0,
            f32::NAN,
            0.0,
            0.0,
        ]);
        assert_eq!(bits(&prune(&w, 1, 4)?)?, want1);
        let w3 = prune(&w, 3, 4)?.flatten_all()?.to_device(&Device::Cpu)?;
        let w3 = w3.to_vec1::<f32>()?;
        assert_eq!(
            w3[1].to_bits(),
            0,
            "-0.0 (index 1) ties +0.0 and goes first"
        );
        assert_eq!(w3[2].to_bits(), 0f32.to_bits());
        assert_eq!(w3[7], 0.0);
        assert_eq!(w3[8], 0.0);
        assert_eq!(w3[9], 1.0);
        assert_eq!(w3[14], 0.0);
        assert_eq!(w3[15], 5.0);
        assert!(is_nm_sparse(&prune(&w, 2, 4)?, 2, 4)?);
        // n = m targets nothing, n = 0 everything.
        assert_eq!(bits(&prune(&w, 4, 4)?)?, bits(&w)?);
        assert_eq!(bits(&prune(&w, 0, 4)?)?, vec![0; 16]);
    }
    Ok(())
}

#[test]
fn conv_weights_group_input_channels() -> Result<()> {
    for t in targets() {
        let dev = t.device();
        // The ops on the target (the emulated kernels too); the checks on the CPU.
        let prune = |w: &Tensor, n, m| t.run(|| prune_nm(w, n, m));
        // [out 1, in 4, kh 1, kw 2]: flat index c * 2 + x. The groups are the channels at
        // one kernel position: x = 0 holds flat 0, 2, 4, 6 = 4, 3, -2, 1 (1 and -2 go),
        // x = 1 holds flat 1, 3, 5, 7 = -1, 2, 8, 0.5 (0.5 and -1 go). Groups along the
        // last axis would have been (4, -1) and so on: a different answer.
        let w = Tensor::new(&[4f32, -1.0, 3.0, 2.0, -2.0, 8.0, 1.0, 0.5], &dev)?
            .reshape((1, 4, 1, 2))?;
        let p = prune(&w, 2, 4)?;
        assert_eq!(
            p.flatten_all()?.to_vec1::<f32>()?,
            [4.0, 0.0, 3.0, 2.0, 0.0, 8.0, 0.0, 0.0]
        );
        assert!(is_nm_sparse(&p, 2, 4)?);
        // The same weight as [1, 8] (groups along the last axis: (4, -1, 3, 2) and
        // (-2, 8, 1, 0.5)) prunes differently.
        let flat = prune(&w.reshape((1, 8))?, 2, 4)?;
        assert_eq!(
            flat.flatten_all()?.to_vec1::<f32>()?,
            [4.0, 0.0, 3.0, 0.0, -2.0, 8.0, 0.0, 0.0]
        );
        assert!(!is_nm_sparse(&flat.reshape((1, 4, 1, 2))?, 2, 4)?);
        // Conv1d [out 2, in 4, k 1]: s = 1, the groups are the rows.
        let w1 =
            Tensor::new(&[1f32, 2.0, 3.0, 4.0, -4.0, 3.0, -2.0, 1.0], &dev)?.reshape((2, 4, 1))?;
        assert_eq!(
            prune(&w1, 2, 4)?.flatten_all()?.to_vec1::<f32>()?,
            [0.0, 0.0, 3.0, 4.0, -4.0, 3.0, 0.0, 0.0]
        );
    }
    Ok(())
}

#[test]
fn is_nm_sparse_counts_non_zeros() -> Result<()> {
    let dev = Device::Cpu;
    let t = |v: &[f32]| Tensor::new(v, &dev);
    assert!(is_nm_sparse(&t(&[1.0, 0.0, -0.0, 2.0])?, 2, 4)?);
    assert!(
        !is_nm_sparse(&t(&[1.0, f32::NAN, 0.0, 2.0])?, 2, 4)?,
        "NaN is not zero"
    );
    assert!(
        !is_nm_sparse(&t(&[1e-45, 1.0, 0.0, 2.0])?, 2, 4)?,
        "a subnormal is not zero"
    );
    assert!(is_nm_sparse(&t(&[1.0, 1.0, 1.0, 1.0])?, 4, 4)?);
    assert!(is_nm_sparse(&t(&[0.0; 8])?, 0, 4)?);
    assert!(is_nm_sparse(
        &Tensor::zeros((0, 8), DType::F32, &dev)?,
        2,
        4
    )?);
    let h = Tensor::new(&[1f32, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 5.0], &dev)?.to_dtype(DType::BF16)?;
    assert!(is_nm_sparse(&h, 2, 4)?);
    assert!(!is_nm_sparse(&h, 1, 4)?);
    Ok(())
}

/// Every dtype, rank 1 to 5 and patterns from 0:1 to 31:32, random and edge data, alpha 0,
/// 1 and between: the library against the oracle, values and mask, on every device.
#[test]
fn random_against_the_oracle() -> Result<()> {
    let mut rng = Rng(0x5eed_2024);
    let patterns = [
        (2, 4),
        (1, 4),
        (4, 8),
        (0, 1),
        (1, 1),
        (3, 7),
        (5, 16),
        (16, 32),
        (31, 32),
        (0, 32),
        (1, 2),
    ];
    let mut cases = 0;
    for t in targets() {
        let dev = t.device();
        // The ops on the target (the emulated kernels too); the checks on the CPU.
        let seeded =
            |w: &Tensor, n, m, a, s, o| t.run(|| targeted_nm_dropout_seeded(w, n, m, a, s, o));
        for (pi, &(n, m)) in patterns.iter().enumerate() {
            for dt in DTYPES {
                let data = [Data::Plain, Data::Edgy, Data::Ties][(pi + cases) % 3];
                let g = 1 + rng.below(5) as usize;
                let shapes: Vec<Vec<usize>> = vec![
                    vec![m * g],
                    vec![1 + rng.below(9) as usize, m * g],
                    vec![1 + rng.below(5) as usize, m * g, 1 + rng.below(5) as usize],
                    vec![1 + rng.below(4) as usize, m, 3, 1 + rng.below(3) as usize],
                    vec![2, m * g, 2, 1, 3],
                ];
                for shape in shapes {
                    let w = tensor(&mut rng, &shape, dt, data)?;
                    for alpha in [0.0, 0.37, 1.0] {
                        let (seed, offset) = (rng.next_u64(), rng.next_u64());
                        let d = Draws {
                            seed,
                            offset,
                            alpha,
                        };
                        let want = nm_oracle(&w, &w, n, m, d)?;
                        let got = seeded(&w.to_device(&dev)?, n, m, alpha, seed, offset)?;
                        let what = format!("{t:?} {dt:?} {shape:?} {n}:{m} alpha {alpha}");
                        assert_same_bits(&got, &want, &what)?;
                        let mask = t.run(|| {
                            targeted_dropout_mask(
                                &w.to_device(&dev)?,
                                TargetedDropout::new(
                                    DropoutKind::Nm { n, m },
                                    (m - n) as f64 / m as f64,
                                    alpha,
                                )?,
                                seed,
                                offset,
                            )
                        })?;
                        // The oracle's mask: its output over values that are all 1.
                        let ones = w.ones_like()?;
                        let want_mask: Vec<u64> = bits(&nm_oracle(&w, &ones, n, m, d)?)?
                            .iter()
                            .zip(bits(&ones)?)
                            .map(|(a, b)| (*a != b) as u64)
                            .collect();
                        assert_eq!(bits(&mask)?, want_mask, "{what}: mask");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 0);
    Ok(())
}

fn nm_oracle(w: &Tensor, vals: &Tensor, n: usize, m: usize, d: Draws) -> Result<Tensor> {
    use half::{bf16, f16};
    let dims = w.dims().to_vec();
    macro_rules! go {
        ($t:ty) => {{
            let wv = w.flatten_all()?.to_vec1::<$t>()?;
            let vv = vals.flatten_all()?.to_vec1::<$t>()?;
            Tensor::from_vec(
                reference::nm_dropout(&wv, &vv, &dims, n, m, d),
                dims.clone(),
                &Device::Cpu,
            )
        }};
    }
    match w.dtype() {
        DType::F32 => go!(f32),
        DType::F64 => go!(f64),
        DType::F16 => go!(f16),
        DType::BF16 => go!(bf16),
        dt => panic!("{dt:?}"),
    }
}

#[test]
fn long_rows_and_non_contiguous_input() -> Result<()> {
    let mut rng = Rng(77);
    for t in targets() {
        let dev = t.device();
        // The ops on the target (the emulated kernels too); the checks on the CPU.
        let seeded =
            |w: &Tensor, n, m, a, s, o| t.run(|| targeted_nm_dropout_seeded(w, n, m, a, s, o));
        // Rows longer than a task, a rank-1 tensor of 100k, and a transposed view.
        for shape in [vec![3usize, 40_000], vec![100_000], vec![64, 48, 3, 3]] {
            let w = tensor(&mut rng, &shape, DType::F32, Data::Edgy)?;
            let d = Draws {
                seed: 3,
                offset: 9,
                alpha: 0.5,
            };
            let got = seeded(&w.to_device(&dev)?, 2, 4, 0.5, 3, 9)?;
            assert_same_bits(&got, &nm_oracle(&w, &w, 2, 4, d)?, &format!("{shape:?}"))?;
        }
        let w = tensor(&mut rng, &[12, 8], DType::F32, Data::Plain)?;
        let tr = w.t()?; // [8, 12], not contiguous
        let got = seeded(&tr.to_device(&dev)?, 2, 4, 0.5, 1, 2)?;
        let want = seeded(&tr.contiguous()?, 2, 4, 0.5, 1, 2)?;
        assert_same_bits(&got, &want, "transposed")?;
    }
    Ok(())
}

/// A filter that is one group: N:M dropout is weight dropout of the same filter, with the
/// same draws.
#[test]
fn one_group_per_filter_is_weight_dropout() -> Result<()> {
    let mut rng = Rng(11);
    for t in targets() {
        let dev = t.device();
        // The ops on the target (the emulated kernels too); the checks on the CPU.
        let seeded =
            |w: &Tensor, n, m, a, s, o| t.run(|| targeted_nm_dropout_seeded(w, n, m, a, s, o));
        for (n, m) in [(2usize, 4usize), (1, 4), (4, 8), (3, 7), (13, 32)] {
            let w = tensor(&mut rng, &[37, m], DType::F32, Data::Edgy)?.to_device(&dev)?;
            let gamma = ((m - n) as f64 + 0.5) / m as f64; // floor(gamma m) = m - n
            for alpha in [0.25, 0.5, 0.9] {
                let nm = seeded(&w, n, m, alpha, 42, 7)?;
                let wd = t.run(|| targeted_weight_dropout_seeded(&w, gamma, alpha, 42, 7))?;
                assert_same_bits(&nm, &wd, &format!("{t:?} {n}:{m} alpha {alpha}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn backward_masks_the_gradient() -> Result<()> {
    let mut rng = Rng(5);
    for t in targets() {
        let dev = t.device();
        // The ops on the target (the emulated kernels too); the checks on the CPU.
        let w = tensor(&mut rng, &[6, 16], DType::F32, Data::Plain)?.to_device(&dev)?;
        let c = tensor(&mut rng, &[6, 16], DType::F32, Data::Plain)?.to_device(&dev)?;
        let v = Var::from_tensor(&w)?;
        // The forward and the backward pass on the target.
        let grads = t.run(|| {
            let y = targeted_nm_dropout_seeded(v.as_tensor(), 2, 4, 0.5, 8, 1)?;
            (&y * &c)?.sum_all()?.backward()
        })?;
        let g = grads.get(v.as_tensor()).expect("a gradient");
        let kind = DropoutKind::Nm { n: 2, m: 4 };
        let mask =
            t.run(|| targeted_dropout_mask(&w, TargetedDropout::new(kind, 0.5, 0.5)?, 8, 1))?;
        let want = mask.where_cond(&c.zeros_like()?, &c)?;
        assert_same_bits(g, &want, &format!("{t:?} gradient"))?;
        let dropped = mask.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        assert!(
            dropped > 0.0 && dropped < 48.0,
            "about half the targeted: {dropped}"
        );
    }
    Ok(())
}

#[test]
fn plain_call_takes_one_offset_and_the_grouped_call_matches() -> Result<()> {
    let _g = lock();
    let mut rng = Rng(21);
    let a = tensor(&mut rng, &[8, 16], DType::F32, Data::Plain)?;
    let b = tensor(&mut rng, &[4, 8, 3, 3], DType::F32, Data::Plain)?;
    set_seed(9);
    let (seed, offset) = generator_state();
    let plain = targeted_nm_dropout(&a, 2, 4, 0.5)?;
    assert_eq!(generator_state(), (seed, offset + 1));
    assert_same_bits(
        &plain,
        &targeted_nm_dropout_seeded(&a, 2, 4, 0.5, seed, offset)?,
        "plain",
    )?;
    let nm = TargetedDropout::nm(2, 4, 0.5)?;
    let wd = TargetedDropout::weight(0.5, 0.5)?;
    set_seed(9);
    let many = targeted_dropout_many(&[(&a, nm), (&b, TargetedDropout::nm(4, 8, 0.7)?), (&a, wd)])?;
    set_seed(9);
    let one = [
        targeted_nm_dropout(&a, 2, 4, 0.5)?,
        targeted_nm_dropout(&b, 4, 8, 0.7)?,
        targeted_weight_dropout(&a, 0.5, 0.5)?,
    ];
    for (i, (x, y)) in many.iter().zip(&one).enumerate() {
        assert_same_bits(x, y, &format!("item {i}"))?;
    }
    // A bad item: an error naming it, and no offset taken.
    set_seed(9);
    let bad = Tensor::zeros((2, 6), DType::F32, &Device::Cpu)?;
    let e = targeted_dropout_many(&[(&a, nm), (&bad, nm)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor 1") && e.contains("6") && e.contains("m = 4"),
        "{e}"
    );
    assert_eq!(generator_state(), (9, 0));
    Ok(())
}

#[test]
fn bad_arguments_are_errors_naming_the_values() -> Result<()> {
    let dev = Device::Cpu;
    let w = Tensor::zeros((3, 8), DType::F32, &dev)?;
    let check = |r: Result<Tensor>, parts: &[&str]| {
        let e = r.expect_err("an error").to_string();
        for p in parts {
            assert!(e.contains(p), "{e:?} lacks {p:?}");
        }
    };
    check(prune_nm(&w, 2, 0), &["m = 0"]);
    check(prune_nm(&w, 2, 33), &["m = 33", "32"]);
    check(prune_nm(&w, 5, 4), &["n = 5", "m = 4"]);
    check(prune_nm(&w, 2, 3), &["[3, 8]", "8", "m = 3"]);
    check(
        targeted_nm_dropout_seeded(&w, 2, 4, 1.5, 0, 0),
        &["alpha", "1.5"],
    );
    check(
        targeted_nm_dropout_seeded(&w, 2, 4, f64::NAN, 0, 0),
        &["alpha", "NaN"],
    );
    check(prune_nm(&Tensor::new(1f32, &dev)?, 2, 4), &["rank"]);
    check(
        prune_nm(&Tensor::zeros(8, DType::U32, &dev)?, 2, 4),
        &["U32"],
    );
    check(
        prune_nm(&Tensor::zeros((2, 6, 3, 3), DType::F32, &dev)?, 2, 4),
        &["axis 1", "6"],
    );
    check(
        prune_nm(&Tensor::zeros(6, DType::F32, &dev)?, 2, 4),
        &["axis 0", "6"],
    );
    check(
        prune_nm(&Tensor::zeros((0, 6), DType::F32, &dev)?, 2, 4),
        &["6", "m = 4"],
    );
    let e = is_nm_sparse(&w, 3, 2).unwrap_err().to_string();
    assert!(e.contains("n = 3") && e.contains("m = 2"), "{e}");
    let e = TargetedDropout::nm(2, 40, 0.5).unwrap_err().to_string();
    assert!(e.contains("m = 40"), "{e}");
    let e = TargetedDropout::nm(2, 4, -0.1).unwrap_err().to_string();
    assert!(e.contains("-0.1"), "{e}");
    // A VarMapDropout selection whose shape the pattern does not fit: the variable named.
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    candle_nn::linear(6, 3, vb.pp("fc"))?;
    let e = VarMapDropout::new(&vm, |name, _| {
        (name == "fc.weight").then(|| TargetedDropout::nm(2, 4, 0.5).unwrap())
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("fc.weight") && e.contains("[3, 6]") && e.contains("m = 4"),
        "{e}"
    );
    // An N:M config's gamma is its fraction.
    let e = TargetedDropout::new(DropoutKind::Nm { n: 2, m: 4 }, 0.3, 0.5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("0.3") && e.contains("0.5") && e.contains("2:4"),
        "{e}"
    );
    // An empty tensor whose group axis divides: an empty result.
    let empty = Tensor::zeros((0, 8), DType::F32, &dev)?;
    assert_eq!(prune_nm(&empty, 2, 4)?.dims(), [0, 8]);
    Ok(())
}

#[test]
fn layers_ramp_and_config() -> Result<()> {
    let _g = lock();
    let dev = Device::Cpu;
    let td = TargetedDropout::nm(2, 4, 0.5)?;
    assert_eq!(td.kind(), DropoutKind::Nm { n: 2, m: 4 });
    assert_eq!(td.gamma(), 0.5);
    // The ramp moves alpha only: the pattern stays 2:4.
    let ramp = RampSchedule::with_steps(0.9, 0.8, 10, 20)?;
    let at = td.at_step(&ramp, 10)?;
    assert_eq!((at.kind(), at.gamma(), at.alpha()), (td.kind(), 0.5, 0.4));
    assert_eq!(td.at_step(&ramp, 0)?.alpha(), 0.0);
    assert_eq!(td.at_step(&ramp, 100)?.alpha(), 0.8);
    // A layer: evaluation prunes to 2:4, training drops at random.
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let layer = linear(16, 6, Some(td), vb.pp("fc"))?;
    let x = Tensor::randn(0f32, 1.0, (3, 16), &dev)?;
    let pruned = candle_nn::Linear::new(prune_nm(layer.weight(), 2, 4)?, layer.bias().cloned());
    assert_same_bits(
        &layer.forward_t(&x, false)?,
        &pruned.forward(&x)?,
        "evaluation",
    )?;
    set_seed(3);
    let y = layer.forward_t(&x, true)?;
    set_seed(3);
    let dropped = targeted_nm_dropout(layer.weight(), 2, 4, 0.5)?;
    let manual = candle_nn::Linear::new(dropped, layer.bias().cloned()).forward(&x)?;
    assert_same_bits(&y, &manual, "training")?;
    Ok(())
}

#[test]
fn varmap_trains_reports_and_exports_two_four() -> Result<()> {
    let _g = lock();
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let fc1 = candle_nn::linear(16, 12, vb.pp("fc1"))?;
    let conv = candle_nn::conv2d(8, 4, 3, Default::default(), vb.pp("conv"))?;
    let fc2 = candle_nn::linear(12, 3, vb.pp("fc2"))?;
    let vd = VarMapDropout::new(&vm, |name, _| {
        (name == "fc1.weight" || name == "conv.weight")
            .then(|| TargetedDropout::nm(2, 4, 0.5).unwrap())
    })?;
    // One step: the weights hold their dropped values, the gradients are masked.
    set_seed(4);
    let before = vm.data().lock().unwrap()["fc1.weight"].as_tensor().copy()?;
    let step = vd.apply()?;
    let w_step = vm.data().lock().unwrap()["fc1.weight"].as_tensor().copy()?;
    let (seed, offset) = (4, 1); // conv.weight is first in name order
    assert_same_bits(
        &w_step,
        &targeted_nm_dropout_seeded(&before, 2, 4, 0.5, seed, offset)?,
        "step",
    )?;
    let x = Tensor::randn(0f32, 1.0, (5, 16), &dev)?;
    let img = Tensor::randn(0f32, 1.0, (1, 8, 5, 5), &dev)?;
    let loss = (fc2.forward(&fc1.forward(&x)?.relu()?)?.sqr()?.mean_all()?
        + conv.forward(&img)?.sqr()?.mean_all()?)?;
    let mut grads = loss.backward()?;
    step.finish(&mut grads)?;
    let g = grads
        .get(vm.data().lock().unwrap()["fc1.weight"].as_tensor())
        .unwrap()
        .clone();
    let mask = targeted_dropout_mask(
        &before,
        TargetedDropout::new(DropoutKind::Nm { n: 2, m: 4 }, 0.5, 0.5)?,
        seed,
        offset,
    )?;
    let gz = g.eq(0.0)?.to_dtype(DType::U8)?;
    assert_eq!(
        mask.mul(&gz)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?,
        mask.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?,
        "every dropped weight has a zero gradient"
    );
    // Before pruning, the report says the weights are not 2:4; after, they are exactly.
    let report = vd.report()?;
    assert!(report.vars.iter().all(|v| v.nm
        == Some(NmCheck {
            n: 2,
            m: 4,
            holds: false
        })));
    let report = vd.prune()?;
    assert!(
        report.vars.iter().all(|v| v.nm
            == Some(NmCheck {
                n: 2,
                m: 4,
                holds: true
            })),
        "{report}"
    );
    assert_eq!(report.total().zeros, (12 * 16 + 4 * 8 * 9) / 2);
    let shown = report.to_string();
    assert!(shown.contains("2:4") && shown.contains("yes"), "{shown}");
    // with_pruned at another pattern reports that pattern and restores.
    vd.with_pruned(
        TargetedDropout::new(DropoutKind::Nm { n: 1, m: 4 }, 0.75, 1.0)?,
        |r| {
            assert!(r.vars.iter().all(|v| v.nm
                == Some(NmCheck {
                    n: 1,
                    m: 4,
                    holds: true
                })));
            Ok(())
        },
    )?;
    // The pruned model as ordinary safetensors: loaded back, every weight exactly 2:4, the
    // same bits.
    let dir = std::env::temp_dir().join(format!("td-nm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("pruned-2-4.safetensors");
    vm.save(&path)?;
    let loaded = candle_core::safetensors::load(&path, &dev)?;
    for name in ["fc1.weight", "conv.weight"] {
        let t = &loaded[name];
        assert!(is_nm_sparse(t, 2, 4)?, "{name}");
        assert!(
            !is_nm_sparse(t, 1, 4)?,
            "{name}: random weights keep two per group"
        );
        assert_same_bits(t, vm.data().lock().unwrap()[name].as_tensor(), name)?;
    }
    // The unselected variable is untouched and not 2:4.
    assert!(!is_nm_sparse(&loaded["fc2.weight"], 2, 4)?);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
