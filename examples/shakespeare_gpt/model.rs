//! A small decoder-only transformer (GPT) over bytes, from candle_nn pieces that all have a
//! backward pass.
//!
//! candle-nn 0.11's fused kernels have none: `RmsNorm` on a contiguous input
//! (`ops::rms_norm`), `LayerNorm` with a bias (`ops::layer_norm`) and `ops::softmax_last_dim`
//! run through `apply_op*_no_bwd`, so a model built from them trains with the gradient cut at
//! every norm and its norm weights frozen, without an error. Here the norms are
//! `LayerNorm::rms_norm` (the unfused path, plain tensor ops) and the attention uses
//! `ops::softmax` (max, exp, sum: plain tensor ops).
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{
    embedding, linear, linear_no_bias, ops::softmax, Embedding, Init, LayerNorm, Linear, VarBuilder,
};

/// The model's sizes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Bytes: 256.
    pub vocab: usize,
    /// Tokens of context (the learned position table's length).
    pub context: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Width of the MLP's hidden layer.
    pub d_ff: usize,
}

/// Root-mean-square norm, `LayerNorm::rms_norm`: the unfused path, which has a backward.
fn rms_norm(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
    Ok(LayerNorm::rms_norm(weight, 1e-5))
}

struct Block {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (d, a, m) = (cfg.d_model, vb.pp("attn"), vb.pp("mlp"));
        Ok(Self {
            norm1: rms_norm(d, vb.pp("norm1"))?,
            q: linear_no_bias(d, d, a.pp("q"))?,
            k: linear_no_bias(d, d, a.pp("k"))?,
            v: linear_no_bias(d, d, a.pp("v"))?,
            o: linear_no_bias(d, d, a.pp("o"))?,
            norm2: rms_norm(d, vb.pp("norm2"))?,
            fc1: linear_no_bias(d, cfg.d_ff, m.pp("fc1"))?,
            fc2: linear_no_bias(cfg.d_ff, d, m.pp("fc2"))?,
            heads: cfg.heads,
        })
    }

    /// `x`: `[b, t, d]`; `mask`: `[t, t]`, 0 on and below the diagonal and -inf above it.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let h = self.norm1.forward(x)?;
        let split = |l: &Linear| -> Result<Tensor> {
            l.forward(&h)?
                .reshape((b, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(&self.q)?, split(&self.k)?, split(&self.v)?);
        let att = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
        let att = softmax(&att.broadcast_add(mask)?, D::Minus1)?;
        let y = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        let x = (x + self.o.forward(&y)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu()?;
        x + self.fc2.forward(&h)?
    }
}

/// Byte embedding, learned positions, pre-norm blocks, a final norm and the logits layer.
pub struct Gpt {
    tok: Embedding,
    pos: Embedding,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
    cfg: Config,
}

impl Gpt {
    pub fn new(cfg: Config, vb: VarBuilder) -> Result<Self> {
        if cfg.heads == 0 || !cfg.d_model.is_multiple_of(cfg.heads) {
            candle_core::bail!(
                "d_model {} is not a multiple of the number of heads {}",
                cfg.d_model,
                cfg.heads
            )
        }
        Ok(Self {
            tok: embedding(cfg.vocab, cfg.d_model, vb.pp("tok_emb"))?,
            pos: embedding(cfg.context, cfg.d_model, vb.pp("pos_emb"))?,
            blocks: (0..cfg.layers)
                .map(|i| Block::new(&cfg, vb.pp(format!("h{i}"))))
                .collect::<Result<_>>()?,
            norm: rms_norm(cfg.d_model, vb.pp("norm"))?,
            head: linear(cfg.d_model, cfg.vocab, vb.pp("head"))?,
            cfg,
        })
    }

    pub fn config(&self) -> Config {
        self.cfg
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]` (u32), `t <= context`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t > self.cfg.context {
            candle_core::bail!("{t} tokens, more than the context of {}", self.cfg.context)
        }
        let dev = ids.device();
        let pos = Tensor::arange(0u32, t as u32, dev)?;
        let mut x = self
            .tok
            .forward(ids)?
            .broadcast_add(&self.pos.forward(&pos)?)?;
        let mask = causal_mask(t, dev)?;
        for b in &self.blocks {
            x = b.forward(&x, &mask)?;
        }
        self.head.forward(&self.norm.forward(&x)?)
    }

    /// The names of the projection matrices: what targeted dropout and pruning act on (the
    /// embeddings, the norms and the logits layer are left alone).
    pub fn is_projection(name: &str) -> bool {
        (name.contains(".attn.") || name.contains(".mlp.")) && name.ends_with(".weight")
    }
}

fn causal_mask(t: usize, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (t, t), dev)
}

/// Mean cross-entropy of the next byte, in nats, over every position of `ids` `[b, t + 1]`.
pub fn loss(model: &Gpt, ids: &Tensor) -> Result<Tensor> {
    let (b, t1) = ids.dims2()?;
    let x = ids.narrow(1, 0, t1 - 1)?;
    let y = ids.narrow(1, 1, t1 - 1)?.flatten_all()?;
    let logits = model.forward(&x)?;
    let logits = logits.reshape((b * (t1 - 1), model.cfg.vocab))?;
    candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, &y)
}
