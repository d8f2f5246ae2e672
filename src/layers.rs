//! What a candle model needs to train with targeted dropout: a config that applies itself to
//! a weight, and `Linear` / `Conv2d` layers that apply it to theirs.

use crate::ops::{prune_units, prune_weights, targeted_unit_dropout, targeted_weight_dropout};
use crate::{DropoutKind, RampSchedule};
use candle_core::{bail, Module, ModuleT, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// Targeted dropout of one kind at `gamma` (the targeted fraction) and `alpha` (the drop
/// rate among the targeted).
///
/// In training it drops at random ([`targeted_weight_dropout`] or
/// [`targeted_unit_dropout`]); in evaluation it prunes the whole targeted set, as the paper's
/// code does.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use candle_targeted_dropout::TargetedDropout;
/// # fn main() -> candle_core::Result<()> {
/// let td = TargetedDropout::weight(0.5, 0.5)?;
/// let w = Tensor::new(&[[1f32, -0.1, 0.2, -3.0]], &Device::Cpu)?;
/// assert_eq!(td.apply(&w, false)?.to_vec2::<f32>()?, [[1.0, 0.0, 0.0, -3.0]]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetedDropout {
    pub kind: DropoutKind,
    pub gamma: f64,
    pub alpha: f64,
}

impl TargetedDropout {
    /// A config of `kind`; gamma and alpha must be in [0, 1].
    pub fn new(kind: DropoutKind, gamma: f64, alpha: f64) -> Result<Self> {
        for (name, v) in [("gamma", gamma), ("alpha", alpha)] {
            if !(0.0..=1.0).contains(&v) {
                bail!("TargetedDropout: {name} must be a number in [0, 1], got {v}")
            }
        }
        Ok(Self { kind, gamma, alpha })
    }

    pub fn weight(gamma: f64, alpha: f64) -> Result<Self> {
        Self::new(DropoutKind::Weight, gamma, alpha)
    }

    pub fn unit(gamma: f64, alpha: f64) -> Result<Self> {
        Self::new(DropoutKind::Unit, gamma, alpha)
    }

    /// The config that `schedule` gives at `step`, of this config's kind.
    pub fn at_step(&self, schedule: &RampSchedule, step: u64) -> Result<Self> {
        let (gamma, alpha) = schedule.at(step);
        Self::new(self.kind, gamma, alpha)
    }

    /// Random targeted dropout when `train`, pruning of the targeted set otherwise.
    pub fn apply(&self, w: &Tensor, train: bool) -> Result<Tensor> {
        match (self.kind, train) {
            (DropoutKind::Weight, true) => targeted_weight_dropout(w, self.gamma, self.alpha),
            (DropoutKind::Unit, true) => targeted_unit_dropout(w, self.gamma, self.alpha),
            (DropoutKind::Weight, false) => prune_weights(w, self.gamma),
            (DropoutKind::Unit, false) => prune_units(w, self.gamma),
        }
    }
}

/// A linear layer (`y = x W^T + b`, `W: [out, in]`) whose weight goes through targeted
/// dropout first, when it has one.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    pub dropout: Option<TargetedDropout>,
}

impl Linear {
    pub fn new(inner: candle_nn::Linear, dropout: Option<TargetedDropout>) -> Self {
        Self { inner, dropout }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

/// A [`Linear`] from `vb` (`weight` and `bias`, candle's default initialisation).
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
    dropout: Option<TargetedDropout>,
) -> Result<Linear> {
    Ok(Linear::new(
        candle_nn::linear(in_dim, out_dim, vb)?,
        dropout,
    ))
}

impl ModuleT for Linear {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match &self.dropout {
            None => self.inner.forward(xs),
            Some(td) => {
                let w = td.apply(self.inner.weight(), train)?;
                candle_nn::Linear::new(w, self.inner.bias().cloned()).forward(xs)
            }
        }
    }
}

/// A 2-d convolution (`W: [out, in, kh, kw]`) whose weight goes through targeted dropout
/// first, when it has one: filter `i` is `W[i]`, all its input channels and taps.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    pub dropout: Option<TargetedDropout>,
}

impl Conv2d {
    pub fn new(inner: candle_nn::Conv2d, dropout: Option<TargetedDropout>) -> Self {
        Self { inner, dropout }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

/// A [`Conv2d`] from `vb` (`weight` and `bias`, candle's default initialisation).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
    dropout: Option<TargetedDropout>,
) -> Result<Conv2d> {
    let inner = candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb)?;
    Ok(Conv2d::new(inner, dropout))
}

impl ModuleT for Conv2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match &self.dropout {
            None => self.inner.forward(xs),
            Some(td) => {
                let w = td.apply(self.inner.weight(), train)?;
                let conv =
                    candle_nn::Conv2d::new(w, self.inner.bias().cloned(), *self.inner.config());
                conv.forward(xs)
            }
        }
    }
}
