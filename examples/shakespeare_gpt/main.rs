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
mod data;
mod model;
mod plot;

use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use candle_targeted_dropout::{
    set_seed, DropoutKind, RampSchedule, TargetedDropout, VarMapDropout,
};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use model::{Config, Gpt};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DeviceArg {
    Cpu,
    Cuda,
}

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
    /// gamma of the targeted weight and unit dropout models.
    #[arg(long, default_value_t = 0.5)]
    gamma: f64,
    /// alpha of the targeted weight and unit dropout models.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Final gamma = alpha of the ramped model (reached at 40% of training).
    #[arg(long, default_value_t = 0.99)]
    ramp_to: f64,
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

const WEIGHT_RATES: [u32; 13] = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99];
const UNIT_RATES: [u32; 10] = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90];

/// One training recipe: the targeted dropout the projection matrices get.
#[derive(Clone, Copy)]
enum Recipe {
    None,
    Fixed(TargetedDropout),
    Ramp(RampSchedule),
}

/// splitmix64, for the seeded initialisation and the batches.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// GPT-2's initialisation from `seed`, set in name order so that the run repeats itself
/// (candle's own CPU generator cannot be seeded): normal(0, 0.02) matrices and embeddings,
/// the residual branches' output projections scaled by 1/sqrt(2 layers), norms at one,
/// biases at zero.
fn init(vm: &VarMap, layers: usize, seed: u64, dev: &Device) -> Result<()> {
    let mut named: Vec<(String, Var)> = {
        let data = vm.data().lock().expect("the var map lock");
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = Rng(seed ^ 0x5eed);
    for (name, var) in &named {
        let dims = var.dims().to_vec();
        let numel: usize = dims.iter().product();
        let values: Vec<f32> = if name.contains("norm") {
            vec![1.0; numel]
        } else if name.ends_with("bias") {
            vec![0.0; numel]
        } else {
            let residual = name.ends_with("attn.o.weight") || name.ends_with("mlp.fc2.weight");
            let std = if residual {
                0.02 / ((2 * layers) as f64).sqrt()
            } else {
                0.02
            };
            (0..numel).map(|_| (rng.normal() * std) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, dims, dev)?)?;
    }
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
    let pb = ProgressBar::new(args.steps as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>15} [{bar:30}] {pos}/{len} steps {elapsed:>4} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(name.to_string());
    let mut dropout = match recipe {
        Recipe::None => None,
        Recipe::Fixed(td) => Some(projections(&vm, td)?),
        Recipe::Ramp(_) => Some(projections(&vm, TargetedDropout::weight(0.0, 0.0)?)?),
    };
    let mut rng = Rng(args.seed ^ 0xda7a);
    let start = std::time::Instant::now();
    let mut recent = Vec::new();
    for step in 0..args.steps {
        if let (Recipe::Ramp(s), Some(vd)) = (recipe, dropout.as_mut()) {
            vd.set_all(TargetedDropout::weight(0.0, 0.0)?.at_step(&s, step as u64)?)?;
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

/// Validation bits per byte after pruning every projection at each rate; weights restored.
fn pruned_loss(
    model: &Gpt,
    vd: &VarMapDropout,
    kind: DropoutKind,
    rates: &[u32],
    args: &Args,
    valid: &[u8],
    dev: &Device,
) -> Result<Vec<f64>> {
    rates
        .iter()
        .map(|&r| {
            Ok(vd.with_pruned(kind, r as f64 / 100.0, |_| {
                bits_per_byte(model, valid, args.eval_bytes, dev)
            })?)
        })
        .collect()
}

fn table(title: &str, rates: &[u32], rows: &[(String, Vec<f64>)]) -> String {
    let mut s = format!("{title}\n{:>15}", "model \\ pruned");
    for r in rates {
        s += &format!("{:>7}", format!("{r}%"));
    }
    for (name, v) in rows {
        s += &format!("\n{name:>15}");
        for a in v {
            s += &format!("{a:>7.3}");
        }
    }
    s
}

fn csv(path: &std::path::Path, rates: &[u32], rows: &[(String, Vec<f64>)]) -> Result<()> {
    let mut s = String::from("model");
    for r in rates {
        s += &format!(",{r}");
    }
    for (name, v) in rows {
        s += &format!("\n{name}");
        for a in v {
            s += &format!(",{a:.4}");
        }
    }
    s.push('\n');
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn check_args(args: &Args) -> Result<()> {
    for (name, v) in [
        ("--gamma", args.gamma),
        ("--alpha", args.alpha),
        ("--ramp-to", args.ramp_to),
    ] {
        if !(0.0..=1.0).contains(&v) {
            bail!("{name} must be in [0, 1], got {v}")
        }
    }
    for (name, v) in [
        ("--steps", args.steps),
        ("--batch-size", args.batch_size),
        ("--context", args.context),
        ("--d-model", args.d_model),
        ("--layers", args.layers),
        ("--heads", args.heads),
        ("--eval-bytes", args.eval_bytes),
    ] {
        if v == 0 {
            bail!("{name} must be at least 1")
        }
    }
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
    let dev = match args.device {
        DeviceArg::Cpu => Device::Cpu,
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => Device::new_cuda(0)?,
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => bail!("--device cuda needs a build with `--features cuda`"),
    };
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
    let recipes = [
        ("none", Recipe::None),
        (
            "td_weight",
            Recipe::Fixed(TargetedDropout::weight(args.gamma, args.alpha)?),
        ),
        (
            "td_unit",
            Recipe::Fixed(TargetedDropout::unit(args.gamma, args.alpha)?),
        ),
        (
            "td_weight_ramp",
            // The paper ramps over 20k and 40k of ~100k steps: the same shares of this run.
            Recipe::Ramp(RampSchedule::with_steps(
                args.ramp_to,
                args.ramp_to,
                (args.steps as u64 / 5).max(1),
                (2 * args.steps as u64 / 5).max(2),
            )?),
        ),
    ];
    let start = std::time::Instant::now();
    let mut weight_rows = Vec::new();
    let mut unit_rows = Vec::new();
    for (name, recipe) in recipes {
        let (model, vm, secs) = train(&args, recipe, name, &corpus, &dev)?;
        let t = std::time::Instant::now();
        // Pruning reaches the plain model through its VarMap too (the config is not used).
        let vd = projections(&vm, TargetedDropout::weight(0.0, 0.0)?)?;
        let w = pruned_loss(
            &model,
            &vd,
            DropoutKind::Weight,
            &WEIGHT_RATES,
            &args,
            &corpus.valid,
            &dev,
        )?;
        let u = pruned_loss(
            &model,
            &vd,
            DropoutKind::Unit,
            &UNIT_RATES,
            &args,
            &corpus.valid,
            &dev,
        )?;
        println!(
            "{name:>15}: validation {:.3} bits/byte unpruned; trained in {secs:.0} s, pruned and evaluated in {:.0} s",
            w[0],
            t.elapsed().as_secs_f64()
        );
        weight_rows.push((name.to_string(), w));
        unit_rows.push((name.to_string(), u));
    }
    println!(
        "\n{}",
        table(
            "Validation bits per byte after per-filter weight pruning of every projection",
            &WEIGHT_RATES,
            &weight_rows
        )
    );
    println!(
        "\n{}",
        table(
            "Validation bits per byte after unit pruning of every projection",
            &UNIT_RATES,
            &unit_rows
        )
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (wcsv, ucsv) = (
        args.out.join("gpt_weight_pruning.csv"),
        args.out.join("gpt_unit_pruning.csv"),
    );
    csv(&wcsv, &WEIGHT_RATES, &weight_rows)?;
    csv(&ucsv, &UNIT_RATES, &unit_rows)?;
    let wr: Vec<f64> = WEIGHT_RATES.iter().map(|&r| r as f64).collect();
    let ur: Vec<f64> = UNIT_RATES.iter().map(|&r| r as f64).collect();
    let png = args.out.join("gpt_pruning.png");
    let drawn = plot::draw(
        &png,
        &format!(
            "Byte-level GPT ({} layers, d {}), {} steps, validation: {}",
            cfg.layers, cfg.d_model, args.steps, corpus.valid_file
        ),
        &[
            ("Per-filter weight pruning", &wr, &weight_rows),
            ("Unit pruning", &ur, &unit_rows),
        ],
    )?;
    println!(
        "\nwrote {}, {}{} in {:.0} s",
        wcsv.display(),
        ucsv.display(),
        if drawn {
            format!(" and {}", png.display())
        } else {
            String::new()
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
