//! The equivalence suite: random cases (shapes, dtypes, gamma, alpha, seeds, offsets and
//! data with ties, zeros, NaN, ±Inf and subnormals), each op compared bit for bit with the
//! full-sort oracle, plus gradients. Written once and run on every device the build has:
//! on the CPU it checks the radix-select path, on CUDA the kernels.
mod common;

use candle_core::{DType, Device, Result, Var};
#[cfg(feature = "emulate")]
use candle_targeted_dropout::emulate;
use candle_targeted_dropout::reference::Draws;
use candle_targeted_dropout::*;
use common::*;

/// Random cases per target, CPU, CUDA and each emulated profile alike (1,000 unless
/// `TD_CASES` says otherwise).
fn cases() -> usize {
    common::cases("TD_CASES", 1000)
}

/// A random shape: rows from 1 to ~2^17 elements, mostly small tensors, a few large. `small`
/// (the emulator's cases): the same row lengths up to 40,000 with fewer rows where a row
/// costs a block (one or two rows past 32 elements, at most 300 of 32 or fewer): every
/// kernel path, at the emulator's speed.
fn random_shape(rng: &mut Rng, small: bool) -> Vec<usize> {
    let n = match rng.below(10) {
        0 => rng.below(8) as usize + 1,
        1 => rng.below(32) as usize + 1,
        2..=5 => rng.below(600) as usize + 1,
        6 | 7 => rng.below(5000) as usize + 1,
        8 => pick(
            rng,
            &[1023, 1024, 1025, 4095, 4097, 16383, 16385, 16384 + 17],
        ),
        _ if small => rng.below(40_000) as usize + 1,
        _ => rng.below(1 << 17) as usize + 1,
    };
    let max_rows = match (small, n) {
        (false, _) => ((1usize << 18) / n).clamp(1, 3000),
        (true, ..=32) => 300,
        (true, ..=1024) => 2,
        (true, _) => 1,
    };
    let rows = match rng.below(4) {
        0 => 1,
        _ => rng.below(max_rows as u64) as usize + 1,
    };
    match rng.below(5) {
        0 => vec![rows * n],
        1 if n % 9 == 0 => vec![rows, n / 9, 3, 3],
        2 if n % 2 == 0 => vec![rows, 2, n / 2],
        _ => vec![rows, n],
    }
}

fn one_case(dev: &Device, rng: &mut Rng, i: usize, small: bool) -> Result<()> {
    let shape = random_shape(rng, small);
    let dt = pick(rng, &DTYPES);
    let data = pick(rng, &[Data::Plain, Data::Edgy, Data::Edgy, Data::Ties]);
    let (u1, u2, u3) = (rng.unit(), rng.unit(), rng.unit());
    let gamma = pick(rng, &[0.0, 1.0, 0.5, u1, u2, u3]);
    let alpha = pick(rng, &[0.0, 1.0, 0.5, u2, u3]);
    let (seed, offset) = (rng.next_u64(), rng.below(1 << 40));
    let w = tensor(rng, &shape, dt, data)?;
    let wd = w.to_device(dev)?;
    let what = |op: &str| {
        format!("case {i}: {op} {shape:?} {dt:?} {data:?} gamma {gamma} alpha {alpha} seed {seed} offset {offset}")
    };
    let draws = Draws {
        seed,
        offset,
        alpha,
    };
    let got = targeted_weight_dropout_seeded(&wd, gamma, alpha, seed, offset)?;
    let want = oracle(&w, &w, DropoutKind::Weight, gamma, draws)?;
    assert_same_bits(&got, &want, &what("weight"))?;
    let got = targeted_unit_dropout_seeded(&wd, gamma, alpha, seed, offset)?;
    let want = oracle(&w, &w, DropoutKind::Unit, gamma, draws)?;
    assert_same_bits(&got, &want, &what("unit"))?;
    let got = prune_weights(&wd, gamma)?;
    let want = oracle(&w, &w, DropoutKind::Weight, gamma, Draws::PRUNE)?;
    assert_same_bits(&got, &want, &what("prune_weights"))?;
    let got = prune_units(&wd, gamma)?;
    let want = oracle(&w, &w, DropoutKind::Unit, gamma, Draws::PRUNE)?;
    assert_same_bits(&got, &want, &what("prune_units"))?;
    // N:M with a pattern whose m divides the group axis (axis 0 of rank 1, else axis 1).
    let c = shape[if shape.len() == 1 { 0 } else { 1 }];
    let (n, m) = pick(
        rng,
        &[
            (2usize, 4usize),
            (1, 4),
            (4, 8),
            (5, 16),
            (7, 32),
            (1, 2),
            (2, 3),
        ],
    );
    if c.is_multiple_of(m) {
        let kind = DropoutKind::Nm { n, m };
        let got = targeted_nm_dropout_seeded(&wd, n, m, alpha, seed, offset)?;
        let want = oracle(&w, &w, kind, gamma, draws)?;
        assert_same_bits(&got, &want, &what(&format!("{n}:{m}")))?;
        let got = prune_nm(&wd, n, m)?;
        let want = oracle(&w, &w, kind, gamma, Draws::PRUNE)?;
        assert_same_bits(&got, &want, &what(&format!("prune {n}:{m}")))?;
    }
    if i.is_multiple_of(8) {
        // Gradients: the incoming gradient g, masked where the forward pass dropped.
        let g = tensor(rng, &shape, dt, Data::Plain)?;
        let mut kinds = vec![DropoutKind::Weight, DropoutKind::Unit];
        // N:M where the group axis takes groups of four.
        let axis = if shape.len() == 1 { 0 } else { 1 };
        if shape[axis].is_multiple_of(4) {
            kinds.push(DropoutKind::Nm { n: 2, m: 4 });
        }
        for kind in kinds {
            let v = Var::from_tensor(&wd)?;
            let y = match kind {
                DropoutKind::Weight => {
                    targeted_weight_dropout_seeded(&v, gamma, alpha, seed, offset)?
                }
                DropoutKind::Unit => targeted_unit_dropout_seeded(&v, gamma, alpha, seed, offset)?,
                DropoutKind::Nm { n, m } => {
                    targeted_nm_dropout_seeded(&v, n, m, alpha, seed, offset)?
                }
            };
            // sum(y * g) in f64 keeps the incoming gradient exactly g.
            let loss =
                (y.to_dtype(DType::F64)? * g.to_dtype(DType::F64)?.to_device(dev)?)?.sum_all()?;
            let grads = loss.backward()?;
            let gw = grads.get(&v).expect("a gradient");
            let want = oracle(&w, &g, kind, gamma, draws)?;
            assert_same_bits(gw, &want, &what(&format!("{kind:?} gradient")))?;
        }
    }
    Ok(())
}

/// The random cases on one target.
fn random_cases(t: &Target) -> Result<()> {
    let mut rng = Rng(0x7d_2018);
    let n = cases();
    let dev = t.device();
    let start = std::time::Instant::now();
    t.run(|| {
        for i in 0..n {
            one_case(&dev, &mut rng, i, t.is_emulated())?;
        }
        Ok(())
    })?;
    eprintln!(
        "{n} random cases: bit-exact on {t:?} ({:.1?})",
        start.elapsed()
    );
    Ok(())
}

#[test]
fn random_cases_match_the_oracle_bit_for_bit() -> Result<()> {
    for dev in devices() {
        random_cases(&Target::Device(dev))?;
    }
    Ok(())
}

/// The random cases through the CUDA kernels under emulation, with an H200's launch plan
/// and with a small sm_86 GPU's.
#[cfg(feature = "emulate")]
#[test]
fn random_cases_on_the_emulated_h200() -> Result<()> {
    random_cases(&Target::Emulated(emulate::Gpu::h200()))
}

#[cfg(feature = "emulate")]
#[test]
fn random_cases_on_the_emulated_sm86() -> Result<()> {
    random_cases(&Target::Emulated(emulate::Gpu::sm86()))
}

/// Long rows: the multi-block path on the GPU, the split-row path on the CPU.
#[test]
fn long_rows_match_the_oracle() -> Result<()> {
    let long = std::env::var("TD_LONG").is_ok();
    for dev in devices() {
        let mut rng = Rng(0x10_2018);
        let mut shapes: Vec<Vec<usize>> =
            vec![vec![1, 1 << 20], vec![3, (1 << 18) + 3], vec![1 << 20, 9]];
        if long {
            shapes.push(vec![1, 1 << 22]);
            shapes.push(vec![4, 1 << 22]);
            shapes.push(vec![1 << 24]);
        }
        for shape in shapes {
            for dt in DTYPES {
                let data = pick(&mut rng, &[Data::Plain, Data::Edgy, Data::Ties]);
                let w = tensor(&mut rng, &shape, dt, data)?;
                let wd = w.to_device(&dev)?;
                let (u1, u2) = (rng.unit(), rng.unit());
                let big = shape.iter().product::<usize>() >= 1 << 22;
                let params = if big {
                    &[(u1, u2)][..]
                } else {
                    &[(0.5, 0.5), (0.9, 1.0), (u1, u2)][..]
                };
                for &(gamma, alpha) in params {
                    let (seed, offset) = (rng.next_u64(), rng.below(1000));
                    let draws = Draws {
                        seed,
                        offset,
                        alpha,
                    };
                    let what = format!("{shape:?} {dt:?} {data:?} gamma {gamma} alpha {alpha}");
                    let got = targeted_weight_dropout_seeded(&wd, gamma, alpha, seed, offset)?;
                    let want = oracle(&w, &w, DropoutKind::Weight, gamma, draws)?;
                    assert_same_bits(&got, &want, &format!("weight {what}"))?;
                    let got = targeted_unit_dropout_seeded(&wd, gamma, alpha, seed, offset)?;
                    let want = oracle(&w, &w, DropoutKind::Unit, gamma, draws)?;
                    assert_same_bits(&got, &want, &format!("unit {what}"))?;
                }
            }
        }
    }
    Ok(())
}

/// A tensor that starts at an offset in its storage and one that is a transposed view, on
/// every device: the same bits as their contiguous copies.
#[test]
fn offsets_and_views() -> Result<()> {
    for dev in devices() {
        let mut rng = Rng(11);
        for dt in DTYPES {
            let big = tensor(&mut rng, &[301, 77], dt, Data::Edgy)?.to_device(&dev)?;
            for v in [
                big.narrow(0, 7, 150)?,
                big.narrow(0, 1, 3)?.t()?,
                big.narrow(1, 5, 60)?,
            ] {
                let c = v.contiguous()?;
                for kind in [DropoutKind::Weight, DropoutKind::Unit] {
                    let a =
                        targeted_dropout_mask(&v, TargetedDropout::new(kind, 0.45, 0.6)?, 5, 6)?;
                    let b =
                        targeted_dropout_mask(&c, TargetedDropout::new(kind, 0.45, 0.6)?, 5, 6)?;
                    assert_same_bits(&a, &b, "mask of a view")?;
                }
                let a = targeted_weight_dropout_seeded(&v, 0.45, 0.6, 5, 6)?;
                assert_same_bits(
                    &a,
                    &targeted_weight_dropout_seeded(&c, 0.45, 0.6, 5, 6)?,
                    "view",
                )?;
            }
        }
    }
    Ok(())
}
