//! The first call of every sharded op: one small all-reduce that gathers every rank's
//! arguments (a fixed-size row of f64 per rank, whatever the arguments are), and the checks
//! that every rank then runs on the same table, so that all ranks reach the same verdict:
//! the same error on every rank (naming each rank's value), or all go on to the same sequence
//! of collective calls. A rank never fails alone before the gather: that would hang the others.

use super::{Collective, Shard, ShardDim};
use candle_core::{bail, DType, Device, Result, Tensor};

/// The op of a sharded call, as it travels in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardOp {
    WeightDropout,
    PruneWeights,
    UnitDropout,
    PruneUnits,
    NmDropout,
    PruneNm,
}

impl ShardOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ShardOp::WeightDropout => "targeted_weight_dropout_sharded",
            ShardOp::PruneWeights => "prune_weights_sharded",
            ShardOp::UnitDropout => "targeted_unit_dropout_sharded",
            ShardOp::PruneUnits => "prune_units_sharded",
            ShardOp::NmDropout => "targeted_nm_dropout_sharded",
            ShardOp::PruneNm => "prune_nm_sharded",
        }
    }

    fn id(self) -> f64 {
        1.0 + self as u8 as f64
    }

    fn is_nm(self) -> bool {
        matches!(self, ShardOp::NmDropout | ShardOp::PruneNm)
    }
}

/// One rank's arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Args {
    pub op: ShardOp,
    /// `(gamma, alpha)`; for N:M gamma is unused (0) and `nm` holds `(n, m)`.
    pub gamma: f64,
    pub alpha: f64,
    pub seed: u64,
    pub offset: u64,
    pub nm: (usize, usize),
}

const FIELDS: usize = 20;

fn dtype_id(dt: DType) -> f64 {
    match dt {
        DType::F16 => 1.0,
        DType::BF16 => 2.0,
        DType::F32 => 3.0,
        DType::F64 => 4.0,
        _ => 0.0,
    }
}

fn dtype_name(id: f64) -> &'static str {
    match id as u32 {
        1 => "f16",
        2 => "bf16",
        3 => "f32",
        4 => "f64",
        _ => "not f16, bf16, f32 or f64",
    }
}

/// The row of one rank: every value exact in f64 (shapes below 2^53, seeds in halves).
fn row(w: &Tensor, a: &Args, s: &Shard, world: usize) -> [f64; FIELDS] {
    let dims = w.dims();
    let (d0, d1) = match dims {
        [a, b] => (*a as f64, *b as f64),
        _ => (0.0, 0.0),
    };
    // `+ 0.0`: -0.0 becomes +0.0, as the sum over the ranks would make it anyway.
    [
        a.op.id(),
        dtype_id(w.dtype()),
        dims.len() as f64,
        d0,
        d1,
        match s.dim {
            ShardDim::Rows => 0.0,
            ShardDim::Cols => 1.0,
        },
        s.start as f64,
        s.full.0 as f64,
        s.full.1 as f64,
        a.gamma + 0.0,
        a.alpha + 0.0,
        (a.seed & 0xffff_ffff) as f64,
        (a.seed >> 32) as f64,
        (a.offset & 0xffff_ffff) as f64,
        (a.offset >> 32) as f64,
        a.nm.0 as f64,
        a.nm.1 as f64,
        world as f64,
        if w.device().is_cpu() { 0.0 } else { 1.0 },
        1.0,
    ]
}

/// What every rank knows after the check: each rank's shard, in rank order.
#[derive(Debug, Clone)]
pub(crate) struct Agreed {
    /// Each rank's `(start, len)` along the shard dimension.
    pub shards: Vec<(usize, usize)>,
}

impl Agreed {
    /// The ranks in the order of their shards' starts (ties by length, then rank).
    pub fn in_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        order.sort_by_key(|&r| (self.shards[r].0, self.shards[r].1, r));
        order
    }
}

fn each<T: std::fmt::Display>(v: impl Iterator<Item = T>) -> String {
    v.enumerate()
        .map(|(r, x)| format!("rank {r}: {x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gathers every rank's arguments with one all-reduce of `world x 20` f64 and checks them.
/// Every rank gets the same verdict; an error names the values of every rank.
pub(crate) fn check(w: &Tensor, a: &Args, s: &Shard, comm: &dyn Collective) -> Result<Agreed> {
    let name = a.op.name();
    let (rank, world) = (comm.rank(), comm.world_size());
    if world == 0 || rank >= world {
        bail!("{name}: the collective says rank {rank} of a world of {world}")
    }
    let mut table = vec![0f64; world * FIELDS];
    table[rank * FIELDS..(rank + 1) * FIELDS].copy_from_slice(&row(w, a, s, world));
    let device = match w.device() {
        Device::Cpu => Device::Cpu,
        d => d.clone(),
    };
    let t = Tensor::from_vec(table, (world, FIELDS), &Device::Cpu)?.to_device(&device)?;
    let t = comm.all_reduce_sum(&t)?;
    let table: Vec<Vec<f64>> = t.to_device(&Device::Cpu)?.to_vec2()?;
    verdict(name, a, &table)
}

/// The checks, the same on every rank (they read only the table).
fn verdict(name: &str, a: &Args, t: &[Vec<f64>]) -> Result<Agreed> {
    let world = t.len();
    let col = |f: usize| t.iter().map(move |r| r[f]);
    // A rank that did not fill its row (a collective that does not sum, or a rank that
    // called with another world size).
    if let Some(r) = (0..world).find(|&r| t[r][19] != 1.0 || t[r][17] != world as f64) {
        bail!(
            "{name}: the check's all-reduce came back without rank {r}'s arguments (world sizes seen by the ranks: {}; the collective has {world} ranks)",
            each(col(17))
        )
    }
    // The same op on every rank: otherwise the calls that follow would not match.
    if col(0).any(|x| x != t[0][0]) {
        let ops = [
            "?",
            "targeted_weight_dropout_sharded",
            "prune_weights_sharded",
            "targeted_unit_dropout_sharded",
            "prune_units_sharded",
            "targeted_nm_dropout_sharded",
            "prune_nm_sharded",
        ];
        bail!(
            "{name}: the ranks called different ops ({})",
            each(col(0).map(|x| ops[(x as usize).min(6)]))
        )
    }
    // Each rank's own arguments.
    for (r, v) in t.iter().enumerate() {
        if v[1] == 0.0 {
            bail!(
                "{name}: rank {r}: w must be f16, bf16, f32 or f64 (dtypes: {})",
                each(col(1).map(dtype_name))
            )
        }
        if v[2] != 2.0 {
            bail!(
                "{name}: rank {r}: w must be a rank-2 weight [out, in] (a convolution's flattened to [out, in * kh * kw]), got rank {} (ranks of w: {})",
                v[2],
                each(col(2))
            )
        }
        if a.op.is_nm() {
            let (n, m) = (v[15], v[16]);
            if m == 0.0 || m > 32.0 {
                bail!(
                    "{name}: rank {r}: m = {m} is not a group size in 1..=32 (m on every rank: {})",
                    each(col(16))
                )
            }
            if n > m {
                bail!(
                    "{name}: rank {r}: n = {n} is larger than m = {m} (n on every rank: {})",
                    each(col(15))
                )
            }
        } else if !(0.0..=1.0).contains(&v[9]) {
            bail!(
                "{name}: rank {r}: gamma must be a number in [0, 1], got {} (gamma on every rank: {})",
                v[9],
                each(col(9))
            )
        }
        if !(0.0..=1.0).contains(&v[10]) {
            bail!(
                "{name}: rank {r}: alpha must be a number in [0, 1], got {} (alpha on every rank: {})",
                v[10],
                each(col(10))
            )
        }
    }
    // Agreement.
    let seed = |v: &Vec<f64>| v[11] as u64 | (v[12] as u64) << 32;
    let offset = |v: &Vec<f64>| v[13] as u64 | (v[14] as u64) << 32;
    let agree = |what: &str, f: usize| -> Result<()> {
        if col(f).any(|x| x != t[0][f]) {
            bail!("{name}: the ranks disagree on {what} ({})", each(col(f)))
        }
        Ok(())
    };
    agree("gamma", 9)?;
    agree("alpha", 10)?;
    if t.iter().any(|v| seed(v) != seed(&t[0])) {
        bail!(
            "{name}: the ranks disagree on seed ({})",
            each(t.iter().map(seed))
        )
    }
    if t.iter().any(|v| offset(v) != offset(&t[0])) {
        bail!(
            "{name}: the ranks disagree on offset ({})",
            each(t.iter().map(offset))
        )
    }
    agree("n", 15)?;
    agree("m", 16)?;
    if col(1).any(|x| x != t[0][1]) {
        bail!(
            "{name}: the ranks' weights differ in dtype ({})",
            each(col(1).map(dtype_name))
        )
    }
    if col(18).any(|x| x != t[0][18]) {
        let dev = |x: f64| if x == 0.0 { "cpu" } else { "gpu" };
        bail!(
            "{name}: the ranks' weights are on different kinds of device ({})",
            each(col(18).map(dev))
        )
    }
    let dims = |v: &Vec<f64>| if v[5] == 0.0 { "rows" } else { "columns" };
    if col(5).any(|x| x != t[0][5]) {
        bail!(
            "{name}: the ranks shard different dimensions ({})",
            each(t.iter().map(dims))
        )
    }
    if t.iter().any(|v| (v[7], v[8]) != (t[0][7], t[0][8])) {
        bail!(
            "{name}: the ranks disagree on the full weight's shape ({})",
            each(t.iter().map(|v| format!("[{}, {}]", v[7], v[8])))
        )
    }
    // Each shard against the full shape, then the tiling.
    let (full0, full1) = (t[0][7], t[0][8]);
    let by_rows = t[0][5] == 0.0;
    let (what, extent) = if by_rows {
        ("rows", full0)
    } else {
        ("columns", full1)
    };
    let mut shards = Vec::with_capacity(world);
    for (r, v) in t.iter().enumerate() {
        let (d0, d1, start) = (v[3], v[4], v[6]);
        let (len, other, other_full, other_what) = if by_rows {
            (d0, d1, full1, "columns")
        } else {
            (d1, d0, full0, "rows")
        };
        if other != other_full {
            bail!(
                "{name}: rank {r}: a shard of {what} holds all {other_full} {other_what} of the [{full0}, {full1}] weight, but w is [{d0}, {d1}] (w on every rank: {})",
                each(t.iter().map(|v| format!("[{}, {}]", v[3], v[4])))
            )
        }
        if start + len > extent {
            bail!(
                "{name}: rank {r}: {what} {start}..{} are past the {extent} {what} of the [{full0}, {full1}] weight",
                start + len
            )
        }
        shards.push((start as usize, len as usize));
    }
    let agreed = Agreed { shards };
    let order = agreed.in_order();
    let mut end = 0usize;
    let holds = || {
        each(
            agreed
                .shards
                .iter()
                .map(|&(s, l)| format!("{what} {s}..{}", s + l)),
        )
    };
    for &r in &order {
        let (s, l) = agreed.shards[r];
        if s != end {
            let covered: usize = agreed.shards.iter().map(|x| x.1).sum();
            bail!(
                "{name}: the shards do not tile the {extent} {what} of the [{full0}, {full1}] weight ({}): {}; the collective has {world} ranks and the shards hold {covered} {what} in all{}",
                holds(),
                if s > end { format!("{what} {end}..{s} are on no rank") } else { format!("{what} {s}..{end} are on two ranks") },
                if covered as f64 != extent { " (shards made for another world size?)" } else { "" }
            )
        }
        end = s + l;
    }
    if end as f64 != extent {
        let covered: usize = agreed.shards.iter().map(|x| x.1).sum();
        bail!(
            "{name}: the shards do not tile the {extent} {what} of the [{full0}, {full1}] weight ({}): {what} {end}..{extent} are on no rank; the collective has {world} ranks and the shards hold {covered} {what} in all (shards made for another world size?)",
            holds()
        )
    }
    // N:M column shards: whole groups only.
    if a.op.is_nm() {
        let m = t[0][16] as usize;
        if !(full1 as usize).is_multiple_of(m) {
            bail!("{name}: the group axis (in = {full1}) of the [{full0}, {full1}] weight is not a multiple of m = {m}")
        }
        if !by_rows {
            if let Some(r) = (0..world).find(|&r| {
                let (s, l) = agreed.shards[r];
                !s.is_multiple_of(m) || !l.is_multiple_of(m)
            }) {
                bail!(
                    "{name}: rank {r}: column shards must hold whole groups of m = {m}, but rank {r} holds columns {}..{} ({})",
                    agreed.shards[r].0,
                    agreed.shards[r].0 + agreed.shards[r].1,
                    holds()
                )
            }
        }
    }
    Ok(agreed)
}
