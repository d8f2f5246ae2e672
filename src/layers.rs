//! Targeted dropout on a layer's weight: the [`TargetedDropout`] config, which applies
//! itself to a weight (training: random; evaluation: pruning), and one generic wrapper,
//! [`Targeted`], that puts it on any module with a weight ([`WithWeight`]: candle-nn's
//! `Linear`, `Conv1d`, `Conv2d` and `Embedding`, or a module of your own). For a model whose
//! code you do not want to touch, see [`crate::VarMapDropout`].

use crate::config::TargetedDropout;
use crate::functions::{
    prune_units, prune_weights, targeted_unit_dropout, targeted_weight_dropout,
};
use crate::op::DropoutKind;
use crate::schedule::RampSchedule;
use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Conv1dConfig, Conv2dConfig, VarBuilder};

/// The config's two uses: at a step of a schedule, and on a weight.
impl TargetedDropout {
    /// The config that `schedule` gives at `step`, of this config's kind.
    pub fn at_step(&self, schedule: &RampSchedule, step: u64) -> Result<Self> {
        let (gamma, alpha) = schedule.at(step);
        Self::new(self.kind, gamma, alpha)
    }

    /// Random targeted dropout when `train` (one offset of the process-wide generator),
    /// pruning of the targeted set otherwise (no draws).
    pub fn apply(&self, w: &Tensor, train: bool) -> Result<Tensor> {
        match (self.kind, train) {
            (DropoutKind::Weight, true) => targeted_weight_dropout(w, self.gamma, self.alpha),
            (DropoutKind::Unit, true) => targeted_unit_dropout(w, self.gamma, self.alpha),
            (DropoutKind::Weight, false) => prune_weights(w, self.gamma),
            (DropoutKind::Unit, false) => prune_units(w, self.gamma),
        }
    }
}

/// A module whose weight targeted dropout can replace: filter `i` is `weight()[i]`.
pub trait WithWeight: Module {
    /// The weight, output dimension first.
    fn weight(&self) -> &Tensor;
    /// The same module with `w` in place of its weight (same shape).
    fn with_weight(&self, w: Tensor) -> Self;
}

impl WithWeight for candle_nn::Linear {
    fn weight(&self) -> &Tensor {
        candle_nn::Linear::weight(self)
    }
    fn with_weight(&self, w: Tensor) -> Self {
        candle_nn::Linear::new(w, self.bias().cloned())
    }
}

impl WithWeight for candle_nn::Conv1d {
    fn weight(&self) -> &Tensor {
        candle_nn::Conv1d::weight(self)
    }
    fn with_weight(&self, w: Tensor) -> Self {
        candle_nn::Conv1d::new(w, self.bias().cloned(), *self.config())
    }
}

impl WithWeight for candle_nn::Conv2d {
    fn weight(&self) -> &Tensor {
        candle_nn::Conv2d::weight(self)
    }
    fn with_weight(&self, w: Tensor) -> Self {
        candle_nn::Conv2d::new(w, self.bias().cloned(), *self.config())
    }
}

/// An embedding's filters are its rows: one vector per token.
impl WithWeight for candle_nn::Embedding {
    fn weight(&self) -> &Tensor {
        self.embeddings()
    }
    fn with_weight(&self, w: Tensor) -> Self {
        candle_nn::Embedding::new(w, self.hidden_size())
    }
}

/// A module whose weight goes through targeted dropout first, when it has a config:
/// `forward_t(x, true)` drops at random, `forward_t(x, false)` prunes (at every call;
/// [`Targeted::pruned`] prunes once).
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_targeted_dropout::{linear, TargetedDropout};
/// # fn main() -> candle_core::Result<()> {
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let layer = linear(8, 4, Some(TargetedDropout::weight(0.5, 0.5)?), vb.pp("fc"))?;
/// let y = layer.forward_t(&Tensor::ones((2, 8), DType::F32, &Device::Cpu)?, true)?;
/// assert_eq!(y.dims(), [2, 4]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Targeted<M> {
    inner: M,
    /// The config applied to the weight; `None` passes the module through unchanged.
    pub dropout: Option<TargetedDropout>,
}

/// A `candle_nn::Linear` with targeted dropout on its `[out, in]` weight.
pub type Linear = Targeted<candle_nn::Linear>;
/// A `candle_nn::Conv1d` with targeted dropout on its `[out, in, k]` weight.
pub type Conv1d = Targeted<candle_nn::Conv1d>;
/// A `candle_nn::Conv2d` with targeted dropout on its `[out, in, kh, kw]` weight.
pub type Conv2d = Targeted<candle_nn::Conv2d>;
/// A `candle_nn::Embedding` with targeted dropout on its `[vocab, hidden]` table.
pub type Embedding = Targeted<candle_nn::Embedding>;

impl<M: WithWeight> Targeted<M> {
    /// `inner` with `dropout` on its weight.
    pub fn new(inner: M, dropout: Option<TargetedDropout>) -> Self {
        Self { inner, dropout }
    }

    /// The wrapped module, with its original weight.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The original (undropped) weight.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The inner module with its weight pruned as evaluation prunes it (the config's kind and
    /// gamma: the whole targeted set), computed once: evaluate with the returned module
    /// instead of `forward_t(x, false)`, which prunes the weight again at every call. Without
    /// a config, the inner module unchanged.
    ///
    /// ```
    /// use candle_core::{DType, Device, Module, ModuleT, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use candle_targeted_dropout::{linear, TargetedDropout};
    /// # fn main() -> candle_core::Result<()> {
    /// let vm = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    /// let layer = linear(8, 4, Some(TargetedDropout::weight(0.5, 0.5)?), vb.pp("fc"))?;
    /// let pruned = layer.pruned()?; // a candle_nn::Linear with half of each row zeroed
    /// let x = Tensor::ones((2, 8), DType::F32, &Device::Cpu)?;
    /// let (a, b) = (pruned.forward(&x)?, layer.forward_t(&x, false)?);
    /// assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    /// # Ok(()) }
    /// ```
    pub fn pruned(&self) -> Result<M> {
        let w = self.inner.weight();
        let w = match &self.dropout {
            Some(td) => td.apply(w, false)?,
            None => w.clone(),
        };
        Ok(self.inner.with_weight(w))
    }
}

impl Linear {
    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Conv1d {
    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Conv2d {
    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl<M: WithWeight> ModuleT for Targeted<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match &self.dropout {
            None => self.inner.forward(xs),
            Some(td) => {
                let w = td.apply(self.inner.weight(), train)?;
                self.inner.with_weight(w).forward(xs)
            }
        }
    }
}

/// A [`Linear`] from `vb` (`weight` and `bias`, candle's default initialisation).
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    dropout: Option<TargetedDropout>,
    vb: VarBuilder,
) -> Result<Linear> {
    Ok(Targeted::new(
        candle_nn::linear(in_dim, out_dim, vb)?,
        dropout,
    ))
}

/// A [`Conv1d`] from `vb` (`weight` and `bias`, candle's default initialisation).
pub fn conv1d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv1dConfig,
    dropout: Option<TargetedDropout>,
    vb: VarBuilder,
) -> Result<Conv1d> {
    let inner = candle_nn::conv1d(in_channels, out_channels, kernel_size, cfg, vb)?;
    Ok(Targeted::new(inner, dropout))
}

/// A [`Conv2d`] from `vb` (`weight` and `bias`, candle's default initialisation).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    dropout: Option<TargetedDropout>,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let inner = candle_nn::conv2d(in_channels, out_channels, kernel_size, cfg, vb)?;
    Ok(Targeted::new(inner, dropout))
}

/// An [`Embedding`] from `vb` (`weight`, candle's default initialisation).
pub fn embedding(
    in_size: usize,
    out_size: usize,
    dropout: Option<TargetedDropout>,
    vb: VarBuilder,
) -> Result<Embedding> {
    Ok(Targeted::new(
        candle_nn::embedding(in_size, out_size, vb)?,
        dropout,
    ))
}
