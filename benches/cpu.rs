//! CPU throughput of pruning and targeted weight dropout, side by side with the plain
//! full-sort reference (the test oracle, one thread), the same full sort with the rows
//! spread over the rayon pool, and a plain copy of the tensor.
//! Bytes counted: one read and one write of the tensor. `cargo bench --bench cpu`.
use candle_core::{Device, Tensor};
use candle_targeted_dropout::reference::{self, Draws};
use candle_targeted_dropout::{prune_weights, targeted_weight_dropout_seeded};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

fn data(numel: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..numel)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Roughly normal: the sum of four uniforms, centred.
            let u = |x: u64| ((x >> 40) & 0xffff) as f32 / 65536.0;
            u(s) + u(s.rotate_left(16)) + u(s.rotate_left(32)) + u(s.rotate_left(48)) - 2.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let shapes: [(usize, usize); 4] = [(512, 2304), (64, 65536), (16384, 64), (4096, 4096)];
    for (name, draws) in [
        ("prune", Draws::PRUNE),
        (
            "dropout",
            Draws {
                seed: 1,
                offset: 2,
                alpha: 0.5,
            },
        ),
    ] {
        let mut g = c.benchmark_group(format!("cpu_{name}_f32"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (rows, n) in shapes {
            let w = data(rows * n, (rows * n) as u64);
            let wt = Tensor::from_slice(&w, (rows, n), &Device::Cpu).expect("a tensor");
            g.throughput(Throughput::Bytes((2 * rows * n * 4) as u64));
            let id = format!("{rows}x{n}");
            g.bench_function(BenchmarkId::new("radix_select", &id), |b| {
                b.iter(|| {
                    black_box(if name == "prune" {
                        prune_weights(&wt, 0.5).expect("pruning")
                    } else {
                        targeted_weight_dropout_seeded(&wt, 0.5, 0.5, 1, 2).expect("dropout")
                    })
                })
            });
            g.bench_function(BenchmarkId::new("full_sort_reference", &id), |b| {
                b.iter(|| black_box(reference::weight_dropout(&w, &w, n, 0.5, draws)))
            });
            g.bench_function(BenchmarkId::new("full_sort_reference_rayon", &id), |b| {
                b.iter(|| black_box(reference::weight_dropout_par(&w, &w, n, 0.5, draws)))
            });
            g.bench_function(BenchmarkId::new("copy", &id), |b| {
                b.iter(|| black_box(wt.copy().expect("a copy")))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
