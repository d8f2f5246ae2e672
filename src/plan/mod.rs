//! The launch plan of the CUDA path: which kernels an op launches, with which grid, block,
//! dynamic shared memory, buffers and launch parameters, decided from the op, the shape, the
//! dtype and the device's limits alone. Pure Rust, compiled with or without the `cuda`
//! feature: the cudarc executor (`crate::cuda`) and the emulator (`crate::emulate`, feature
//! `emulate`) execute the very same plan.
//!
//! A plan is a list of buffers to allocate and a list of steps (launches, and the copies and
//! fills of the paths that launch nothing). Buffers are named by their role ([`Buf`]); an
//! executor binds the roles to memory: the op's input `w` (and the gradient `vals` of the
//! backward pass), its output, and the scratch buffers that the plan sizes.
//!
//! `weight.rs` plans weight dropout (the selection kernels by row length), `unit.rs` the
//! unit scores and unit dropout, `gpu.rs` the device limits of a GPU profile (what the
//! emulator runs with, and what the tests of the plan use).

#[cfg(any(test, feature = "emulate"))]
mod gpu;
mod nm;
mod unit;
mod weight;

#[cfg(any(test, feature = "emulate"))]
pub use gpu::Gpu;

use crate::cuda_params::{
    TdBlockParams, TdBwdParams, TdDraws, TdLongParams, TdNmParams, TdPackParams, TdTinyParams,
    UnitApplyParams, UnitScoresParams, TD_ALWAYS, TD_BLOCK, TD_GROUP, TD_MAX_ROW, TD_MAX_THREADS,
    TD_PACK_CHUNK, TD_TINY_ROW,
};
use crate::op::{filters, DropoutKind, Output, TargetedOp};
use candle_core::{bail, DType, Result, Shape};

/// The element types of the ops, and how the kernels see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dtype {
    F16,
    Bf16,
    F32,
    F64,
}

impl Dtype {
    /// The dtype of a candle tensor, or an error naming it.
    pub fn of(op: &str, dt: DType) -> Result<Dtype> {
        Ok(match dt {
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::Bf16,
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            other => bail!("{op}: unsupported dtype {other:?} (expected f16, bf16, f32 or f64)"),
        })
    }

    /// The raw-bits width the weight kernels take (f16 and bf16 share the 16-bit kernels).
    pub fn width(self) -> Width {
        match self {
            Dtype::F16 | Dtype::Bf16 => Width::U16,
            Dtype::F32 => Width::U32,
            Dtype::F64 => Width::U64,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        self.width().size()
    }

    /// The dtype of the unit scores: f32 for 16- and 32-bit input, f64 for f64.
    pub fn score(self) -> Dtype {
        match self {
            Dtype::F64 => Dtype::F64,
            _ => Dtype::F32,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }
}

/// Raw bits of 2, 4 or 8 bytes: the weight kernels' element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Width {
    U16,
    U32,
    U64,
}

impl Width {
    /// The three widths.
    #[cfg(any(test, feature = "cuda"))]
    pub const ALL: [Width; 3] = [Width::U16, Width::U32, Width::U64];

    pub fn size(self) -> u64 {
        match self {
            Width::U16 => 2,
            Width::U32 => 4,
            Width::U64 => 8,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Width::U16 => "u16",
            Width::U32 => "u32",
            Width::U64 => "u64",
        }
    }
}

/// A kernel of `kernels/weight.cu`, `kernels/unit.cu` or `kernels/nm.cu`, named by what it
/// serves (`td_<path>_<width or dtype>`, `td_bwd_*` for the backward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// `td_tiny_<w>_t<T>`: rows of at most TD_TINY_ROW, tiles of [`tiny_threads`] rows.
    Tiny(Width),
    /// `td_block_<w>_t<T>`: one block of this many threads (64 .. 1024) per row, the row in
    /// registers; many tensors per launch.
    Block(Width, u32),
    /// `td_long_count_<w>`: long rows, the count / candidate passes.
    LongCount(Width),
    /// `td_long_resolve_<w>`: long rows, the cut from each row's candidates.
    LongResolve(Width),
    /// `td_long_apply_<w>`: long rows, the output pass.
    LongApply(Width),
    /// `td_bwd_<w>`: the backward from a kept bit mask.
    Bwd(Width),
    /// `td_mask_u8`: the u8 flags of a mask output from the bit mask.
    MaskU8,
    /// `td_pack_count`: the dropped elements per chunk of a bit mask.
    PackCount,
    /// `td_pack_<w>`: the dropped elements' values, packed.
    Pack(Width),
    /// `td_unpack_<w>`: packed values back into their elements.
    Unpack(Width),
    /// `td_unit_scores_tiny_<dtype>`: unit scores, a thread per unit (n <= TD_TINY_ROW).
    UnitScoresTiny(Dtype),
    /// `td_unit_scores_block_<dtype>`: unit scores, a block per unit.
    UnitScoresBlock(Dtype),
    /// `td_unit_apply_<w>`: the output of unit dropout from the units' bit mask.
    UnitApply(Width),
    /// `td_nm_<w>_m<maxm>`: N:M dropout with register arrays for groups of up to `maxm` (4,
    /// 8, 16 or 32).
    Nm(Width, u32),
}

impl Kernel {
    /// Its `extern "C"` name in the fatbin.
    pub fn name(self) -> String {
        match self {
            Kernel::Tiny(w) => format!("td_tiny_{}_t{}", w.suffix(), tiny_threads(w)),
            Kernel::Block(w, t) => format!("td_block_{}_t{t}", w.suffix()),
            Kernel::LongCount(w) => format!("td_long_count_{}", w.suffix()),
            Kernel::LongResolve(w) => format!("td_long_resolve_{}", w.suffix()),
            Kernel::LongApply(w) => format!("td_long_apply_{}", w.suffix()),
            Kernel::Bwd(w) => format!("td_bwd_{}", w.suffix()),
            Kernel::MaskU8 => "td_mask_u8".to_string(),
            Kernel::PackCount => "td_pack_count".to_string(),
            Kernel::Pack(w) => format!("td_pack_{}", w.suffix()),
            Kernel::Unpack(w) => format!("td_unpack_{}", w.suffix()),
            Kernel::UnitScoresTiny(d) => format!("td_unit_scores_tiny_{}", d.suffix()),
            Kernel::UnitScoresBlock(d) => format!("td_unit_scores_block_{}", d.suffix()),
            Kernel::UnitApply(w) => format!("td_unit_apply_{}", w.suffix()),
            Kernel::Nm(w, maxm) => format!("td_nm_{}_m{maxm}", w.suffix()),
        }
    }

    /// The fatbin (`kernels/<file>.cu`) that holds it.
    #[cfg(feature = "cuda")]
    pub fn file(self) -> &'static str {
        match self {
            Kernel::UnitScoresTiny(_) | Kernel::UnitScoresBlock(_) | Kernel::UnitApply(_) => "unit",
            Kernel::Nm(..) => "nm",
            _ => "weight",
        }
    }

    /// Every kernel that the library launches.
    #[cfg(any(test, feature = "cuda"))]
    pub fn all() -> Vec<Kernel> {
        let mut v = Vec::new();
        for w in Width::ALL {
            for t in BLOCK_THREADS {
                v.push(Kernel::Block(w, t));
            }
            v.extend([
                Kernel::Tiny(w),
                Kernel::LongCount(w),
                Kernel::LongResolve(w),
                Kernel::LongApply(w),
                Kernel::Bwd(w),
                Kernel::Pack(w),
                Kernel::Unpack(w),
                Kernel::UnitApply(w),
            ]);
            v.extend(nm::MAXM.map(|maxm| Kernel::Nm(w, maxm)));
        }
        v.extend([Kernel::MaskU8, Kernel::PackCount]);
        for d in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::F64] {
            v.extend([Kernel::UnitScoresTiny(d), Kernel::UnitScoresBlock(d)]);
        }
        v
    }
}

/// The block sizes of `td_block_*` (TD_NV 16-byte vectors per thread).
pub(crate) const BLOCK_THREADS: [u32; 5] = [64, 128, 256, 512, TD_MAX_THREADS];

/// What the plan needs to know about a device: its multiprocessors (the grids of the
/// grid-stride kernels). The kernels use no dynamic shared memory, so nothing else of the
/// device changes a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub sms: u32,
}

/// A buffer of a plan, by its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Buf {
    /// The op's input, `numel` elements (read only).
    W,
    /// The values to mask in the backward pass (the gradient), `numel` elements (read only).
    Vals,
    /// The masked values, `numel` elements of the input's dtype.
    Out,
    /// The u8 mask, `numel` flags.
    Mask,
    /// The unit scores, `d0` of the score dtype.
    Scores,
    /// The packed bit mask of the dropped units (bit `u % 32` of word `u / 32`).
    UnitBits,
    /// A 16-byte aligned copy of an unaligned input view `w` (the kernels read by 16-byte
    /// vectors).
    WAligned,
    /// A 16-byte aligned copy of an unaligned gradient view.
    ValsAligned,
    /// The packed bit mask of the dropped elements (bit `e % 32` of u32 word `e / 32`,
    /// `ceil(numel / 32)` words): what a forward keeps for the backward pass.
    Bits,
    /// The dropped elements of each chunk of TD_PACK_CHUNK elements of a bit mask (u32).
    Counts,
    /// The exclusive prefix sums of [`Buf::Counts`] (u64): where each chunk's values start.
    Offsets,
    /// The dropped elements' original values, packed in element order.
    Held,
    /// The long-row kernels' first-digit histograms: `rows * (passes - 1) * TD_RADIX_BINS`
    /// u32.
    Hist,
    /// The long-row kernels' row states: `rows * passes` records of TD_LONG_STATE_BYTES.
    LongState,
    /// The long-row kernels' candidate composites: `rows * cap` of 8 (16 for f64) bytes.
    Cand,
}

/// How a buffer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Init {
    Zeroed,
    /// Every byte is written before it is read (the emulator poisons it).
    Uninit,
}

/// A buffer the executor allocates (the op's output among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Alloc {
    pub buf: Buf,
    pub bytes: u64,
    pub init: Init,
}

/// Threads (rows per tile) of `td_tiny_*`: 128 for u64 (32 KB of tile), 256 otherwise.
pub(crate) fn tiny_threads(w: Width) -> u32 {
    match w {
        Width::U64 => 128,
        _ => 256,
    }
}

/// A pointer argument of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A buffer, from this byte on.
    Buf(Buf, u64),
    /// The null pointer (an absent optional buffer).
    Null,
}

impl Arg {
    fn at(buf: Buf) -> Arg {
        Arg::Buf(buf, 0)
    }

    fn opt(buf: Option<Buf>) -> Arg {
        buf.map_or(Arg::Null, Arg::at)
    }
}

/// The launch parameters (the kernel's last argument, by value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Params {
    Scores(UnitScoresParams),
    UnitApply(UnitApplyParams),
    Nm(TdNmParams),
    /// The device addresses of its segments are set by the executor from [`Launch::segs`]
    /// (boxed: the table of segments is 4 KB).
    Block(Box<TdBlockParams>),
    /// As above, one segment (boxed: 152 bytes).
    Tiny(Box<TdTinyParams>),
    /// As above, one segment (boxed: 176 bytes).
    Long(Box<TdLongParams>),
    /// The element count of `td_bwd_*` and `td_mask_u8`.
    Numel(TdBwdParams),
    /// The elements and chunks of `td_pack_count`, `td_pack_*` and `td_unpack_*`.
    Pack(TdPackParams),
}

impl Params {
    /// Sets the device addresses of segment `i` (the selection kernels take their buffers in
    /// the parameters, so that one launch serves many tensors).
    pub fn set_seg(&mut self, i: usize, a: SegAddrs) {
        let seg = match self {
            Params::Block(p) => &mut p.seg[i],
            Params::Tiny(p) => &mut p.seg,
            Params::Long(p) => &mut p.seg,
            _ => return,
        };
        seg.w = a.w;
        seg.vals = a.vals;
        seg.out = a.out;
        seg.bits = a.bits;
    }
}

/// The buffers of one segment of a selection launch, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegArgs {
    pub w: Arg,
    pub vals: Arg,
    pub out: Arg,
    pub bits: Arg,
}

/// [`SegArgs`] resolved to device addresses (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegAddrs {
    pub w: u64,
    pub vals: u64,
    pub out: u64,
    pub bits: u64,
}

impl SegArgs {
    /// The addresses of the four buffers through `addr`.
    pub fn resolve(&self, mut addr: impl FnMut(Arg) -> Result<u64>) -> Result<SegAddrs> {
        Ok(SegAddrs {
            w: addr(self.w)?,
            vals: addr(self.vals)?,
            out: addr(self.out)?,
            bits: addr(self.bits)?,
        })
    }
}

/// One kernel launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub kernel: Kernel,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes.
    pub smem: u32,
    /// The pointer arguments, in the kernel's order; [`Launch::params`] follows them.
    pub args: Vec<Arg>,
    pub params: Params,
    /// The buffers of the segments of a selection launch (their addresses go into the
    /// params).
    pub segs: Vec<SegArgs>,
}

impl Launch {
    /// A launch of TD_BLOCK threads per block (every kernel of this crate); an empty grid
    /// dimension is launched as 1, as the kernels expect.
    fn new(kernel: Kernel, grid: (u64, u64), smem: u64, args: Vec<Arg>, params: Params) -> Self {
        Launch {
            kernel,
            grid: (grid.0.max(1) as u32, grid.1.max(1) as u32, 1),
            block: (TD_BLOCK, 1, 1),
            smem: smem as u32,
            args,
            params,
            segs: Vec::new(),
        }
    }

    /// A launch of a selection kernel: `threads` per block, no dynamic shared memory, the buffers
    /// of each segment in `segs` (the kernel takes only the params).
    fn with_segs(
        kernel: Kernel,
        blocks: u64,
        threads: u32,
        params: Params,
        segs: Vec<SegArgs>,
    ) -> Self {
        Launch {
            kernel,
            grid: (blocks.max(1) as u32, 1, 1),
            block: (threads, 1, 1),
            smem: 0,
            args: Vec::new(),
            params,
            segs,
        }
    }
}

/// One step of a plan, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Launch(Launch),
    /// `bytes` bytes from one buffer to another.
    Copy {
        from: Buf,
        to: Buf,
        bytes: u64,
    },
    /// A buffer set to zero bytes.
    Zero {
        buf: Buf,
        bytes: u64,
    },
}

/// What an op runs: the buffers, the steps, and which buffer is the result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    pub allocs: Vec<Alloc>,
    pub steps: Vec<Step>,
}

impl Plan {
    fn alloc(&mut self, buf: Buf, bytes: u64, init: Init) {
        self.allocs.push(Alloc { buf, bytes, init });
    }

    fn launch(&mut self, l: Launch) {
        self.steps.push(Step::Launch(l));
    }

    /// The launches, in order.
    #[cfg(test)]
    pub fn launches(&self) -> impl Iterator<Item = &Launch> {
        self.steps.iter().filter_map(|s| match s {
            Step::Launch(l) => Some(l),
            _ => None,
        })
    }

    /// Whether a step of the plan reads or writes `buf`.
    pub fn uses(&self, buf: Buf) -> bool {
        let arg = |a: &Arg| matches!(a, Arg::Buf(b, _) if *b == buf);
        self.steps.iter().any(|s| match s {
            Step::Launch(l) => {
                l.args.iter().any(arg)
                    || l.segs
                        .iter()
                        .any(|g| arg(&g.w) || arg(&g.vals) || arg(&g.out) || arg(&g.bits))
            }
            Step::Copy { from, to, .. } => *from == buf || *to == buf,
            Step::Zero { buf: b, .. } => *b == buf,
        })
    }

    /// The bytes of a buffer the plan allocates.
    #[cfg(test)]
    pub fn bytes(&self, buf: Buf) -> Option<u64> {
        self.allocs.iter().find(|a| a.buf == buf).map(|a| a.bytes)
    }
}

/// One application of [`TargetedOp`] as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpSpec {
    /// The op's name, for errors.
    pub name: &'static str,
    pub kind: DropoutKind,
    pub output: Output,
    pub dtype: Dtype,
    /// Filters and their length (DESIGN.md, "Filters").
    pub d0: u64,
    pub n: u64,
    /// N:M: the distance between the elements of a group (the product of the dimensions
    /// after the group axis; DESIGN.md, "N:M targeted dropout").
    pub nm_stride: u64,
    pub gamma: f64,
    pub elem_base: u64,
    pub draws: TdDraws,
    /// Whether the values come from [`Buf::Vals`] (the backward pass) rather than `w`.
    pub vals: bool,
    /// Whether `w` (and the values) start at a 16-byte aligned address, as the selection
    /// kernels need (an unaligned view is copied to an aligned buffer first); false until the
    /// executor, which knows the addresses, says so.
    pub aligned16: bool,
    /// Whether to keep the packed bit mask of the dropped elements ([`Buf::Bits`]) for the
    /// backward pass, where the kernel serving the op writes one (weight dropout);
    /// a plan without it leaves the backward to recompute the selection.
    pub bits: bool,
}

impl OpSpec {
    /// The spec of `op` on a contiguous tensor of `shape` and `dtype`.
    pub fn new(op: &TargetedOp, dtype: Dtype, shape: &Shape, vals: bool) -> OpSpec {
        let (d0, n) = filters(shape);
        OpSpec {
            name: op.name(),
            kind: op.kind,
            output: op.output,
            dtype,
            d0: d0 as u64,
            n: n as u64,
            nm_stride: crate::op::nm_geometry(shape.dims()).map_or(1, |(_, _, s)| s as u64),
            gamma: op.gamma,
            elem_base: op.elem_base,
            draws: TdDraws {
                seed: op.draws.seed,
                offset: op.draws.offset,
                threshold: op.draws.threshold.min(TD_ALWAYS),
                pad0: 0,
            },
            vals,
            aligned16: false,
            bits: false,
        }
    }

    fn numel(&self) -> u64 {
        self.d0 * self.n
    }

    /// The row limit of the kernels, checked before anything is loaded, allocated or
    /// launched: an error naming the limit.
    pub fn check(&self) -> Result<()> {
        match self.kind {
            DropoutKind::Weight => {
                check_row(self.name, "a filter", self.n)?;
                // td_block runs a block per row, at most 2^31 - 1 blocks a launch.
                if self.n > TD_TINY_ROW as u64
                    && self.d0 > i32::MAX as u64
                    && weight::block_threads(self.dtype.width(), self.n).is_some()
                {
                    bail!(
                        "{} on CUDA: {} filters of {} elements; the CUDA kernels take at most \
                         2^31 - 1 = {} filters of this length",
                        self.name,
                        self.d0,
                        self.n,
                        i32::MAX
                    )
                }
                Ok(())
            }
            DropoutKind::Unit => check_row(
                self.name,
                "the unit scores (one per filter) are a row",
                self.d0,
            ),
            // A group is at most 32 elements, ranked in registers: no row limit.
            DropoutKind::Nm { .. } => Ok(()),
        }
    }
}

/// The rows of a selection are at most TD_MAX_ROW elements: an error naming the limit.
fn check_row(op: &str, what: &str, n: u64) -> Result<()> {
    if n > TD_MAX_ROW as u64 {
        bail!(
            "{op} on CUDA: {what} of {n} elements; the CUDA kernels select within at most \
             2^32 - 1 = {TD_MAX_ROW} elements"
        )
    }
    Ok(())
}

/// The plan of a [`TargetedOp`]: its output ([`Buf::Out`] for values, [`Buf::Mask`] for a
/// mask, allocated uninitialised: every element is written) and what computes it.
pub(crate) fn forward(spec: &OpSpec, lim: &Limits) -> Result<Plan> {
    spec.check()?;
    let mut plan = Plan::default();
    let numel = spec.numel();
    let result = match spec.output {
        Output::Values => Buf::Out,
        Output::Mask => Buf::Mask,
    };
    let size = match spec.output {
        Output::Values => spec.dtype.size(),
        Output::Mask => 1,
    };
    plan.alloc(result, numel * size, Init::Uninit);
    if numel == 0 {
        return Ok(plan);
    }
    match spec.kind {
        DropoutKind::Weight => weight::plan(spec, lim, &mut plan),
        DropoutKind::Unit => unit::plan(spec, lim, &mut plan),
        DropoutKind::Nm { n, m } => nm::plan(spec, n as u64, m as u64, lim, &mut plan),
    }
    if plan.uses(Buf::Bits) {
        // Every bit of an element is written (the kernels merge the words rows share; the
        // paths without a selection zero it); the bits past numel are never read.
        plan.alloc(Buf::Bits, bits_bytes(numel), Init::Uninit);
    }
    Ok(plan)
}

/// Bytes of a packed bit mask of `numel` elements: `ceil(numel / 32)` u32 words.
pub(crate) fn bits_bytes(numel: u64) -> u64 {
    numel.div_ceil(32) * 4
}

/// The backward pass from a kept bit mask: [`Buf::Out`] = [`Buf::Vals`] (the gradient) with
/// the elements whose bit is set in [`Buf::Bits`] zeroed, one read of each and one write
/// (`td_bwd_*`, no selection). The gradient and the output must be 16-byte aligned.
pub(crate) fn backward_bits(dtype: Dtype, numel: u64, lim: &Limits) -> Plan {
    let mut plan = Plan::default();
    plan.alloc(Buf::Out, numel * dtype.size(), Init::Uninit);
    if numel == 0 {
        return plan;
    }
    let w = dtype.width();
    let vectors = numel / (16 / w.size());
    let blocks = vectors
        .div_ceil(TD_BLOCK as u64)
        .min(lim.sms as u64 * 16)
        .max(1);
    plan.launch(Launch::new(
        Kernel::Bwd(w),
        (blocks, 1),
        0,
        vec![Arg::at(Buf::Vals), Arg::at(Buf::Out), Arg::at(Buf::Bits)],
        Params::Numel(TdBwdParams { numel }),
    ));
    plan
}

/// Chunks of TD_PACK_CHUNK elements of a bit mask of `numel` elements.
pub(crate) fn pack_chunks(numel: u64) -> u64 {
    numel.div_ceil(TD_PACK_CHUNK as u64)
}

fn pack_launch(kernel: Kernel, numel: u64, lim: &Limits, args: Vec<Arg>) -> Launch {
    let chunks = pack_chunks(numel);
    Launch::new(
        kernel,
        (chunks.min(lim.sms as u64 * 16), 1),
        0,
        args,
        Params::Pack(TdPackParams { numel, chunks }),
    )
}

/// The first half of holding a weight's dropped values on a device: the dropped elements of
/// each chunk of [`Buf::Bits`] into [`Buf::Counts`] (the host reads them back, sums them and
/// sizes [`pack`]'s buffer: the one device-to-host read of a `VarMapDropout` step).
pub(crate) fn pack_counts(numel: u64, lim: &Limits) -> Plan {
    let mut plan = Plan::default();
    plan.alloc(Buf::Counts, pack_chunks(numel) * 4, Init::Uninit);
    if numel > 0 {
        let args = vec![Arg::at(Buf::Bits), Arg::at(Buf::Counts)];
        plan.launch(pack_launch(Kernel::PackCount, numel, lim, args));
    }
    plan
}

/// The second half: the `held` dropped elements of [`Buf::W`] (the elements whose bit is
/// set in [`Buf::Bits`], chunk `c`'s from [`Buf::Offsets`]`[c]` on) packed into
/// [`Buf::Held`].
pub(crate) fn pack(dtype: Dtype, numel: u64, held: u64, lim: &Limits) -> Plan {
    let mut plan = Plan::default();
    plan.alloc(Buf::Held, held * dtype.size(), Init::Uninit);
    if held > 0 {
        let args = vec![
            Arg::at(Buf::W),
            Arg::at(Buf::Bits),
            Arg::at(Buf::Offsets),
            Arg::at(Buf::Held),
        ];
        plan.launch(pack_launch(Kernel::Pack(dtype.width()), numel, lim, args));
    }
    plan
}

/// The weight back from [`pack`], in place: the elements of [`Buf::Out`] (the variable's
/// storage, holding the dropped weight) whose bit is set taken from [`Buf::Held`] in order;
/// only those elements are written.
pub(crate) fn unpack(dtype: Dtype, numel: u64, held: u64, lim: &Limits) -> Plan {
    let mut plan = Plan::default();
    if held > 0 {
        let args = vec![
            Arg::at(Buf::Bits),
            Arg::at(Buf::Offsets),
            Arg::at(Buf::Held),
            Arg::at(Buf::Out),
        ];
        plan.launch(pack_launch(Kernel::Unpack(dtype.width()), numel, lim, args));
    }
    plan
}

/// The exclusive prefix sums of the chunk counts of [`pack_counts`] and their total.
pub(crate) fn pack_offsets(counts: &[u32]) -> (Vec<u64>, u64) {
    let mut total = 0u64;
    let offsets = counts
        .iter()
        .map(|&c| {
            let at = total;
            total += c as u64;
            at
        })
        .collect();
    (offsets, total)
}

/// The launches of a grouped call ([`group`]): each a `td_block` launch whose segment `j`
/// belongs to item `items[j]` (its buffers are that item's roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grouped {
    pub launch: Launch,
    pub items: Vec<usize>,
}

/// One launch for many tensors: the `td_block` launches of `plans` (one segment each, the
/// plans of one call's items) merged by kernel width and seed into launches of up to
/// TD_GROUP segments (the segment table travels by value in the launch parameters: no copy
/// to the device), each with the block size of its longest row. A merged launch leaves its
/// item's plan; every other step stays there (tiny rows, long rows, copies), and the items'
/// buffers are theirs alone, so the order of execution does not change a bit.
pub(crate) fn group(plans: &mut [Plan]) -> Vec<Grouped> {
    // Taken from the plans: (width, round keys) -> (item, launch), in item order.
    type Key = (Width, [u32; 20]);
    let mut by_key: Vec<(Key, Vec<(usize, Launch)>)> = Vec::new();
    for (i, plan) in plans.iter_mut().enumerate() {
        let one = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Launch(l) if matches!(l.kernel, Kernel::Block(..)) && l.segs.len() == 1));
        // Only a launch that is its plan's first step: the grouped launches run before every
        // plan's other steps, so a launch after a copy (an unaligned input's) stays put.
        let Some(at) = one.filter(|&at| at == 0) else {
            continue;
        };
        let Step::Launch(l) = plan.steps.remove(at) else {
            unreachable!("matched a launch")
        };
        let (Kernel::Block(w, _), Params::Block(p)) = (l.kernel, &l.params) else {
            unreachable!("matched a block launch")
        };
        let key = (w, p.keys);
        match by_key.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((i, l)),
            None => by_key.push((key, vec![(i, l)])),
        }
    }
    let mut out = Vec::new();
    for ((w, keys), launches) in by_key {
        let mut cur: Option<(Grouped, TdBlockParams, u64, u32)> = None;
        for (i, l) in launches {
            let Params::Block(p) = &l.params else {
                unreachable!("block launches only")
            };
            let Kernel::Block(_, t) = l.kernel else {
                unreachable!("block launches only")
            };
            let rows = l.grid.0 as u64;
            // A launch's grid (and a segment's first block) stays below 2^31 blocks.
            let full = cur.as_ref().is_some_and(|(_, gp, blocks, _)| {
                gp.nseg as usize == TD_GROUP as usize || blocks + rows > i32::MAX as u64
            });
            if full {
                out.push(finish_group(w, cur.take().expect("full implies a group")));
            }
            let (g, gp, blocks, threads) = cur.get_or_insert_with(|| {
                let gp = TdBlockParams {
                    keys,
                    ..Default::default()
                };
                let g = Grouped {
                    launch: Launch::with_segs(
                        Kernel::Block(w, t),
                        0,
                        t,
                        Params::Block(Box::default()),
                        Vec::new(),
                    ),
                    items: Vec::new(),
                };
                (g, gp, 0, t)
            });
            let mut seg = p.seg[0];
            seg.first_block = *blocks as u32;
            gp.seg[gp.nseg as usize] = seg;
            gp.nseg += 1;
            *blocks += rows;
            *threads = (*threads).max(t);
            g.launch.segs.push(l.segs[0]);
            g.items.push(i);
        }
        if let Some(c) = cur {
            out.push(finish_group(w, c));
        }
    }
    out
}

/// A grouped launch with its table, grid and block size.
fn finish_group(
    w: Width,
    (mut g, p, blocks, threads): (Grouped, TdBlockParams, u64, u32),
) -> Grouped {
    g.launch.kernel = Kernel::Block(w, threads);
    g.launch.grid = (blocks as u32, 1, 1);
    g.launch.block = (threads, 1, 1);
    g.launch.params = Params::Block(Box::new(p));
    g
}

/// The plan of the unit scores of `d0` filters of `n` elements: [`Buf::Scores`] (zeroed,
/// so that an empty filter scores 0).
pub(crate) fn unit_scores(dtype: Dtype, d0: u64, n: u64, lim: &Limits) -> Plan {
    let mut plan = Plan::default();
    plan.alloc(Buf::Scores, d0 * dtype.score().size(), Init::Zeroed);
    if d0 > 0 && n > 0 {
        unit::scores(dtype, d0, n, lim, &mut plan);
    }
    plan
}

#[cfg(test)]
mod tests;
