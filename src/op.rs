//! The op that the CPU and the CUDA paths both implement: what one application of targeted
//! dropout selects, draws and writes. `cpu.rs` and `cuda/` compute it; `custom_op.rs`
//! hands it to candle.

use crate::philox::Bernoulli;
use candle_core::Shape;

/// Which elements a targeted dropout targets: single weights, or whole units (filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropoutKind {
    /// The `floor(gamma * n)` smallest-magnitude weights of each filter.
    Weight,
    /// The `floor(gamma * d0)` filters with the smallest L2 norm.
    Unit,
    /// N:M: in every group of `m` consecutive weights along a filter's input axis (the last
    /// axis of `[out, in]`, the input channels of a convolution weight), the `m - n` with the
    /// smallest magnitude; pruning leaves at most `n` non-zeros per group (2:4 is the pattern
    /// of sparse tensor cores). `1 <= m <= 32`, `n <= m`.
    Nm {
        /// Non-zeros kept per group.
        n: usize,
        /// The group size.
        m: usize,
    },
}

/// What an op writes: the masked values, or a `u8` mask (1 = dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Values,
    Mask,
}

/// One application of targeted dropout: the selection, the draws and what to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetedOp {
    pub kind: DropoutKind,
    pub gamma: f64,
    pub draws: Bernoulli,
    pub output: Output,
    /// The draw index of element 0 (weight dropout): element i of row r draws at
    /// `elem_base + r * n + i`. 0 for a whole tensor; a shard of rows r0.. of a larger one
    /// has `r0 * n` (DESIGN.md, "Row shards").
    pub elem_base: u64,
}

impl TargetedOp {
    /// The op's name, for candle and for error messages.
    pub fn name(&self) -> &'static str {
        match (self.kind, self.output) {
            (DropoutKind::Weight, Output::Values) => "targeted-weight-dropout",
            (DropoutKind::Unit, Output::Values) => "targeted-unit-dropout",
            (DropoutKind::Weight, Output::Mask) => "targeted-weight-mask",
            (DropoutKind::Unit, Output::Mask) => "targeted-unit-mask",
            (DropoutKind::Nm { .. }, Output::Values) => "targeted-nm-dropout",
            (DropoutKind::Nm { .. }, Output::Mask) => "targeted-nm-mask",
        }
    }
}

/// `(d0, n)`: the number of filters and their length (DESIGN.md, "Filters").
pub(crate) fn filters(shape: &Shape) -> (usize, usize) {
    let dims = shape.dims();
    let numel = shape.elem_count();
    match dims {
        [] | [_] => (1, numel),
        [d0, ..] if *d0 == 0 => (0, 0),
        [d0, ..] => (*d0, numel / d0),
    }
}

/// `(outer, c, s)` of a shape: rank 1 `[c]` is `(1, c, 1)`, rank 2 `[out, in]` is
/// `(out, in, 1)`, rank >= 3 `[out, in, k..]` is `(out, in, product of k..)`. `None` for
/// rank 0.
pub(crate) fn nm_geometry(dims: &[usize]) -> Option<(usize, usize, usize)> {
    match dims {
        [] => None,
        [c] => Some((1, *c, 1)),
        [o, c] => Some((*o, *c, 1)),
        [o, c, rest @ ..] => Some((*o, *c, rest.iter().product())),
    }
}

/// The unit scores of a tensor: the squared L2 norm of each of its `d0` filters, in the
/// documented reduction order (DESIGN.md, "Targeted unit dropout", step 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnitScoresOp;
