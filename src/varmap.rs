//! Targeted dropout on any candle model, through the `VarMap` that holds its variables:
//! [`VarMapDropout`] drops the selected weights in place for one training step and masks
//! their gradients afterwards, prunes them for evaluation, and reports the sparsity
//! ([`SparsityReport`]). The model's code does not change.

use crate::config::{check_kind_args, TargetedDropout};
use crate::custom_op::{emulated, mask_on_host, masked_by_bits, Bits};
use crate::functions::{
    grouped, is_nm_sparse, many_ops, masked_gradient, prune_nm, prune_units, prune_weights,
    zero_count,
};
use crate::generator::take_offsets;
use crate::op::DropoutKind;
use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::TensorId;
use candle_core::{bail, CpuStorage, Device, InplaceOp1, Layout, Result, Storage, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

/// One selected variable.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    var: Var,
    config: TargetedDropout,
}

/// Targeted dropout for the variables of a [`VarMap`], with no change to the model's code.
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{linear, Optimizer, VarBuilder, VarMap, SGD};
/// use candle_targeted_dropout::{TargetedDropout, VarMapDropout};
/// # fn main() -> candle_core::Result<()> {
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let (fc1, fc2) = (linear(8, 16, vb.pp("fc1"))?, linear(16, 2, vb.pp("fc2"))?);
/// let vd = VarMapDropout::new(&varmap, |name: &str, w: &Tensor| {
///     (name.ends_with(".weight") && w.rank() >= 2 && name != "fc2.weight")
///         .then(|| TargetedDropout::weight(0.5, 0.5).unwrap())
/// })?;
/// let mut opt = SGD::new(varmap.all_vars(), 0.1)?;
/// let x = Tensor::ones((4, 8), DType::F32, &Device::Cpu)?;
/// let step = vd.apply()?; // fc1.weight now holds its dropped weights
/// let loss = fc2.forward(&fc1.forward(&x)?.relu()?)?.sqr()?.mean_all()?;
/// let mut grads = loss.backward()?;
/// step.finish(&mut grads)?; // gradients masked, original weights back
/// opt.step(&grads)?;
/// let report = vd.prune()?; // evaluation: the targeted half of every filter removed
/// assert_eq!(report.total().zeros, 16 * 4);
/// # Ok(()) }
/// ```
///
/// One step at a time per variable: while a [`DropoutStep`] is live (its variables hold
/// dropped weights), an `apply`, `apply_seeded`, `prune` or `with_pruned` that would touch
/// one of its variables is an error naming the call and the variable, whichever
/// `VarMapDropout` makes it: this one, a clone, or another one built over the same `VarMap`.
/// (Two `VarMapDropout`s whose selections share no variable may step at the same time: each
/// drops, masks and restores only its own variables.) A `with_pruned` holds its variables the
/// same way until it has restored them.
#[derive(Debug, Clone)]
pub struct VarMapDropout {
    entries: Vec<Entry>,
}

impl VarMapDropout {
    /// Selects the variables of `varmap` that get targeted dropout: `select(name, tensor)` is
    /// called once per variable and returns its config, or `None` to leave it alone.
    ///
    /// Errors (each naming the variable): a selected variable that is not a float tensor of
    /// rank >= 1, a config with gamma or alpha outside [0, 1]. A selection that matches no
    /// variable is an error too: training would silently run without dropout.
    pub fn new(
        varmap: &VarMap,
        mut select: impl FnMut(&str, &Tensor) -> Option<TargetedDropout>,
    ) -> Result<Self> {
        let mut named: Vec<(String, Var)> = {
            let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let total = named.len();
        let mut entries = Vec::new();
        for (name, var) in named {
            let Some(config) = select(&name, var.as_tensor()) else {
                continue;
            };
            check_entry(&name, var.as_tensor(), &config)?;
            entries.push(Entry { name, var, config });
        }
        if entries.is_empty() {
            bail!(
                "VarMapDropout: the selection matched none of the {total} variables of the VarMap"
            )
        }
        Ok(Self { entries })
    }

    /// The selected variables' names, in the order [`VarMapDropout::apply`] visits them
    /// (ascending).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// The number of selected variables: the offsets one [`VarMapDropout::apply`] takes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: a selection that matches nothing is an error at [`VarMapDropout::new`].
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The selected variables in name order, with their configs (for `shard`'s sharded step).
    pub(crate) fn selected(&self) -> impl Iterator<Item = (&str, &Var, TargetedDropout)> {
        self.entries
            .iter()
            .map(|e| (e.name.as_str(), &e.var, e.config))
    }

    /// The config of a selected variable.
    pub fn config(&self, name: &str) -> Option<TargetedDropout> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.config)
    }

    /// Sets the config of one selected variable (e.g. from a [`crate::RampSchedule`]).
    pub fn set_config(&mut self, name: &str, config: TargetedDropout) -> Result<()> {
        let Some(e) = self.entries.iter_mut().find(|e| e.name == name) else {
            bail!("VarMapDropout: {name} is not one of the selected variables")
        };
        check_entry(name, e.var.as_tensor(), &config)?;
        e.config = config;
        Ok(())
    }

    /// Sets the config of every selected variable.
    pub fn set_all(&mut self, config: TargetedDropout) -> Result<()> {
        for e in &mut self.entries {
            check_entry(&e.name, e.var.as_tensor(), &config)?;
            e.config = config;
        }
        Ok(())
    }

    /// One training step: every selected variable now holds its dropped weights, drawn with
    /// the next offsets of the process-wide generator, one per variable in name order (the
    /// same bits as [`crate::targeted_weight_dropout`] / [`crate::targeted_unit_dropout`] on
    /// each in that order). Run the model's forward and backward passes, then call
    /// [`DropoutStep::finish`]. Until then the step holds, on the CPU, each variable's bit
    /// mask of its dropped elements and their original values ([`DropoutStep::held_bytes`]).
    pub fn apply(&self) -> Result<DropoutStep<'_>> {
        // Reserved before the offsets are taken: a refused step does not move the generator.
        let reserved = Reservation::take(self, "apply")?;
        let (seed, offset) = take_offsets(self.entries.len() as u64);
        self.step(reserved, "apply", seed, offset)
    }

    /// [`VarMapDropout::apply`] with explicit draws: variable `i` (in name order) draws at
    /// `(seed, first_offset + i)`, and the process-wide generator is untouched. Data-parallel
    /// replicas that track the same `(seed, offset)` draw the same masks.
    pub fn apply_seeded(&self, seed: u64, first_offset: u64) -> Result<DropoutStep<'_>> {
        let reserved = Reservation::take(self, "apply_seeded")?;
        self.step(reserved, "apply_seeded", seed, first_offset)
    }

    /// The step of `apply` or `apply_seeded` (`what`, which every error names) once its
    /// variables are reserved: an error drops the step, which puts back what was set and
    /// releases the variables.
    fn step(
        &self,
        reserved: Reservation,
        what: &str,
        seed: u64,
        first_offset: u64,
    ) -> Result<DropoutStep<'_>> {
        let mut step = DropoutStep {
            vd: self,
            saved: Restore {
                vars: Vec::with_capacity(self.entries.len()),
                originals: Vec::with_capacity(self.entries.len()),
            },
            _reserved: reserved,
            seed,
            first_offset,
        };
        let current: Vec<Tensor> = self
            .entries
            .iter()
            .map(|e| e.var.as_tensor().detach())
            .collect();
        let items: Vec<(&Tensor, TargetedDropout)> = current
            .iter()
            .zip(&self.entries)
            .map(|(t, e)| (t, e.config))
            .collect();
        let context = |err: candle_core::Error| err.context(format!("VarMapDropout::{what}"));
        let ops = many_ops("VarMapDropout", &items, Some((seed, first_offset))).map_err(context)?;
        // Where the kernels serve the call (a GPU, the emulator): one grouped plan for every
        // variable, each output with its kept bit mask where its kernel writes one.
        let served = grouped(&items, &ops, &|_| true).map_err(context)?;
        // The CPU's variables (where no kernel served the call) dropped in place, all of them
        // in one call to the pool: their passes run side by side, and the pool is entered once
        // a step, not once a pass.
        let mut on_cpu: Vec<Option<Result<Saved>>> = match served {
            Some(_) => Vec::new(),
            None => {
                use rayon::prelude::*;
                self.entries
                    .par_iter()
                    .zip(current.par_iter())
                    .zip(ops.par_iter())
                    .map(|((e, w), op)| {
                        (w.elem_count() > 0 && w.device().is_cpu())
                            .then(|| drop_in_place(&e.var, *op))
                    })
                    .collect()
            }
        };
        // Every variable set is recorded before an error returns (dropping the step puts
        // them back).
        let mut first_err = None;
        for (i, (e, w)) in self.entries.iter().zip(&current).enumerate() {
            let named = |err: candle_core::Error| {
                err.context(format!("VarMapDropout::{what}: variable {}", e.name))
            };
            if let Some(r) = on_cpu.get_mut(i).and_then(Option::take) {
                match r {
                    Ok(saved) => {
                        step.saved.vars.push(&e.var);
                        step.saved.originals.push(saved);
                    }
                    Err(err) => {
                        first_err.get_or_insert(named(err));
                    }
                }
                continue;
            }
            if first_err.is_some() {
                continue;
            }
            if w.elem_count() == 0 {
                step.saved.vars.push(&e.var);
                step.saved.originals.push(Saved::full(w.clone()));
                continue;
            }
            let (dropped, bits) = match &served {
                Some(v) => (Some(v[i].0.clone()), v[i].1.clone()),
                None => (None, None),
            };
            let held = hold(w, ops[i], dropped, bits).and_then(|(d, saved)| {
                e.var.set(&d)?;
                Ok(saved)
            });
            match held {
                Ok(saved) => {
                    step.saved.vars.push(&e.var);
                    step.saved.originals.push(saved);
                }
                Err(err) => {
                    first_err.get_or_insert(named(err));
                }
            }
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(step),
        }
    }

    /// Prunes every selected variable in place (its config's kind and gamma: the whole
    /// targeted set, as the paper evaluates) and reports the sparsity. The generator is
    /// untouched. Save the pruned model with `VarMap::save`.
    pub fn prune(&self) -> Result<SparsityReport> {
        let _reserved = Reservation::take(self, "prune")?;
        for e in &self.entries {
            if e.var.elem_count() == 0 {
                continue;
            }
            let pruned = prune_as(&e.name, e.var.as_tensor(), e.config.kind, e.config.gamma)?;
            e.var.set(&pruned)?;
        }
        self.report()
    }

    /// Prunes every selected variable temporarily as `td` prunes in evaluation (its kind and
    /// gamma; its alpha plays no part), e.g. to measure accuracy at several rates, calls `f`
    /// with the report, and restores the original weights, also when `f` fails. For an N:M
    /// config the report says whether each variable is exactly that N:M.
    pub fn with_pruned<R>(
        &self,
        td: TargetedDropout,
        f: impl FnOnce(&SparsityReport) -> Result<R>,
    ) -> Result<R> {
        let (kind, gamma) = (td.kind, td.gamma);
        // Held until the weights are back (it drops after `restore`, declared later).
        let _reserved = Reservation::take(self, "with_pruned")?;
        let originals: Vec<Saved> = self
            .entries
            .iter()
            .map(|e| Ok(Saved::full(e.var.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        let restore = Restore {
            vars: self.entries.iter().map(|e| &e.var).collect(),
            originals,
        };
        for (e, orig) in self.entries.iter().zip(&restore.originals) {
            let Saved::Full { orig, .. } = orig else {
                unreachable!("with_pruned saves full copies")
            };
            if orig.elem_count() > 0 {
                e.var.set(&prune_as(&e.name, orig, kind, gamma)?)?;
            }
        }
        let report = self.report_as(Some(kind))?;
        let out = f(&report);
        restore.now()?;
        out
    }

    /// The sparsity of the selected variables as they are now; for a variable with an N:M
    /// config, whether it is exactly N:M ([`VarSparsity::nm`]).
    pub fn report(&self) -> Result<SparsityReport> {
        self.report_as(None)
    }

    /// The report, with the N:M column of `kind` (pruning at `kind`) or of each config.
    fn report_as(&self, kind: Option<DropoutKind>) -> Result<SparsityReport> {
        let mut vars = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let t = e.var.as_tensor();
            let nm = match kind.unwrap_or(e.config.kind) {
                DropoutKind::Nm { n, m } => Some(NmCheck {
                    n,
                    m,
                    holds: is_nm_sparse(t, n, m)?,
                }),
                _ => None,
            };
            vars.push(VarSparsity {
                name: e.name.clone(),
                shape: t.dims().to_vec(),
                zeros: zero_count(t)?,
                numel: t.elem_count(),
                nm,
            });
        }
        Ok(SparsityReport { vars })
    }
}

fn check_entry(name: &str, w: &Tensor, config: &TargetedDropout) -> Result<()> {
    let what = format!("VarMapDropout: variable {name}");
    check_kind_args(&what, w, config.kind, config.gamma, config.alpha)
}

fn prune_as(name: &str, w: &Tensor, kind: DropoutKind, gamma: f64) -> Result<Tensor> {
    match kind {
        DropoutKind::Weight => prune_weights(w, gamma),
        DropoutKind::Unit => prune_units(w, gamma),
        // A shape that the pattern does not fit is the variable's error: name it.
        DropoutKind::Nm { n, m } => prune_nm(w, n, m)
            .map_err(|e| candle_core::Error::Msg(format!("VarMapDropout: variable {name}: {e}"))),
    }
}

/// What a step holds for one variable until it ends.
enum Saved {
    /// A copy of the whole weight (`with_pruned`; a step on a device where the dropped
    /// values are not packed), with the kept bit mask, if any, for the gradient.
    Full { orig: Tensor, bits: Option<Bits> },
    /// The bit mask of the dropped elements and their original values in flat order (a
    /// rank-1 tensor of the weight's dtype): the variable holds every other element's
    /// original bits, so these two give the weight back exactly.
    Dropped { bits: Arc<Vec<u32>>, values: Tensor },
    /// As `Dropped`, packed by the kernels on the weight's device (a GPU, or the emulator):
    /// the kept bit mask and the dropped elements' values.
    #[cfg(any(feature = "cuda", feature = "emulate"))]
    Packed { bits: Bits, values: Tensor },
}

impl Saved {
    fn full(orig: Tensor) -> Saved {
        Saved::Full { orig, bits: None }
    }

    /// The bytes it holds.
    fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Saved::Full { orig, bits } => size(orig) + bits.as_ref().map_or(0, Bits::bytes),
            Saved::Dropped { bits, values } => bits.len() * 4 + size(values),
            #[cfg(any(feature = "cuda", feature = "emulate"))]
            Saved::Packed { bits, values } => bits.bytes() + size(values),
        }
    }

    /// Sets `var` back to its original weight.
    fn restore(&self, var: &Var) -> Result<()> {
        match self {
            Saved::Full { orig, .. } if orig.elem_count() == 0 => Ok(()),
            Saved::Full { orig, .. } => var.set(orig),
            // The held values put back in place (a CPU variable: `drop_in_place` made it).
            Saved::Dropped { bits, values } => var.as_tensor().inplace_op1(&PutBack {
                bits,
                values: values.clone(),
            }),
            // A host mask outside the emulation that packed it: in place on the host, too.
            #[cfg(any(feature = "cuda", feature = "emulate"))]
            Saved::Packed { bits, values } => match bits.host() {
                Some(b) if !crate::custom_op::emulated() => var.as_tensor().inplace_op1(&PutBack {
                    bits: b,
                    values: values.clone(),
                }),
                _ => crate::hold::unpack(var.as_tensor(), values, bits),
            },
        }
    }
}

/// A CPU variable dropped in place under `op` for one step ([`crate::cpu::held`]): one pass
/// writes the bit mask of the dropped elements, one moves them out; held: the bits and the
/// values.
fn drop_in_place(var: &Var, op: crate::op::TargetedOp) -> Result<Saved> {
    let d = DropInPlace {
        op,
        out: Mutex::new(None),
    };
    var.as_tensor().inplace_op1(&d)?;
    let taken = d.out.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some((bits, values)) = taken else {
        bail!("VarMapDropout: internal error, the in-place drop wrote nothing")
    };
    let cpu = Device::Cpu;
    macro_rules! go {
        ($($variant:ident),*) => {
            match values {
                $(CpuStorage::$variant(v) => {
                    let n = v.len();
                    Tensor::from_vec(v, n, &cpu)?
                })*
                other => bail!("VarMapDropout: unsupported dtype {:?}", other.dtype()),
            }
        };
    }
    let values = go!(F32, F64, F16, BF16);
    Ok(Saved::Dropped {
        bits: Arc::new(bits),
        values,
    })
}

/// [`drop_in_place`] as candle's in-place op.
struct DropInPlace {
    op: crate::op::TargetedOp,
    out: Mutex<Option<(Vec<u32>, CpuStorage)>>,
}

impl InplaceOp1 for DropInPlace {
    fn name(&self) -> &'static str {
        self.op.name()
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let r = crate::cpu::held::drop_in_place(&self.op, s, l)?;
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        Ok(())
    }
}

/// The held values put back into a CPU variable, in place.
struct PutBack<'a> {
    bits: &'a [u32],
    values: Tensor,
}

impl InplaceOp1 for PutBack<'_> {
    fn name(&self) -> &'static str {
        "VarMapDropout restore"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let values = self.values.contiguous()?;
        let (vs, vl) = values.storage_and_layout();
        let (Storage::Cpu(v), Some(ab)) = (&*vs, vl.contiguous_offsets()) else {
            bail!("VarMapDropout: internal error, held values that are not a contiguous CPU tensor")
        };
        crate::cpu::held::restore_in_place(s, l, self.bits, (v, ab))
    }
}

/// What `apply` makes of one variable `w` that the kernels served (a GPU, the emulator) or
/// that sits on a device without them: the dropped weight (`dropped`, what the grouped call
/// computed, or computed here) and what the step holds. Where the kernels kept the bit mask
/// (weight dropout), the mask and the dropped values packed on the weight's device
/// (`crate::hold`); elsewhere (unit and N:M, whose kernels keep no mask) a copy, as on a GPU.
fn hold(
    w: &Tensor,
    op: crate::op::TargetedOp,
    dropped: Option<Tensor>,
    bits: Option<Bits>,
) -> Result<(Tensor, Saved)> {
    let d = match dropped {
        Some(d) => d,
        None => crate::functions::values_of(w, op)?,
    };
    #[cfg(any(feature = "cuda", feature = "emulate"))]
    if let Some(b) = &bits {
        // A host mask's bits past the last element (a kernel leaves them as they were)
        // cleared: a step finished outside the emulation reads it on the host.
        let bits = match b.host() {
            Some(h) => {
                let mut h = h.to_vec();
                let tail = w.elem_count() % 32;
                if let (true, Some(last)) = (tail != 0, h.last_mut()) {
                    *last &= (1u32 << tail) - 1;
                }
                Bits::Host(Arc::new(h))
            }
            None => b.clone(),
        };
        let values = crate::hold::pack(&w.contiguous()?, &bits)?;
        return Ok((d, Saved::Packed { bits, values }));
    }
    Ok((
        d,
        Saved::Full {
            orig: w.copy()?,
            bits,
        },
    ))
}

/// Puts saved weights back, at once or when dropped (an error path).
struct Restore<'a> {
    vars: Vec<&'a Var>,
    originals: Vec<Saved>,
}

impl Restore<'_> {
    fn now(mut self) -> Result<()> {
        let r = restore(&self.vars, &self.originals);
        self.vars.clear();
        r
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        // Setting a variable to a saved copy of its own shape cannot fail short of a device
        // error, which there is no one to report to here.
        let _ = restore(&self.vars, &self.originals);
    }
}

/// Sets every variable back, trying all of them; the first error, if any.
fn restore(vars: &[&Var], originals: &[Saved]) -> Result<()> {
    let in_place = |v: &Var, o: &Saved| v.device().is_cpu() && matches!(o, Saved::Dropped { .. });
    if vars.iter().zip(originals).all(|(v, o)| in_place(v, o)) {
        // Every one in place on the CPU: all of them in one call to the pool.
        use rayon::prelude::*;
        let rs: Vec<Result<()>> = vars
            .par_iter()
            .zip(originals.par_iter())
            .map(|(v, o)| o.restore(v))
            .collect();
        return rs.into_iter().find(Result::is_err).unwrap_or(Ok(()));
    }
    let mut first = Ok(());
    for (v, o) in vars.iter().zip(originals) {
        if let Err(e) = o.restore(v) {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// The variables that a live step (or a `with_pruned`) holds, process-wide, by tensor id
/// (candle never reuses one): whichever `VarMapDropout` made the step, no other call may
/// drop, prune or restore them meanwhile.
static HELD: LazyLock<Mutex<HashSet<TensorId>>> = LazyLock::new(Default::default);

/// The variables of one `VarMapDropout`, held until dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    ids: Vec<TensorId>,
}

impl Reservation {
    /// Holds every selected variable of `vd`, or none: an error naming `what` and the first
    /// variable already held.
    pub(crate) fn take(vd: &VarMapDropout, what: &str) -> Result<Self> {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = vd.entries.iter().find(|e| held.contains(&e.var.id())) {
            bail!(
                "VarMapDropout::{what}: a step is live on variable {} (it holds dropped weights, \
                 from this VarMapDropout or another over the same variables); finish or drop it \
                 first",
                e.name
            )
        }
        let ids: Vec<TensorId> = vd.entries.iter().map(|e| e.var.id()).collect();
        held.extend(ids.iter().copied());
        Ok(Self { ids })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            held.remove(id);
        }
    }
}

/// One training step of a [`VarMapDropout`]: the selected variables hold their dropped
/// weights until [`DropoutStep::finish`] (or until the step is dropped, e.g. on an error
/// path, which restores them without touching any gradient).
#[must_use = "call finish(&mut grads) after the backward pass: it masks the gradients and restores the weights"]
pub struct DropoutStep<'a> {
    vd: &'a VarMapDropout,
    /// The variables set so far and their originals, put back when the step ends, whichever
    /// way it ends. Declared before `_reserved`: fields drop in order, so the weights are
    /// back before another step may take the variables.
    saved: Restore<'a>,
    _reserved: Reservation,
    seed: u64,
    first_offset: u64,
}

impl DropoutStep<'_> {
    /// Masks the gradient of every selected variable in `grads` (bit-identical to what
    /// autograd gives through the functional op) and restores the original weights.
    pub fn finish(self, grads: &mut GradStore) -> Result<()> {
        // The CPU's gradients (no emulation in force) masked with their held bits, all of them
        // in one call to the pool.
        let mut on_cpu: Vec<Option<Result<Tensor>>> = if emulated() {
            Vec::new()
        } else {
            use rayon::prelude::*;
            let gs: Vec<Option<&Tensor>> = self
                .vd
                .entries
                .iter()
                .map(|e| grads.get(e.var.as_tensor()))
                .collect();
            gs.par_iter()
                .zip(self.saved.originals.par_iter())
                .map(|(g, orig)| match (g, orig) {
                    (Some(g), Saved::Dropped { bits, .. }) if g.device().is_cpu() => {
                        Some(mask_on_host(g, bits))
                    }
                    _ => None,
                })
                .collect()
        };
        let mut result = Ok(());
        for (i, (e, orig)) in self
            .vd
            .entries
            .iter()
            .zip(&self.saved.originals)
            .enumerate()
        {
            // A gradient is replaced only once its masked form exists: on an error the store
            // keeps what it had.
            if let Some(g) = grads.get(e.var.as_tensor()) {
                let offset = self.first_offset.wrapping_add(i as u64);
                let masked = match on_cpu.get_mut(i).and_then(Option::take) {
                    Some(m) => m,
                    None => match orig {
                        // The kept mask: one pass over the gradient, no selection.
                        Saved::Dropped { bits, .. } => {
                            let b = Bits::Host(bits.clone());
                            match masked_by_bits(g, &b) {
                                Ok(Some(m)) => Ok(m),
                                Ok(None) => mask_on_host(g, bits),
                                Err(e) => Err(e),
                            }
                        }
                        Saved::Full {
                            orig,
                            bits: Some(b),
                        } => match masked_by_bits(g, b) {
                            Ok(Some(m)) => Ok(m),
                            Ok(None) => masked_gradient(orig, g, e.config, self.seed, offset),
                            Err(e) => Err(e),
                        },
                        Saved::Full { orig, bits: None } => {
                            masked_gradient(orig, g, e.config, self.seed, offset)
                        }
                        #[cfg(any(feature = "cuda", feature = "emulate"))]
                        Saved::Packed { bits, values } => match masked_by_bits(g, bits) {
                            Ok(Some(m)) => Ok(m),
                            Ok(None) => match bits.host() {
                                Some(b) => mask_on_host(g, b),
                                // An unaligned gradient on a GPU: from the weight put back.
                                None => e
                                    .var
                                    .as_tensor()
                                    .copy()
                                    .and_then(|v| crate::hold::unpack(&v, values, bits).map(|()| v))
                                    .and_then(|orig| {
                                        masked_gradient(&orig, g, e.config, self.seed, offset)
                                    }),
                            },
                            Err(e) => Err(e),
                        },
                    },
                };
                match masked {
                    Ok(masked) => {
                        grads.insert(e.var.as_tensor(), masked);
                    }
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                }
            }
        }
        // The weights come back whatever happened to the gradients.
        self.saved.now()?;
        result
    }

    /// Restores the original weights without touching any gradient.
    pub fn restore(self) -> Result<()> {
        self.saved.now()
    }

    /// The bytes the step holds until it ends, besides the variables themselves: the bit
    /// mask of each variable's dropped elements (`ceil(n / 32)` u32 words) and their original
    /// values (`dropped * size_of(dtype)`): at gamma = alpha = 0.5 about a quarter of the
    /// weights plus 1/32 (f32) of an element per element. So on the CPU, under the emulator
    /// and on CUDA for weight dropout (the kernels' kept mask packs the values on the device:
    /// `td_pack_*`, after reading back one count per 8192 elements, since the dropped count
    /// is random); on CUDA unit and N:M dropout, whose kernels keep no mask, hold a full copy.
    pub fn held_bytes(&self) -> usize {
        self.saved.originals.iter().map(Saved::bytes).sum()
    }
}

/// The zeros of one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarSparsity {
    /// The variable's name in the `VarMap`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// How many of its elements are exactly zero (either sign).
    pub zeros: usize,
    /// How many elements it has.
    pub numel: usize,
    /// For an N:M config (or pruning at an N:M kind): whether the variable is exactly N:M.
    pub nm: Option<NmCheck>,
}

/// Whether a variable is N:M sparse ([`crate::is_nm_sparse`]): at most `n` non-zeros in
/// every group of `m`, the pattern that 2:4 sparse tensor cores take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NmCheck {
    /// Non-zeros allowed per group.
    pub n: usize,
    /// The group size.
    pub m: usize,
    /// Whether every group holds at most `n` non-zeros.
    pub holds: bool,
}

impl VarSparsity {
    /// `zeros / numel` (0 for an empty tensor).
    pub fn fraction(&self) -> f64 {
        if self.numel == 0 {
            0.0
        } else {
            self.zeros as f64 / self.numel as f64
        }
    }
}

/// The sparsity of the selected variables, per variable and in total; prints as a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparsityReport {
    /// One row per selected variable, in name order.
    pub vars: Vec<VarSparsity>,
}

impl SparsityReport {
    /// All the selected variables together (name `total`, an empty shape).
    pub fn total(&self) -> VarSparsity {
        VarSparsity {
            name: "total".into(),
            shape: vec![],
            zeros: self.vars.iter().map(|v| v.zeros).sum(),
            numel: self.vars.iter().map(|v| v.numel).sum(),
            nm: self.total_nm(),
        }
    }

    /// The N:M check of all the variables together: when every one has a check of the same
    /// pattern, whether all hold.
    fn total_nm(&self) -> Option<NmCheck> {
        let first = self.vars.first()?.nm?;
        self.vars.iter().try_fold(first, |acc, v| match v.nm {
            Some(c) if (c.n, c.m) == (acc.n, acc.m) => Some(NmCheck {
                holds: acc.holds && c.holds,
                ..acc
            }),
            _ => None,
        })
    }
}

impl fmt::Display for SparsityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        let width = self
            .vars
            .iter()
            .map(|v| v.name.len())
            .chain([8])
            .max()
            .unwrap_or(8);
        // The N:M column only when a variable has an N:M check.
        let nm_column = self.vars.iter().any(|v| v.nm.is_some());
        let nm = |v: &VarSparsity| match (nm_column, v.nm) {
            (false, _) => String::new(),
            (true, None) => format!("  {:>8}", ""),
            (true, Some(c)) => {
                let exact = format!("{}:{} {}", c.n, c.m, if c.holds { "yes" } else { "no" });
                format!("  {exact:>8}")
            }
        };
        write!(
            f,
            "{:<width$}  {:>18}  {:>12}  {:>12}  {:>8}",
            "variable", "shape", "elements", "zeros", "sparsity"
        )?;
        if nm_column {
            write!(f, "  {:>8}", "N:M")?;
        }
        writeln!(f)?;
        for v in self.vars.iter().chain([&total]) {
            let shape = if v.shape.is_empty() {
                String::new()
            } else {
                format!("{:?}", v.shape)
            };
            writeln!(
                f,
                "{:<width$}  {:>18}  {:>12}  {:>12}  {:>7.2}%{}",
                v.name,
                shape,
                v.numel,
                v.zeros,
                100.0 * v.fraction(),
                nm(v)
            )?;
        }
        Ok(())
    }
}
