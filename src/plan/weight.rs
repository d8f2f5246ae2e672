//! Weight dropout: the selection kernels of `kernels/weight.cu`, chosen by row length and
//! the device's shared memory (tiny rows, one row per block, long rows over many blocks).

use super::{
    block_smem, tiny5_threads, tiny_smem, Arg, Buf, Init, Kernel, Launch, Limits, OpSpec, Params,
    Plan, SegArgs, Step, Width,
};
use crate::cuda_params::{
    Td5LongParams, Td5Params, Td5Seg, Td5TinyParams, TdDraws, TdwLongApplyParams,
    TdwLongHistParams, TdwRowsParams, TD5_BINS, TD5_LONG_NV, TD5_LONG_STATE_BYTES,
    TD5_LONG_THREADS, TD5_MAX_THREADS, TD5_NV, TD_BLOCK, TD_LONG_CHUNK, TD_MAX_ROW, TD_TINY_ROW,
};
use crate::op::Output;
use crate::select::targeted_count;

/// A selection over `rows` rows of `n` elements of `w` (draw index of element i of row r:
/// `elem_base + r * n + i`): writes the masked `vals` (or `w` when `vals` is `None`) into
/// `out` and the dropped flags into `mask`.
pub(super) struct Select {
    pub w: Buf,
    pub vals: Option<Buf>,
    pub out: Option<Buf>,
    pub mask: Option<Buf>,
    /// Where to write the packed bit mask of the dropped elements, if it is kept (only the v5
    /// kernels write one; the other paths leave the buffer unused).
    pub bits: Option<Buf>,
    pub width: Width,
    pub rows: u64,
    pub n: u64,
    pub k: u64,
    pub elem_base: u64,
    pub draws: TdDraws,
    /// Whether `w`, `vals` and `out` start 16-byte aligned (the v5 kernels need it).
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

/// The steps of a selection. `n` must be at most TD_MAX_ROW (checked by [`OpSpec::check`]).
pub(super) fn select_rows(s: &Select, lim: &Limits, plan: &mut Plan) {
    debug_assert!(s.n <= TD_MAX_ROW as u64);
    let size = s.width.size();
    if s.k == 0 || s.draws.threshold == 0 {
        // Nothing is dropped: the output is a copy.
        let bytes = s.rows * s.n;
        if let Some(to) = s.out {
            let from = s.vals.unwrap_or(s.w);
            plan.steps.push(Step::Copy {
                from,
                to,
                bytes: bytes * size,
            });
        }
        if let Some(buf) = s.mask {
            plan.steps.push(Step::Zero { buf, bytes });
        }
        if let Some(buf) = s.bits {
            let bytes = super::bits_bytes(bytes);
            plan.steps.push(Step::Zero { buf, bytes });
        }
        return;
    }
    if v5_rows(s, lim, plan) {
        return;
    }
    let fns = &lim.widths[s.width.index()];
    let io = || {
        vec![
            Arg::at(s.w),
            Arg::opt(s.vals),
            Arg::opt(s.out),
            Arg::opt(s.mask),
        ]
    };
    let p = Params::Rows(TdwRowsParams {
        rows: s.rows,
        n: s.n,
        k: s.k,
        elem_base: s.elem_base,
        draws: s.draws,
    });
    let (n, rows) = (s.n, s.rows);
    if n <= TD_TINY_ROW as u64 && tiny_smem(n, size) <= fns.tiny_smem as u64 {
        let grid = rows.div_ceil(TD_BLOCK as u64).min(lim.sms as u64 * 8);
        let k = Kernel::Tiny(s.width);
        plan.launch(Launch::new(k, (grid, 1), tiny_smem(n, size), io(), p));
    } else if block_smem(n, size) <= fns.block_smem as u64 {
        let smem = block_smem(n, size);
        let per_sm = fns.block_per_sm[smem.div_ceil(1024) as usize];
        let grid = rows.min(lim.sms as u64 * per_sm as u64);
        let k = Kernel::Block(s.width);
        plan.launch(Launch::new(k, (grid, 1), smem, io(), p));
    } else {
        long_rows(s, lim, plan);
    }
}

/// Rows too long for one block's shared memory: histogram passes and an output pass over
/// many blocks per row, rows processed in groups that fit in half the L2, so that the
/// histogram passes after the first one and the output pass read the L2, not device memory.
fn long_rows(s: &Select, lim: &Limits, plan: &mut Plan) {
    let size = s.width.size();
    let (rows, n, k) = (s.rows, s.n, s.k);
    let passes = size as u32; // 8-bit digits: one pass per byte of the key
    let chunks = n.div_ceil(TD_LONG_CHUNK as u64);
    let group = ((lim.l2_bytes / 2) / (n * size)).clamp(1, rows.min(65_535));
    let row_hist = passes as u64 * 256 * 4;
    plan.alloc(Buf::Hist, rows * row_hist, Init::Zeroed);
    // Every (row, chunk, bin) of a group is written by the last histogram pass before the
    // output pass reads it.
    plan.alloc(Buf::ChunkHist, group * chunks * 256 * 4, Init::Uninit);
    let mut row0 = 0u64;
    while row0 < rows {
        let g = group.min(rows - row0);
        let hist = Arg::Buf(Buf::Hist, row0 * row_hist);
        for pass in 0..passes {
            let hp = TdwLongHistParams {
                row0,
                n,
                k,
                pass,
                pad0: 0,
            };
            plan.launch(Launch::new(
                Kernel::LongHist(s.width),
                (chunks, g),
                0,
                vec![Arg::at(s.w), hist, Arg::at(Buf::ChunkHist)],
                Params::LongHist(hp),
            ));
        }
        let ap = TdwLongApplyParams {
            row0,
            n,
            k,
            elem_base: s.elem_base,
            draws: s.draws,
        };
        let args = vec![
            Arg::at(s.w),
            Arg::opt(s.vals),
            Arg::opt(s.out),
            Arg::opt(s.mask),
            hist,
            Arg::at(Buf::ChunkHist),
        ];
        plan.launch(Launch::new(
            Kernel::LongApply(s.width),
            (chunks, g),
            0,
            args,
            Params::LongApply(ap),
        ));
        row0 += g;
    }
}

/// The smallest block of `tdw5_block` (64 .. 1024 threads, TD5_NV 16-byte vectors each) that
/// holds a row of `n` elements of `width` (a row that starts mid-vector spans one vector
/// more); `None` past the largest.
pub(super) fn v5_block_threads(width: Width, n: u64) -> Option<u32> {
    let ve = 16 / width.size();
    let vectors = if n.is_multiple_of(ve) {
        n / ve
    } else {
        (n + 2 * ve - 2) / ve
    };
    [64u32, 128, 256, 512, TD5_MAX_THREADS]
        .into_iter()
        .find(|&t| t as u64 * TD5_NV as u64 >= vectors)
}

/// The Philox round keys of `seed` as the v5 kernels take them: round i's key words at 2 i
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

/// The v5 segment of a selection (addresses left for the executor).
fn v5_seg(s: &Select) -> (Td5Seg, SegArgs) {
    let seg = Td5Seg {
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

/// The v5 launches of a selection where the v5 kernels cover it (values out, no u8 mask,
/// aligned buffers; tiny rows, rows a v5 block holds, and longer rows on the long-row
/// kernels); false where they do not.
fn v5_rows(s: &Select, lim: &Limits, plan: &mut Plan) -> bool {
    if !s.aligned16 || s.mask.is_some() || s.out.is_none() || s.rows > i32::MAX as u64 {
        return false;
    }
    let (seg, args) = v5_seg(s);
    if s.n <= TD_TINY_ROW as u64 {
        let t = tiny5_threads(s.width);
        let p = Td5TinyParams {
            keys: round_keys(s.draws.seed),
            rows: s.rows,
            seg,
        };
        let blocks = s.rows.div_ceil(t as u64).min(lim.sms as u64 * 8);
        let k = Kernel::Tiny5(s.width);
        plan.launch(Launch::v5(
            k,
            blocks,
            t,
            Params::Tiny5(Box::new(p)),
            vec![args],
        ));
        return true;
    }
    let Some(t) = v5_block_threads(s.width, s.n) else {
        v5_long(s, lim, plan);
        return true;
    };
    let mut p = Td5Params {
        keys: round_keys(s.draws.seed),
        nseg: 1,
        ..Default::default()
    };
    p.seg[0] = seg;
    let k = Kernel::Block5(s.width, t);
    plan.launch(Launch::v5(
        k,
        s.rows,
        t,
        Params::Block5(Box::new(p)),
        vec![args],
    ));
    true
}

/// The shape of a v5 long-row selection (`kernels/weight_v5.cu`, "Long rows").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LongShape {
    /// Tiles of TD5_LONG_THREADS * TD5_LONG_NV vectors per row (the most a row that starts
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
    let chunks = vectors.div_ceil(TD5_LONG_THREADS as u64 * TD5_LONG_NV as u64);
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

/// Long rows on v5: the count / candidate passes, the resolve and the output pass
/// (`kernels/weight_v5.cu`, "Long rows"); with k = n only the output pass.
fn v5_long(s: &Select, lim: &Limits, plan: &mut Plan) {
    let sh = long_shape(s.width, s.n);
    let (seg, args) = v5_seg(s);
    let mut p = Td5LongParams {
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
    let t = TD5_LONG_THREADS;
    let state = Arg::at(Buf::LongState);
    plan.alloc(
        Buf::LongState,
        s.rows * sh.passes as u64 * TD5_LONG_STATE_BYTES as u64,
        Init::Zeroed,
    );
    if s.k < s.n {
        let comp = if s.width == Width::U64 { 16 } else { 8 };
        plan.alloc(
            Buf::Hist,
            s.rows * (sh.passes as u64 - 1) * TD5_BINS as u64 * 4,
            Init::Zeroed,
        );
        plan.alloc(Buf::Cand, s.rows * sh.cap as u64 * comp, Init::Uninit);
        for pass in 0..sh.passes {
            p.pass = pass;
            let mut l = Launch::v5(
                Kernel::LongCount5(s.width),
                blocks,
                t,
                Params::Long5(Box::new(p)),
                vec![args],
            );
            l.args = vec![Arg::at(Buf::Hist), state, Arg::at(Buf::Cand)];
            plan.launch(l);
        }
        let mut l = Launch::v5(
            Kernel::LongResolve5(s.width),
            s.rows,
            t,
            Params::Long5(Box::new(p)),
            vec![args],
        );
        l.args = vec![state, Arg::at(Buf::Cand)];
        plan.launch(l);
    }
    let mut l = Launch::v5(
        Kernel::LongApply5(s.width),
        blocks,
        t,
        Params::Long5(Box::new(p)),
        vec![args],
    );
    l.args = vec![state];
    plan.launch(l);
}
