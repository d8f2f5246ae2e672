//! Train with targeted dropout, prune, and see the paper's effect on real digits.
//!
//! `cargo run --release --example mnist_prune` trains six copies of LeNet-300-100 on the
//! 5,000-image MNIST subset in `data/mnist-5k` (no dropout; targeted weight dropout;
//! targeted unit dropout; ramped targeted weight dropout; 2:4 targeted dropout at a fixed
//! alpha and with alpha ramped), then prunes each one per filter at increasing rates, by
//! units, and to the N:M patterns of sparse tensor cores (2:4, 1:4, 4:8), and prints the test
//! accuracy: the networks trained with targeted dropout keep their accuracy where the plain
//! one collapses, and the 2:4-trained ones keep it at 2:4. The models are plain candle_nn
//! layers: targeted dropout reaches them through their `VarMap` ([`VarMapDropout`]), with no
//! change to the model's code. Then the unit-dropout model, 70% of its units pruned, is
//! thinned (the dead units removed) and timed. Everything is seeded: the same command prints
//! the same tables. `--help` lists the flags.
#[path = "../common/mod.rs"]
mod common;
mod idx;

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Module, Tensor, Var, D};
use candle_nn::{conv2d, linear, loss::cross_entropy, Conv2d, Linear, VarBuilder, VarMap};
use candle_targeted_dropout::{set_seed, thin_units, DropoutKind, TargetedDropout, VarMapDropout};
use clap::{Parser, ValueEnum};
use common::{DeviceArg, Init, Recipe, Rng, Row, UNIT_RATES, WEIGHT_RATES};
use plotters::prelude::SeriesLabelPosition;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Model {
    /// LeNet-300-100: 784-300-100-10, the classic network of the pruning literature.
    Mlp,
    /// A LeNet-5-style CNN: conv 5x5x6, pool, conv 5x5x16, pool, 120, 84, 10.
    Cnn,
}

/// What the IDX files hold: a label for the tables (the format is the same).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Dataset {
    Mnist,
    /// Zalando's Fashion-MNIST (e.g. Debian's `dataset-fashion-mnist`:
    /// `--data-dir /usr/share/datasets/fashion-mnist`).
    Fashion,
}

impl Dataset {
    fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "MNIST",
            Dataset::Fashion => "Fashion-MNIST",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Train with targeted dropout, prune, and compare with plain training")]
struct Args {
    /// Folder with MNIST's IDX files (train-*/t10k-*, gzipped or not).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist-5k"))]
    data_dir: PathBuf,
    /// The data set in `--data-dir`, named in the tables.
    #[arg(long, value_enum, default_value_t = Dataset::Mnist)]
    dataset: Dataset,
    #[arg(long, value_enum, default_value_t = Model::Mlp)]
    model: Model,
    /// Training epochs (40 keeps the four models under 3 minutes on 2 cores; the effect
    /// grows with 60).
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Clip the gradient's global L2 norm to this value (0: no clipping).
    #[arg(long, default_value_t = 0.0)]
    clip: f64,
    #[command(flatten)]
    td: common::TdArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Output folder for the CSV files and the plot.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/mnist_prune"))]
    out: PathBuf,
}

/// The N:M patterns of the N:M table: 2:4 (sparse tensor cores), and 1:4 and 4:8 to compare.
const NM_PATTERNS: [(usize, usize); 3] = [(2, 4), (1, 4), (4, 8)];

/// The network, plain candle_nn layers: convolutions, hidden layers and the logits layer.
struct Net {
    convs: Vec<Conv2d>,
    hidden: Vec<Linear>,
    logits: Linear,
}

impl Net {
    fn new(model: Model, vb: VarBuilder) -> Result<Self> {
        Ok(match model {
            Model::Mlp => Net {
                convs: vec![],
                hidden: vec![
                    linear(784, 300, vb.pp("fc1"))?,
                    linear(300, 100, vb.pp("fc2"))?,
                ],
                logits: linear(100, 10, vb.pp("fc3"))?,
            },
            Model::Cnn => Net {
                convs: vec![
                    conv2d(1, 6, 5, Default::default(), vb.pp("c1"))?,
                    conv2d(6, 16, 5, Default::default(), vb.pp("c2"))?,
                ],
                hidden: vec![
                    linear(256, 120, vb.pp("fc1"))?,
                    linear(120, 84, vb.pp("fc2"))?,
                ],
                logits: linear(84, 10, vb.pp("fc3"))?,
            },
        })
    }

    /// The names of the weights that targeted dropout and pruning act on: every layer's
    /// weight but the logits layer's, as in the paper.
    fn prunable(model: Model) -> &'static [&'static str] {
        match model {
            Model::Mlp => &["fc1.weight", "fc2.weight"],
            Model::Cnn => &["c1.weight", "c2.weight", "fc1.weight", "fc2.weight"],
        }
    }

    /// The targeted dropout of the prunable weights of `vm`. An N:M config goes to the
    /// prunable weights whose input axis its `m` divides (a 1- or 6-channel convolution has
    /// no groups of four); the others stay dense.
    fn dropout(model: Model, vm: &VarMap, td: TargetedDropout) -> Result<VarMapDropout> {
        let names = Net::prunable(model);
        Ok(VarMapDropout::new(vm, |name, w| {
            let fits = match td.kind() {
                DropoutKind::Nm { m, .. } => w.dim(1).is_ok_and(|c| c % m == 0),
                _ => true,
            };
            (names.contains(&name) && fits).then_some(td)
        })?)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        if !self.convs.is_empty() {
            h = h.reshape((x.dim(0)?, 1, 28, 28))?;
            for c in &self.convs {
                h = c.forward(&h)?.relu()?.max_pool2d(2)?;
            }
            h = h.flatten_from(1)?;
        }
        for l in &self.hidden {
            h = l.forward(&h)?.relu()?;
        }
        self.logits.forward(&h)
    }

    /// The same network without its dead units (filters whose weights are all zero): each
    /// layer thinned with the next one, the dead units' constant outputs folded forward.
    fn thinned(&self) -> Result<Net> {
        let mut layers: Vec<(Tensor, Option<Tensor>)> = self
            .convs
            .iter()
            .map(|c| (c.weight().clone(), c.bias().cloned()))
            .chain(
                self.hidden
                    .iter()
                    .chain([&self.logits])
                    .map(|l| (l.weight().clone(), l.bias().cloned())),
            )
            .collect();
        for i in 0..layers.len() - 1 {
            let (w, b) = &layers[i];
            let (nw, nb) = &layers[i + 1];
            let t = thin_units(w, b.as_ref(), nw, nb.as_ref(), |x| x.relu())?;
            layers[i] = (t.weight, t.bias);
            layers[i + 1] = (t.next_weight, t.next_bias);
        }
        let mut it = layers.into_iter();
        let convs = self
            .convs
            .iter()
            .zip(it.by_ref())
            .map(|(c, (w, b))| Conv2d::new(w, b, *c.config()))
            .collect();
        let mut rest: Vec<Linear> = it.map(|(w, b)| Linear::new(w, b)).collect();
        let logits = rest.pop().context("a logits layer")?;
        Ok(Net {
            convs,
            hidden: rest,
            logits,
        })
    }
}

/// He-normal weights and zero biases from `seed` (candle's own CPU generator cannot be
/// seeded), set in name order so that the run repeats itself.
fn init(vm: &VarMap, seed: u64, dev: &Device) -> Result<Vec<Var>> {
    common::init_vars(vm, seed, dev, |name, dims| {
        if name.ends_with("weight") {
            let numel: usize = dims.iter().product();
            Init::Normal((2.0 / (numel / dims[0]) as f64).sqrt())
        } else {
            Init::Const(0.0)
        }
    })
}

fn batch(split: &idx::Split, ids: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(ids.len() * 784);
    let mut y = Vec::with_capacity(ids.len());
    for &i in ids {
        x.extend_from_slice(&split.images[i * 784..(i + 1) * 784]);
        y.push(split.labels[i] as u32);
    }
    Ok((
        Tensor::from_vec(x, (ids.len(), 784), dev)?,
        Tensor::from_vec(y, ids.len(), dev)?,
    ))
}

fn accuracy(net: &Net, split: &idx::Split, dev: &Device) -> candle_core::Result<f64> {
    let mut correct = 0u64;
    let ids: Vec<usize> = (0..split.count).collect();
    for chunk in ids.chunks(1000) {
        let (x, y) = batch(split, chunk, dev).map_err(candle_core::Error::msg)?;
        let pred = net.forward(&x)?.argmax(D::Minus1)?;
        correct += pred
            .eq(&y)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()? as u64;
    }
    Ok(100.0 * correct as f64 / split.count as f64)
}

/// SGD with momentum and weight decay: `v = mu v + (g + wd w)`, `w -= lr v`.
struct Sgd {
    vars: Vec<Var>,
    velocity: Vec<Tensor>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    clip: f64,
}

impl Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let mut gs = Vec::with_capacity(self.vars.len());
        for v in &self.vars {
            gs.push(match grads.get(v) {
                Some(g) => g.clone(),
                None => v.zeros_like()?,
            });
        }
        if self.clip > 0.0 {
            let mut sq = 0.0;
            for g in &gs {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
            let norm = sq.sqrt();
            if norm > self.clip {
                let s = self.clip / norm;
                gs = gs
                    .iter()
                    .map(|g| g * s)
                    .collect::<candle_core::Result<_>>()?;
            }
        }
        for ((var, g), vel) in self.vars.iter().zip(gs).zip(self.velocity.iter_mut()) {
            // Nothing of this step may outlive it: the velocity is state across steps, and a
            // velocity computed from the variable (a tracked tensor) would keep this step's
            // graph alive, and through the previous velocity every earlier step's: memory
            // growing with the number of steps. So the update works on a detached view.
            let w = var.as_tensor().detach();
            let d = (g.detach() + (&w * self.weight_decay)?)?;
            *vel = ((&*vel * self.momentum)? + d)?.detach();
            var.set(&(w - (&*vel * self.lr)?)?)?;
        }
        Ok(())
    }
}

/// Trains one network with `recipe` from the common seed; returns it with its variables.
fn train(
    args: &Args,
    recipe: Recipe,
    name: &str,
    data: &(idx::Split, idx::Split),
    dev: &Device,
) -> Result<(Net, VarMap)> {
    let (train_set, test_set) = data;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let net = Net::new(args.model, vb)?;
    let vars = init(&vm, args.seed, dev)?;
    set_seed(args.seed);
    let velocity = vars
        .iter()
        .map(|v| v.zeros_like())
        .collect::<candle_core::Result<_>>()?;
    let mut opt = Sgd {
        vars,
        velocity,
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        clip: args.clip,
    };
    let steps_per_epoch = train_set.count.div_ceil(args.batch_size);
    let total = (steps_per_epoch * args.epochs) as u64;
    let pb = common::progress(name, args.epochs as u64, "epochs");
    // Targeted dropout on the model's variables; the model itself is plain candle_nn.
    let mut dropout = match recipe.at(0)? {
        None => None,
        Some(td) => Some(Net::dropout(args.model, &vm, td)?),
    };
    let mut rng = Rng(args.seed ^ 0xda7a);
    let mut ids: Vec<usize> = (0..train_set.count).collect();
    let mut step = 0u64;
    for _ in 0..args.epochs {
        for i in (1..ids.len()).rev() {
            ids.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut loss_sum = 0.0;
        for chunk in ids.chunks(args.batch_size) {
            if let (Recipe::Ramp(s, td), Some(vd)) = (recipe, dropout.as_mut()) {
                vd.set_all(td.at_step(&s, step)?)?;
            }
            let (x, y) = batch(train_set, chunk, dev)?;
            // The selected weights hold their dropped values from here to `finish`.
            let td_step = dropout.as_ref().map(|vd| vd.apply()).transpose()?;
            let loss = cross_entropy(&net.forward(&x)?, &y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let mut grads = loss.backward()?;
            if let Some(s) = td_step {
                s.finish(&mut grads)?;
            }
            opt.step(&grads)?;
            step += 1;
        }
        let acc = accuracy(&net, test_set, dev)?;
        pb.set_message(format!(
            "loss {:.4}  test acc {acc:.2}%",
            loss_sum / steps_per_epoch as f64
        ));
        pb.inc(1);
    }
    pb.finish();
    debug_assert_eq!(step, total);
    Ok((net, vm))
}

/// Test accuracy with the prunable layers dense, then pruned to each N:M pattern (the layers
/// whose input axis the pattern's m divides; the others stay dense); the weights are
/// restored.
fn nm_accuracy(
    model: Model,
    net: &Net,
    vm: &VarMap,
    test: &idx::Split,
    dev: &Device,
) -> Result<Vec<f64>> {
    let mut acc = vec![accuracy(net, test, dev)?];
    for (n, m) in NM_PATTERNS {
        let td = TargetedDropout::nm(n, m, 0.0)?;
        let vd = Net::dropout(model, vm, td)?;
        acc.push(vd.with_pruned(td, |report| {
            // Pruning leaves every selected weight exactly N:M.
            if !report.vars.iter().all(|v| v.nm.is_some_and(|c| c.holds)) {
                candle_core::bail!("pruning at {n}:{m} left a weight that is not {n}:{m}")
            }
            accuracy(net, test, dev)
        })?);
    }
    Ok(acc)
}

/// Which prunable weights each N:M pattern prunes.
fn nm_layers(model: Model, vm: &VarMap) -> Result<String> {
    let mut s = String::new();
    for (n, m) in NM_PATTERNS {
        let vd = Net::dropout(model, vm, TargetedDropout::nm(n, m, 0.0)?)?;
        let names: Vec<&str> = vd.names().collect();
        s += &format!("\n  {n}:{m} prunes {}", names.join(", "));
    }
    Ok(s)
}

/// Thinning of the model at `unit_rate`% of its units pruned: accuracy and inference time of
/// the pruned and of the thinned network over the test set, timed side by side (medians).
fn thinning(
    net: &Net,
    vd: &VarMapDropout,
    unit_rate: u32,
    test: &idx::Split,
    dev: &Device,
) -> Result<String> {
    vd.with_pruned(TargetedDropout::unit(unit_rate as f64 / 100.0, 1.0)?, |_| {
        let thin = net.thinned().map_err(candle_core::Error::msg)?;
        let params = |n: &Net| -> usize {
            n.convs.iter().map(|c| c.weight().elem_count()).sum::<usize>()
                + n.hidden.iter().chain([&n.logits]).map(|l| l.weight().elem_count()).sum::<usize>()
        };
        let (mut t_pruned, mut t_thin) = (Vec::new(), Vec::new());
        let (mut a_pruned, mut a_thin) = (0.0, 0.0);
        for _ in 0..7 {
            let t = std::time::Instant::now();
            a_pruned = accuracy(net, test, dev)?;
            t_pruned.push(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            a_thin = accuracy(&thin, test, dev)?;
            t_thin.push(t.elapsed().as_secs_f64());
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (tp, tt) = (median(&mut t_pruned), median(&mut t_thin));
        let hidden = |n: &Net| {
            n.convs
                .iter()
                .map(|c| c.weight().dim(0))
                .chain(n.hidden.iter().map(|l| l.weight().dim(0)))
                .collect::<candle_core::Result<Vec<_>>>()
        };
        Ok(format!(
            "Thinning td_unit at {unit_rate}% of units pruned ({dev:?}, {} test images, median of 7):\n\
             {:>9} units {:?}, {:>7} weights: accuracy {a_pruned:.2}%, {:.2} ms\n\
             {:>9} units {:?}, {:>7} weights: accuracy {a_thin:.2}%, {:.2} ms ({:.2}x faster)",
            test.count,
            "pruned",
            hidden(net)?,
            params(net),
            tp * 1e3,
            "thinned",
            hidden(&thin)?,
            params(&thin),
            tt * 1e3,
            tp / tt
        ))
    })
    .map_err(Into::into)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = args.device.open()?;
    args.td.check()?;
    common::check_counts(&[("--epochs", args.epochs), ("--batch-size", args.batch_size)])?;
    let data = (
        idx::load(&args.data_dir, "train")?,
        idx::load(&args.data_dir, "t10k")?,
    );
    println!(
        "{:?} on {:?}, {}: {} training and {} test images from {}, {} epochs, lr {}, momentum {}, weight decay {}, seed {}",
        args.model, args.device, args.dataset.name(), data.0.count, data.1.count, args.data_dir.display(), args.epochs, args.lr, args.momentum, args.weight_decay, args.seed
    );
    let steps = (data.0.count.div_ceil(args.batch_size) * args.epochs) as u64;
    // The paper ramps over 20k and 40k of ~100k steps: the same shares of this run.
    let ramp = args.td.ramp(steps)?;
    let mut recipes = args.td.four_recipes(ramp)?;
    recipes.extend([
        (
            "td_2:4",
            Recipe::Fixed(TargetedDropout::nm(2, 4, args.td.alpha)?),
        ),
        // 2:4 with alpha ramped to --ramp-to (the pattern is fixed).
        (
            "td_2:4_ramp",
            Recipe::Ramp(ramp, TargetedDropout::nm(2, 4, 0.0)?),
        ),
    ]);
    let start = std::time::Instant::now();
    let mut results = common::Results::default();
    let mut nm_rows = Vec::new();
    let mut nm_pruned = String::new();
    let mut thin_report = String::new();
    for (name, recipe) in recipes {
        let (net, vm) = train(&args, recipe, name, &data, &dev)?;
        // Pruning reaches the plain model through its VarMap too (the config is not used).
        let vd = Net::dropout(args.model, &vm, TargetedDropout::weight(0.0, 0.0)?)?;
        let acc = || accuracy(&net, &data.1, &dev);
        let w = common::pruned_at(&vd, DropoutKind::Weight, &WEIGHT_RATES, acc)?;
        let u = common::pruned_at(&vd, DropoutKind::Unit, &UNIT_RATES, acc)?;
        let nm = nm_accuracy(args.model, &net, &vm, &data.1, &dev)?;
        if name == "td_unit" {
            thin_report = thinning(&net, &vd, 70, &data.1, &dev)?;
        }
        if nm_pruned.is_empty() {
            nm_pruned = nm_layers(args.model, &vm)?;
        }
        results.weight.push((name.to_string(), w));
        results.unit.push((name.to_string(), u));
        nm_rows.push((name.to_string(), nm));
    }
    let ds = args.dataset.name();
    results.print(
        &format!("{ds} test accuracy (%) after per-filter weight pruning"),
        &format!("{ds} test accuracy (%) after unit pruning"),
        2,
    );
    let nm_cols: Vec<String> = ["dense".to_string()]
        .into_iter()
        .chain(NM_PATTERNS.iter().map(|(n, m)| format!("{n}:{m}")))
        .collect();
    println!(
        "\n{}{nm_pruned}",
        common::table(
            "Test accuracy (%) after N:M pruning (at most n non-zeros in every m inputs)",
            &nm_cols,
            &nm_rows,
            2
        )
    );
    println!("\n{thin_report}");
    let axis = common::Axis {
        label: "test accuracy (%)",
        range: Some((0.0, 100.0)),
        cap: 100.0,
        legend: SeriesLabelPosition::LowerLeft,
        size: (1200, 500),
    };
    let nm: &[Row] = &nm_rows;
    let extra = [("nm_pruning.csv", &nm_cols[..], nm)];
    let wrote = results.save(&args.out, "", 2, &extra, (None, axis))?;
    println!("\n{wrote} in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}
