//! Targeted dropout on a plain candle_nn model, through its VarMap: train a small MLP on the
//! shipped MNIST subset, prune it, print the sparsity, save it as safetensors, reload it and
//! check its accuracy. `cargo run --release --example quickstart`
#[path = "mnist_prune/idx.rs"]
mod idx;

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, loss::cross_entropy, Linear, Optimizer, VarBuilder, VarMap, SGD};
use candle_targeted_dropout::{set_seed, TargetedDropout, VarMapDropout};

struct Mlp(Linear, Linear, Linear);

impl Mlp {
    fn new(vb: VarBuilder) -> Result<Self> {
        let l = |i, o, name| linear(i, o, vb.pp(name));
        Ok(Mlp(
            l(784, 256, "fc1")?,
            l(256, 128, "fc2")?,
            l(128, 10, "head")?,
        ))
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.0.forward(x)?.relu()?;
        self.2.forward(&self.1.forward(&h)?.relu()?)
    }
}

fn tensors(s: &idx::Split, dev: &Device) -> Result<(Tensor, Tensor)> {
    let x = Tensor::from_slice(&s.images, (s.count, 784), dev)?;
    Ok((
        x,
        Tensor::from_slice(&s.labels, s.count, dev)?.to_dtype(DType::U32)?,
    ))
}

fn accuracy(m: &Mlp, x: &Tensor, y: &Tensor) -> Result<f64> {
    let hits = m
        .forward(x)?
        .argmax(D::Minus1)?
        .eq(y)?
        .to_dtype(DType::F64)?
        .sum_all()?;
    Ok(100.0 * hits.to_scalar::<f64>()? / y.dim(0)? as f64)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist-5k");
    let (train, test) = (
        idx::load(data.as_ref(), "train")?,
        idx::load(data.as_ref(), "t10k")?,
    );
    let ((xs, ys), (xt, yt)) = (tensors(&train, &dev)?, tensors(&test, &dev)?);
    let varmap = VarMap::new();
    let model = Mlp::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;

    // Targeted weight dropout on every weight matrix but the head's: no change to the model.
    let vd = VarMapDropout::new(&varmap, |name, w| {
        (name.ends_with(".weight") && w.rank() >= 2 && !name.starts_with("head"))
            .then(|| TargetedDropout::weight(0.75, 0.66).unwrap())
    })?;
    set_seed(0);
    let mut opt = SGD::new(varmap.all_vars(), 0.1)?;
    for epoch in 0..8 {
        for b in (0..train.count).step_by(64) {
            let n = 64.min(train.count - b);
            let step = vd.apply()?; // the selected weights hold their dropped values
            let loss = cross_entropy(&model.forward(&xs.narrow(0, b, n)?)?, &ys.narrow(0, b, n)?)?;
            let mut grads = loss.backward()?;
            step.finish(&mut grads)?; // gradients masked, weights restored
            opt.step(&grads)?;
        }
        println!(
            "epoch {epoch}: test accuracy {:.1}%",
            accuracy(&model, &xt, &yt)?
        );
    }

    let dense = accuracy(&model, &xt, &yt)?;
    let report = vd.prune()?; // the targeted 75% of every filter removed, in place
    let pruned = accuracy(&model, &xt, &yt)?;
    println!("\n{report}\naccuracy: {dense:.1}% dense, {pruned:.1}% pruned");

    let path = std::env::temp_dir().join("quickstart-pruned.safetensors");
    varmap.save(&path)?;
    let mut reloaded_map = VarMap::new();
    let reloaded = Mlp::new(VarBuilder::from_varmap(&reloaded_map, DType::F32, &dev))?;
    reloaded_map.load(&path)?;
    let again = accuracy(&reloaded, &xt, &yt)?;
    println!("saved to {} and reloaded: {again:.1}%", path.display());
    anyhow::ensure!(
        again == pruned,
        "the reloaded model differs: {again} vs {pruned}"
    );
    Ok(())
}
