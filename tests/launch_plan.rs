//! The launch plan, seen through `emulate::run_traced`: a grouped call is one launch per
//! (kernel width, path) group of its tensors, a `VarMapDropout` step likewise, and the
//! backward under autograd masks the gradient from the kept bit mask (`td_bwd_*`) with no
//! selection kernel; every result the same bits as the CPU path.
#![cfg(feature = "emulate")]
mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use candle_targeted_dropout::emulate::{self, Gpu, Launch};
use candle_targeted_dropout::*;
use common::*;

fn names(l: &[Launch]) -> Vec<&str> {
    l.iter().map(|l| l.kernel.as_str()).collect()
}

/// 33 f32 weights of the block path (rows of 33 .. 4096 elements), of odd shapes.
fn block_path_weights(rng: &mut Rng) -> Result<Vec<Tensor>> {
    (0..33)
        .map(|i| {
            let shape = [1 + (i * 7) % 19, 33 + (i * 131) % 4000];
            tensor(rng, &shape, DType::F32, Data::Plain)
        })
        .collect()
}

#[test]
fn many_tensors_of_one_path_are_one_launch() -> Result<()> {
    let mut rng = Rng(0x33);
    let ws = block_path_weights(&mut rng)?;
    let td = TargetedDropout::weight(0.5, 0.5)?;
    let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().map(|w| (w, td)).collect();
    let cpu = targeted_dropout_many_seeded(&items, 11, 100)?;
    for gpu in [Gpu::h200(), Gpu::sm86()] {
        let (emu, launches) =
            emulate::run_traced(&gpu, || targeted_dropout_many_seeded(&items, 11, 100))?;
        assert_eq!(launches.len(), 1, "{}: {:?}", gpu.name, names(&launches));
        let l = &launches[0];
        assert!(l.kernel.starts_with("td_block_u32_t"), "{}", l.kernel);
        let rows: usize = ws.iter().map(|w| w.dim(0).unwrap()).sum();
        assert_eq!(
            l.grid,
            [rows as u32, 1, 1],
            "one block per row of every tensor"
        );
        for (i, (e, c)) in emu.iter().zip(&cpu).enumerate() {
            assert_same_bits(e, c, &format!("{}: tensor {i}", gpu.name))?;
        }
    }
    // The single calls in order: the same bits.
    for (i, w) in ws.iter().enumerate() {
        let one = targeted_weight_dropout_seeded(w, 0.5, 0.5, 11, 100 + i as u64)?;
        assert_same_bits(&cpu[i], &one, &format!("single call {i}"))?;
    }
    Ok(())
}

#[test]
fn past_the_segment_limit_a_group_splits() -> Result<()> {
    // 62 segments per launch (TD_GROUP): 70 tensors take two.
    let mut rng = Rng(0x62);
    let ws = (0..70)
        .map(|i| tensor(&mut rng, &[2, 40 + i], DType::F32, Data::Plain))
        .collect::<Result<Vec<_>>>()?;
    let td = TargetedDropout::weight(0.3, 0.7)?;
    let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().map(|w| (w, td)).collect();
    let cpu = targeted_dropout_many_seeded(&items, 5, 0)?;
    let (emu, launches) =
        emulate::run_traced(&Gpu::h200(), || targeted_dropout_many_seeded(&items, 5, 0))?;
    assert_eq!(names(&launches), ["td_block_u32_t64", "td_block_u32_t64"]);
    assert_eq!(launches[0].grid[0], 62 * 2);
    assert_eq!(launches[1].grid[0], 8 * 2);
    for (i, (e, c)) in emu.iter().zip(&cpu).enumerate() {
        assert_same_bits(e, c, &format!("tensor {i}"))?;
    }
    Ok(())
}

/// The weight shapes of a CIFAR ResNet-32 (option A shortcuts: no convolution on them).
fn resnet32_shapes() -> Vec<Vec<usize>> {
    let mut v = vec![vec![16, 3, 3, 3]];
    for (c_in, c) in [(16, 16), (16, 32), (32, 64)] {
        for b in 0..5 {
            let first = if b == 0 { c_in } else { c };
            v.push(vec![c, first, 3, 3]);
            v.push(vec![c, c, 3, 3]);
        }
    }
    v.push(vec![10, 64]);
    v
}

#[test]
fn a_resnet32_is_one_launch_per_dtype_and_path() -> Result<()> {
    let shapes = resnet32_shapes();
    assert_eq!(shapes.len(), 32);
    let mut rng = Rng(0x32);
    for dt in [DType::F32, DType::BF16] {
        let ws = shapes
            .iter()
            .map(|s| tensor(&mut rng, s, dt, Data::Ties))
            .collect::<Result<Vec<_>>>()?;
        let td = TargetedDropout::weight(0.7, 0.66)?;
        let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().map(|w| (w, td)).collect();
        let cpu = targeted_dropout_many_seeded(&items, 3, 9)?;
        let (emu, launches) =
            emulate::run_traced(&Gpu::h200(), || targeted_dropout_many_seeded(&items, 3, 9))?;
        // conv1 (rows of 27) is the tiny path; the 31 other convolutions and the classifier
        // (rows of 64 .. 576) one block launch.
        let w = if dt == DType::F32 { "u32" } else { "u16" };
        let mut got = names(&launches);
        got.sort();
        assert_eq!(
            got,
            [format!("td_block_{w}_t64"), format!("td_tiny_{w}_t256")],
            "{dt:?}"
        );
        for (i, (e, c)) in emu.iter().zip(&cpu).enumerate() {
            assert_same_bits(e, c, &format!("{dt:?} tensor {i}"))?;
        }
    }
    // Mixed dtypes in one call: one launch per kernel width and path (f16 and bf16 share
    // the 16-bit kernels).
    let ws = [
        tensor(&mut rng, &[16, 144], DType::F32, Data::Plain)?,
        tensor(&mut rng, &[8, 300], DType::BF16, Data::Plain)?,
        tensor(&mut rng, &[4, 500], DType::F16, Data::Plain)?,
        tensor(&mut rng, &[32, 64], DType::F32, Data::Plain)?,
        tensor(&mut rng, &[5, 999], DType::F64, Data::Plain)?,
    ];
    let td = TargetedDropout::weight(0.5, 0.5)?;
    let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().map(|w| (w, td)).collect();
    let cpu = targeted_dropout_many_seeded(&items, 1, 2)?;
    let (emu, launches) =
        emulate::run_traced(&Gpu::sm86(), || targeted_dropout_many_seeded(&items, 1, 2))?;
    let mut got = names(&launches);
    got.sort();
    assert_eq!(
        got,
        ["td_block_u16_t64", "td_block_u32_t64", "td_block_u64_t128"]
    );
    for (i, (e, c)) in emu.iter().zip(&cpu).enumerate() {
        assert_same_bits(e, c, &format!("mixed tensor {i}"))?;
    }
    Ok(())
}

#[test]
fn a_varmap_step_over_33_variables_is_one_selection_launch() -> Result<()> {
    let mut rng = Rng(0x3333);
    let ws = block_path_weights(&mut rng)?;
    let build = || -> Result<VarMap> {
        let vm = VarMap::new();
        {
            let mut data = vm.data().lock().unwrap();
            for (i, w) in ws.iter().enumerate() {
                data.insert(format!("layer{i:02}.weight"), Var::from_tensor(w)?);
            }
        }
        Ok(vm)
    };
    let select = |_: &str, _: &Tensor| Some(TargetedDropout::weight(0.5, 0.5).unwrap());
    // The CPU step, then the emulated one: the same dropped weights, gradients, originals.
    let run = |emulated: bool| -> Result<(Vec<Vec<u64>>, Vec<Launch>)> {
        let vm = build()?;
        let vd = VarMapDropout::new(&vm, select)?;
        let vars: Vec<Var> = vd
            .names()
            .map(|n| vm.data().lock().unwrap()[n].clone())
            .collect();
        let (step, launches) = if emulated {
            emulate::run_traced(&Gpu::h200(), || vd.apply_seeded(21, 4))?
        } else {
            (vd.apply_seeded(21, 4)?, Vec::new())
        };
        let dropped = vars
            .iter()
            .map(|v| bits(v.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for (i, v) in vars.iter().enumerate() {
            loss = (loss + (v.as_tensor() * (i as f64 + 1.5))?.sum_all()?)?;
        }
        let mut grads = loss.backward()?;
        let (_, finish) = if emulated {
            emulate::run_traced(&Gpu::h200(), || step.finish(&mut grads))?
        } else {
            (step.finish(&mut grads)?, Vec::new())
        };
        if emulated {
            // The gradients from the kept masks: one td_bwd per variable, no selection; then
            // each weight put back from its held values (the chunk counts again, the unpack).
            let n = names(&finish);
            let k = vars.len();
            assert_eq!(n.len(), 3 * k, "{n:?}");
            assert!(n[..k].iter().all(|x| *x == "td_bwd_u32"), "{n:?}");
            for pair in n[k..].chunks(2) {
                assert_eq!(pair, ["td_pack_count", "td_unpack_u32"], "{n:?}");
            }
        }
        let mut out = dropped;
        for v in &vars {
            out.push(bits(grads.get(v.as_tensor()).unwrap())?);
        }
        for (v, w) in vars.iter().zip(&ws) {
            assert_eq!(
                bits(v.as_tensor())?,
                bits(w)?,
                "the original weights are back"
            );
        }
        Ok((out, launches))
    };
    let (cpu, _) = run(false)?;
    let (emu, launches) = run(true)?;
    // One selection launch for the 33 variables; then what the step holds of each, packed
    // by its kept mask: its chunk counts (read back: the held buffer is sized to the random
    // dropped count) and its dropped values.
    let n = names(&launches);
    assert_eq!(n.len(), 1 + 2 * ws.len(), "{n:?}");
    assert!(n[0].starts_with("td_block_u32"), "{n:?}");
    for pair in n[1..].chunks(2) {
        assert_eq!(pair, ["td_pack_count", "td_pack_u32"], "{n:?}");
    }
    assert_eq!(cpu.len(), emu.len());
    for (i, (c, e)) in cpu.iter().zip(&emu).enumerate() {
        assert_eq!(c, e, "dropped weights then gradients, entry {i}");
    }
    Ok(())
}

/// `d(sum(dropout(w) * x)) / dw`: x with the dropped elements zeroed.
fn grad_of(w: &Var, x: &Tensor, drop: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let d = drop(w.as_tensor())?;
    let g = (d * x)?.sum_all()?.backward()?;
    Ok(g.get(w.as_tensor()).unwrap().clone())
}

#[test]
fn the_backward_under_autograd_reads_the_kept_mask() -> Result<()> {
    let mut rng = Rng(0xb4d);
    for (dt, shape) in [
        (DType::F32, vec![64, 300]),
        (DType::BF16, vec![1000, 17]),
        (DType::F64, vec![7, 1025]),
        (DType::F16, vec![3, 33]),
    ] {
        let w = Var::from_tensor(&tensor(&mut rng, &shape, dt, Data::Edgy)?)?;
        let x = tensor(&mut rng, &shape, dt, Data::Plain)?;
        let drop = |w: &Tensor| targeted_weight_dropout_seeded(w, 0.5, 0.5, 7, 3);
        let want = grad_of(&w, &x, drop)?;
        // The forward emulated (it keeps the mask), the backward traced: td_bwd only.
        let d = emulate::run(&Gpu::h200(), || drop(w.as_tensor()))?;
        let (g, launches) = emulate::run_traced(&Gpu::h200(), || {
            let g = (&d * &x)?.sum_all()?.backward()?;
            Ok(g.get(w.as_tensor()).unwrap().clone())
        })?;
        let width = if dt.size_in_bytes() == 2 {
            "u16"
        } else if dt == DType::F32 {
            "u32"
        } else {
            "u64"
        };
        assert_eq!(names(&launches), [format!("td_bwd_{width}")], "{dt:?}");
        assert_same_bits(&g, &want, &format!("{dt:?} gradient"))?;
        // The backward outside the emulation (the mask kept on the host): the same bits.
        let d = emulate::run(&Gpu::sm86(), || drop(w.as_tensor()))?;
        let g = (&d * &x)?.sum_all()?.backward()?;
        assert_same_bits(g.get(w.as_tensor()).unwrap(), &want, "host backward")?;
    }
    Ok(())
}

#[test]
fn without_a_kept_mask_the_backward_recomputes() -> Result<()> {
    let mut rng = Rng(0x4ec);
    let w = Var::from_tensor(&tensor(&mut rng, &[16, 200], DType::F32, Data::Plain)?)?;
    let x = tensor(&mut rng, &[16, 200], DType::F32, Data::Plain)?;
    let drop = |w: &Tensor| targeted_unit_dropout_seeded(w, 0.5, 0.5, 1, 1);
    let want = grad_of(&w, &x, drop)?;
    // Unit dropout keeps no mask: the backward selects again (the unit kernels).
    let d = emulate::run(&Gpu::h200(), || drop(w.as_tensor()))?;
    let (g, launches) = emulate::run_traced(&Gpu::h200(), || {
        let g = (&d * &x)?.sum_all()?.backward()?;
        Ok(g.get(w.as_tensor()).unwrap().clone())
    })?;
    assert!(!launches.is_empty());
    assert!(names(&launches).iter().all(|k| !k.starts_with("td_bwd")));
    assert_same_bits(&g, &want, "unit gradient")?;
    // A weight-dropout forward on the CPU keeps its mask too (the CPU writer emits it with
    // the values): the emulated backward masks from it, no selection.
    let w2 = Var::from_tensor(&tensor(&mut rng, &[16, 200], DType::F32, Data::Plain)?)?;
    let wdrop = |w: &Tensor| targeted_weight_dropout_seeded(w, 0.5, 0.5, 1, 2);
    let want = grad_of(&w2, &x, wdrop)?;
    let d = wdrop(w2.as_tensor())?;
    let (g, launches) = emulate::run_traced(&Gpu::h200(), || {
        let g = (&d * &x)?.sum_all()?.backward()?;
        Ok(g.get(w2.as_tensor()).unwrap().clone())
    })?;
    assert_eq!(names(&launches), ["td_bwd_u32"]);
    assert_same_bits(&g, &want, "gradient from the CPU's mask")?;
    Ok(())
}

#[test]
fn grouped_results_keep_their_masks_for_autograd() -> Result<()> {
    let mut rng = Rng(0x9a);
    let vars = (0..5)
        .map(|i| {
            Var::from_tensor(&tensor(
                &mut rng,
                &[3 + i, 50 * (i + 1)],
                DType::F32,
                Data::Ties,
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let td = TargetedDropout::weight(0.4, 0.8)?;
    let loss = |ds: &[Tensor]| -> Result<Tensor> {
        let mut l = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for (i, d) in ds.iter().enumerate() {
            l = (l + (d * (i as f64 + 0.5))?.sum_all()?)?;
        }
        Ok(l)
    };
    let items: Vec<(&Tensor, TargetedDropout)> = vars.iter().map(|v| (v.as_tensor(), td)).collect();
    let want = loss(&targeted_dropout_many_seeded(&items, 2, 8)?)?.backward()?;
    let (ds, launches) =
        emulate::run_traced(&Gpu::h200(), || targeted_dropout_many_seeded(&items, 2, 8))?;
    assert_eq!(launches.len(), 1);
    let (g, launches) = emulate::run_traced(&Gpu::h200(), || loss(&ds)?.backward())?;
    assert_eq!(launches.len(), vars.len());
    assert!(names(&launches).iter().all(|k| *k == "td_bwd_u32"));
    for v in &vars {
        assert_same_bits(
            g.get(v.as_tensor()).unwrap(),
            want.get(v.as_tensor()).unwrap(),
            "grouped gradient",
        )?;
    }
    Ok(())
}

/// Every path runs on the one kernel generation (`kernels/weight.cu`, `unit.cu`, `nm.cu`),
/// each launch sequence as the plan says, every result the CPU path's bits: weight dropout on
/// tiny, block and long rows; the u8 mask (the selection writes bits, `td_mask_u8` expands
/// them); unit dropout (scores, the selection over them, the apply); an unaligned view (the
/// same selection after a copy, which launches nothing); N:M. (The recomputing backward:
/// `without_a_kept_mask_the_backward_recomputes`.)
#[test]
fn every_path_is_served_by_the_one_generation() -> Result<()> {
    let mut rng = Rng(0x0e6e);
    let base = tensor(&mut rng, &[64 * 300 + 1], DType::F32, Data::Edgy)?;
    let w = base.narrow(0, 0, 64 * 300)?.reshape((64, 300))?;
    // A view one element into its storage: 4 bytes past a 16-byte boundary.
    let odd = base.narrow(0, 1, 64 * 300)?.reshape((64, 300))?;
    let tiny = tensor(&mut rng, &[500, 9], DType::BF16, Data::Ties)?;
    let long = tensor(&mut rng, &[2, 40_000], DType::F16, Data::Plain)?;
    let td = TargetedDropout::weight(0.5, 0.5)?;
    type Case<'a> = (&'a str, Box<dyn Fn() -> Result<Tensor> + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "block",
            Box::new(|| targeted_weight_dropout_seeded(&w, 0.5, 0.5, 3, 4)),
            vec!["td_block_u32_t64"],
        ),
        (
            "tiny",
            Box::new(|| targeted_weight_dropout_seeded(&tiny, 0.5, 0.5, 3, 4)),
            vec!["td_tiny_u16_t256"],
        ),
        (
            "mask",
            Box::new(|| targeted_dropout_mask(&w, td, 3, 4)),
            vec!["td_block_u32_t64", "td_mask_u8"],
        ),
        (
            "unit",
            Box::new(|| targeted_unit_dropout_seeded(&w, 0.5, 0.5, 3, 4)),
            vec![
                "td_unit_scores_block_f32",
                "td_block_u32_t64",
                "td_unit_apply_u32",
            ],
        ),
        (
            "unaligned view",
            Box::new(|| targeted_weight_dropout_seeded(&odd, 0.5, 0.5, 3, 4)),
            vec!["td_block_u32_t64"],
        ),
        (
            "nm",
            Box::new(|| targeted_nm_dropout_seeded(&w, 2, 4, 0.5, 3, 4)),
            vec!["td_nm_u32_m4"],
        ),
    ];
    for gpu in [Gpu::h200(), Gpu::sm86()] {
        for (what, f, want) in &cases {
            let cpu = f()?;
            let (emu, launches) = emulate::run_traced(&gpu, f)?;
            assert_eq!(names(&launches), *want, "{what} on {}", gpu.name);
            assert_same_bits(&emu, &cpu, &format!("{what} on {}", gpu.name))?;
        }
        // Long rows: the count passes, the resolve, the output pass.
        let cpu = targeted_weight_dropout_seeded(&long, 0.5, 0.5, 3, 4)?;
        let (emu, launches) = emulate::run_traced(&gpu, || {
            targeted_weight_dropout_seeded(&long, 0.5, 0.5, 3, 4)
        })?;
        let n = names(&launches);
        assert!(n.len() >= 4, "{n:?}");
        assert!(
            n[..n.len() - 2].iter().all(|k| *k == "td_long_count_u16"),
            "{n:?}"
        );
        assert_eq!(
            n[n.len() - 2..],
            ["td_long_resolve_u16", "td_long_apply_u16"]
        );
        assert_same_bits(&emu, &cpu, &format!("long rows on {}", gpu.name))?;
    }
    Ok(())
}
