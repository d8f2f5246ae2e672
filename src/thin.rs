//! Thinning: after unit pruning, the dead units (filters whose weights are all zero) still
//! cost compute. [`thin_units`] removes them physically: the rows of the layer's weight and
//! bias, and the matching input columns (or channels) of the next layer's weight, giving
//! smaller dense tensors that compute the same function.

use candle_core::{bail, DType, Result, Tensor};

/// The layers that remain after [`thin_units`].
#[derive(Debug, Clone)]
pub struct Thinned {
    /// The layer's weight without the dead units' rows.
    pub weight: Tensor,
    /// The layer's bias without the dead units' entries.
    pub bias: Option<Tensor>,
    /// The next layer's weight without the dead units' inputs.
    pub next_weight: Tensor,
    /// The next layer's bias, with the dead units' constant outputs folded in when any is
    /// not zero.
    pub next_bias: Option<Tensor>,
    /// The indices of the units that were kept, in order.
    pub kept: Vec<usize>,
}

/// Removes the dead units of a layer: the filters of `weight` (`[out, ...]`, a Linear's or a
/// Conv2d's) whose elements are all zero (either sign).
///
/// - `bias`: the layer's `[out]` bias, if any;
/// - `next_weight`: the next layer's weight, a Linear's `[out2, out * g]` (`g` inputs per unit,
///   e.g. the `h * w` positions of a channel flattened after a convolution, 1 after a Linear)
///   or a Conv2d's `[out2, out, kh, kw]`; `next_bias` its `[out2]` bias;
/// - `activation`: what the model applies between the two layers (pooling included, which
///   keeps a constant constant). A dead unit outputs the constant `activation(bias_i)` (or
///   `activation(0)`); where that is not zero its contribution is folded into the next
///   layer's bias, which is exact for a next Linear and for a next convolution without
///   padding. When every dead unit's output is zero (e.g. ReLU of a non-positive bias or no
///   bias) nothing is folded.
///
/// ```
/// use candle_core::{Device, Module, Tensor};
/// use candle_nn::Linear;
/// use candle_targeted_dropout::{prune_units, thin_units};
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// let w1 = prune_units(&Tensor::randn(0f32, 1.0, (8, 5), &dev)?, 0.5)?; // 4 dead units
/// let b1 = Tensor::randn(0f32, 1.0, 8, &dev)?;
/// let (w2, b2) = (Tensor::randn(0f32, 1.0, (3, 8), &dev)?, Tensor::zeros(3, candle_core::DType::F32, &dev)?);
/// let t = thin_units(&w1, Some(&b1), &w2, Some(&b2), |x| x.relu())?;
/// assert_eq!((t.weight.dims(), t.next_weight.dims()), (&[4, 5][..], &[3, 4][..]));
/// let x = Tensor::randn(0f32, 1.0, (2, 5), &dev)?;
/// let before = Linear::new(w2, Some(b2)).forward(&Linear::new(w1, Some(b1)).forward(&x)?.relu()?)?;
/// let after = Linear::new(t.next_weight, t.next_bias)
///     .forward(&Linear::new(t.weight, t.bias).forward(&x)?.relu()?)?;
/// assert!((before - after)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
/// # Ok(()) }
/// ```
pub fn thin_units(
    weight: &Tensor,
    bias: Option<&Tensor>,
    next_weight: &Tensor,
    next_bias: Option<&Tensor>,
    activation: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Thinned> {
    let op = "thin_units";
    if weight.rank() < 2 {
        bail!(
            "{op}: the weight must have rank >= 2 ([out, ...]), got {:?}",
            weight.dims()
        )
    }
    let out = weight.dim(0)?;
    if let Some(b) = bias {
        if b.dims() != [out] {
            bail!("{op}: the bias must be [{out}], got {:?}", b.dims())
        }
    }
    let out2 = match next_weight.dims() {
        &[o2, i2] if out > 0 && i2 % out == 0 => o2,
        &[o2, c, _, _] if c == out => o2,
        d => bail!(
            "{op}: the next weight must be a Linear's [out2, {out} * g] or a Conv2d's [out2, {out}, kh, kw], got {d:?}"
        ),
    };
    if let Some(b) = next_bias {
        if b.dims() != [out2] {
            bail!("{op}: the next bias must be [{out2}], got {:?}", b.dims())
        }
    }
    let n = weight.elem_count() / out.max(1);
    let zeros: Vec<u32> = weight
        .flatten_from(1)?
        .eq(0.0)?
        .to_dtype(DType::U32)?
        .sum(1)?
        .to_vec1()?;
    let (kept, dead): (Vec<usize>, Vec<usize>) = (0..out).partition(|&i| zeros[i] as usize != n);
    if kept.is_empty() {
        bail!("{op}: all {out} units are dead; the layer is a constant, remove it by hand")
    }
    let dev = weight.device();
    let index = |ids: &[usize]| {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let len = ids.len();
        Tensor::from_vec(ids, len, dev)
    };
    let keep = index(&kept)?;
    // The next weight with one axis per unit: [out2, out, rest].
    let next3 = next_weight.reshape((out2, out, ()))?;
    let mut next_bias = next_bias.cloned();
    if !dead.is_empty() {
        let dead_ix = index(&dead)?;
        let pre = match bias {
            Some(b) => b.index_select(&dead_ix, 0)?,
            None => Tensor::zeros(dead.len(), weight.dtype(), dev)?,
        };
        let consts = activation(&pre)?;
        let any = consts
            .ne(0.0)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()?;
        if any > 0 {
            // Each dead unit feeds the constant c_i to its `rest` inputs of the next layer.
            let cols = next3.index_select(&dead_ix, 1)?.sum(2)?; // [out2, dead]
            let fold = cols
                .matmul(&consts.to_dtype(cols.dtype())?.unsqueeze(1)?)?
                .squeeze(1)?;
            next_bias = Some(match next_bias {
                Some(b) => (b + fold)?,
                None => fold,
            });
        }
    }
    let mut next_dims = next_weight.dims().to_vec();
    next_dims[1] = kept.len() * next_dims[1] / out;
    Ok(Thinned {
        weight: weight.index_select(&keep, 0)?,
        bias: bias.map(|b| b.index_select(&keep, 0)).transpose()?,
        next_weight: next3.index_select(&keep, 1)?.reshape(next_dims)?,
        next_bias,
        kept,
    })
}
