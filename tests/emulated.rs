//! The CUDA kernels under emulation (feature `emulate`), bit for bit against the CPU path or
//! the full-sort oracle, on the launch plans of an H200 and of a small sm_86 GPU:
//! - random weight-dropout, pruning and gradient cases on the shapes of every weight path
//!   (tiny rows, the block path up to its limit, long rows), every dtype, against the oracle
//!   (`TD_EMU_CASES` per profile);
//! - the paths the random cases of `equivalence.rs` reach rarely or not at all: long rows of
//!   several tiles, a GPU of two multiprocessors (every grid-stride loop turns), row shards, unit dropout from gathered scores, the grouped call (whose items run on rayon
//!   threads), the backward pass, `VarMapDropout`, views at odd and 16-byte aligned offsets,
//!   transposed views, and many host threads emulating at once.
#![cfg(feature = "emulate")]
mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use candle_targeted_dropout::emulate::{self, Gpu};
use candle_targeted_dropout::reference::Draws;
use candle_targeted_dropout::*;
use common::*;

/// Random cases per profile (40 unless `TD_EMU_CASES` says otherwise; the emulator runs
/// every CUDA thread).
fn cases() -> usize {
    common::cases("TD_EMU_CASES", 40)
}

/// The two profiles, and a device that does not exist: two multiprocessors, so that the
/// grids of the tiny, long-row and element-wise kernels are capped low and every
/// grid-stride loop turns many times.
fn gpus() -> Vec<Gpu> {
    vec![
        Gpu::h200(),
        Gpu::sm86(),
        Gpu {
            name: "two multiprocessors",
            sms: 2,
            ..Gpu::sm86()
        },
    ]
}

/// Every op of `w` on the CPU and emulated on `gpu`: the same bits.
fn all_ops(gpu: &Gpu, w: &Tensor, seed: u64, what: &str) -> Result<()> {
    let (gamma, alpha) = (0.45, 0.6);
    let ops = |w: &Tensor| -> Result<Vec<Tensor>> {
        Ok(vec![
            targeted_weight_dropout_seeded(w, gamma, alpha, seed, 1)?,
            targeted_unit_dropout_seeded(w, gamma, alpha, seed, 2)?,
            prune_weights(w, gamma)?,
            prune_units(w, gamma)?,
            targeted_dropout_mask(w, TargetedDropout::weight(gamma, alpha)?, seed, 3)?,
            unit_scores(w)?,
        ])
    };
    let cpu = ops(w)?;
    let emu = emulate::run(gpu, || ops(w))?;
    for (i, (c, e)) in cpu.iter().zip(&emu).enumerate() {
        assert_same_bits(e, c, &format!("{what} on {}: op {i}", gpu.name))?;
    }
    Ok(())
}

#[test]
fn long_rows_of_several_tiles() -> Result<()> {
    let mut rng = Rng(0x10_2018);
    // Past what a block holds: rows of several tiles (8192 f32, 16384 16-bit, 4096 f64
    // elements a tile), on two multiprocessors each block takes several tiles.
    for (dt, shape) in [
        (DType::F32, [3, 20_000]),
        (DType::F64, [2, 8_300]),
        (DType::BF16, [1, 40_000]),
        (DType::F16, [2, 33_000]),
    ] {
        let data = [Data::Plain, Data::Edgy, Data::Ties][shape[1] % 3];
        let w = tensor(&mut rng, &shape, dt, data)?;
        for gpu in gpus() {
            all_ops(&gpu, &w, 5, &format!("{dt:?} {shape:?}"))?;
        }
    }
    Ok(())
}

#[test]
fn tiles_and_block_rows_at_their_edges() -> Result<()> {
    let mut rng = Rng(21);
    for (dt, shape) in [
        // Two tiles of 128 f64 rows of 32 and a part.
        (DType::F64, [300, 32]),
        // The longest f32 row a block holds (1024 threads).
        (DType::F32, [2, 16_384]),
        (DType::F16, [3, 33]),
        (DType::BF16, [260, 5]),
    ] {
        let w = tensor(&mut rng, &shape, dt, Data::Edgy)?;
        for gpu in gpus() {
            all_ops(&gpu, &w, 6, &format!("{dt:?} {shape:?}"))?;
        }
    }
    Ok(())
}

#[test]
fn shards_scores_grouped_call_and_backward() -> Result<()> {
    let mut rng = Rng(22);
    let a = tensor(&mut rng, &[37, 3, 5], DType::F32, Data::Edgy)?;
    let b = tensor(&mut rng, &[6, 700], DType::BF16, Data::Ties)?;
    let c = tensor(&mut rng, &[40, 9], DType::F64, Data::Edgy)?;
    // A conv weight at 2:4: groups over the 12 channels, elements 3 apart.
    let d = tensor(&mut rng, &[8, 12, 3], DType::F32, Data::Edgy)?;
    let cfgs = [
        TargetedDropout::weight(0.5, 0.5)?,
        TargetedDropout::unit(0.3, 0.9)?,
        TargetedDropout::weight(0.9, 1.0)?,
    ];
    let ops = || -> Result<Vec<Tensor>> {
        let mut out = vec![];
        // Row shards draw at their base.
        for (r0, r1) in [(0, 37), (1, 18), (36, 37)] {
            let part = a.narrow(0, r0, r1 - r0)?;
            out.push(targeted_weight_dropout_rows(&part, 0.6, 0.5, 3, 9, r0)?);
        }
        // Unit dropout of shards from the gathered scores.
        let scores = Tensor::cat(
            &[
                unit_scores(&c.narrow(0, 0, 11)?)?,
                unit_scores(&c.narrow(0, 11, 29)?)?,
            ],
            0,
        )?;
        out.push(targeted_unit_dropout_from_scores(
            &c.narrow(0, 11, 29)?,
            &scores,
            0.6,
            0.5,
            3,
            9,
            11,
        )?);
        // The grouped call (rayon threads on the CPU).
        let nm = TargetedDropout::nm(2, 4, 0.6)?;
        let items = [(&a, cfgs[0]), (&b, cfgs[1]), (&c, cfgs[2]), (&d, nm)];
        out.extend(targeted_dropout_many_seeded(&items, 77, 100)?);
        // The backward pass: the incoming gradient masked like the forward pass.
        for (w, cfg) in items {
            let v = Var::from_tensor(w)?;
            let y = match cfg.kind() {
                DropoutKind::Weight => {
                    targeted_weight_dropout_seeded(&v, cfg.gamma(), cfg.alpha(), 4, 2)?
                }
                DropoutKind::Unit => {
                    targeted_unit_dropout_seeded(&v, cfg.gamma(), cfg.alpha(), 4, 2)?
                }
                DropoutKind::Nm { n, m } => {
                    targeted_nm_dropout_seeded(&v, n, m, cfg.alpha(), 4, 2)?
                }
            };
            let g = y.ones_like()?.to_dtype(DType::F64)?;
            let grads = (y.to_dtype(DType::F64)? * g)?.sum_all()?.backward()?;
            out.push(grads.get(&v).expect("a gradient").clone());
        }
        Ok(out)
    };
    let cpu = ops()?;
    for gpu in [Gpu::h200(), Gpu::sm86()] {
        let emu = emulate::run(&gpu, ops)?;
        for (i, (c, e)) in cpu.iter().zip(&emu).enumerate() {
            assert_same_bits(e, c, &format!("{}: result {i}", gpu.name))?;
        }
    }
    Ok(())
}

#[test]
fn varmap_dropout_step_and_pruning() -> Result<()> {
    // A step (fc1 weight dropout, fc2 unit dropout) and pruning, through the grouped call.
    let run = |vm: &VarMap| -> Result<Vec<Tensor>> {
        let vd = VarMapDropout::new(vm, |name: &str, _: &Tensor| match name {
            "fc1.weight" => TargetedDropout::weight(0.5, 0.6).ok(),
            "fc2.weight" => TargetedDropout::unit(0.4, 0.7).ok(),
            _ => None,
        })?;
        let copies = || -> Result<Vec<Tensor>> {
            sorted(vm)
                .iter()
                .map(|(_, v)| v.as_tensor().copy())
                .collect()
        };
        let mut out = {
            let _step = vd.apply_seeded(11, 0)?;
            copies()?
        };
        out.extend(vd.with_pruned(TargetedDropout::weight(0.5, 1.0)?, |_| copies())?);
        out.extend(vd.with_pruned(TargetedDropout::unit(0.5, 1.0)?, |_| copies())?);
        Ok(out)
    };
    let model = || -> Result<VarMap> {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        candle_nn::linear(40, 33, vb.pp("fc1"))?;
        candle_nn::linear(33, 7, vb.pp("fc2"))?;
        let mut rng = Rng(31);
        for (_, v) in sorted(&vm) {
            v.set(&tensor(&mut rng, v.dims(), DType::F32, Data::Plain)?)?;
        }
        Ok(vm)
    };
    let cpu = run(&model()?)?;
    for gpu in [Gpu::h200(), Gpu::sm86()] {
        let vm = model()?;
        let emu = emulate::run(&gpu, || run(&vm))?;
        for (i, (c, e)) in cpu.iter().zip(&emu).enumerate() {
            assert_same_bits(e, c, &format!("{}: variable {i}", gpu.name))?;
        }
    }
    Ok(())
}

fn sorted(vm: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<_> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn many_host_threads_emulate_at_once() -> Result<()> {
    // Each thread its own profile, shape and dtype; the emulation of one thread does not
    // leak into another (the CPU results are computed on the same threads, outside it).
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || -> Result<()> {
                let mut rng = Rng(100 + i);
                let dt = DTYPES[i as usize % 4];
                let shape = [[40, 9], [3, 500], [1, 17_000]][i as usize % 3];
                let w = tensor(&mut rng, &shape, dt, Data::Edgy)?;
                let gpu = if i % 2 == 0 { Gpu::h200() } else { Gpu::sm86() };
                all_ops(&gpu, &w, i, &format!("thread {i}"))
            })
        })
        .collect();
    for h in handles {
        h.join().expect("no panic")?;
    }
    Ok(())
}

/// Row lengths of every weight path: tiny (<= 32), the block path (its edges for each
/// width: the longest row a block holds is 16384 f32, 32760 f16, 8190 f64 elements), and
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

/// Views: ones that start 1, 2, 4 and 8 elements into their storage (16-byte aligned for
/// some widths only: the unaligned ones are copied to an aligned buffer first) against the
/// oracle; narrowed views that start mid-row and mid-storage, and a transposed view, through
/// every op on both profiles against the CPU path (the kernels see the misaligned start a
/// GPU's view would have).
#[test]
fn views_at_aligned_and_odd_offsets() -> Result<()> {
    let mut rng = Rng(0x0ff5e7);
    let draws = Draws {
        seed: 5,
        offset: 6,
        alpha: 0.6,
    };
    for dt in DTYPES {
        let flat = tensor(&mut rng, &[101, 40], dt, Data::Edgy)?.flatten_all()?;
        for start in [1usize, 2, 4, 8] {
            for (rows, n) in [(9usize, 300usize), (40, 7)] {
                let v = flat.narrow(0, start, rows * n)?.reshape((rows, n))?;
                let c = v.contiguous()?;
                let want = oracle(&c, &c, DropoutKind::Weight, 0.45, draws)?;
                let got = emulate::run(&Gpu::h200(), || {
                    targeted_weight_dropout_seeded(&v, 0.45, 0.6, 5, 6)
                })?;
                let what = format!("{dt:?} view at {start} [{rows}, {n}]");
                assert_same_bits(&got, &want, &what)?;
            }
        }
        let big = tensor(&mut rng, &[31, 77], dt, Data::Edgy)?;
        for v in [
            big.narrow(0, 7, 5)?,
            big.narrow(1, 5, 60)?,
            big.narrow(0, 1, 3)?.t()?,
        ] {
            for gpu in [Gpu::h200(), Gpu::sm86()] {
                all_ops(&gpu, &v, 8, &format!("{dt:?} view {:?}", v.dims()))?;
            }
        }
    }
    Ok(())
}
