//! The launch plan, branch by branch, on the two profiles the emulator runs (an H200 and a
//! small sm_86 GPU): the kernels, grids, blocks, buffers and parameters of every path.

use super::*;
use crate::cuda_params::{TdSeg, TD_LONG_THREADS, TD_NV};
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

fn only_launch(plan: &Plan) -> &Launch {
    let l: Vec<_> = plan.launches().collect();
    assert_eq!(l.len(), 1, "{plan:?}");
    l[0]
}

fn aligned(kind: DropoutKind, dtype: Dtype, dims: &[usize], gamma: f64) -> OpSpec {
    let mut s = spec(kind, dtype, dims, gamma);
    s.aligned16 = true;
    s
}

/// The one segment of a selection launch.
fn seg_of(l: &Launch) -> (TdSeg, SegArgs) {
    assert_eq!(l.segs.len(), 1, "{l:?}");
    let seg = match &l.params {
        Params::Block(p) => {
            assert_eq!(p.nseg, 1);
            p.seg[0]
        }
        Params::Tiny(p) => p.seg,
        Params::Long(p) => p.seg,
        other => panic!("{other:?}"),
    };
    (seg, l.segs[0])
}

fn values_out() -> SegArgs {
    SegArgs {
        w: Arg::Buf(Buf::W, 0),
        vals: Arg::Null,
        out: Arg::Buf(Buf::Out, 0),
        bits: Arg::Null,
    }
}

#[test]
fn limits_of_the_profiles() {
    assert_eq!(h200(), Limits { sms: 132 });
    assert_eq!(sm86(), Limits { sms: 28 });
    let none = Gpu {
        sms: 0,
        ..Gpu::sm86()
    };
    let e = none.limits().unwrap_err().to_string();
    assert!(e.contains("0 multiprocessors"), "{e}");
}

#[test]
fn tiny_rows_take_the_tile_kernel() {
    for (lim, dt, dims, grid, threads) in [
        (h200(), Dtype::F32, [1000, 9], 4, 256),
        (sm86(), Dtype::F64, [1000, 9], 8, 128),
        // The grid is capped at 8 blocks per multiprocessor; blocks loop over row tiles.
        (h200(), Dtype::Bf16, [1_000_000, 3], 132 * 8, 256),
        (sm86(), Dtype::F32, [1_000_000, 32], 28 * 8, 256),
    ] {
        let n = dims[1] as u64;
        let s = aligned(DropoutKind::Weight, dt, &dims, 0.5);
        let p = forward(&s, &lim).unwrap();
        assert_eq!(
            p.allocs,
            [Alloc {
                buf: Buf::Out,
                bytes: dims[0] as u64 * n * dt.size(),
                init: Init::Uninit
            }]
        );
        let l = only_launch(&p);
        assert_eq!(l.kernel, Kernel::Tiny(dt.width()));
        assert_eq!(
            l.kernel.name(),
            format!("td_tiny_{}_t{threads}", dt.width().suffix())
        );
        assert_eq!(
            (l.grid, l.block, l.smem),
            ((grid, 1, 1), (threads, 1, 1), 0)
        );
        let (seg, args) = seg_of(l);
        assert_eq!(args, values_out());
        assert_eq!((seg.n as u64, seg.k as u64, seg.offset), (n, n / 2, 9));
        let Params::Tiny(t) = &l.params else { panic!() };
        assert_eq!(t.rows, dims[0] as u64);
        assert_eq!(t.keys, weight::round_keys(7));
    }
}

/// The block kernel takes the smallest block (64 .. 1024 threads, TD_NV 16-byte vectors
/// each) that holds the row; a row past the largest takes the long-row kernels.
#[test]
fn rows_a_block_holds_take_the_block_kernel() {
    for (dt, dims, threads) in [
        (Dtype::F32, [4096, 4096], 256),
        (Dtype::F16, [11008, 4096], 128),
        (Dtype::Bf16, [3, 33], 64),
        (Dtype::F64, [3, 8190], 1024),
        (Dtype::F32, [10, 16384], 1024),
    ] {
        for lim in [h200(), sm86()] {
            let s = aligned(DropoutKind::Weight, dt, &dims, 0.25);
            let p = forward(&s, &lim).unwrap();
            let l = only_launch(&p);
            assert_eq!(l.kernel, Kernel::Block(dt.width(), threads), "{dims:?}");
            // One block per row, on every device.
            assert_eq!(
                (l.grid, l.block, l.smem),
                ((dims[0] as u32, 1, 1), (threads, 1, 1), 0)
            );
            let (seg, args) = seg_of(l);
            assert_eq!(args, values_out());
            let n = dims[1] as u64;
            assert_eq!((seg.n as u64, seg.k as u64, seg.first_block), (n, n / 4, 0));
        }
    }
    // One element past what 1024 threads hold: the long-row kernels.
    let names: Vec<String> = forward(
        &aligned(DropoutKind::Weight, Dtype::F64, &[3, 8193], 0.5),
        &h200(),
    )
    .unwrap()
    .launches()
    .map(|l| l.kernel.name())
    .collect();
    assert_eq!(names.first().map(String::as_str), Some("td_long_count_u64"));
    assert_eq!(names.last().map(String::as_str), Some("td_long_apply_u64"));
}

/// An input view that does not start 16-byte aligned (a slice of a tensor at an odd
/// offset) is read once into an aligned buffer, and the selection reads that; the gradient
/// of the recomputing backward too. The output is the plan's own (aligned) buffer.
#[test]
fn unaligned_views_are_copied_to_an_aligned_buffer_first() {
    let s = spec(DropoutKind::Weight, Dtype::F32, &[4096, 4096], 0.5);
    assert!(!s.aligned16);
    let p = forward(&s, &h200()).unwrap();
    let bytes = 4096 * 4096 * 4;
    assert_eq!(p.bytes(Buf::WAligned), Some(bytes));
    assert_eq!(
        p.steps[0],
        Step::Copy {
            from: Buf::W,
            to: Buf::WAligned,
            bytes
        }
    );
    let (_, args) = seg_of(only_launch(&p));
    assert_eq!(args.w, Arg::Buf(Buf::WAligned, 0));
    let o = op(DropoutKind::Weight, Output::Values, 0.5, 0.5);
    let s = OpSpec::new(&o, Dtype::Bf16, &Shape::from((7, 300)), true);
    let p = forward(&s, &sm86()).unwrap();
    let copies: Vec<_> = p
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Copy { .. }))
        .collect();
    assert_eq!(copies.len(), 2);
    let (_, args) = seg_of(only_launch(&p));
    assert_eq!(
        (args.w, args.vals),
        (Arg::Buf(Buf::WAligned, 0), Arg::Buf(Buf::ValsAligned, 0))
    );
    // Aligned views copy nothing.
    let p = forward(
        &aligned(DropoutKind::Weight, Dtype::F32, &[64, 64], 0.5),
        &h200(),
    )
    .unwrap();
    assert!(p.steps.iter().all(|s| matches!(s, Step::Launch(_))));
}

/// A u8 mask output (`targeted_dropout_mask`): the selection writes the bit mask only, and
/// `td_mask_u8` expands it, on every path.
#[test]
fn a_mask_output_expands_the_bit_mask() {
    let o = op(DropoutKind::Weight, Output::Mask, 0.5, 0.5);
    for (dims, first) in [
        ([100usize, 9usize], Kernel::Tiny(Width::U32)),
        ([100, 1000], Kernel::Block(Width::U32, 64)),
        ([2, 20_000], Kernel::LongCount(Width::U32)),
    ] {
        let mut s = OpSpec::new(&o, Dtype::F32, &Shape::from(&dims[..]), false);
        s.aligned16 = true;
        let p = forward(&s, &h200()).unwrap();
        let numel = (dims[0] * dims[1]) as u64;
        assert_eq!(p.bytes(Buf::Mask), Some(numel));
        assert_eq!(p.bytes(Buf::Bits), Some(numel.div_ceil(32) * 4));
        let ls: Vec<_> = p.launches().collect();
        assert_eq!(ls[0].kernel, first);
        for l in &ls[..ls.len() - 1] {
            let (_, args) = seg_of(l);
            assert_eq!((args.out, args.bits), (Arg::Null, Arg::Buf(Buf::Bits, 0)));
        }
        let last = ls.last().unwrap();
        assert_eq!(last.kernel, Kernel::MaskU8);
        assert_eq!(last.args, [Arg::Buf(Buf::Bits, 0), Arg::Buf(Buf::Mask, 0)]);
        assert_eq!(last.params, Params::Numel(TdBwdParams { numel }));
        assert_eq!(last.grid.0 as u64, numel.div_ceil(32).div_ceil(256));
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
    let mut s = OpSpec::new(&o, Dtype::F32, &Shape::from((3, 100)), true);
    s.aligned16 = true;
    let p = forward(&s, &sm86()).unwrap();
    let (seg, args) = seg_of(only_launch(&p));
    assert_eq!(
        args,
        SegArgs {
            vals: Arg::Buf(Buf::Vals, 0),
            ..values_out()
        }
    );
    assert_eq!(seg.elem_base, 12_000);
}

#[test]
fn unit_dropout_scores_selects_and_applies() {
    for (lim, dims, scores, grid, select) in [
        (
            h200(),
            [5, 40],
            Kernel::UnitScoresBlock(Dtype::F32),
            5,
            Kernel::Tiny(Width::U32),
        ),
        (
            sm86(),
            [500, 40],
            Kernel::UnitScoresBlock(Dtype::F32),
            28 * 8,
            Kernel::Block(Width::U32, 64),
        ),
        (
            h200(),
            [5, 7],
            Kernel::UnitScoresTiny(Dtype::F32),
            1,
            Kernel::Tiny(Width::U32),
        ),
    ] {
        let (d0, n) = (dims[0] as u64, dims[1] as u64);
        let s = spec(DropoutKind::Unit, Dtype::F32, &dims, 0.5);
        let p = forward(&s, &lim).unwrap();
        assert_eq!(p.bytes(Buf::UnitBits), Some(d0.div_ceil(32) * 4));
        assert_eq!(p.bytes(Buf::Scores), Some(d0 * 4));
        // The weight need not be aligned: the scores and the apply read it element-wise.
        assert_eq!(p.bytes(Buf::WAligned), None);
        let l: Vec<_> = p.launches().collect();
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].kernel, l[0].grid), (scores, (grid, 1, 1)));
        assert_eq!(l[0].args, [Arg::Buf(Buf::W, 0), Arg::Buf(Buf::Scores, 0)]);
        assert_eq!(
            l[0].params,
            Params::Scores(UnitScoresParams { units: d0, n })
        );
        // The selection over one row of d0 scores writes the units' bit mask.
        assert_eq!(l[1].kernel, select);
        let (seg, args) = seg_of(l[1]);
        assert_eq!(
            args,
            SegArgs {
                w: Arg::Buf(Buf::Scores, 0),
                vals: Arg::Null,
                out: Arg::Null,
                bits: Arg::Buf(Buf::UnitBits, 0)
            }
        );
        assert_eq!((seg.n as u64, seg.k as u64, seg.elem_base), (d0, d0 / 2, 0));
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
                Arg::Buf(Buf::UnitBits, 0)
            ]
        );
    }
    // f64 scores select with the 64-bit kernels; many units take the long-row selection.
    let s = spec(DropoutKind::Unit, Dtype::F64, &[20_000, 3], 0.5);
    let p = forward(&s, &h200()).unwrap();
    let kinds: Vec<_> = p.launches().map(|l| l.kernel).collect();
    assert_eq!(kinds[0], Kernel::UnitScoresTiny(Dtype::F64));
    assert_eq!(kinds[1], Kernel::LongCount(Width::U64));
    assert_eq!(
        kinds[kinds.len() - 3..],
        [
            Kernel::LongResolve(Width::U64),
            Kernel::LongApply(Width::U64),
            Kernel::UnitApply(Width::U64)
        ]
    );
    // No unit targeted: the zeroed unit bits, applied.
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
    assert_eq!(only_launch(&p).kernel, Kernel::UnitScoresBlock(Dtype::Bf16));
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
    // The block path runs a block per row: at most 2^31 - 1 rows.
    let mut s = spec(DropoutKind::Weight, Dtype::F32, &[1, 100], 0.5);
    s.d0 = 1 << 31;
    let e = forward(&s, &h200()).unwrap_err().to_string();
    assert!(
        e.contains("2147483648 filters") && e.contains("2^31 - 1"),
        "{e}"
    );
    // Tiny rows and long rows loop over their rows: no such limit.
    s.n = 9;
    assert!(s.check().is_ok());
}

#[test]
fn the_threshold_is_clamped_to_always() {
    let mut o = op(DropoutKind::Weight, Output::Values, 0.5, 1.0);
    o.draws.threshold = u32::MAX;
    let s = OpSpec::new(&o, Dtype::F32, &Shape::from((2, 2)), false);
    assert_eq!(s.draws.threshold, TD_ALWAYS);
}

/// Every kernel with the most threads and dynamic shared memory the plan asks of it over
/// every path (rows at the edges of the tiny, block and long paths for every width, weight
/// and unit dropout, values and mask out, N:M), printed as `launch KERNEL THREADS
/// DYNAMIC_SMEM` lines: what `scripts/launchability.sh` checks the fatbins against. No kernel
/// takes dynamic shared memory, and a block size is part of a kernel's name.
#[test]
#[ignore = "prints the plan's worst case for scripts/launchability.sh"]
fn worst_case_launch() {
    let lim = h200();
    let mut worst: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
    for k in Kernel::all() {
        let threads = match k {
            Kernel::Block(_, t) => t,
            Kernel::Tiny(w) => tiny_threads(w),
            Kernel::LongCount(_) | Kernel::LongResolve(_) | Kernel::LongApply(_) => TD_LONG_THREADS,
            _ => TD_BLOCK,
        };
        worst.insert(k.name(), (threads, 0));
    }
    for dt in [Dtype::F16, Dtype::F32, Dtype::F64] {
        let longest_block = (TD_MAX_THREADS * TD_NV) as usize * 16 / dt.size() as usize;
        let ns = [
            1,
            2,
            31,
            32,
            33,
            1000,
            longest_block - 1,
            longest_block,
            longest_block + 1,
        ];
        for n in ns {
            for (kind, output) in [
                (DropoutKind::Weight, Output::Values),
                (DropoutKind::Weight, Output::Mask),
                (DropoutKind::Unit, Output::Values),
                (DropoutKind::Nm { n: 2, m: 4 }, Output::Values),
            ] {
                if matches!(kind, DropoutKind::Nm { .. }) && n % 4 != 0 {
                    continue;
                }
                let o = op(kind, output, 0.5, 0.5);
                let s = OpSpec::new(&o, dt, &Shape::from((3, n)), false);
                for l in forward(&s, &lim).unwrap().launches() {
                    let threads = l.block.0 * l.block.1 * l.block.2;
                    let e = worst
                        .get_mut(&l.kernel.name())
                        .expect("a kernel of Kernel::all");
                    assert_eq!(e.0, threads, "{}", l.kernel.name());
                    *e = (e.0, e.1.max(l.smem));
                }
            }
        }
    }
    for (k, (threads, smem)) in worst {
        println!("launch {k} {threads} {smem}");
    }
}

/// The long rows: enough count passes that the last one compacts at most `cap`
/// composites whatever the data, and the launches of a plan: the passes in order, the
/// resolve over the rows, the output pass; only the output pass when everything is
/// targeted.
#[test]
fn long_rows_shape_and_launches() {
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
            assert_eq!(l.kernel, Kernel::LongCount(Width::U32));
            assert_eq!((l.grid.0, l.block.0), (132 * 8, 256));
            match &l.params {
                Params::Long(p) => assert_eq!((p.pass, p.passes, p.rows), (i as u32, 6, 128)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ls[6].kernel, Kernel::LongResolve(Width::U32));
        assert_eq!(ls[6].grid.0, 128);
        assert_eq!(ls[7].kernel, Kernel::LongApply(Width::U32));
        assert_eq!(p.bytes(Buf::Cand), Some(128 << 19));
        assert_eq!(p.bytes(Buf::Hist), Some(128 * 5 * 2048 * 4));
        // gamma = 1: everything targeted, the output pass alone.
        let mut s = spec(DropoutKind::Weight, Dtype::F32, &[2, 1 << 15], 1.0);
        s.aligned16 = true;
        let p = forward(&s, &lim).unwrap();
        assert_eq!(only_launch(&p).kernel, Kernel::LongApply(Width::U32));
    }
}

/// A grouped call: the block launches of many items merged per width and seed into
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
    // one tiny (its own launch) and one long row (the long-row kernels, its own steps).
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
    // The kept mask: allocated where asked, ceil(numel / 32) words.
    assert_eq!(
        plans[0].bytes(Buf::Bits),
        Some((3u64 * 40).div_ceil(32) * 4)
    );
    assert_eq!(plans[1].bytes(Buf::Bits), None);
    assert_eq!(plans[72].bytes(Buf::Bits), Some(900u64.div_ceil(32) * 4));
    assert_eq!(
        plans[73].bytes(Buf::Bits),
        Some((2u64 * 70_000).div_ceil(32) * 4),
        "long rows keep the mask too"
    );
    let g = group(&mut plans);
    let kernels: Vec<Kernel> = g.iter().map(|g| g.launch.kernel).collect();
    assert_eq!(
        kernels,
        [
            Kernel::Block(Width::U32, 64),
            Kernel::Block(Width::U32, 256),
            Kernel::Block(Width::U16, 64)
        ]
    );
    assert_eq!(g[0].items, (0..62).collect::<Vec<_>>());
    assert_eq!(g[1].items, (62..70).collect::<Vec<_>>());
    assert_eq!(g[2].items, [70, 71]);
    for gr in &g {
        let Params::Block(p) = &gr.launch.params else {
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
        let Kernel::Block(_, t) = gr.launch.kernel else {
            panic!("{:?}", gr.launch.kernel)
        };
        assert_eq!(gr.launch.block, (t, 1, 1));
    }
    // Kept masks travel with their segments.
    assert_eq!(g[0].launch.segs[0].bits, Arg::Buf(Buf::Bits, 0));
    assert_eq!(g[0].launch.segs[1].bits, Arg::Null);
    // The merged launches left their plans; the tiny and long-row items kept theirs.
    assert!(plans[..72].iter().all(|p| p.launches().count() == 0));
    assert_eq!(only_launch(&plans[72]).kernel, Kernel::Tiny(Width::U32));
    assert!(plans[73].launches().all(|l| matches!(
        l.kernel,
        Kernel::LongCount(_) | Kernel::LongResolve(_) | Kernel::LongApply(_)
    )));
}
