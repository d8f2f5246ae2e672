//! [`VarMapDropout`] on a rank of a tensor-parallel group: each selected variable is either
//! this rank's [`Shard`] of a larger weight (the sharded op, with the collective) or a whole
//! weight that every rank holds alike (the plain seeded op, no communication).

use super::{
    prune_nm_sharded, prune_units_sharded, prune_weights_sharded, targeted_nm_dropout_sharded,
    targeted_unit_dropout_sharded, targeted_weight_dropout_sharded, Collective, Shard,
};
use crate::functions::{
    prune_nm, prune_units, prune_weights, targeted_nm_dropout_seeded, targeted_unit_dropout_seeded,
    targeted_weight_dropout_seeded,
};
use crate::op::DropoutKind;
use crate::varmap::Reservation;
use crate::{SparsityReport, TargetedDropout, VarMapDropout};
use candle_core::backprop::GradStore;
use candle_core::{bail, Device, Result, Tensor, Var};

/// The op of one variable: sharded when it has a shard, plain otherwise.
fn dropped(
    w: &Tensor,
    c: TargetedDropout,
    seed: u64,
    offset: u64,
    shard: Option<&Shard>,
    comm: &dyn Collective,
) -> Result<Tensor> {
    match (c.kind, shard) {
        (DropoutKind::Weight, Some(s)) => {
            targeted_weight_dropout_sharded(w, c.gamma, c.alpha, seed, offset, s, comm)
        }
        (DropoutKind::Unit, Some(s)) => {
            targeted_unit_dropout_sharded(w, c.gamma, c.alpha, seed, offset, s, comm)
        }
        (DropoutKind::Nm { n, m }, Some(s)) => {
            targeted_nm_dropout_sharded(w, n, m, c.alpha, seed, offset, s, comm)
        }
        (DropoutKind::Weight, None) => {
            targeted_weight_dropout_seeded(w, c.gamma, c.alpha, seed, offset)
        }
        (DropoutKind::Unit, None) => {
            targeted_unit_dropout_seeded(w, c.gamma, c.alpha, seed, offset)
        }
        (DropoutKind::Nm { n, m }, None) => {
            targeted_nm_dropout_seeded(w, n, m, c.alpha, seed, offset)
        }
    }
}

fn pruned(
    w: &Tensor,
    c: TargetedDropout,
    shard: Option<&Shard>,
    comm: &dyn Collective,
) -> Result<Tensor> {
    match (c.kind, shard) {
        (DropoutKind::Weight, Some(s)) => prune_weights_sharded(w, c.gamma, s, comm),
        (DropoutKind::Unit, Some(s)) => prune_units_sharded(w, c.gamma, s, comm),
        (DropoutKind::Nm { n, m }, Some(s)) => prune_nm_sharded(w, n, m, s, comm),
        (DropoutKind::Weight, None) => prune_weights(w, c.gamma),
        (DropoutKind::Unit, None) => prune_units(w, c.gamma),
        (DropoutKind::Nm { n, m }, None) => prune_nm(w, n, m),
    }
}

impl VarMapDropout {
    /// Each selected variable's shard (`None`: a whole weight), after one all-reduce that
    /// checks that every rank selected as many variables and sharded the same ones, and that
    /// no rank failed locally (a name in `shards` that is not selected, a variable held by a
    /// live step): all ranks get the error, none waits for the others.
    fn shards_of<'s>(
        &self,
        what: &str,
        shards: &'s [(&str, Shard)],
        comm: &dyn Collective,
        local: Result<()>,
    ) -> Result<Vec<Option<&'s Shard>>> {
        let names: Vec<&str> = self.selected().map(|(n, _, _)| n).collect();
        let mut local = local;
        if let Some((bad, _)) = shards.iter().find(|(n, _)| !names.contains(n)) {
            local = local.and(Err(candle_core::Error::Msg(format!(
                "VarMapDropout::{what}: {bad} has a shard but is not one of the selected variables {names:?}"
            ))));
        }
        let of: Vec<Option<&Shard>> = names
            .iter()
            .map(|n| shards.iter().find(|(m, _)| m == n).map(|(_, s)| s))
            .collect();
        let (rank, world) = (comm.rank(), comm.world_size());
        let mut row = vec![0f64; world * 4];
        let hash: f64 = of
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| ((i + 1) * (i + 1)) as f64)
            .sum();
        row[rank * 4..rank * 4 + 4].copy_from_slice(&[
            names.len() as f64,
            of.iter().flatten().count() as f64,
            hash,
            if local.is_ok() { 1.0 } else { 2.0 },
        ]);
        let t = comm.all_reduce_sum(&Tensor::from_vec(row, (world, 4), &Device::Cpu)?)?;
        let t: Vec<Vec<f64>> = t.to_device(&Device::Cpu)?.to_vec2()?;
        local?;
        if let Some(r) = (0..world).find(|&r| t[r][3] != 1.0) {
            bail!("VarMapDropout::{what}: rank {r} failed before the step (see its error)")
        }
        if t.iter().any(|v| v[..3] != t[0][..3]) {
            let each: Vec<String> = t
                .iter()
                .enumerate()
                .map(|(r, v)| format!("rank {r}: {} selected, {} sharded", v[0], v[1]))
                .collect();
            bail!(
                "VarMapDropout::{what}: the ranks selected or sharded different variables ({})",
                each.join(", ")
            )
        }
        Ok(of)
    }

    /// One training step on a rank of a tensor-parallel group: like
    /// [`VarMapDropout::apply_seeded`] (variable `i` in name order draws at
    /// `(seed, first_offset + i)`), with the variables named in `shards` being this rank's
    /// shards of larger weights, dropped with the sharded ops over `comm` (the same bits as
    /// the unsharded step on the full weights, restricted to the shards). Every rank calls it
    /// with the same names, seed and offset; the other selected variables are whole weights
    /// that every rank holds alike. Then run the forward and backward passes and call
    /// [`ShardedStep::finish`] (no communication).
    pub fn apply_sharded(
        &self,
        shards: &[(&str, Shard)],
        seed: u64,
        first_offset: u64,
        comm: &dyn Collective,
    ) -> Result<ShardedStep<'_>> {
        let what = "apply_sharded";
        let reserved = Reservation::take(self, what);
        let (reserved, local) = match reserved {
            Ok(r) => (Some(r), Ok(())),
            Err(e) => (None, Err(e)),
        };
        let of = self.shards_of(what, shards, comm, local)?;
        let mut step = ShardedStep {
            vars: Vec::new(),
            _reserved: reserved.expect("checked: every rank is ok"),
        };
        for (i, ((name, var, config), shard)) in self.selected().zip(of).enumerate() {
            let original = var.as_tensor().copy()?;
            let x = Var::from_tensor(&original)?;
            let offset = first_offset.wrapping_add(i as u64);
            let out = dropped(x.as_tensor(), config, seed, offset, shard, comm)
                .map_err(|e| e.context(format!("VarMapDropout::{what}: variable {name}")))?;
            if out.elem_count() > 0 {
                var.set(&out.detach())?;
            }
            step.vars.push(Held {
                var,
                original,
                x,
                out,
            });
        }
        Ok(step)
    }

    /// Prunes every selected variable in place, the variables named in `shards` with the
    /// sharded pruning over `comm`, and reports the sparsity of this rank's variables.
    pub fn prune_sharded(
        &self,
        shards: &[(&str, Shard)],
        comm: &dyn Collective,
    ) -> Result<SparsityReport> {
        let what = "prune_sharded";
        let reserved = Reservation::take(self, what);
        let (reserved, local) = match reserved {
            Ok(r) => (Some(r), Ok(())),
            Err(e) => (None, Err(e)),
        };
        let of = self.shards_of(what, shards, comm, local)?;
        for ((name, var, config), shard) in self.selected().zip(of) {
            let p = pruned(var.as_tensor(), config, shard, comm)
                .map_err(|e| e.context(format!("VarMapDropout::{what}: variable {name}")))?;
            if p.elem_count() > 0 {
                var.set(&p)?;
            }
        }
        drop(reserved);
        self.report()
    }
}

/// A variable of a live sharded step: its saved original, and the op applied to a copy of it
/// (`x`), whose backward pass masks the gradient.
struct Held<'a> {
    var: &'a Var,
    original: Tensor,
    x: Var,
    out: Tensor,
}

/// One training step of [`VarMapDropout::apply_sharded`]: the variables hold their dropped
/// shards until [`ShardedStep::finish`] (or until dropped, which restores them).
#[must_use = "call finish(&mut grads) after the backward pass: it masks the gradients and restores the weights"]
pub struct ShardedStep<'a> {
    vars: Vec<Held<'a>>,
    _reserved: Reservation,
}

impl ShardedStep<'_> {
    /// Masks the gradient of every variable in `grads` with the step's masks (the backward
    /// pass of the sharded op itself: bit for bit what autograd gives through it) and restores
    /// the original weights. No communication.
    pub fn finish(mut self, grads: &mut GradStore) -> Result<()> {
        let mut result = Ok(());
        for h in &self.vars {
            let Some(g) = grads.get(h.var.as_tensor()) else {
                continue;
            };
            // d/dx sum(out * g) = the op's backward applied to g (1 * g = g exactly).
            let masked = h
                .out
                .mul(&g.detach())
                .and_then(|p| p.sum_all())
                .and_then(|l| l.backward())
                .map(|mut gs| gs.remove(h.x.as_tensor()));
            match masked {
                Ok(Some(m)) => {
                    grads.insert(h.var.as_tensor(), m);
                }
                Ok(None) => {
                    grads.insert(h.var.as_tensor(), g.zeros_like()?);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let restored = self.put_back();
        result.and(restored)
    }

    /// Restores the original weights without touching any gradient.
    pub fn restore(mut self) -> Result<()> {
        self.put_back()
    }

    fn put_back(&mut self) -> Result<()> {
        let mut first = Ok(());
        for h in self.vars.drain(..) {
            if h.original.elem_count() == 0 {
                continue;
            }
            if let Err(e) = h.var.set(&h.original) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for ShardedStep<'_> {
    fn drop(&mut self) {
        let _ = self.put_back();
    }
}
