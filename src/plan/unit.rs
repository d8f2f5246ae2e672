//! Unit dropout: the unit scores (`kernels/unit.cu`), the selection over them with the weight
//! kernels (one row of scores, a bit per unit out), and the output pass that drops whole
//! units: two reads of the weight and one write, plus the scores.

use super::weight::{select_rows, Select};
use super::{Arg, Buf, Dtype, Init, Kernel, Launch, Limits, OpSpec, Params, Plan};
use crate::cuda_params::{UnitApplyParams, UnitScoresParams, TD_BLOCK, TD_TINY_ROW};
use crate::op::Output;
use crate::select::targeted_count;

/// The scores of the `d0` units of `n` elements of [`Buf::W`] into [`Buf::Scores`].
pub(super) fn scores(dtype: Dtype, d0: u64, n: u64, lim: &Limits, plan: &mut Plan) {
    let (kernel, grid) = if n <= TD_TINY_ROW as u64 {
        (
            Kernel::UnitScoresTiny(dtype),
            d0.div_ceil(TD_BLOCK as u64).min(lim.sms as u64 * 8),
        )
    } else {
        (Kernel::UnitScoresBlock(dtype), d0.min(lim.sms as u64 * 8))
    };
    plan.launch(Launch::new(
        kernel,
        (grid, 1),
        0,
        vec![Arg::at(Buf::W), Arg::at(Buf::Scores)],
        Params::Scores(UnitScoresParams { units: d0, n }),
    ));
}

/// Unit dropout of the whole op: the dropped bit of each unit into [`Buf::UnitBits`], then
/// the output.
pub(super) fn plan(spec: &OpSpec, lim: &Limits, plan: &mut Plan) {
    let (d0, n) = (spec.d0, spec.n);
    plan.alloc(Buf::UnitBits, super::bits_bytes(d0), Init::Zeroed);
    let k = targeted_count(spec.gamma, d0 as usize) as u64;
    if k > 0 && spec.draws.threshold > 0 {
        // The scores are non-negative (or the canonical NaN): their bits order like the
        // magnitude keys, so the weight selection over one row of d0 scores, with draw index
        // = unit index, is the unit selection.
        let score = spec.dtype.score();
        plan.alloc(Buf::Scores, d0 * score.size(), Init::Zeroed);
        scores(spec.dtype, d0, n, lim, plan);
        let sel = Select {
            w: Buf::Scores,
            vals: None,
            out: None,
            mask: None,
            bits: Some(Buf::UnitBits),
            width: score.width(),
            rows: 1,
            n: d0,
            k,
            elem_base: 0,
            draws: spec.draws,
            // A buffer of the plan: aligned.
            aligned16: true,
        };
        select_rows(&sel, lim, plan);
    }
    let numel = d0 * n;
    let groups = numel.div_ceil(4);
    let grid = groups.div_ceil(TD_BLOCK as u64).min(lim.sms as u64 * 16);
    let args = vec![
        Arg::at(if spec.vals { Buf::Vals } else { Buf::W }),
        Arg::opt((spec.output == Output::Values).then_some(Buf::Out)),
        Arg::opt((spec.output == Output::Mask).then_some(Buf::Mask)),
        Arg::at(Buf::UnitBits),
    ];
    plan.launch(Launch::new(
        Kernel::UnitApply(spec.dtype.width()),
        (grid, 1),
        0,
        args,
        Params::UnitApply(UnitApplyParams { numel, n }),
    ));
}
