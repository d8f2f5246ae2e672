//! The cost of targeted dropout in a training step, as a user trains: a plain candle_nn model
//! (linear layers, `VarMap`, `candle_nn::SGD`) stepped with and without [`VarMapDropout`],
//! f32 on the CPU. `cargo bench --bench step`.
//!
//! Two models:
//! - `mlp`: the main job's MLP (examples/mnist_prune: 784 -> 300 -> 100 -> 10, ReLU,
//!   cross-entropy), batch 64, dropout on fc1 and fc2 (not the logits layer);
//! - `proj`: a stack of transformer-sized projections 512 -> 2048 -> 512 -> 512 -> 512 (GELU
//!   between, mean-squared error), 512 tokens a step, dropout on every weight.
//!
//! Each with weight dropout, unit dropout and 2:4 (gamma = alpha = 0.5; 2:4 has gamma 0.5 by
//! its pattern). One round steps every variant once, in turn (the plain step among them), so
//! that the machine's load falls on all alike; two warm-up rounds, then the median of
//! `TD_STEP_ROUNDS` (default 15) rounds. Overhead = (step with - plain step) / plain step.
//!
//! Where the time goes, from the same rounds: `apply` (inside the step: for each selected
//! weight, on the CPU, the selection, the draws and the packed bit mask in one pass, then the
//! dropped values moved out of the variable in place) and `finish` (the gradient masks, one
//! pass over each gradient with the bits, and the restore, the held values put back in
//! place); and, timed alone right after each step on the same weights, the parts: `prune`
//! (pruning the selected weights with the public op: the selection and a written output, no
//! draws), `draws` (dropout minus pruning with the same op), `apply alone` and `restore` (a
//! step's `apply` and its `restore`, no model between), and `grad mask` (finish minus
//! restore). `fwd+bwd` and `opt step` are the model's own parts of the step with dropout, with
//! their difference from the plain step's in brackets: with `TD_BENCH_CLOCK=cpu` they show
//! what the process's CPU time charges to a step for the thread pools' state (a worker that
//! spins after a job, or sleeps and is woken), which is not work of the model.
//! `TD_STEP_MODELS=proj` (a substring filter) picks models; `TD_BENCH_CLOCK=cpu` (with
//! `RAYON_NUM_THREADS=1`) times by the process's CPU time, for a loaded machine.
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{linear, loss, Linear, Optimizer, VarBuilder, VarMap, SGD};
use candle_targeted_dropout::{
    targeted_dropout_many_seeded, DropoutKind, TargetedDropout, VarMapDropout,
};
#[path = "common/clock.rs"]
mod clock;
use clock::now;
use std::hint::black_box;

/// A model: its layers, how a batch's loss is computed, and which weights get dropout.
struct Model {
    name: &'static str,
    varmap: VarMap,
    layers: Vec<Linear>,
    x: Tensor,
    target: Tensor,
    /// Cross-entropy against class ids (the MLP) or mean-squared error (the projections).
    classes: bool,
    dropped: Vec<&'static str>,
}

impl Model {
    fn mlp(dev: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let layers = vec![
            linear(784, 300, vb.pp("fc1"))?,
            linear(300, 100, vb.pp("fc2"))?,
            linear(100, 10, vb.pp("fc3"))?,
        ];
        let x = Tensor::rand(0f32, 1.0, (64, 784), dev)?;
        let target = Tensor::from_vec((0..64u32).map(|i| i % 10).collect(), 64, dev)?;
        Ok(Model {
            name: "mlp",
            varmap,
            layers,
            x,
            target,
            classes: true,
            dropped: vec!["fc1.weight", "fc2.weight"],
        })
    }

    fn proj(dev: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let dims = [512, 2048, 512, 512, 512];
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| linear(d[0], d[1], vb.pp(format!("p{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::randn(0f32, 1.0, (512, 512), dev)?;
        let target = Tensor::randn(0f32, 1.0, (512, 512), dev)?;
        Ok(Model {
            name: "proj",
            varmap,
            layers,
            x,
            target,
            classes: false,
            dropped: vec!["p0.weight", "p1.weight", "p2.weight", "p3.weight"],
        })
    }

    fn loss(&self) -> Result<Tensor> {
        let mut h = self.x.clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i < last {
                h = if self.classes { h.relu()? } else { h.gelu()? };
            }
        }
        if self.classes {
            loss::cross_entropy(&h, &self.target)
        } else {
            loss::mse(&h, &self.target)
        }
    }

    fn dropout(&self, td: TargetedDropout) -> Result<VarMapDropout> {
        VarMapDropout::new(&self.varmap, |name, _| {
            self.dropped.contains(&name).then_some(td)
        })
    }

    /// The selected weights' variables, in name order.
    fn vars(&self) -> Vec<Var> {
        let data = self.varmap.data().lock().expect("the varmap");
        let mut names: Vec<&&str> = self.dropped.iter().collect();
        names.sort();
        names.iter().map(|n| data[**n].clone()).collect()
    }
}

/// The times of one step with dropout: the whole step, `apply` and `finish`.
#[derive(Default, Clone, Copy)]
struct StepTimes {
    total: f64,
    apply: f64,
    finish: f64,
    model: f64,
    opt: f64,
}

/// The parts timed alone (see the module).
#[derive(Default, Clone, Copy)]
struct Parts {
    prune: f64,
    dropout: f64,
    apply: f64,
    restore: f64,
}

fn step(m: &Model, opt: &mut SGD, vd: Option<&VarMapDropout>) -> Result<StepTimes> {
    let t0 = now();
    let s = vd.map(|v| v.apply()).transpose()?;
    let t1 = now();
    let loss = m.loss()?;
    let mut grads = loss.backward()?;
    let t2 = now();
    if let Some(s) = s {
        s.finish(&mut grads)?;
    }
    let t3 = now();
    opt.step(&grads)?;
    let t4 = now();

    Ok(StepTimes {
        total: t4 - t0,
        apply: t1 - t0,
        finish: t3 - t2,
        model: t2 - t1,
        opt: t4 - t3,
    })
}

fn parts(m: &Model, vd: &VarMapDropout, td: TargetedDropout) -> Result<Parts> {
    let ws: Vec<Tensor> = m.vars().iter().map(|v| v.as_tensor().detach()).collect();
    let prune_cfg = TargetedDropout::new(td.kind(), td.gamma(), 1.0)?;
    let items = |c: TargetedDropout| ws.iter().map(|w| (w, c)).collect::<Vec<_>>();
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let t = now();
        f()?;
        Ok(now() - t)
    };
    let prune = time(&mut || {
        black_box(targeted_dropout_many_seeded(&items(prune_cfg), 1, 2)?);
        Ok(())
    })?;
    let dropout = time(&mut || {
        black_box(targeted_dropout_many_seeded(&items(td), 1, 2)?);
        Ok(())
    })?;
    let mut held = None;
    let apply = time(&mut || {
        held = Some(vd.apply_seeded(1, 2)?);
        Ok(())
    })?;
    let restore = time(&mut || match held.take() {
        Some(s) => s.restore(),
        None => Ok(()),
    })?;
    Ok(Parts {
        prune,
        dropout,
        apply,
        restore,
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("a time"));
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("TD_STEP_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let filter = std::env::var("TD_STEP_MODELS").unwrap_or_default();
    let dev = Device::Cpu;
    println!(
        "{} threads in the rayon pool; medians of {rounds} interleaved rounds after 2 warm-up rounds; ms of {}",
        rayon::current_num_threads(),
        clock::clock_name()
    );
    println!(
        "| model | dropout | plain step | step | overhead | apply | finish | fwd+bwd | opt step | prune | draws | apply alone | restore | grad mask |"
    );
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    candle_targeted_dropout::set_seed(0);
    for make in [Model::mlp, Model::proj] {
        let m = make(&dev)?;
        if !m.name.contains(&filter) {
            continue;
        }
        let configs = [
            ("weight", TargetedDropout::weight(0.5, 0.5)?),
            ("unit", TargetedDropout::unit(0.5, 0.5)?),
            (
                "2:4",
                TargetedDropout::new(DropoutKind::Nm { n: 2, m: 4 }, 0.5, 0.5)?,
            ),
        ];
        let vds = configs
            .iter()
            .map(|(_, c)| m.dropout(*c))
            .collect::<Result<Vec<_>>>()?;
        let mut opt = SGD::new(m.varmap.all_vars(), 1e-3)?;
        let mut plain = Vec::new();
        let mut with = vec![Vec::<StepTimes>::new(); configs.len()];
        let mut part = vec![Vec::<Parts>::new(); configs.len()];
        for round in 0..rounds + 2 {
            let p = step(&m, &mut opt, None)?;
            let mut ts = Vec::new();
            for (i, vd) in vds.iter().enumerate() {
                ts.push((step(&m, &mut opt, Some(vd))?, parts(&m, vd, configs[i].1)?));
            }
            if round >= 2 {
                plain.push(p);
                for (i, (t, q)) in ts.into_iter().enumerate() {
                    with[i].push(t);
                    part[i].push(q);
                }
            }
        }
        let plain_model = median(plain.iter().map(|p: &StepTimes| p.model).collect());
        let plain_opt = median(plain.iter().map(|p: &StepTimes| p.opt).collect());
        let plain = median(plain.iter().map(|p: &StepTimes| p.total).collect());
        for (i, (name, _)) in configs.iter().enumerate() {
            let med = |f: &dyn Fn(&StepTimes) -> f64| median(with[i].iter().map(f).collect());
            let pm = |f: &dyn Fn(&Parts) -> f64| median(part[i].iter().map(f).collect());
            let total = med(&|t| t.total);
            let finish = med(&|t| t.finish);
            let restore = pm(&|p| p.restore);
            let prune = pm(&|p| p.prune);

            println!(
                "| {} | {name} | {:.2} | {:.2} | {:+.1}% | {:.2} | {:.2} | {:.2} ({:+.2}) | {:.2} ({:+.2}) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                m.name,
                plain * 1e3,
                total * 1e3,
                (total - plain) / plain * 100.0,
                med(&|t| t.apply) * 1e3,
                finish * 1e3,
                med(&|t| t.model) * 1e3,
                (med(&|t| t.model) - plain_model) * 1e3,
                med(&|t| t.opt) * 1e3,
                (med(&|t| t.opt) - plain_opt) * 1e3,
                prune * 1e3,
                (pm(&|p| p.dropout) - prune) * 1e3,
                pm(&|p| p.apply) * 1e3,
                restore * 1e3,
                (finish - restore) * 1e3,
            );
        }
    }
    Ok(())
}
