//! Targeted dropout on a transformer: a byte-level GPT trained on Shakespeare, pruned.
//!
//! `cargo run --release --example shakespeare_gpt` trains four copies of a small decoder-only
//! transformer on seven plays in `data/shakespeare` (no dropout; targeted weight dropout;
//! targeted unit dropout; targeted weight dropout ramped to 0.99), holds out the eighth play,
//! then prunes every projection matrix (attention q, k, v, o and the MLP's two layers; not the
//! embeddings, not the logits layer) per filter at increasing rates and prints the validation
//! loss in bits per byte (per character: the shipped text is ASCII). Targeted dropout reaches
//! the model through its `VarMap` ([`VarMapDropout`]), with no change to the model's code.
//! Everything is seeded: the same command prints the same tables. `--help` lists the flags.
#[path = "../common/mod.rs"]
mod common;
mod data;
mod model;

use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use candle_targeted_dropout::{set_seed, DropoutKind, TargetedDropout, VarMapDropout};
use clap::Parser;
use common::{DeviceArg, Init, Recipe, Rng, UNIT_RATES, WEIGHT_RATES};
use model::{Config, Gpt};
use plotters::prelude::SeriesLabelPosition;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Train a byte-level GPT with targeted dropout, prune it, compare")]
struct Args {
    /// Folder of plain-text files (`*.txt`, UTF-8); one is held out for validation.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/shakespeare"))]
    data_dir: PathBuf,
    /// The held-out file (default: the last `*.txt` file in name order).
    #[arg(long)]
    valid_file: Option<String>,
    /// Training steps per model.
    #[arg(long, default_value_t = 400)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Bytes of context.
    #[arg(long, default_value_t = 32)]
    context: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Peak learning rate of AdamW (linear warm-up over 5% of the steps, cosine decay to 10%).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the gradient's global L2 norm to this value (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    #[command(flatten)]
    td: common::TdArgs,
    /// Bytes of the held-out text the validation loss is measured on (windows spread evenly).
    #[arg(long, default_value_t = 4096)]
    eval_bytes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Output folder for the CSV files and the plot.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/shakespeare_gpt"))]
    out: PathBuf,
}

/// GPT-2's initialisation from `seed`, set in name order so that the run repeats itself
/// (candle's own CPU generator cannot be seeded): normal(0, 0.02) matrices and embeddings,
/// the residual branches' output projections scaled by 1/sqrt(2 layers), norms at one,
/// biases at zero.
fn init(vm: &VarMap, layers: usize, seed: u64, dev: &Device) -> Result<()> {
    common::init_vars(vm, seed, dev, |name, _| {
        if name.contains("norm") {
            Init::Const(1.0)
        } else if name.ends_with("bias") {
            Init::Const(0.0)
        } else if name.ends_with("attn.o.weight") || name.ends_with("mlp.fc2.weight") {
            Init::Normal(0.02 / ((2 * layers) as f64).sqrt()) // a residual branch's output
        } else {
            Init::Normal(0.02)
        }
    })?;
    Ok(())
}

/// `batch` windows of `len` bytes from `text` at random starts.
fn sample(text: &[u8], batch: usize, len: usize, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    let span = (text.len() - len + 1) as u64;
    let mut ids = Vec::with_capacity(batch * len);
    for _ in 0..batch {
        let s = (rng.next() % span) as usize;
        ids.extend(text[s..s + len].iter().map(|&b| b as u32));
    }
    Ok(Tensor::from_vec(ids, (batch, len), dev)?)
}

/// Validation loss in bits per byte over `eval_bytes` of `text`: windows of `context + 1`
/// bytes spread evenly over it, every position predicted.
fn bits_per_byte(
    model: &Gpt,
    text: &[u8],
    eval_bytes: usize,
    dev: &Device,
) -> candle_core::Result<f64> {
    let len = model.config().context + 1;
    let n = (eval_bytes / len).max(1);
    let last = text.len() - len;
    let starts: Vec<usize> = (0..n)
        .map(|i| if n == 1 { 0 } else { i * last / (n - 1) })
        .collect();
    let mut sum = 0.0;
    for chunk in starts.chunks(64) {
        let ids: Vec<u32> = chunk
            .iter()
            .flat_map(|&s| text[s..s + len].iter().map(|&b| b as u32))
            .collect();
        let ids = Tensor::from_vec(ids, (chunk.len(), len), dev)?;
        sum += model::loss(model, &ids)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
    }
    Ok(sum / n as f64 / std::f64::consts::LN_2)
}

/// Scales the gradients so that their global L2 norm is at most `max` (no-op for 0).
fn clip_gradients(vars: &[Var], grads: &mut GradStore, max: f64) -> Result<()> {
    if max <= 0.0 {
        return Ok(());
    }
    let mut sq = 0.0;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if norm > max {
        for v in vars {
            if let Some(g) = grads.get(v) {
                let scaled = (g * (max / norm))?;
                grads.insert(v, scaled);
            }
        }
    }
    Ok(())
}

/// Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak.
fn learning_rate(peak: f64, step: usize, steps: usize) -> f64 {
    let warm = (steps / 20).max(1);
    if step < warm {
        return peak * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (steps - warm).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

fn config(args: &Args) -> Config {
    Config {
        vocab: 256,
        context: args.context,
        d_model: args.d_model,
        layers: args.layers,
        heads: args.heads,
        d_ff: 4 * args.d_model,
    }
}

/// The targeted dropout of the projection matrices of `vm`.
fn projections(vm: &VarMap, td: TargetedDropout) -> Result<VarMapDropout> {
    Ok(VarMapDropout::new(vm, |name, _| {
        Gpt::is_projection(name).then_some(td)
    })?)
}

/// Trains one model with `recipe` from the common seed; returns it, its variables and the
/// training time in seconds.
fn train(
    args: &Args,
    recipe: Recipe,
    name: &str,
    corpus: &data::Corpus,
    dev: &Device,
) -> Result<(Gpt, VarMap, f64)> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let model = Gpt::new(config(args), vb)?;
    init(&vm, args.layers, args.seed, dev)?;
    set_seed(args.seed);
    let vars = vm.all_vars();
    // candle_nn's AdamW keeps its moments in Vars that it overwrites (`Var::set`): nothing
    // of a step outlives it.
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: args.lr,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: args.weight_decay,
        },
    )?;
    let pb = common::progress(name, args.steps as u64, "steps");
    let mut dropout = match recipe.at(0)? {
        None => None,
        Some(td) => Some(projections(&vm, td)?),
    };
    let mut rng = Rng(args.seed ^ 0xda7a);
    let start = std::time::Instant::now();
    let mut recent = Vec::new();
    for step in 0..args.steps {
        if let (Recipe::Ramp(s, td), Some(vd)) = (recipe, dropout.as_mut()) {
            vd.set_all(td.at_step(&s, step as u64)?)?;
        }
        opt.set_learning_rate(learning_rate(args.lr, step, args.steps));
        let ids = sample(
            &corpus.train,
            args.batch_size,
            args.context + 1,
            &mut rng,
            dev,
        )?;
        // The selected weights hold their dropped values from here to `finish`.
        let td_step = dropout.as_ref().map(|vd| vd.apply()).transpose()?;
        let loss = model::loss(&model, &ids)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            bail!("{name}: the training loss is {value} at step {step}; try a lower --lr")
        }
        let mut grads = loss.backward()?;
        if let Some(s) = td_step {
            s.finish(&mut grads)?;
        }
        clip_gradients(&vars, &mut grads, args.clip)?;
        opt.step(&grads)?;
        recent.push(value / std::f64::consts::LN_2);
        if recent.len() == 20 || step + 1 == args.steps {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            pb.set_message(format!("train loss {mean:.3} bits/byte"));
            recent.clear();
        }
        pb.inc(1);
    }
    let secs = start.elapsed().as_secs_f64();
    pb.finish();
    Ok((model, vm, secs))
}

fn check_args(args: &Args) -> Result<()> {
    args.td.check()?;
    common::check_counts(&[
        ("--steps", args.steps),
        ("--batch-size", args.batch_size),
        ("--context", args.context),
        ("--d-model", args.d_model),
        ("--layers", args.layers),
        ("--heads", args.heads),
        ("--eval-bytes", args.eval_bytes),
    ])?;
    if !args.d_model.is_multiple_of(args.heads) {
        bail!(
            "--d-model {} must be a multiple of --heads {}",
            args.d_model,
            args.heads
        )
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        bail!("--lr must be a positive number, got {}", args.lr)
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    let dev = args.device.open()?;
    let corpus = data::load(&args.data_dir, args.valid_file.as_deref(), args.context + 1)?;
    let cfg = config(&args);
    let params = 2 * cfg.vocab * cfg.d_model
        + cfg.context * cfg.d_model
        + cfg.vocab
        + cfg.layers * (4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_ff);
    println!(
        "GPT on {:?}: {} layers, d_model {}, {} heads, context {}, about {:.2}M parameters; \
         {} training bytes ({}), validation: {} ({} bytes, {} measured); {} steps of batch {}, \
         AdamW lr {}, seed {}",
        args.device,
        cfg.layers,
        cfg.d_model,
        cfg.heads,
        cfg.context,
        params as f64 / 1e6,
        corpus.train.len(),
        corpus.train_files.join(", "),
        corpus.valid_file,
        corpus.valid.len(),
        args.eval_bytes.min(corpus.valid.len()),
        args.steps,
        args.batch_size,
        args.lr,
        args.seed
    );
    // The paper ramps over 20k and 40k of ~100k steps: the same shares of this run.
    let ramp = args.td.ramp(args.steps as u64)?;
    let recipes = args.td.four_recipes(ramp)?;
    let start = std::time::Instant::now();
    let mut results = common::Results::default();
    for (name, recipe) in recipes {
        let (model, vm, secs) = train(&args, recipe, name, &corpus, &dev)?;
        let t = std::time::Instant::now();
        // Pruning reaches the plain model through its VarMap too (the config is not used).
        let vd = projections(&vm, TargetedDropout::weight(0.0, 0.0)?)?;
        let loss = || bits_per_byte(&model, &corpus.valid, args.eval_bytes, &dev);
        let w = common::pruned_at(&vd, DropoutKind::Weight, &WEIGHT_RATES, loss)?;
        let u = common::pruned_at(&vd, DropoutKind::Unit, &UNIT_RATES, loss)?;
        println!(
            "{name:>15}: validation {:.3} bits/byte unpruned; trained in {secs:.0} s, pruned and evaluated in {:.0} s",
            w[0],
            t.elapsed().as_secs_f64()
        );
        results.weight.push((name.to_string(), w));
        results.unit.push((name.to_string(), u));
    }
    results.print(
        "Validation bits per byte after per-filter weight pruning of every projection",
        "Validation bits per byte after unit pruning of every projection",
        3,
    );
    let title = format!(
        "Byte-level GPT ({} layers, d {}), {} steps, validation: {}",
        cfg.layers, cfg.d_model, args.steps, corpus.valid_file
    );
    // The y axis spans every value of every panel, capped at 8 bits (a uniform guess over
    // the bytes), so that one collapsed model does not flatten the rest.
    let axis = common::Axis {
        label: "validation bits per byte",
        range: None,
        cap: 8.0,
        legend: SeriesLabelPosition::UpperLeft,
        size: (1200, 540),
    };
    let wrote = results.save(&args.out, "gpt_", 4, &[], (Some(&title), axis))?;
    println!("\n{wrote} in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}
