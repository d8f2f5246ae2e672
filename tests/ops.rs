//! One test per behaviour of the public ops, run on every device the build has.
mod common;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_targeted_dropout::reference::Draws;
use candle_targeted_dropout::*;
use common::*;

/// A test on every target (the devices, and the emulated kernels with the `emulate`
/// feature); with `devices`, on the devices only: the statistical and the large tests, whose
/// ops the emulated kernels run bit for bit like the CPU's in `equivalence.rs`, but at the
/// emulator's speed would take minutes.
macro_rules! test_device {
    ($fn:ident, $name:ident) => {
        #[test]
        fn $name() -> Result<()> {
            for t in targets() {
                t.run(|| $fn(&t.device()))?;
            }
            Ok(())
        }
    };
    ($fn:ident, $name:ident, devices) => {
        #[test]
        fn $name() -> Result<()> {
            for d in devices() {
                $fn(&d)?;
            }
            Ok(())
        }
    };
}

/// One op on `dev` against the full-sort oracle, bit for bit.
fn check(dev: &Device, kind: DropoutKind, w: &Tensor, gamma: f64, alpha: f64) -> Result<()> {
    let (seed, off) = (7, 3);
    let wd = w.to_device(dev)?;
    let got = match kind {
        DropoutKind::Weight => targeted_weight_dropout_seeded(&wd, gamma, alpha, seed, off)?,
        DropoutKind::Unit => targeted_unit_dropout_seeded(&wd, gamma, alpha, seed, off)?,
        DropoutKind::Nm { n, m } => targeted_nm_dropout_seeded(&wd, n, m, alpha, seed, off)?,
    };
    let want = oracle(
        w,
        w,
        kind,
        gamma,
        Draws {
            seed,
            offset: off,
            alpha,
        },
    )?;
    let what = format!("{kind:?} {:?} {:?} g{gamma} a{alpha}", w.dims(), w.dtype());
    assert_same_bits(&got, &want, &what)
}

fn odd_shapes(dev: &Device) -> Result<()> {
    let mut rng = Rng(1);
    let shapes: &[&[usize]] = &[
        &[1],
        &[7],
        &[1, 1],
        &[5, 1],
        &[3, 17],
        &[2, 1025],
        &[3, 4097],
        &[4, 3, 3, 3],
        &[17, 5, 3, 3],
        &[1, 1 << 20],
        &[100_000, 9],
    ];
    for &shape in shapes {
        for dt in DTYPES {
            let w = tensor(&mut rng, shape, dt, Data::Edgy)?;
            for (g, a) in [(0.5, 0.5), (0.0, 0.7), (1.0, 0.3), (0.9, 1.0)] {
                check(dev, DropoutKind::Weight, &w, g, a)?;
                check(dev, DropoutKind::Unit, &w, g, a)?;
                // N:M with the first pattern whose m divides the group axis.
                let c = shape[if shape.len() == 1 { 0 } else { 1 }];
                let pats = [(2usize, 4usize), (1, 3), (2, 5), (1, 2), (0, 1)];
                if let Some(&(n, m)) = pats.iter().find(|(_, m)| c.is_multiple_of(*m)) {
                    check(
                        dev,
                        DropoutKind::Nm { n, m },
                        &w,
                        (m - n) as f64 / m as f64,
                        a,
                    )?;
                }
            }
        }
    }
    Ok(())
}
test_device!(odd_shapes, odd_shapes_match_the_oracle, devices);

fn ties_and_zeros(dev: &Device) -> Result<()> {
    // An all-zero filter still targets exactly k (the paper's code would target none).
    let w = Tensor::zeros((3, 10), DType::F32, &Device::Cpu)?;
    let m = targeted_dropout_mask(&w.to_device(dev)?, TargetedDropout::weight(0.3, 1.0)?, 0, 0)?;
    let m = m.to_dtype(DType::F32)?.sum(D::Minus1)?.to_vec1::<f32>()?;
    assert_eq!(m, [3.0, 3.0, 3.0]);
    // -0.0 and +0.0 tie: the lower index goes first.
    let w = Tensor::new(&[-0.0f32, 0.0, 1.0, -0.0], &Device::Cpu)?;
    let m = targeted_dropout_mask(&w.to_device(dev)?, TargetedDropout::weight(0.5, 1.0)?, 0, 0)?;
    assert_eq!(m.to_vec1::<u8>()?, [1, 1, 0, 0]);
    // +Inf ranks above every finite value and NaN above +Inf; +Inf and -Inf tie.
    let w = Tensor::new(
        &[f32::NAN, f32::INFINITY, 1e30, -f32::INFINITY],
        &Device::Cpu,
    )?;
    let m = targeted_dropout_mask(&w.to_device(dev)?, TargetedDropout::weight(0.5, 1.0)?, 0, 0)?;
    assert_eq!(m.to_vec1::<u8>()?, [0, 1, 1, 0]);
    let m = targeted_dropout_mask(
        &w.to_device(dev)?,
        TargetedDropout::weight(0.75, 1.0)?,
        0,
        0,
    )?;
    assert_eq!(m.to_vec1::<u8>()?, [0, 1, 1, 1]);
    // Dropped elements are +0.0 even where the input was -0.0; kept ones keep their bits.
    let w = Tensor::new(&[-0.0f32, 2.0], &Device::Cpu)?;
    let d = prune_weights(&w.to_device(dev)?, 0.5)?.to_vec1::<f32>()?;
    assert_eq!(d[0].to_bits(), 0);
    let mut rng = Rng(2);
    for dt in DTYPES {
        let w = tensor(&mut rng, &[33, 65], dt, Data::Ties)?;
        check(dev, DropoutKind::Weight, &w, 0.37, 0.5)?;
        check(dev, DropoutKind::Unit, &w, 0.37, 0.5)?;
    }
    Ok(())
}
test_device!(ties_and_zeros, ties_zeros_and_specials);

fn non_contiguous(dev: &Device) -> Result<()> {
    let mut rng = Rng(3);
    for dt in DTYPES {
        let base = tensor(&mut rng, &[40, 33], dt, Data::Edgy)?.to_device(dev)?;
        let views = [
            base.t()?,                                  // transposed view
            base.narrow(0, 5, 20)?,                     // rows 5..25: an offset in the storage
            base.narrow(1, 3, 17)?,                     // a column slice: strided rows
            base.reshape((8, 5, 33))?.transpose(1, 2)?, // rank 3, permuted
        ];
        for v in views {
            let c = v.contiguous()?;
            for kind in [DropoutKind::Weight, DropoutKind::Unit] {
                let a = targeted_dropout_mask(&v, TargetedDropout::new(kind, 0.6, 0.5)?, 9, 9)?;
                let b = targeted_dropout_mask(&c, TargetedDropout::new(kind, 0.6, 0.5)?, 9, 9)?;
                assert_same_bits(&a, &b, "mask of a view vs its copy")?;
            }
            let a = targeted_weight_dropout_seeded(&v, 0.6, 0.5, 9, 9)?;
            let b = targeted_weight_dropout_seeded(&c, 0.6, 0.5, 9, 9)?;
            assert_same_bits(&a, &b, "weight dropout of a view vs its copy")?;
            let a = targeted_unit_dropout_seeded(&v, 0.6, 0.5, 9, 9)?;
            let b = targeted_unit_dropout_seeded(&c, 0.6, 0.5, 9, 9)?;
            assert_same_bits(&a, &b, "unit dropout of a view vs its copy")?;
            let a = prune_weights(&v, 0.6)?;
            assert_same_bits(
                &a,
                &prune_weights(&c, 0.6)?,
                "pruning of a view vs its copy",
            )?;
        }
    }
    Ok(())
}
test_device!(non_contiguous, views_equal_their_contiguous_copy, devices);

fn gradients(dev: &Device) -> Result<()> {
    let mut rng = Rng(4);
    for dt in DTYPES {
        // 1:3 groups the three channels of each (o, x): elements 5 apart.
        let nm = DropoutKind::Nm { n: 1, m: 3 };
        for kind in [DropoutKind::Weight, DropoutKind::Unit, nm] {
            let w0 = tensor(&mut rng, &[13, 3, 5], dt, Data::Edgy)?;
            let w = Var::from_tensor(&w0.to_device(dev)?)?;
            let g = tensor(&mut rng, &[13, 3, 5], dt, Data::Plain)?;
            let y = match kind {
                DropoutKind::Weight => targeted_weight_dropout_seeded(&w, 0.5, 0.5, 11, 5)?,
                DropoutKind::Unit => targeted_unit_dropout_seeded(&w, 0.5, 0.5, 11, 5)?,
                DropoutKind::Nm { n, m } => targeted_nm_dropout_seeded(&w, n, m, 0.5, 11, 5)?,
            };
            let loss = (y * g.to_device(dev)?)?.sum_all()?;
            let grads = loss.backward()?;
            let gw = grads.get(&w).expect("w has a gradient");
            // The incoming gradient of `sum(y * g)` is `g`: masked exactly where y dropped.
            let want = oracle(
                &w0,
                &g,
                kind,
                0.5,
                Draws {
                    seed: 11,
                    offset: 5,
                    alpha: 0.5,
                },
            )?;
            assert_same_bits(gw, &want, "gradient")?;
            // An N:M kind's gamma is its fraction (m - n) / m.
            let gamma = match kind {
                DropoutKind::Nm { n, m } => (m - n) as f64 / m as f64,
                _ => 0.5,
            };
            let mask = targeted_dropout_mask(&w0, TargetedDropout::new(kind, gamma, 0.5)?, 11, 5)?;
            let gwv = bits(gw)?;
            let gv = bits(&g)?;
            for (i, m) in bits(&mask)?.into_iter().enumerate() {
                if m == 1 {
                    assert_eq!(gwv[i], 0, "dropped element {i} must have a +0 gradient");
                } else {
                    assert_eq!(gwv[i], gv[i], "kept element {i} keeps its gradient");
                }
            }
        }
    }
    Ok(())
}
test_device!(gradients, gradient_is_the_masked_incoming_gradient);

fn bad_input(dev: &Device) -> Result<()> {
    let w = Tensor::ones((4, 4), DType::F32, dev)?;
    for bad in [f64::NAN, f64::INFINITY, -0.1, 1.5, f64::NEG_INFINITY] {
        let e = targeted_weight_dropout(&w, bad, 0.5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gamma") && e.contains("[0, 1]") && e.contains(&format!("{bad}")),
            "{e}"
        );
        let e = targeted_unit_dropout_seeded(&w, 0.5, bad, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("alpha") && e.contains(&format!("{bad}")), "{e}");
        let e = prune_weights(&w, bad).unwrap_err().to_string();
        assert!(e.contains("gamma"), "{e}");
        let e = prune_units(&w, bad).unwrap_err().to_string();
        assert!(
            e.contains("prune_units: gamma") && e.contains(&format!("{bad}")),
            "{e}"
        );
        let e = TargetedDropout::weight(bad, 0.5).unwrap_err().to_string();
        assert!(
            e.contains("TargetedDropout: gamma") && e.contains(&format!("{bad}")),
            "{e}"
        );
        let e = RampSchedule::new(0.5, bad).unwrap_err().to_string();
        assert!(
            e.contains("RampSchedule: alpha") && e.contains(&format!("{bad}")),
            "{e}"
        );
    }
    for dt in [DType::U8, DType::U32, DType::I64] {
        let wi = w.to_dtype(dt)?;
        let e = targeted_weight_dropout(&wi, 0.5, 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{dt:?}")) && e.contains("f32"), "{e}");
        let e = prune_units(&wi, 0.5).unwrap_err().to_string();
        assert!(
            e.contains("prune_units") && e.contains(&format!("{dt:?}")),
            "{e}"
        );
    }
    let scalar = Tensor::new(1f32, dev)?;
    let e = prune_weights(&scalar, 0.5).unwrap_err().to_string();
    assert!(e.contains("rank"), "{e}");
    // Empty tensors give empty tensors.
    for shape in [&[0usize][..], &[0, 5], &[5, 0], &[3, 0, 2]] {
        let w = Tensor::zeros(shape, DType::F32, dev)?;
        assert_eq!(
            targeted_weight_dropout_seeded(&w, 0.5, 0.5, 0, 0)?.dims(),
            shape
        );
        assert_eq!(prune_units(&w, 0.5)?.dims(), shape);
    }
    Ok(())
}
test_device!(bad_input, bad_input_is_an_error_naming_the_value);

fn determinism(dev: &Device) -> Result<()> {
    let mut rng = Rng(5);
    let w = tensor(&mut rng, &[64, 300], DType::F32, Data::Plain)?.to_device(dev)?;
    let a = targeted_weight_dropout_seeded(&w, 0.5, 0.5, 42, 0)?;
    let b = targeted_weight_dropout_seeded(&w, 0.5, 0.5, 42, 0)?;
    assert_same_bits(&a, &b, "same seed and offset")?;
    let c = targeted_weight_dropout_seeded(&w, 0.5, 0.5, 42, 1)?;
    assert_ne!(bits(&a)?, bits(&c)?, "the next offset draws a fresh mask");
    let d = targeted_weight_dropout_seeded(&w, 0.5, 0.5, 43, 0)?;
    assert_ne!(bits(&a)?, bits(&d)?, "another seed draws a fresh mask");
    Ok(())
}
test_device!(determinism, same_seed_same_bits, devices);

fn drop_rate(dev: &Device) -> Result<()> {
    let mut rng = Rng(7);
    let w = tensor(&mut rng, &[512, 2048], DType::F32, Data::Plain)?.to_device(dev)?;
    for alpha in [0.1, 0.5, 0.9] {
        let m = targeted_dropout_mask(&w, TargetedDropout::weight(0.5, alpha)?, 3, 1)?;
        let dropped = m.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        let targeted = 512.0 * 1024.0;
        let rate = dropped / targeted;
        let sd = (alpha * (1.0 - alpha) / targeted).sqrt();
        assert!(
            (rate - alpha).abs() < 4.0 * sd,
            "alpha {alpha}: dropped {rate}, sd {sd}"
        );
    }
    // Units: 4096 units of 4, half targeted.
    let w = tensor(&mut rng, &[4096, 4], DType::F32, Data::Plain)?.to_device(dev)?;
    let m = targeted_dropout_mask(&w, TargetedDropout::unit(0.5, 0.5)?, 3, 1)?;
    let rate = m.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? / 4.0 / 2048.0;
    assert!(
        (rate - 0.5).abs() < 4.0 * (0.25f64 / 2048.0).sqrt(),
        "unit rate {rate}"
    );
    Ok(())
}
test_device!(drop_rate, drop_rate_is_alpha, devices);

fn only_targeted_are_dropped(dev: &Device) -> Result<()> {
    // Every dropped weight is one of the smallest k, and every kept weight is unchanged.
    let mut rng = Rng(8);
    let w = tensor(&mut rng, &[50, 97], DType::F32, Data::Plain)?;
    let p = prune_weights(&w.to_device(dev)?, 0.3)?.to_device(&Device::Cpu)?;
    let k = (0.3f64 * 97.0).floor() as usize;
    for (row, prow) in w.to_vec2::<f32>()?.iter().zip(p.to_vec2::<f32>()?) {
        let mut mags: Vec<f32> = row.iter().map(|x| x.abs()).collect();
        mags.sort_by(f32::total_cmp);
        let zeroed = prow.iter().filter(|x| **x == 0.0).count();
        assert_eq!(zeroed, k);
        for (x, y) in row.iter().zip(&prow) {
            if *y == 0.0 {
                assert!(x.abs() <= mags[k - 1]);
            } else {
                assert_eq!(x, y);
            }
        }
    }
    Ok(())
}
test_device!(only_targeted_are_dropped, pruning_removes_the_smallest);

#[test]
fn schedule_ramps_like_the_paper() -> Result<()> {
    let s = RampSchedule::new(0.5, 0.66)?;
    assert_eq!(s.steps(), (20_000, 40_000));
    let (g, a) = s.at(10_000);
    assert!((g - 0.95 * 0.5 * 0.5).abs() < 1e-12 && (a - 0.66 * 0.25).abs() < 1e-12);
    let (g, _) = s.at(30_000);
    assert!((g - (0.95 * 0.5 + 0.05 * 0.5 * 0.5)).abs() < 1e-12);
    assert_eq!(s.at(1_000_000), (0.5, 0.66));
    let td = TargetedDropout::weight(0.0, 0.0)?;
    let full = RampSchedule::with_steps(1.0, 1.0, 10, 20)?;
    let at = td.at_step(&full, 20)?;
    assert_eq!((at.gamma(), at.alpha()), (1.0, 1.0));
    // Bad ranges are errors that name them.
    for (t1, t2) in [(20, 20), (30, 20), (0, 20)] {
        let e = RampSchedule::with_steps(0.5, 0.5, t1, t2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("t1 = {t1}")) && e.contains(&format!("t2 = {t2}")),
            "{e}"
        );
    }
    for bad in [f64::NAN, -0.5, 1.5] {
        let e = RampSchedule::new(bad, 0.5).unwrap_err().to_string();
        assert!(e.contains("gamma") && e.contains(&format!("{bad}")), "{e}");
        let e = RampSchedule::new(0.5, bad).unwrap_err().to_string();
        assert!(e.contains("alpha") && e.contains(&format!("{bad}")), "{e}");
    }
    Ok(())
}

#[test]
fn sparsity_counts_zeros() -> Result<()> {
    let w = Tensor::new(&[0f32, -0.0, 1.0, 2.0], &Device::Cpu)?;
    assert_eq!(sparsity(&w)?, 0.5);
    Ok(())
}

#[test]
fn every_layer_kind_prunes_its_weight_in_evaluation() -> Result<()> {
    // Evaluation draws nothing: these layers never touch the process-wide generator.
    use candle_core::{Module, ModuleT};
    use candle_nn::{VarBuilder, VarMap};
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let td = Some(TargetedDropout::weight(0.5, 0.5)?);
    let c1 = conv1d(3, 4, 3, Default::default(), td, vb.pp("c1"))?;
    let x = Tensor::ones((2, 3, 9), DType::F32, &Device::Cpu)?;
    let pruned = prune_weights(c1.weight(), 0.5)?;
    let want = c1.inner().with_weight(pruned).forward(&x)?;
    assert_same_bits(&c1.forward_t(&x, false)?, &want, "conv1d")?;
    let emb = embedding(10, 6, Some(TargetedDropout::unit(0.3, 1.0)?), vb.pp("emb"))?;
    let ids = Tensor::new(&[0u32, 3, 9, 3], &Device::Cpu)?;
    let table = prune_units(emb.weight(), 0.3)?;
    let want = candle_nn::Embedding::new(table, 6).forward(&ids)?;
    assert_same_bits(&emb.forward_t(&ids, false)?, &want, "embedding")?;
    // Without a config the layer is its inner module.
    let plain = Targeted::new(c1.inner().clone(), None);
    assert_same_bits(
        &plain.forward_t(&x, true)?,
        &c1.inner().forward(&x)?,
        "no config",
    )?;
    Ok(())
}

#[test]
fn pruned_gives_the_evaluation_module_once_and_conv1d_has_its_bias() -> Result<()> {
    use candle_core::{Module, ModuleT};
    use candle_nn::{VarBuilder, VarMap};
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let c1 = conv1d(
        3,
        4,
        3,
        Default::default(),
        Some(TargetedDropout::unit(0.5, 0.5)?),
        vb.pp("c1"),
    )?;
    let bias = c1.bias().expect("conv1d has a bias");
    assert_same_bits(bias, c1.inner().bias().expect("inner bias"), "conv1d bias")?;
    let x = Tensor::ones((2, 3, 9), DType::F32, &Device::Cpu)?;
    let pruned = c1.pruned()?;
    // The pruned module holds the pruned weight (two of four filters zeroed) and the bias.
    assert_same_bits(pruned.weight(), &prune_units(c1.weight(), 0.5)?, "weight")?;
    assert_same_bits(pruned.bias().expect("bias"), bias, "bias kept")?;
    assert_same_bits(&pruned.forward(&x)?, &c1.forward_t(&x, false)?, "forward")?;
    // The wrapper's own weight is untouched.
    assert_ne!(bits(c1.weight())?, bits(pruned.weight())?);
    let lin = linear(6, 5, Some(TargetedDropout::weight(0.5, 0.5)?), vb.pp("l"))?;
    let xl = Tensor::ones((2, 6), DType::F32, &Device::Cpu)?;
    let pl = lin.pruned()?;
    assert_same_bits(pl.weight(), &prune_weights(lin.weight(), 0.5)?, "linear")?;
    assert_same_bits(
        &pl.forward(&xl)?,
        &lin.forward_t(&xl, false)?,
        "linear forward",
    )?;
    // Without a config: the inner module's own weight.
    let plain = Targeted::new(lin.inner().clone(), None).pruned()?;
    assert_same_bits(plain.weight(), lin.weight(), "no config")?;
    Ok(())
}

/// The raw Philox word of draw index `e` at `(seed, offset)`, by the oracle's own Philox.
fn raw_draw(seed: u64, offset: u64, e: u64) -> u32 {
    let c = e / 4;
    let block = candle_targeted_dropout::reference::philox4x32_10(
        [
            c as u32,
            (c >> 32) as u32,
            offset as u32,
            (offset >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    block[(e % 4) as usize]
}

/// The two rates on either side of a draw: a targeted element whose draw is `r` is kept at
/// `alpha = (r >> 8) / 2^24` (threshold `r >> 8`, not above its draw) and dropped at
/// `((r >> 8) + 1) / 2^24`.
fn rates_around(r: u32) -> [(f64, bool); 2] {
    let d = (r >> 8) as f64;
    let two24 = (1u64 << 24) as f64;
    [(d / two24, false), ((d + 1.0) / two24, true)]
}

fn draw_boundary(dev: &Device) -> Result<()> {
    let (seed, offset) = (0x5eed_0000_0001u64, 17u64);
    // Weight dropout, rows of 100: each row's elements fall in the output pass's head,
    // 32-element batches, groups of four and tail. Magnitudes 1..=100 in every row, signs
    // mixed, so gamma = 0.5 targets indices 0..50 of each row.
    let (rows, n) = (3usize, 100usize);
    let vals: Vec<f32> = (0..rows * n)
        .map(|j| ((j % n) + 1) as f32 * if j % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    let w = Tensor::from_vec(vals.clone(), (rows, n), dev)?;
    for r in 0..rows {
        for i in [0usize, 1, 2, 3, 5, 30, 31, 32, 33, 36, 47, 49] {
            let e = (r * n + i) as u64;
            for (alpha, dropped) in rates_around(raw_draw(seed, offset, e)) {
                let what = format!("weight, element {e}, alpha {alpha}");
                let out = targeted_weight_dropout_seeded(&w, 0.5, alpha, seed, offset)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                assert_eq!(
                    out[e as usize] == 0.0,
                    dropped,
                    "{what}: {}",
                    out[e as usize]
                );
                let mask =
                    targeted_dropout_mask(&w, TargetedDropout::weight(0.5, alpha)?, seed, offset)?
                        .flatten_all()?
                        .to_vec1::<u8>()?;
                assert_eq!(mask[e as usize] == 1, dropped, "{what}: mask");
                // Every other element as the oracle says (its own draw against the same rate).
                let d = Draws {
                    seed,
                    offset,
                    alpha,
                };
                let want = oracle(
                    &w.to_device(&Device::Cpu)?,
                    &w.to_device(&Device::Cpu)?,
                    DropoutKind::Weight,
                    0.5,
                    d,
                )?;
                assert_same_bits(
                    &Tensor::from_vec(out, (rows, n), &Device::Cpu)?,
                    &want,
                    &what,
                )?;
            }
        }
    }
    // Unit dropout: eight units of five with norms growing with the index, so gamma = 0.5
    // targets units 0..4; the draw of unit u is draw index u.
    let (units, len) = (8usize, 5usize);
    let vals: Vec<f32> = (0..units * len)
        .map(|j| (j / len + 1) as f32 * if j % 2 == 0 { 1.0 } else { -0.5 })
        .collect();
    let w = Tensor::from_vec(vals, (units, len), dev)?;
    let scores = unit_scores(&w)?;
    for u in 0..4u64 {
        for (alpha, dropped) in rates_around(raw_draw(seed, offset, u)) {
            let what = format!("unit {u}, alpha {alpha}");
            let row = |t: Tensor| -> Result<Vec<f32>> { t.get(u as usize)?.to_vec1::<f32>() };
            let out = row(targeted_unit_dropout_seeded(&w, 0.5, alpha, seed, offset)?)?;
            assert_eq!(out.iter().all(|&x| x == 0.0), dropped, "{what}: {out:?}");
            assert!(out.iter().all(|&x| x == 0.0) || out.iter().all(|&x| x != 0.0));
            let mask = targeted_dropout_mask(&w, TargetedDropout::unit(0.5, alpha)?, seed, offset)?
                .get(u as usize)?
                .to_vec1::<u8>()?;
            assert_eq!(mask, vec![dropped as u8; len], "{what}: mask");
            // The unit path of a shard (the scores selected like a row of weights).
            let shard =
                targeted_unit_dropout_from_scores(&w, &scores, 0.5, alpha, seed, offset, 0)?;
            assert_eq!(row(shard)?, out, "{what}: from scores");
        }
    }
    Ok(())
}
test_device!(
    draw_boundary,
    a_targeted_draw_is_dropped_exactly_below_its_threshold
);
