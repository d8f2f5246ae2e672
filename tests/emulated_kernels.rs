//! The CUDA kernels under emulation (feature `emulate`), on the launch plans of an H200 and
//! of a small sm_86 GPU, bit for bit against the full-sort oracle: weight dropout, pruning
//! and the gradient (the recomputing backward) on the shapes of every weight path (tiny rows,
//! the block path up to its limit, long rows), every dtype, tensors that start at an offset
//! in their storage (16-byte aligned or not) and transposed views. With the `kernels-v5`
//! feature the plan sends the shapes v5 covers to `kernels/weight_v5.cu`, so the same cases
//! check v5; without it, v4.
#![cfg(feature = "emulate")]
mod common;

use candle_core::{DType, Result, Var};
use candle_targeted_dropout::emulate::{self, Gpu};
use candle_targeted_dropout::reference::Draws;
use candle_targeted_dropout::*;
use common::*;

/// Cases per profile (`TD_EMU_CASES` overrides; the emulator runs every CUDA thread).
fn cases() -> usize {
    std::env::var("TD_EMU_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

fn pick<T: Copy>(rng: &mut Rng, xs: &[T]) -> T {
    xs[rng.below(xs.len() as u64) as usize]
}

/// Row lengths of every weight path: tiny (<= 32), the block path (its edges for each
/// width: the longest row a v5 block holds is 16384 f32, 32760 f16, 8190 f64 elements), and
/// past it.
fn random_shape(rng: &mut Rng, dt: DType) -> Vec<usize> {
    let longest = match dt {
        DType::F64 => 8190,
        DType::F32 => 16380,
        _ => 32760,
    };
    let n = match rng.below(8) {
        0 | 1 => rng.below(32) as usize + 1,
        2 => 33,
        3 | 4 => rng.below(3000) as usize + 1,
        5 => longest - rng.below(4) as usize,
        6 => longest + 1 + rng.below(40) as usize,
        _ => rng.below(600) as usize + 1,
    };
    let max_rows = ((1usize << 15) / n).clamp(1, 1200);
    let rows = rng.below(max_rows as u64) as usize + 1;
    match rng.below(3) {
        0 if n % 9 == 0 => vec![rows, n / 9, 3, 3],
        _ => vec![rows, n],
    }
}

#[test]
fn weight_paths_match_the_oracle_under_emulation() -> Result<()> {
    for gpu in [Gpu::h200(), Gpu::sm86()] {
        let mut rng = Rng(0x5_2026);
        for i in 0..cases() {
            let dt = pick(&mut rng, &DTYPES);
            let shape = random_shape(&mut rng, dt);
            let data = pick(&mut rng, &[Data::Plain, Data::Edgy, Data::Ties]);
            let (u1, u2) = (rng.unit(), rng.unit());
            let gamma = pick(&mut rng, &[0.0, 1.0, 0.5, u1, u2]);
            let alpha = pick(&mut rng, &[0.0, 1.0, 0.5, u2]);
            let (seed, offset) = (rng.next_u64(), rng.below(1 << 40));
            let draws = Draws {
                seed,
                offset,
                alpha,
            };
            let w = tensor(&mut rng, &shape, dt, data)?;
            let what = |op: &str| {
                format!(
                    "{} case {i}: {op} {shape:?} {dt:?} {data:?} gamma {gamma} alpha {alpha} seed {seed} offset {offset}",
                    gpu.name
                )
            };
            let got = emulate::run(&gpu, || {
                targeted_weight_dropout_seeded(&w, gamma, alpha, seed, offset)
            })?;
            let want = oracle(&w, &w, DropoutKind::Weight, gamma, draws)?;
            assert_same_bits(&got, &want, &what("weight"))?;
            let got = emulate::run(&gpu, || prune_weights(&w, gamma))?;
            let want = oracle(&w, &w, DropoutKind::Weight, gamma, Draws::PRUNE)?;
            assert_same_bits(&got, &want, &what("prune_weights"))?;
            if i % 4 == 0 {
                // The recomputing backward: values from the gradient.
                let g = tensor(&mut rng, &shape, dt, Data::Plain)?;
                let v = Var::from_tensor(&w)?;
                let gw = emulate::run(&gpu, || {
                    let y = targeted_weight_dropout_seeded(&v, gamma, alpha, seed, offset)?;
                    let loss = (y.to_dtype(DType::F64)? * g.to_dtype(DType::F64)?)?.sum_all()?;
                    let grads = loss.backward()?;
                    Ok(grads.get(&v).expect("a gradient").clone())
                })?;
                let want = oracle(&w, &g, DropoutKind::Weight, gamma, draws)?;
                assert_same_bits(&gw, &want, &what("gradient"))?;
            }
        }
    }
    Ok(())
}

/// Views that start 1, 2, 4 and 8 elements into their storage (16-byte aligned for some
/// widths only: v5 takes the aligned ones, v4 the others) and a transposed view: the bits of
/// their contiguous copies.
#[test]
fn offsets_and_views_under_emulation() -> Result<()> {
    let gpu = Gpu::h200();
    let mut rng = Rng(0x0ff5e7);
    for dt in DTYPES {
        let big = tensor(&mut rng, &[101, 40], dt, Data::Edgy)?;
        let flat = big.flatten_all()?;
        for start in [1usize, 2, 4, 8] {
            for (rows, n) in [(9usize, 300usize), (40, 7)] {
                let v = flat.narrow(0, start, rows * n)?.reshape((rows, n))?;
                let c = v.contiguous()?;
                let want = oracle(
                    &c,
                    &c,
                    DropoutKind::Weight,
                    0.45,
                    Draws {
                        seed: 5,
                        offset: 6,
                        alpha: 0.6,
                    },
                )?;
                let got =
                    emulate::run(&gpu, || targeted_weight_dropout_seeded(&v, 0.45, 0.6, 5, 6))?;
                assert_same_bits(
                    &got,
                    &want,
                    &format!("{dt:?} view at {start} [{rows}, {n}]"),
                )?;
            }
        }
        let t = big.narrow(0, 1, 3)?.t()?;
        let got = emulate::run(&gpu, || targeted_weight_dropout_seeded(&t, 0.45, 0.6, 5, 6))?;
        let want = targeted_weight_dropout_seeded(&t.contiguous()?, 0.45, 0.6, 5, 6)?;
        assert_same_bits(&got, &want, &format!("{dt:?} transposed view"))?;
    }
    Ok(())
}
