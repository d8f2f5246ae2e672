//! N:M dropout: one pass of `kernels/nm.cu`, a thread per group.

use super::{Arg, Buf, Kernel, Launch, Limits, OpSpec, Params, Plan, Step};
use crate::cuda_params::{TdNmParams, TD_BLOCK};
use crate::op::Output;

/// The register-array sizes of the kernels: the smallest that holds `m` is launched.
pub(super) const MAXM: [u32; 4] = [4, 8, 16, 32];

/// N:M dropout of the whole op (`n:m` checked by the functions: `1 <= m <= 32`, `n <= m`,
/// the group axis a multiple of `m`).
pub(super) fn plan(spec: &OpSpec, n: u64, m: u64, lim: &Limits, plan: &mut Plan) {
    let numel = spec.d0 * spec.n;
    let out = (spec.output == Output::Values).then_some(Buf::Out);
    let mask = (spec.output == Output::Mask).then_some(Buf::Mask);
    let vals = spec.vals.then_some(Buf::Vals);
    if n == m || spec.draws.threshold == 0 {
        // Nothing is targeted or nothing dropped: the output is a copy.
        if let Some(to) = out {
            let from = vals.unwrap_or(Buf::W);
            let bytes = numel * spec.dtype.size();
            plan.steps.push(Step::Copy { from, to, bytes });
        }
        if let Some(buf) = mask {
            plan.steps.push(Step::Zero { buf, bytes: numel });
        }
        return;
    }
    let maxm = *MAXM
        .iter()
        .find(|&&x| x as u64 >= m)
        .expect("m <= 32, checked by the functions");
    let groups = numel / m;
    // A grid-stride loop: enough blocks to fill the device several times over.
    let grid = groups.div_ceil(TD_BLOCK as u64).min(lim.sms as u64 * 32);
    let args = vec![
        Arg::at(Buf::W),
        Arg::opt(vals),
        Arg::opt(out),
        Arg::opt(mask),
    ];
    let p = TdNmParams {
        groups,
        s: spec.nm_stride,
        m: m as u32,
        targeted: (m - n) as u32,
        draws: spec.draws,
    };
    plan.launch(Launch::new(
        Kernel::Nm(spec.dtype.width(), maxm),
        (grid, 1),
        0,
        args,
        Params::Nm(p),
    ));
}
