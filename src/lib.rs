//! # Targeted dropout for candle
//!
//! Targeted dropout (Gomez et al., "Learning Sparse Networks Using Targeted Dropout",
//! arXiv 1905.13678) puts magnitude pruning into training: at each step, in every filter,
//! the weights that pruning would remove are dropped at random, so the network learns not to
//! depend on them and survives the pruning done after training.
//!
//! The story of the crate, module by module:
//! - [`philox`]: the counter-based generator whose draw for element `e` depends only on
//!   `(seed, offset, e)`, so that every device draws the same mask;
//! - [`select`]: the per-filter radix select that finds the k smallest magnitudes in linear
//!   time, the algorithm the CUDA kernels share;
//! - [`cpu`]: the host implementation of every op; `ops`: the candle custom ops (CPU and,
//!   with the `cuda` feature, CUDA), with autograd, and the public functions below;
//! - [`layers`] and [`schedule`]: what a model needs to train with it;
//! - [`reference`]: the full-sort oracle the tests compare against.
//!
//! The exact contract, down to the bits, is in `DESIGN.md` of the repository.
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

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod layers;
mod ops;
pub mod philox;
pub mod reference;
pub mod schedule;
pub mod select;

pub use layers::{conv2d, linear, Conv2d, Linear, TargetedDropout};
pub use ops::{
    generator_state, prune_units, prune_weights, set_seed, sparsity, targeted_dropout_mask,
    targeted_unit_dropout, targeted_unit_dropout_seeded, targeted_weight_dropout,
    targeted_weight_dropout_seeded, DropoutKind,
};
pub use schedule::RampSchedule;
