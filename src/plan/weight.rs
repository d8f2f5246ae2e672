//! Weight dropout: the selection kernels of `kernels/weight.cu`, chosen by row length (tiny
//! rows a tile per block, rows a block holds in registers one block per row, longer rows over
//! many blocks), and the outputs they do not write themselves (a u8 mask from the bit mask).

use super::{
    tiny_threads, Arg, Buf, Init, Kernel, Launch, Limits, OpSpec, Params, Plan, SegArgs, Step,
    Width, BLOCK_THREADS,
};
use crate::cuda_params::{
    TdBlockParams, TdBwdParams, TdDraws, TdLongParams, TdSeg, TdTinyParams, TD_BLOCK, TD_LONG_NV,
    TD_LONG_STATE_BYTES, TD_LONG_THREADS, TD_MAX_ROW, TD_NV, TD_RADIX_BINS, TD_TINY_ROW,
};
use crate::op::Output;
use crate::select::targeted_count;

/// A selection over `rows` rows of `n` elements of `w` (draw index of element i of row r:
/// `elem_base + r * n + i`): writes the masked `vals` (or `w` when `vals` is `None`) into
/// `out`, the dropped flags into `mask` (u8) and the packed bit mask into `bits`.
pub(super) struct Select {
    pub w: Buf,
    pub vals: Option<Buf>,
    pub out: Option<Buf>,
    pub mask: Option<Buf>,
    /// Where to write the packed bit mask of the dropped elements (bit e % 32 of word e / 32).
    pub bits: Option<Buf>,
    pub width: Width,
    pub rows: u64,
    pub n: u64,
    pub k: u64,
    pub elem_base: u64,
    pub draws: TdDraws,
    /// Whether `w` and `vals` start 16-byte aligned (the kernels read 16-byte vectors; an
    /// unaligned view is first copied to an aligned buffer).
    pub aligned16: bool,
}

/// Weight dropout of the whole op.
pub(super) fn plan(spec: &OpSpec, lim: &Limits, plan: &mut Plan) {
    let sel = Select {
        w: Buf::W,
        vals: spec.vals.then_some(Buf::Vals),
        out: (spec.output == Output::Values).then_some(Buf::Out),
        mask: (spec.output == Output::Mask).then_some(Buf::Mask),
        bits: (spec.bits && spec.output == Output::Values).then_some(Buf::Bits),
        width: spec.dtype.width(),
        rows: spec.d0,
        n: spec.n,
        k: targeted_count(spec.gamma, spec.n as usize) as u64,
        elem_base: spec.elem_base,
        draws: spec.draws,
        aligned16: spec.aligned16,
    };
    select_rows(&sel, lim, plan);
}

/// The steps of a selection. `n` must be at most TD_MAX_ROW and a block-path launch at most
/// 2^31 - 1 rows (checked by [`OpSpec::check`]).
pub(super) fn select_rows(s: &Select, lim: &Limits, plan: &mut Plan) {
    debug_assert!(s.n <= TD_MAX_ROW as u64);
    let size = s.width.size();
    let numel = s.rows * s.n;
    if s.k == 0 || s.draws.threshold == 0 {
        // Nothing is dropped: the output is a copy.
        if let Some(to) = s.out {
            let from = s.vals.unwrap_or(s.w);
            plan.steps.push(Step::Copy {
                from,
                to,
                bytes: numel * size,
            });
        }
        if let Some(buf) = s.mask {
            plan.steps.push(Step::Zero { buf, bytes: numel });
        }
        if let Some(buf) = s.bits {
            let bytes = super::bits_bytes(numel);
            plan.steps.push(Step::Zero { buf, bytes });
        }
        return;
    }
    // The kernels read and write 16-byte vectors: an unaligned input view is read once into
    // an aligned buffer (one more read and write of the tensor; a fresh tensor or an aligned
    // view costs nothing).
    let (mut w, mut vals) = (s.w, s.vals);
    if !s.aligned16 {
        let bytes = numel * size;
        plan.alloc(Buf::WAligned, bytes, Init::Uninit);
        plan.steps.push(Step::Copy {
            from: s.w,
            to: Buf::WAligned,
            bytes,
        });
        w = Buf::WAligned;
        if let Some(v) = s.vals {
            plan.alloc(Buf::ValsAligned, bytes, Init::Uninit);
            plan.steps.push(Step::Copy {
                from: v,
                to: Buf::ValsAligned,
                bytes,
            });
            vals = Some(Buf::ValsAligned);
        }
    }
    // A u8 mask is expanded from the bit mask (`td_mask_u8`): the selection writes bits.
    let bits = if s.mask.is_some() {
        Some(s.bits.unwrap_or(Buf::Bits))
    } else {
        s.bits
    };
    let sel = Select {
        w,
        vals,
        out: s.out,
        mask: None,
        bits,
        width: s.width,
        rows: s.rows,
        n: s.n,
        k: s.k,
        elem_base: s.elem_base,
        draws: s.draws,
        aligned16: true,
    };
    select_aligned(&sel, lim, plan);
    if let (Some(mask), Some(bits)) = (s.mask, bits) {
        let words = numel.div_ceil(32);
        let blocks = words.div_ceil(TD_BLOCK as u64).min(lim.sms as u64 * 16);
        plan.launch(Launch::new(
            Kernel::MaskU8,
            (blocks, 1),
            0,
            vec![Arg::at(bits), Arg::at(mask)],
            Params::Numel(TdBwdParams { numel }),
        ));
    }
}

/// The smallest block of `td_block` (64 .. 1024 threads, TD_NV 16-byte vectors each) that
/// holds a row of `n` elements of `width` (a row that starts mid-vector spans one vector
/// more); `None` past the largest.
pub(super) fn block_threads(width: Width, n: u64) -> Option<u32> {
    let ve = 16 / width.size();
    let vectors = if n.is_multiple_of(ve) {
        n / ve
    } else {
        (n + 2 * ve - 2) / ve
    };
    BLOCK_THREADS
        .into_iter()
        .find(|&t| t as u64 * TD_NV as u64 >= vectors)
}

/// The Philox round keys of `seed` as the selection kernels take them: round i's key words at 2 i
/// and 2 i + 1 (DESIGN.md, "Random draws": key [seed as u32, seed >> 32], bumped by the
/// Weyl constants each round).
pub(super) fn round_keys(seed: u64) -> [u32; 20] {
    let mut k = [0u32; 20];
    let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
    for i in 0..10 {
        k[2 * i] = k0;
        k[2 * i + 1] = k1;
        k0 = k0.wrapping_add(0x9E37_79B9);
        k1 = k1.wrapping_add(0xBB67_AE85);
    }
    k
}

/// The segment of a selection (addresses left for the executor).
fn seg_of(s: &Select) -> (TdSeg, SegArgs) {
    let seg = TdSeg {
        w: 0,
        vals: 0,
        out: 0,
        bits: 0,
        elem_base: s.elem_base,
        offset: s.draws.offset,
        n: s.n as u32,
        k: s.k as u32,
        threshold: s.draws.threshold,
        first_block: 0,
    };
    let args = SegArgs {
        w: Arg::at(s.w),
        vals: Arg::opt(s.vals),
        out: Arg::opt(s.out),
        bits: Arg::opt(s.bits),
    };
    (seg, args)
}

/// The launches of a selection over aligned buffers: tiny rows, rows a block holds, and
/// longer rows on the long-row kernels.
fn select_aligned(s: &Select, lim: &Limits, plan: &mut Plan) {
    let (seg, args) = seg_of(s);
    if s.n <= TD_TINY_ROW as u64 {
        let t = tiny_threads(s.width);
        let p = TdTinyParams {
            keys: round_keys(s.draws.seed),
            rows: s.rows,
            seg,
        };
        let blocks = s.rows.div_ceil(t as u64).min(lim.sms as u64 * 8);
        let k = Kernel::Tiny(s.width);
        plan.launch(Launch::with_segs(
            k,
            blocks,
            t,
            Params::Tiny(Box::new(p)),
            vec![args],
        ));
        return;
    }
    let Some(t) = block_threads(s.width, s.n) else {
        long_rows(s, lim, plan);
        return;
    };
    let mut p = TdBlockParams {
        keys: round_keys(s.draws.seed),
        nseg: 1,
        ..Default::default()
    };
    p.seg[0] = seg;
    let k = Kernel::Block(s.width, t);
    plan.launch(Launch::with_segs(
        k,
        s.rows,
        t,
        Params::Block(Box::new(p)),
        vec![args],
    ));
}

/// The shape of a long-row selection (`kernels/weight.cu`, "Long rows").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LongShape {
    /// Tiles of TD_LONG_THREADS * TD_LONG_NV vectors per row (the most a row that starts
    /// mid-vector spans).
    pub chunks: u64,
    /// Candidates compacted per row at most: n / 16 rounded up to a power of two, 4096 ..
    /// 65536.
    pub cap: u32,
    /// Count / candidate passes: enough that the last one finds at most `cap` composites
    /// under its prefix whatever the data.
    pub passes: u32,
}

/// The tiles, candidate capacity and passes of a long row of `n` elements of `width`.
pub(super) fn long_shape(width: Width, n: u64) -> LongShape {
    let ve = 16 / width.size();
    let vectors = (n + 2 * ve - 2) / ve;
    let chunks = vectors.div_ceil(TD_LONG_THREADS as u64 * TD_LONG_NV as u64);
    let cap = (n / 16).next_power_of_two().clamp(1 << 12, 1 << 16);
    // Composite bits (key bits + 32 index bits); after the pick of pass j the prefix fixes
    // min(11 j, cw) of them, so at most 2^(cw - 11 j) composites (and at most n) share it.
    let cw = width.size() * 8 - 1 + 32;
    let log_cap = cap.trailing_zeros() as u64;
    let mut j = 1u64;
    while n > cap && cw.saturating_sub(11 * j) > log_cap {
        j += 1;
    }
    LongShape {
        chunks,
        cap: cap as u32,
        passes: j as u32 + 1,
    }
}

/// Long rows: the count / candidate passes, the resolve and the output pass
/// (`kernels/weight.cu`, "Long rows"); with k = n only the output pass.
fn long_rows(s: &Select, lim: &Limits, plan: &mut Plan) {
    let sh = long_shape(s.width, s.n);
    let (seg, args) = seg_of(s);
    let mut p = TdLongParams {
        keys: round_keys(s.draws.seed),
        rows: s.rows,
        chunks: sh.chunks,
        cap: sh.cap,
        pass: 0,
        passes: sh.passes,
        pad0: 0,
        seg,
    };
    let blocks = (s.rows * sh.chunks).min(lim.sms as u64 * 8);
    let t = TD_LONG_THREADS;
    let state = Arg::at(Buf::LongState);
    plan.alloc(
        Buf::LongState,
        s.rows * sh.passes as u64 * TD_LONG_STATE_BYTES as u64,
        Init::Zeroed,
    );
    if s.k < s.n {
        let comp = if s.width == Width::U64 { 16 } else { 8 };
        plan.alloc(
            Buf::Hist,
            s.rows * (sh.passes as u64 - 1) * TD_RADIX_BINS as u64 * 4,
            Init::Zeroed,
        );
        plan.alloc(Buf::Cand, s.rows * sh.cap as u64 * comp, Init::Uninit);
        for pass in 0..sh.passes {
            p.pass = pass;
            let mut l = Launch::with_segs(
                Kernel::LongCount(s.width),
                blocks,
                t,
                Params::Long(Box::new(p)),
                vec![args],
            );
            l.args = vec![Arg::at(Buf::Hist), state, Arg::at(Buf::Cand)];
            plan.launch(l);
        }
        let mut l = Launch::with_segs(
            Kernel::LongResolve(s.width),
            s.rows,
            t,
            Params::Long(Box::new(p)),
            vec![args],
        );
        l.args = vec![state, Arg::at(Buf::Cand)];
        plan.launch(l);
    }
    let mut l = Launch::with_segs(
        Kernel::LongApply(s.width),
        blocks,
        t,
        Params::Long(Box::new(p)),
        vec![args],
    );
    l.args = vec![state];
    plan.launch(l);
}
