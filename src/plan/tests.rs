//! The launch plan, branch by branch, on the two profiles the emulator runs (an H200 and a
//! small sm_86 GPU) and on made-up devices that force the shared-memory fallbacks: the
//! kernels, grids, shared memory, buffers and parameters that the CUDA path launched before
//! the plan was separated from its execution (`src/cuda/`).

use super::*;
use crate::cuda_params::{TD_BLOCK_ROW_BYTES, TD_LONG_CHUNK};
use crate::philox::Bernoulli;

fn h200() -> Limits {
    Gpu::h200().limits().unwrap()
}

fn sm86() -> Limits {
    Gpu::sm86().limits().unwrap()
}

fn op(kind: DropoutKind, output: Output, gamma: f64, alpha: f64) -> TargetedOp {
    TargetedOp {
        kind,
        gamma,
        draws: Bernoulli::new(7, 9, alpha),
        output,
        elem_base: 0,
    }
}

fn spec(kind: DropoutKind, dtype: Dtype, dims: &[usize], gamma: f64) -> OpSpec {
    OpSpec::new(
        &op(kind, Output::Values, gamma, 0.5),
        dtype,
        &Shape::from(dims),
        false,
    )
}

fn draws() -> TdDraws {
    let b = Bernoulli::new(7, 9, 0.5);
    TdDraws {
        seed: 7,
        offset: 9,
        threshold: b.threshold,
        pad0: 0,
    }
}

fn io() -> Vec<Arg> {
    vec![
        Arg::Buf(Buf::W, 0),
        Arg::Null,
        Arg::Buf(Buf::Out, 0),
        Arg::Null,
    ]
}

fn rows(rows: u64, n: u64, k: u64) -> Params {
    Params::Rows(TdwRowsParams {
        rows,
        n,
        k,
        elem_base: 0,
        draws: draws(),
    })
}

fn only_launch(plan: &Plan) -> &Launch {
    let l: Vec<_> = plan.launches().collect();
    assert_eq!(l.len(), 1, "{plan:?}");
    l[0]
}

#[test]
fn limits_of_the_profiles() {
    let h = h200();
    assert_eq!((h.sms, h.l2_bytes), (132, 50 << 20));
    for (w, size) in [(0, 2u32), (1, 4), (2, 8)] {
        // 256 rows of 33 elements fit the opt-in shared memory of both profiles.
        assert_eq!(h.widths[w].tiny_smem, 256 * 33 * size);
        assert_eq!(sm86().widths[w].tiny_smem, 256 * 33 * size);
        assert_eq!(h.widths[w].block_smem, TD_BLOCK_ROW_BYTES);
        assert_eq!(sm86().widths[w].block_smem, TD_BLOCK_ROW_BYTES);
        assert_eq!(h.widths[w].block_per_sm.len(), 65);
    }
    // H200: 54 registers (u16, u32) and 63 (u64) give 4 blocks of 256 threads; 64 KB of
    // shared memory (+ 2112 static + 1 KB reserved) 3 in 228 KB.
    assert_eq!(h.widths[1].block_per_sm[0], 4);
    assert_eq!(h.widths[2].block_per_sm[4], 4);
    assert_eq!(h.widths[1].block_per_sm[64], 3);
    // sm_86: 47 registers give 5 blocks, 62 give 4; 1,536 threads at most 6; 100 KB of shared
    // memory holds one 64 KB row, two of 40 KB.
    let s = sm86();
    assert_eq!(s.widths[1].block_per_sm[1], 5);
    assert_eq!(s.widths[2].block_per_sm[1], 4);
    assert_eq!(s.widths[1].block_per_sm[40], 2);
    assert_eq!(s.widths[1].block_per_sm[64], 1);
    // A block kernel that fits no block on a multiprocessor is an error naming it.
    let tiny_sm = Gpu {
        smem_per_sm: 32 * 1024,
        ..Gpu::sm86()
    };
    let e = tiny_sm.limits().unwrap_err().to_string();
    assert!(e.contains("fits no block"), "{e}");
}

#[test]
fn tiny_rows_take_the_thread_per_row_kernel() {
    for (lim, dims, grid) in [
        (h200(), [1000, 9], 4),
        (sm86(), [1000, 9], 4),
        // The grid is capped at 8 blocks per multiprocessor; blocks loop over row tiles.
        (h200(), [1_000_000, 3], 132 * 8),
        (sm86(), [1_000_000, 3], 28 * 8),
    ] {
        let n = dims[1] as u64;
        let s = spec(DropoutKind::Weight, Dtype::F32, &dims, 0.5);
        let p = forward(&s, &lim).unwrap();
        assert_eq!(
            p.allocs,
            [Alloc {
                buf: Buf::Out,
                bytes: dims[0] as u64 * n * 4,
                init: Init::Uninit
            }]
        );
        let l = only_launch(&p);
        assert_eq!(l.kernel, Kernel::Tiny(Width::U32));
        assert_eq!((l.grid, l.block), ((grid, 1, 1), (256, 1, 1)));
        assert_eq!(l.smem, 256 * (n as u32 | 1) * 4);
        assert_eq!(l.args, io());
        assert_eq!(l.params, rows(dims[0] as u64, n, n / 2));
    }
}

#[test]
fn rows_up_to_64_kb_take_the_block_kernel() {
    for (lim, dt, dims, grid, smem) in [
        (h200(), Dtype::F32, [10, 1000], 10, 4000),
        // 1000 rows: 4 (H200) or 5 (sm_86) resident blocks per multiprocessor.
        (h200(), Dtype::F32, [1000, 1000], 132 * 4, 4000),
        (sm86(), Dtype::F32, [1000, 1000], 28 * 5, 4000),
        (sm86(), Dtype::F64, [1000, 1001], 28 * 4, 1004 * 8),
        (h200(), Dtype::Bf16, [3, 33], 3, 36 * 2),
        // The largest row: 64 KB of shared memory, 3 blocks per H200 multiprocessor, 1 on
        // the sm_86.
        (h200(), Dtype::F32, [1000, 16384], 132 * 3, 65536),
        (sm86(), Dtype::F16, [1000, 32768], 28, 65536),
    ] {
        let n = dims[1] as u64;
        let s = spec(DropoutKind::Weight, dt, &dims, 0.25);
        let p = forward(&s, &lim).unwrap();
        let l = only_launch(&p);
        assert_eq!(l.kernel, Kernel::Block(dt.width()), "{dims:?}");
        assert_eq!((l.grid, l.smem), ((grid, 1, 1), smem), "{dims:?}");
        assert_eq!(l.args, io());
        assert_eq!(l.params, rows(dims[0] as u64, n, n / 4));
    }
}

#[test]
fn long_rows_take_the_histogram_kernels_in_row_groups() {
    // f32 rows of 16385 elements (past 64 KB): 5 chunks; the sm_86's 3 MB of L2 holds
    // 1.5 MB / 65540 = 23 rows per group, so 100 rows take 5 groups.
    let n = TD_BLOCK_ROW_BYTES as u64 / 4 + 1;
    let s = spec(DropoutKind::Weight, Dtype::F32, &[100, n as usize], 0.5);
    let p = forward(&s, &sm86()).unwrap();
    let chunks = n.div_ceil(TD_LONG_CHUNK as u64);
    assert_eq!(chunks, 5);
    assert_eq!(p.bytes(Buf::Hist), Some(100 * 4 * 256 * 4));
    assert_eq!(p.bytes(Buf::ChunkHist), Some(23 * chunks * 256 * 4));
    let launches: Vec<_> = p.launches().collect();
    assert_eq!(launches.len(), 5 * 5);
    let mut row0 = 0;
    for (g, group) in launches.chunks(5).enumerate() {
        let rows_g = if g < 4 { 23 } else { 8 };
        let hist = Arg::Buf(Buf::Hist, row0 * 4 * 256 * 4);
        for (pass, l) in group[..4].iter().enumerate() {
            assert_eq!(l.kernel, Kernel::LongHist(Width::U32));
            assert_eq!((l.grid, l.smem), ((chunks as u32, rows_g, 1), 0));
            assert_eq!(
                l.args,
                [Arg::Buf(Buf::W, 0), hist, Arg::Buf(Buf::ChunkHist, 0)]
            );
            let want = TdwLongHistParams {
                row0,
                n,
                k: n / 2,
                pass: pass as u32,
                pad0: 0,
            };
            assert_eq!(l.params, Params::LongHist(want));
        }
        let l = group[4];
        assert_eq!(l.kernel, Kernel::LongApply(Width::U32));
        assert_eq!(l.grid, (chunks as u32, rows_g, 1));
        let mut args = io();
        args.extend([hist, Arg::Buf(Buf::ChunkHist, 0)]);
        assert_eq!(l.args, args);
        let want = TdwLongApplyParams {
            row0,
            n,
            k: n / 2,
            elem_base: 0,
            draws: draws(),
        };
        assert_eq!(l.params, Params::LongApply(want));
        row0 += rows_g as u64;
    }
    // The H200's 50 MB of L2 holds all 100 rows: one group, 4 + 1 launches.
    let p = forward(&s, &h200()).unwrap();
    assert_eq!(p.launches().count(), 5);
    // f64 and 16-bit keys: 8 and 2 histogram passes.
    for (dt, passes) in [(Dtype::F64, 8), (Dtype::Bf16, 2)] {
        let n = TD_BLOCK_ROW_BYTES as usize / dt.size() as usize + 1;
        let p = forward(&spec(DropoutKind::Weight, dt, &[1, n], 0.5), &h200()).unwrap();
        let kinds: Vec<_> = p.launches().map(|l| l.kernel).collect();
        let mut want = vec![Kernel::LongHist(dt.width()); passes];
        want.push(Kernel::LongApply(dt.width()));
        assert_eq!(kinds, want);
    }
}

#[test]
fn shared_memory_fallbacks() {
    // A device with 64 KB of opt-in shared memory: a tile of 256 f64 rows of 32 (66 KB)
    // does not fit, so those rows take the block kernel; a 64 KB f32 row does not fit next
    // to the block kernel's static shared memory, so it takes the long-row kernels.
    let small = Gpu {
        smem_optin_per_block: 64 * 1024,
        ..Gpu::sm86()
    }
    .limits()
    .unwrap();
    assert_eq!(small.widths[2].tiny_smem, 64 * 1024 - 1024);
    assert_eq!(small.widths[1].block_smem, 64 * 1024 - 1088);
    let p = forward(
        &spec(DropoutKind::Weight, Dtype::F64, &[300, 32], 0.5),
        &small,
    )
    .unwrap();
    assert_eq!(only_launch(&p).kernel, Kernel::Block(Width::U64));
    assert_eq!(only_launch(&p).smem, 32 * 8);
    // f32 rows of 32 still fit as a tile (33 KB).
    let p = forward(
        &spec(DropoutKind::Weight, Dtype::F32, &[300, 32], 0.5),
        &small,
    )
    .unwrap();
    assert_eq!(only_launch(&p).kernel, Kernel::Tiny(Width::U32));
    let p = forward(
        &spec(DropoutKind::Weight, Dtype::F32, &[2, 16384], 0.5),
        &small,
    )
    .unwrap();
    let kinds: Vec<_> = p.launches().map(|l| l.kernel).collect();
    assert_eq!(kinds.last(), Some(&Kernel::LongApply(Width::U32)));
    assert_eq!(kinds.len(), 5);
    // One row short of the limit still takes the block kernel.
    let n = (64 * 1024 - 1088) / 4;
    let p = forward(&spec(DropoutKind::Weight, Dtype::F32, &[2, n], 0.5), &small).unwrap();
    assert_eq!(only_launch(&p).kernel, Kernel::Block(Width::U32));
    // The same shapes on the real profiles take the tiny and block kernels.
    for lim in [h200(), sm86()] {
        let p = forward(
            &spec(DropoutKind::Weight, Dtype::F64, &[300, 32], 0.5),
            &lim,
        )
        .unwrap();
        assert_eq!(only_launch(&p).kernel, Kernel::Tiny(Width::U64));
        let p = forward(
            &spec(DropoutKind::Weight, Dtype::F32, &[2, 16384], 0.5),
            &lim,
        )
        .unwrap();
        assert_eq!(only_launch(&p).kernel, Kernel::Block(Width::U32));
    }
}

#[test]
fn nothing_dropped_is_a_copy() {
    // k = 0 (gamma too small for the row) or alpha = 0: the values are copied, a mask zeroed,
    // and no kernel runs.
    let s = spec(DropoutKind::Weight, Dtype::F16, &[4, 3], 0.3);
    let p = forward(&s, &h200()).unwrap();
    assert_eq!(
        p.steps,
        [Step::Copy {
            from: Buf::W,
            to: Buf::Out,
            bytes: 24
        }]
    );
    let o = op(DropoutKind::Weight, Output::Mask, 1.0, 0.0);
    let s = OpSpec::new(&o, Dtype::F32, &Shape::from((4, 3)), false);
    let p = forward(&s, &h200()).unwrap();
    assert_eq!(
        p.allocs,
        [Alloc {
            buf: Buf::Mask,
            bytes: 12,
            init: Init::Uninit
        }]
    );
    assert_eq!(
        p.steps,
        [Step::Zero {
            buf: Buf::Mask,
            bytes: 12
        }]
    );
    // The backward pass copies the gradient.
    let o = op(DropoutKind::Weight, Output::Values, 0.5, 0.0);
    let s = OpSpec::new(&o, Dtype::F64, &Shape::from((4, 3)), true);
    let p = forward(&s, &h200()).unwrap();
    assert_eq!(
        p.steps,
        [Step::Copy {
            from: Buf::Vals,
            to: Buf::Out,
            bytes: 96
        }]
    );
    // An empty tensor: the output, and nothing to run.
    let s = spec(DropoutKind::Unit, Dtype::F32, &[0, 5], 0.5);
    assert!(forward(&s, &h200()).unwrap().steps.is_empty());
}

#[test]
fn the_backward_pass_masks_the_gradient_and_shards_draw_from_their_base() {
    let mut o = op(DropoutKind::Weight, Output::Values, 0.5, 0.5);
    o.elem_base = 12_000;
    let s = OpSpec::new(&o, Dtype::F32, &Shape::from((3, 100)), true);
    let p = forward(&s, &sm86()).unwrap();
    let l = only_launch(&p);
    assert_eq!(
        l.args,
        [
            Arg::Buf(Buf::W, 0),
            Arg::Buf(Buf::Vals, 0),
            Arg::Buf(Buf::Out, 0),
            Arg::Null
        ]
    );
    let Params::Rows(r) = l.params else {
        panic!("{l:?}")
    };
    assert_eq!(r.elem_base, 12_000);
}

#[test]
fn unit_dropout_scores_selects_and_applies() {
    for (lim, dims, scores, grid) in [
        (h200(), [5, 40], Kernel::ScoresBlock(Dtype::F32), 5),
        (sm86(), [500, 40], Kernel::ScoresBlock(Dtype::F32), 28 * 8),
        (h200(), [5, 7], Kernel::ScoresTiny(Dtype::F32), 1),
    ] {
        let (d0, n) = (dims[0] as u64, dims[1] as u64);
        let s = spec(DropoutKind::Unit, Dtype::F32, &dims, 0.5);
        let p = forward(&s, &lim).unwrap();
        assert_eq!(p.bytes(Buf::UnitMask), Some(d0));
        assert_eq!(p.bytes(Buf::Scores), Some(d0 * 4));
        let l: Vec<_> = p.launches().collect();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].kernel, l[0].grid), (scores, (grid, 1, 1)));
        assert_eq!(l[0].args, [Arg::Buf(Buf::W, 0), Arg::Buf(Buf::Scores, 0)]);
        assert_eq!(
            l[0].params,
            Params::Scores(UnitScoresParams { units: d0, n })
        );
        // The selection over one row of d0 scores writes the unit mask.
        assert_eq!(l[1].args[0], Arg::Buf(Buf::Scores, 0));
        assert_eq!(l[1].args[2..], [Arg::Null, Arg::Buf(Buf::UnitMask, 0)]);
        assert_eq!(l[1].params, rows(1, d0, d0 / 2));
        assert_eq!(l[2].kernel, Kernel::UnitApply(Width::U32));
        let groups = (d0 * n).div_ceil(4);
        assert_eq!(
            l[2].grid.0 as u64,
            groups.div_ceil(256).min(lim.sms as u64 * 16)
        );
        assert_eq!(
            l[2].args,
            [
                Arg::Buf(Buf::W, 0),
                Arg::Buf(Buf::Out, 0),
                Arg::Null,
                Arg::Buf(Buf::UnitMask, 0)
            ]
        );
    }
    // f64 scores select with the 64-bit kernels; many units take the long-row selection.
    let s = spec(DropoutKind::Unit, Dtype::F64, &[20_000, 3], 0.5);
    let p = forward(&s, &h200()).unwrap();
    let kinds: Vec<_> = p.launches().map(|l| l.kernel).collect();
    assert_eq!(kinds[0], Kernel::ScoresTiny(Dtype::F64));
    assert_eq!(kinds[1..9], [Kernel::LongHist(Width::U64); 8]);
    assert_eq!(
        kinds[9..],
        [Kernel::LongApply(Width::U64), Kernel::UnitApply(Width::U64)]
    );
    // No unit targeted: the zeroed unit mask, applied.
    let s = spec(DropoutKind::Unit, Dtype::Bf16, &[3, 8], 0.3);
    let p = forward(&s, &h200()).unwrap();
    let kinds: Vec<_> = p.launches().map(|l| l.kernel).collect();
    assert_eq!(kinds, [Kernel::UnitApply(Width::U16)]);
}

#[test]
fn unit_scores_alone() {
    let p = unit_scores(Dtype::Bf16, 10, 100, &sm86());
    assert_eq!(
        p.allocs,
        [Alloc {
            buf: Buf::Scores,
            bytes: 40,
            init: Init::Zeroed
        }]
    );
    assert_eq!(only_launch(&p).kernel, Kernel::ScoresBlock(Dtype::Bf16));
    // Empty filters score 0: nothing to launch.
    assert!(unit_scores(Dtype::F64, 4, 0, &sm86()).steps.is_empty());
}

#[test]
fn rows_past_the_kernel_limit_are_an_error_naming_it() {
    let long = 1u64 << 32;
    let mut s = spec(DropoutKind::Weight, Dtype::F16, &[1, 1], 0.5);
    s.n = long;
    let e = forward(&s, &h200()).unwrap_err().to_string();
    assert!(
        e.contains("4294967296 elements") && e.contains("2^32 - 1"),
        "{e}"
    );
    let mut s = spec(DropoutKind::Unit, Dtype::F16, &[1, 1], 0.5);
    s.d0 = long;
    let e = forward(&s, &h200()).unwrap_err().to_string();
    assert!(e.contains("unit scores") && e.contains("4294967296"), "{e}");
}

#[test]
fn the_threshold_is_clamped_to_always() {
    let mut o = op(DropoutKind::Weight, Output::Values, 0.5, 1.0);
    o.draws.threshold = u32::MAX;
    let s = OpSpec::new(&o, Dtype::F32, &Shape::from((2, 2)), false);
    assert_eq!(s.draws.threshold, TD_ALWAYS);
}

/// The most dynamic shared memory the plan asks of each kernel over every shape (rows up to
/// the tiny limit and to the block limit for every width; the other kernels ask for none),
/// with threads per block: what `scripts/launchability.sh` checks the fatbins against.
/// Printed as `launch KERNEL THREADS DYNAMIC_SMEM` lines, followed by what the emulator's
/// profiles assume of the kernels compiled for their architecture (`profile ARCH KERNEL
/// REGISTERS STATIC_SMEM`, registers 0 where the profile does not depend on them), which the
/// script compares with the fatbin.
#[test]
#[ignore = "prints the plan's worst case for scripts/launchability.sh"]
fn worst_case_launch() {
    // A device with room for everything, so that no fallback lowers what the plan asks.
    let big = Gpu {
        smem_optin_per_block: 1 << 30,
        smem_per_sm: 1 << 31,
        ..Gpu::h200()
    }
    .limits()
    .unwrap();
    let mut worst: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for k in Kernel::all() {
        // The v5 kernels' block size is part of the kernel (its name).
        let threads = match k {
            Kernel::Block5(_, t) => t,
            Kernel::Tiny5(w) => tiny5_threads(w),
            _ => TD_BLOCK,
        };
        worst.insert(k.name(), (threads, 0));
    }
    for dt in [Dtype::F16, Dtype::F32, Dtype::F64] {
        let longest_block = TD_BLOCK_ROW_BYTES as usize / dt.size() as usize;
        let ns = [
            1,
            2,
            31,
            32,
            33,
            longest_block - 1,
            longest_block,
            longest_block + 1,
        ];
        for n in ns {
            for kind in [DropoutKind::Weight, DropoutKind::Unit] {
                let s = spec(kind, dt, &[3, n], 1.0);
                for l in forward(&s, &big).unwrap().launches() {
                    let threads = l.block.0 * l.block.1 * l.block.2;
                    let e = worst.entry(l.kernel.name()).or_default();
                    *e = (e.0.max(threads), e.1.max(l.smem));
                }
            }
        }
    }
    for (k, (threads, smem)) in worst {
        println!("launch {k} {threads} {smem}");
    }
    for (arch, g) in [("sm_90", Gpu::h200()), ("sm_86", Gpu::sm86())] {
        for w in Width::ALL {
            let tiny = Kernel::Tiny(w).name();
            println!("profile {arch} {tiny} 0 {}", g.tiny_static_smem);
            let block = Kernel::Block(w).name();
            let regs = g.block_regs[w.index()];
            println!("profile {arch} {block} {regs} {}", g.block_static_smem);
        }
    }
}

/// Aligned weight dropout with values out takes the v5 tiny kernel for
/// rows of at most 32 and the v5 block kernel (the smallest block that holds the row) up to
/// its limit; unaligned tensors, the u8 mask, unit selection and longer rows stay on v4.
#[test]
fn v5_serves_the_shapes_it_covers() {
    let lim = h200();
    let plan_of = |dt: Dtype, dims: &[usize], aligned: bool| {
        let mut s = spec(DropoutKind::Weight, dt, dims, 0.5);
        s.aligned16 = aligned;
        forward(&s, &lim).unwrap()
    };
    let p = plan_of(Dtype::Bf16, &[1 << 20, 9], true);
    let l = only_launch(&p);
    assert_eq!(l.kernel, Kernel::Tiny5(Width::U16));
    assert_eq!((l.grid.0, l.block.0), (132 * 8, 256));
    assert_eq!(l.segs.len(), 1);
    let l = only_launch(&plan_of(Dtype::F32, &[4096, 4096], true)).clone();
    assert_eq!(l.kernel, Kernel::Block5(Width::U32, 256));
    assert_eq!((l.grid.0, l.block.0, l.smem), (4096, 256, 0));
    match l.params {
        Params::Block5(p) => {
            assert_eq!((p.nseg, p.seg[0].n, p.seg[0].k), (1, 4096, 2048));
            assert_eq!(p.keys[..2], [7, 0]);
        }
        other => panic!("{other:?}"),
    }
    let l = only_launch(&plan_of(Dtype::F16, &[11008, 4096], true)).clone();
    assert_eq!(l.kernel, Kernel::Block5(Width::U16, 128));
    let l = only_launch(&plan_of(Dtype::F64, &[3, 8190], true)).clone();
    assert_eq!(l.kernel, Kernel::Block5(Width::U64, 1024));
    // Past the block: v5's long rows; unaligned: v4.
    let names: Vec<String> = plan_of(Dtype::F64, &[3, 8193], true)
        .launches()
        .map(|l| l.kernel.name())
        .collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("td_long_count_u64")
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("td_long_apply_u64")
    );
    assert_eq!(
        only_launch(&plan_of(Dtype::F32, &[4096, 4096], false)).kernel,
        Kernel::Block(Width::U32)
    );
}

/// The v5 long rows: enough count passes that the last one compacts at most `cap`
/// composites whatever the data, and the launches of a plan: the passes in order, the
/// resolve over the rows, the output pass; only the output pass when everything is
/// targeted.
#[test]
fn v5_long_rows_shape_and_launches() {
    use super::weight::long_shape;
    // [128, 2^20] f32: 64 tiles of 2048 vectors, cap 2^16; 63 composite bits, 11 fixed per
    // pass: 2^(63 - 55) <= 2^16 after the fifth pick, so six passes.
    let sh = long_shape(Width::U32, 1 << 20);
    assert_eq!((sh.chunks, sh.cap, sh.passes), (129, 1 << 16, 6));
    // 47 composite bits: 2^(47 - 44) <= 2^12 after the fourth pick; a row of at most cap:
    // one digit, then the candidates.
    let sh = long_shape(Width::U16, 40_000);
    assert_eq!((sh.cap, sh.passes), (4096, 5));
    let sh = long_shape(Width::U16, 4096);
    assert_eq!(sh.passes, 2);
    // f64: 95 composite bits.
    assert_eq!(long_shape(Width::U64, 1 << 31).passes, 9);
    for (w, n) in [
        (Width::U16, 1u64 << 31),
        (Width::U32, (1 << 32) - 1),
        (Width::U64, 9000),
    ] {
        let sh = long_shape(w, n);
        let cw = w.size() * 8 - 1 + 32;
        let fixed = (11 * (sh.passes as u64 - 1)).min(cw);
        assert!(
            n <= sh.cap as u64 || cw - fixed <= sh.cap.trailing_zeros() as u64,
            "{w:?} {n}"
        );
    }
    {
        let lim = h200();
        let mut s = spec(DropoutKind::Weight, Dtype::F32, &[128, 1 << 20], 0.5);
        s.aligned16 = true;
        let p = forward(&s, &lim).unwrap();
        let ls: Vec<_> = p.launches().collect();
        assert_eq!(ls.len(), 6 + 2);
        for (i, l) in ls[..6].iter().enumerate() {
            assert_eq!(l.kernel, Kernel::LongCount5(Width::U32));
            assert_eq!((l.grid.0, l.block.0), (132 * 8, 256));
            match &l.params {
                Params::Long5(p) => assert_eq!((p.pass, p.passes, p.rows), (i as u32, 6, 128)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ls[6].kernel, Kernel::LongResolve5(Width::U32));
        assert_eq!(ls[6].grid.0, 128);
        assert_eq!(ls[7].kernel, Kernel::LongApply5(Width::U32));
        assert_eq!(p.bytes(Buf::Cand), Some(128 << 19));
        assert_eq!(p.bytes(Buf::Hist), Some(128 * 5 * 2048 * 4));
        // gamma = 1: everything targeted, the output pass alone.
        let mut s = spec(DropoutKind::Weight, Dtype::F32, &[2, 1 << 15], 1.0);
        s.aligned16 = true;
        let p = forward(&s, &lim).unwrap();
        assert_eq!(only_launch(&p).kernel, Kernel::LongApply5(Width::U32));
    }
}

/// A grouped call: the v5 block launches of many items merged per width and seed into
/// launches of at most TD_GROUP segments (first blocks cumulative, the block size of the
/// longest row), the bit masks kept where asked, every other step left in its item's plan.
#[test]
fn many_items_group_into_one_launch_per_width() {
    let lim = h200();
    let plan_of = |dt: Dtype, dims: &[usize], bits: bool| {
        let mut s = spec(DropoutKind::Weight, dt, dims, 0.5);
        s.aligned16 = true;
        s.bits = bits;
        forward(&s, &lim).unwrap()
    };
    // 70 f32 items of the block path (one with rows of 4000: 256 threads), two bf16 ones,
    // one tiny (its own launch) and one long row (the v5 long-row kernels, its own steps).
    let mut plans: Vec<Plan> = (0..70)
        .map(|i| {
            plan_of(
                Dtype::F32,
                &[3, if i == 65 { 4000 } else { 40 + i }],
                i % 2 == 0,
            )
        })
        .collect();
    plans.push(plan_of(Dtype::Bf16, &[5, 100], true));
    plans.push(plan_of(Dtype::F16, &[2, 300], false));
    plans.push(plan_of(Dtype::F32, &[100, 9], true));
    plans.push(plan_of(Dtype::F32, &[2, 70_000], true));
    // The kept mask: allocated where a v5 kernel writes it, ceil(numel / 32) words.
    assert_eq!(
        plans[0].bytes(Buf::Bits),
        Some((3u64 * 40).div_ceil(32) * 4)
    );
    assert_eq!(plans[1].bytes(Buf::Bits), None);
    assert_eq!(plans[72].bytes(Buf::Bits), Some(900u64.div_ceil(32) * 4));
    assert_eq!(
        plans[73].bytes(Buf::Bits),
        Some((2u64 * 70_000).div_ceil(32) * 4),
        "v5 long rows keep the mask too"
    );
    let g = group(&mut plans);
    let kernels: Vec<Kernel> = g.iter().map(|g| g.launch.kernel).collect();
    assert_eq!(
        kernels,
        [
            Kernel::Block5(Width::U32, 64),
            Kernel::Block5(Width::U32, 256),
            Kernel::Block5(Width::U16, 64)
        ]
    );
    assert_eq!(g[0].items, (0..62).collect::<Vec<_>>());
    assert_eq!(g[1].items, (62..70).collect::<Vec<_>>());
    assert_eq!(g[2].items, [70, 71]);
    for gr in &g {
        let Params::Block5(p) = &gr.launch.params else {
            panic!("{:?}", gr.launch.params)
        };
        assert_eq!(p.nseg as usize, gr.items.len());
        assert_eq!(gr.launch.segs.len(), gr.items.len());
        assert_eq!(p.keys, weight::round_keys(7));
        let rows = |i: usize| if i < 70 { 3 } else { [5, 2][i - 70] };
        let mut first = 0;
        for (j, &i) in gr.items.iter().enumerate() {
            assert_eq!(p.seg[j].first_block, first);
            assert_eq!(p.seg[j].offset, 9);
            first += rows(i);
        }
        assert_eq!(gr.launch.grid, (first, 1, 1));
        let Kernel::Block5(_, t) = gr.launch.kernel else {
            panic!("{:?}", gr.launch.kernel)
        };
        assert_eq!(gr.launch.block, (t, 1, 1));
    }
    // Kept masks travel with their segments.
    assert_eq!(g[0].launch.segs[0].bits, Arg::Buf(Buf::Bits, 0));
    assert_eq!(g[0].launch.segs[1].bits, Arg::Null);
    // The merged launches left their plans; the tiny and long-row items kept theirs.
    assert!(plans[..72].iter().all(|p| p.launches().count() == 0));
    assert_eq!(only_launch(&plans[72]).kernel, Kernel::Tiny5(Width::U32));
    assert!(plans[73].launches().all(|l| matches!(
        l.kernel,
        Kernel::LongCount5(_) | Kernel::LongResolve5(_) | Kernel::LongApply5(_)
    )));
}
