//! Tensor-parallel training with targeted dropout on the shards: LeNet-300-100 (784-300-100-10)
//! on the MNIST subset, its hidden pair split Megatron-style across the ranks: `fc1`
//! column-parallel (each rank holds some of its 300 rows, `ShardDim::Rows`) and `fc2`
//! row-parallel (each rank holds the same columns of its 100 rows, `ShardDim::Cols`, every
//! filter split), whose partial products are all-reduced; `fc3` is replicated. Targeted weight
//! dropout runs on the shards with the sharded ops, the same seed as the single-process run.
//!
//! ```text
//! cargo run --release --example tensor_parallel -- --world 4          # threads (LocalGroup)
//! cargo build --release --features mpi --example tensor_parallel
//! mpirun -n 4 target/release/examples/tensor_parallel --backend mpi   # processes (MPI)
//! # NCCL, one process per GPU (the id through a file that rank 0 writes):
//! mpirun -n 2 target/release/examples/tensor_parallel --backend nccl --nccl-id /tmp/id
//! ```
//!
//! Checked as it trains (the program fails otherwise):
//! - at every step, each rank's dropped shards are bit for bit the unsharded op on the full
//!   weights (gathered exactly), restricted to the shard;
//! - the loss curve is the single-process run's (rank 0 runs it alongside) to the rounding of
//!   the all-reduced matrix products: the largest difference is printed.
//!
//! `--bench` instead times the sharded ops against the unsharded op on the full weight and
//! counts the bytes each call communicates.
#[path = "../mnist_prune/idx.rs"]
#[allow(dead_code)]
mod idx;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::loss::cross_entropy;
use candle_targeted_dropout::*;
use clap::{Parser, ValueEnum};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Backend {
    /// Threads of this process (`--world` ranks).
    Local,
    /// MPI processes (`mpirun -n <world>`; feature `mpi`).
    Mpi,
    /// NCCL, one process per GPU, launched by mpirun (feature `nccl`).
    Nccl,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Tensor-parallel MLP with targeted dropout on the shards")]
struct Args {
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    backend: Backend,
    /// Ranks of the local backend.
    #[arg(long, default_value_t = 2)]
    world: usize,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist-5k"))]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 150)]
    steps: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    #[arg(long, default_value_t = 0.5)]
    gamma: f64,
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// The largest loss difference from the single-process run accepted.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// The file through which rank 0 hands the NCCL id to the others.
    #[arg(long)]
    nccl_id: Option<PathBuf>,
    /// Time the sharded ops instead of training.
    #[arg(long)]
    bench: bool,
    /// The benchmark's weight, `out x in`.
    #[arg(long, default_value_t = 1024)]
    bench_out: usize,
    #[arg(long, default_value_t = 4096)]
    bench_in: usize,
    #[arg(long, default_value_t = 9)]
    bench_reps: usize,
}

/// A collective that counts what passes through it.
struct Counting<'a> {
    inner: &'a dyn Collective,
    bytes: Cell<u64>,
    calls: Cell<u64>,
}

impl Collective for Counting<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        self.bytes
            .set(self.bytes.get() + (t.elem_count() * t.dtype().size_in_bytes()) as u64);
        self.calls.set(self.calls.get() + 1);
        self.inner.all_reduce_sum(t)
    }
}

/// Seeded normal numbers (Box-Muller on xorshift), the same on every rank.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (a, b) = (self.unit().max(1e-300), self.unit());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
}

/// The full initial weights `(w, b)` of the three layers, the same on every rank.
fn init(seed: u64) -> Result<Vec<(Tensor, Tensor)>> {
    let mut rng = Rng(seed | 1);
    [(300, 784), (100, 300), (10, 100)]
        .iter()
        .map(|&(o, i)| {
            let std = (2.0 / i as f64).sqrt();
            let w: Vec<f32> = (0..o * i).map(|_| (rng.normal() * std) as f32).collect();
            Ok((
                Tensor::from_vec(w, (o, i), &Device::Cpu)?,
                Tensor::zeros(o, DType::F32, &Device::Cpu)?,
            ))
        })
        .collect()
}

/// The batches: a seeded permutation of the training images, the same on every rank.
fn batches(n: usize, steps: usize, bs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut out = Vec::new();
    while out.len() < steps {
        for i in (1..n).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        out.extend(order.chunks_exact(bs).map(|c| c.to_vec()));
    }
    out.truncate(steps);
    out
}

fn batch(split: &idx::Split, ids: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(ids.len() * 784);
    for &i in ids {
        x.extend_from_slice(&split.images[i * 784..(i + 1) * 784]);
    }
    let y: Vec<u32> = ids.iter().map(|&i| split.labels[i] as u32).collect();
    Ok((
        Tensor::from_vec(x, (ids.len(), 784), dev)?,
        Tensor::from_vec(y, ids.len(), dev)?,
    ))
}

/// The all-reduce as a step of the graph: the value of the sum, the gradient of the identity
/// (each rank's partial product gets the full output's gradient, which every rank holds).
fn all_reduce(p: &Tensor, comm: &dyn Collective) -> candle_core::Result<Tensor> {
    let s = comm.all_reduce_sum(&p.detach())?;
    (p - p.detach())? + s
}

/// The full weight from the shards: each rank writes its part, zeros elsewhere (exact).
fn gather(part: &Tensor, s: &Shard, comm: &dyn Collective) -> candle_core::Result<Tensor> {
    let (o, i) = s.full;
    let z = Tensor::zeros((o, i), part.dtype(), part.device())?;
    let (axis, len) = match s.dim {
        ShardDim::Rows => (0, part.dim(0)?),
        ShardDim::Cols => (1, part.dim(1)?),
    };
    let ranges: Vec<std::ops::Range<usize>> = (0..2)
        .map(|a| {
            if a == axis {
                s.start..s.start + len
            } else {
                0..z.dim(a).unwrap()
            }
        })
        .collect();
    comm.all_reduce_sum(&z.slice_assign(&[ranges[0].clone(), ranges[1].clone()], part)?)
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|x| x.to_bits())
        .collect())
}

/// One rank's training (`comm = None`: the single-process run, the unsharded ops and
/// products): returns the loss curve and the count of mask checks.
fn train(a: &Args, comm: Option<&dyn Collective>, dev: &Device) -> Result<(Vec<f32>, usize)> {
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world_size()));
    let train = idx::load(&a.data_dir, "train")?;
    let full = init(a.seed)?;
    let s1 = Shard::even(ShardDim::Rows, (300, 784), rank, world)?;
    let l1 = Shard::even_len(ShardDim::Rows, (300, 784), rank, world);
    let s2 = Shard::even(ShardDim::Cols, (100, 300), rank, world)?;
    let l2 = Shard::even_len(ShardDim::Cols, (100, 300), rank, world);
    let v = |t: &Tensor| Var::from_tensor(&t.to_device(dev)?);
    let w1 = v(&s1.narrow(&full[0].0, l1)?)?;
    let b1 = v(&full[0].1.narrow(0, s1.start, l1)?)?;
    let w2 = v(&s2.narrow(&full[1].0, l2)?)?;
    let (b2, w3, b3) = (v(&full[1].1)?, v(&full[2].0)?, v(&full[2].1)?);
    let params = [&w1, &b1, &w2, &b2, &w3, &b3];
    let (g, al, seed) = (a.gamma, a.alpha, a.seed);
    let mut losses = Vec::new();
    let mut checks = 0;
    for (step, ids) in batches(train.count, a.steps, a.batch_size, a.seed)
        .iter()
        .enumerate()
    {
        let off = 3 * step as u64;
        let d3 = targeted_weight_dropout_seeded(&w3, g, al, seed, off + 2)?;
        let Some(comm) = comm else {
            // The single-process run.
            let d1 = targeted_weight_dropout_seeded(&w1, g, al, seed, off)?;
            let d2 = targeted_weight_dropout_seeded(&w2, g, al, seed, off + 1)?;
            let (x, y) = batch(&train, ids, dev)?;
            let h1 = x.matmul(&d1.t()?)?.broadcast_add(&b1)?.relu()?;
            let h2 = h1.matmul(&d2.t()?)?.broadcast_add(&b2)?.relu()?;
            let logits = h2.matmul(&d3.t()?)?.broadcast_add(&b3)?;
            let loss = cross_entropy(&logits, &y)?;
            losses.push(loss.to_scalar::<f32>()?);
            let grads = loss.backward()?;
            for p in params {
                if let Some(gr) = grads.get(p.as_tensor()) {
                    p.set(&(p.as_tensor() - (gr * a.lr)?)?)?;
                }
            }
            continue;
        };
        let d1 = targeted_weight_dropout_sharded(&w1, g, al, seed, off, &s1, comm)?;
        let d2 = targeted_weight_dropout_sharded(&w2, g, al, seed, off + 1, &s2, comm)?;
        // The masks, bit for bit the unsharded op on the full weights.
        for (d, w, s, o) in [(&d1, &w1, &s1, off), (&d2, &w2, &s2, off + 1)] {
            let whole = gather(w, s, comm)?;
            let want = targeted_weight_dropout_seeded(&whole, g, al, seed, o)?;
            let len = match s.dim {
                ShardDim::Rows => d.dim(0)?,
                ShardDim::Cols => d.dim(1)?,
            };
            if bits(d)? != bits(&s.narrow(&want, len)?)? {
                bail!("rank {rank} step {step}: the sharded mask of {s:?} differs from the unsharded op's")
            }
            checks += 1;
        }
        let (x, y) = batch(&train, ids, dev)?;
        let h1 = x.matmul(&d1.t()?)?.broadcast_add(&b1)?.relu()?;
        let h2 = all_reduce(&h1.matmul(&d2.t()?)?, comm)?
            .broadcast_add(&b2)?
            .relu()?;
        let logits = h2.matmul(&d3.t()?)?.broadcast_add(&b3)?;
        let loss = cross_entropy(&logits, &y)?;
        losses.push(loss.to_scalar::<f32>()?);
        let grads = loss.backward()?;
        for p in params {
            if let Some(gr) = grads.get(p.as_tensor()) {
                p.set(&(p.as_tensor() - (gr * a.lr)?)?)?;
            }
        }
    }
    Ok((losses, checks))
}

/// One rank of the benchmark: median times of the sharded calls, the unsharded op on the
/// full weight (on every rank, one at a time), and the bytes each sharded call sends.
fn bench(a: &Args, comm: &dyn Collective) -> Result<Vec<String>> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let full = (a.bench_out, a.bench_in);
    let mut rng = Rng(5);
    let w: Vec<f32> = (0..full.0 * full.1).map(|_| rng.normal() as f32).collect();
    let w = Tensor::from_vec(w, full, &Device::Cpu)?;
    let barrier = || comm.all_reduce_sum(&Tensor::zeros(1, DType::U32, &Device::Cpu)?);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut lines = Vec::new();
    type Op = fn(&Tensor, &Shard, &dyn Collective) -> candle_core::Result<Tensor>;
    type Full = fn(&Tensor) -> candle_core::Result<Tensor>;
    let cases: [(&str, ShardDim, Op, Full); 5] = [
        (
            "weight dropout",
            ShardDim::Cols,
            |w, s, c| targeted_weight_dropout_sharded(w, 0.5, 0.5, 1, 2, s, c),
            |w| targeted_weight_dropout_seeded(w, 0.5, 0.5, 1, 2),
        ),
        (
            "weight dropout",
            ShardDim::Rows,
            |w, s, c| targeted_weight_dropout_sharded(w, 0.5, 0.5, 1, 2, s, c),
            |w| targeted_weight_dropout_seeded(w, 0.5, 0.5, 1, 2),
        ),
        (
            "prune weights",
            ShardDim::Cols,
            |w, s, c| prune_weights_sharded(w, 0.5, s, c),
            |w| prune_weights(w, 0.5),
        ),
        (
            "unit dropout",
            ShardDim::Cols,
            |w, s, c| targeted_unit_dropout_sharded(w, 0.5, 0.5, 1, 2, s, c),
            |w| targeted_unit_dropout_seeded(w, 0.5, 0.5, 1, 2),
        ),
        (
            "2:4 dropout",
            ShardDim::Cols,
            |w, s, c| targeted_nm_dropout_sharded(w, 2, 4, 0.5, 1, 2, s, c),
            |w| targeted_nm_dropout_seeded(w, 2, 4, 0.5, 1, 2),
        ),
    ];
    for (name, dim, op, whole) in cases {
        let s = Shard::even(dim, full, rank, world)?;
        let len = Shard::even_len(dim, full, rank, world);
        let part = s.narrow(&w, len)?.contiguous()?;
        let want = whole(&w)?;
        let counting = Counting {
            inner: comm,
            bytes: Cell::new(0),
            calls: Cell::new(0),
        };
        let got = op(&part, &s, &counting)?;
        if bits(&got)? != bits(&s.narrow(&want, len)?)? {
            bail!("{name} {dim:?}: rank {rank}'s shard differs from the unsharded op")
        }
        let (bytes, calls) = (counting.bytes.get(), counting.calls.get());
        let (mut ts, mut tf) = (Vec::new(), Vec::new());
        for _ in 0..a.bench_reps {
            barrier()?;
            let t = Instant::now();
            op(&part, &s, comm)?;
            barrier()?;
            ts.push(t.elapsed().as_secs_f64());
            // The unsharded op, rank 0 alone while the others wait.
            if rank == 0 {
                let t = Instant::now();
                whole(&w)?;
                tf.push(t.elapsed().as_secs_f64());
            }
            barrier()?;
        }
        if rank == 0 {
            let shard_bytes = part.elem_count() * 4;
            let (ms, mf) = (median(ts) * 1e3, median(tf) * 1e3);
            lines.push(format!(
                "{name:15} {:4} {world} ranks: sharded {ms:8.2} ms, unsharded on the full weight {mf:8.2} ms ({:.2}x); per call {calls} all-reduces, {bytes} bytes sent per rank = {:.4} of the shard's {shard_bytes} bytes",
                format!("{dim:?}"),
                ms / mf,
                bytes as f64 / shard_bytes as f64
            ));
        }
    }
    Ok(lines)
}

/// The single-process run: the unsharded seeded ops on the full weights, the same draws.
fn single(a: &Args) -> Result<Vec<f32>> {
    Ok(train(a, None, &Device::Cpu)?.0)
}

fn report(a: &Args, rank: usize, world: usize, losses: &[f32], checks: usize) -> Result<()> {
    if rank != 0 {
        return Ok(());
    }
    let reference = single(a)?;
    let worst = losses
        .iter()
        .zip(&reference)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    println!(
        "tensor_parallel: {world} ranks, {} steps: masks bit for bit the unsharded op's on every step ({checks} shard checks on rank 0); loss {:.5} -> {:.5} (single process {:.5} -> {:.5}); largest loss difference from the single-process run {worst:.3e}",
        losses.len(),
        losses[0],
        losses[losses.len() - 1],
        reference[0],
        reference[reference.len() - 1]
    );
    if losses[0] != reference[0] {
        bail!("the first loss {} differs from the single-process run's {}: the first step's weights are the same", losses[0], reference[0])
    }
    if worst > a.tolerance {
        bail!(
            "the loss curve is {worst} away from the single-process run (tolerance {})",
            a.tolerance
        )
    }
    Ok(())
}

fn run(a: &Args, comm: &dyn Collective, dev: &Device) -> Result<()> {
    if a.bench {
        for l in bench(a, comm)? {
            println!("{l}");
        }
        return Ok(());
    }
    let (losses, checks) = train(a, Some(comm), dev)?;
    report(a, comm.rank(), comm.world_size(), &losses, checks)
}

fn main() -> Result<()> {
    let a = Args::parse();
    match a.backend {
        Backend::Local => {
            let results: Vec<Result<()>> = std::thread::scope(|s| {
                let hs: Vec<_> = LocalGroup::new(a.world)
                    .into_iter()
                    .map(|g| {
                        let a = a.clone();
                        s.spawn(move || run(&a, &g, &Device::Cpu))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("rank panicked"))
                    .collect()
            });
            results.into_iter().collect()
        }
        #[cfg(feature = "mpi")]
        Backend::Mpi => {
            let universe =
                mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI is already initialized"))?;
            let comm = MpiCollective::world(&universe);
            run(&a, &comm, &Device::Cpu)
        }
        #[cfg(feature = "nccl")]
        Backend::Nccl => {
            let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
            let rank = env("OMPI_COMM_WORLD_RANK").or(env("RANK")).unwrap_or(0);
            let world = env("OMPI_COMM_WORLD_SIZE")
                .or(env("WORLD_SIZE"))
                .unwrap_or(1);
            let Some(path) = &a.nccl_id else {
                bail!("--backend nccl needs --nccl-id <file>")
            };
            let id = if rank == 0 {
                let id = NcclCollective::new_id()?;
                let bytes: Vec<u8> = id.iter().map(|&c| c as u8).collect();
                std::fs::write(path.with_extension("tmp"), &bytes)?;
                std::fs::rename(path.with_extension("tmp"), path)?;
                id
            } else {
                loop {
                    if let Ok(b) = std::fs::read(path) {
                        if b.len() == 128 {
                            let mut id = [0 as std::ffi::c_char; 128];
                            id.iter_mut()
                                .zip(&b)
                                .for_each(|(d, &s)| *d = s as std::ffi::c_char);
                            break id;
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            };
            let dev = Device::new_cuda(rank)?;
            let comm = NcclCollective::new(&dev, rank, world, id)?;
            run(&a, &comm, &dev)
        }
        #[allow(unreachable_patterns)]
        other => bail!(
            "--backend {other:?} needs the feature of that name (cargo build --features {})",
            format!("{other:?}").to_lowercase()
        ),
    }
}
