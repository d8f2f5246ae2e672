//! The CUDA kernels under emulation (feature `emulate`) against the CPU path, bit for bit,
//! on the paths the random cases of `equivalence.rs` reach rarely or not at all: long rows of
//! several chunks in several row groups, the shared-memory fallbacks of a small GPU, row
//! shards, unit dropout from gathered scores, the grouped call (whose items run on rayon
//! threads), the backward pass, `VarMapDropout`, views at odd offsets, and many host threads
//! emulating at once.
#![cfg(feature = "emulate")]
mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use candle_targeted_dropout::emulate::{self, Gpu};
use candle_targeted_dropout::*;
use common::*;

/// The two profiles, and devices that do not exist: a small L2 (the long rows take several
/// row groups) and 64 KB of shared memory (f64 tiles of rows of 32 fall back to the block
/// kernel, 64 KB rows to the long-row kernels).
fn gpus() -> Vec<Gpu> {
    vec![
        Gpu::h200(),
        Gpu::sm86(),
        Gpu {
            name: "small L2, 64 KB shared memory",
            l2_bytes: 192 * 1024,
            smem_optin_per_block: 64 * 1024,
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
            targeted_dropout_mask(w, DropoutKind::Weight, gamma, alpha, seed, 3)?,
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
fn long_rows_of_several_chunks_and_row_groups() -> Result<()> {
    let mut rng = Rng(0x10_2018);
    // Past 64 KB a row: 5 to 10 chunks of 4096; 3 rows take 3 groups in the small L2.
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
fn shared_memory_fallbacks_and_block_rows() -> Result<()> {
    let mut rng = Rng(21);
    for (dt, shape) in [
        // A tile of 300 f64 rows of 32: 66 KB, over the small GPU's 64 KB.
        (DType::F64, [300, 32]),
        // A 64 KB f32 row: the block kernel on the profiles, the long rows on the small GPU.
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
            out.push(targeted_weight_dropout_rows(
                &part, 0.6, 0.5, 3, 9, r0 as u64,
            )?);
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
            11,
            0.6,
            0.5,
            3,
            9,
        )?);
        // The grouped call (rayon threads on the CPU).
        let items = [(&a, cfgs[0]), (&b, cfgs[1]), (&c, cfgs[2])];
        out.extend(targeted_dropout_many_seeded(&items, 77, 100)?);
        // The backward pass: the incoming gradient masked like the forward pass.
        for (w, cfg) in items {
            let v = Var::from_tensor(w)?;
            let y = match cfg.kind {
                DropoutKind::Weight => {
                    targeted_weight_dropout_seeded(&v, cfg.gamma, cfg.alpha, 4, 2)?
                }
                DropoutKind::Unit => targeted_unit_dropout_seeded(&v, cfg.gamma, cfg.alpha, 4, 2)?,
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
        out.extend(vd.with_pruned(DropoutKind::Weight, 0.5, |_| copies())?);
        out.extend(vd.with_pruned(DropoutKind::Unit, 0.5, |_| copies())?);
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
fn views_at_odd_offsets() -> Result<()> {
    // A narrowed tensor starts mid-storage: the kernels see the misaligned start a GPU's
    // view would have (and take their scalar paths).
    let mut rng = Rng(11);
    for dt in DTYPES {
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
