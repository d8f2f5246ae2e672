//! # Targeted dropout for candle
//!
//! Targeted dropout (Gomez et al., "Learning Sparse Networks Using Targeted Dropout",
//! arXiv 1905.13678) puts magnitude pruning into training: at each step, in every filter,
//! the weights that pruning would remove are dropped at random, so the network learns not to
//! depend on them and survives the pruning done after training.
//!
//! The crate, module by module (the exact contract, down to the bits, is `DESIGN.md` of the
//! repository):
//! - `element`: the float types and their magnitude keys; `select`: the per-filter radix
//!   select that finds the k smallest magnitudes in linear time, the algorithm the CUDA
//!   kernels share;
//! - [`philox`]: the counter-based generator whose draw for element `e` depends only on
//!   `(seed, offset, e)`, so that every device draws the same mask; `generator`: the
//!   process-wide `(seed, offset)` of the plain functions;
//! - `op`: the op that both paths implement, `cpu` and `cuda` (feature `cuda`) its two
//!   implementations, `custom_op` the candle glue with autograd;
//! - `functions`: the public functions below, which validate their arguments and apply it;
//! - `layers` ([`Targeted`], [`TargetedDropout`]), `varmap` ([`VarMapDropout`]: any model
//!   through its `VarMap`, pruning and [`SparsityReport`]), `schedule` ([`RampSchedule`]) and `thin`
//!   ([`thin_units`]: removing pruned units): what training and deployment need.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use candle_targeted_dropout::{prune_weights, set_seed, targeted_weight_dropout};
//! # fn main() -> candle_core::Result<()> {
//! set_seed(0);
//! let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (64, 3 * 3 * 16), &Device::Cpu)?)?;
//! let dropped = targeted_weight_dropout(&w, 0.75, 0.5)?; // training
//! let loss = dropped.sqr()?.sum_all()?;
//! let grads = loss.backward()?; // zero exactly where the mask dropped
//! let pruned = prune_weights(&w, 0.75)?; // evaluation: 75% of each filter removed
//! # let _ = (grads, pruned); Ok(()) }
//! ```
#![warn(missing_docs)]

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod custom_op;
mod element;
mod functions;
mod generator;
mod layers;
mod op;
pub mod philox;
#[doc(hidden)]
pub mod reference;
mod schedule;
mod select;
mod thin;
mod varmap;

pub use functions::{
    prune_units, prune_weights, sparsity, targeted_dropout_many, targeted_dropout_many_seeded,
    targeted_dropout_mask, targeted_unit_dropout, targeted_unit_dropout_from_scores,
    targeted_unit_dropout_seeded, targeted_weight_dropout, targeted_weight_dropout_seeded,
    unit_scores,
};
pub use generator::{generator_state, set_generator_state, set_seed};
pub use layers::{
    conv1d, conv2d, embedding, linear, Conv1d, Conv2d, Embedding, Linear, Targeted,
    TargetedDropout, WithWeight,
};
pub use op::DropoutKind;
pub use schedule::RampSchedule;
pub use thin::{thin_units, Thinned};
pub use varmap::{DropoutStep, SparsityReport, VarMapDropout, VarSparsity};
