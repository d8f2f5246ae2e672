//! CPU throughput of pruning and targeted weight dropout (per filter, and 2:4), side by side
//! with the plain full-sort reference (the test oracle, one thread), the same full sort with
//! the rows spread over the rayon pool, and a plain copy of the tensor.
//! `cargo bench --bench cpu`.
//!
//! What users see is ops alternating, not one op repeated on buffers it has just warmed: each
//! round runs every op of a shape once, in turn, on the same (warm) input; two warm-up rounds,
//! then the median of `TD_BENCH_ROUNDS` (default 9) rounds per op. All ratios printed come
//! from the same run. Bytes counted: one read and one write of the tensor.
//! `TD_BENCH_SHAPES=64` (a substring filter on "ROWSxN") picks shapes; `TD_BENCH_QUICK=1`
//! times only the crate's ops and the copy, and prints the fastest round too.
use candle_core::{Device, Tensor};
use candle_targeted_dropout::reference::{self, Draws};
use candle_targeted_dropout::{
    prune_nm, prune_weights, targeted_nm_dropout_seeded, targeted_weight_dropout_seeded,
};
use std::hint::black_box;
use std::time::Instant;

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

const DROPOUT: Draws = Draws {
    seed: 1,
    offset: 2,
    alpha: 0.5,
};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("a time"));
    xs[xs.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("TD_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let filter = std::env::var("TD_BENCH_SHAPES").unwrap_or_default();
    let quick = std::env::var("TD_BENCH_QUICK").is_ok();
    let shapes: [(usize, usize); 4] = [(512, 2304), (64, 65536), (16384, 64), (4096, 4096)];
    println!(
        "{} threads in the rayon pool; medians of {rounds} alternating rounds after 2 warm-up rounds",
        rayon::current_num_threads()
    );
    println!(
        "| op | shape | radix select | full sort, 1 thread | ratio | full sort, rayon | ratio | copy | / copy |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (rows, n) in shapes {
        let id = format!("{rows} x {n}");
        if !format!("{rows}x{n}").contains(&filter) {
            continue;
        }
        let w = data(rows * n, (rows * n) as u64);
        let wt = Tensor::from_slice(&w, (rows, n), &Device::Cpu).expect("a tensor");
        type Op<'a> = Box<dyn Fn() + 'a>;
        let ops: Vec<(&str, Op)> = vec![
            (
                "prune",
                Box::new(|| drop(black_box(prune_weights(&wt, 0.5).expect("pruning")))),
            ),
            (
                "dropout",
                Box::new(|| {
                    drop(black_box(
                        targeted_weight_dropout_seeded(&wt, 0.5, 0.5, 1, 2).expect("dropout"),
                    ))
                }),
            ),
            (
                "prune_sort",
                Box::new(|| {
                    drop(black_box(reference::weight_dropout(
                        &w,
                        &w,
                        n,
                        0.5,
                        Draws::PRUNE,
                    )))
                }),
            ),
            (
                "dropout_sort",
                Box::new(|| {
                    drop(black_box(reference::weight_dropout(
                        &w, &w, n, 0.5, DROPOUT,
                    )))
                }),
            ),
            (
                "prune_sort_rayon",
                Box::new(|| {
                    drop(black_box(reference::weight_dropout_par(
                        &w,
                        &w,
                        n,
                        0.5,
                        Draws::PRUNE,
                    )))
                }),
            ),
            (
                "dropout_sort_rayon",
                Box::new(|| {
                    drop(black_box(reference::weight_dropout_par(
                        &w, &w, n, 0.5, DROPOUT,
                    )))
                }),
            ),
            (
                "prune_2:4",
                Box::new(|| drop(black_box(prune_nm(&wt, 2, 4).expect("2:4 pruning")))),
            ),
            (
                "dropout_2:4",
                Box::new(|| {
                    drop(black_box(
                        targeted_nm_dropout_seeded(&wt, 2, 4, 0.5, 1, 2).expect("2:4 dropout"),
                    ))
                }),
            ),
            (
                "prune_2:4_sort",
                Box::new(|| {
                    drop(black_box(reference::nm_dropout(
                        &w,
                        &w,
                        &[rows, n],
                        2,
                        4,
                        Draws::PRUNE,
                    )))
                }),
            ),
            (
                "dropout_2:4_sort",
                Box::new(|| {
                    drop(black_box(reference::nm_dropout(
                        &w,
                        &w,
                        &[rows, n],
                        2,
                        4,
                        DROPOUT,
                    )))
                }),
            ),
            (
                "copy",
                Box::new(|| drop(black_box(wt.copy().expect("a copy")))),
            ),
        ];
        let ops: Vec<(&str, Op)> = ops
            .into_iter()
            .filter(|(name, _)| !quick || !name.contains("sort"))
            .collect();
        let mut times = vec![Vec::new(); ops.len()];
        for round in 0..rounds + 2 {
            for (t, (_, op)) in times.iter_mut().zip(&ops) {
                let start = Instant::now();
                op();
                let s = start.elapsed().as_secs_f64();
                if round >= 2 {
                    t.push(s);
                }
            }
        }
        if quick {
            for ((name, _), t) in ops.iter().zip(&times) {
                let min = t.iter().cloned().fold(f64::INFINITY, f64::min);
                println!(
                    "{id} {name}: median {:.3} ms, min {:.3} ms",
                    median(t.clone()) * 1e3,
                    min * 1e3
                );
            }
            continue;
        }
        let med: Vec<f64> = times.into_iter().map(median).collect();
        let t = |name: &str| med[ops.iter().position(|(o, _)| *o == name).expect("an op")];
        let gbs = |s: f64| (2 * rows * n * 4) as f64 / s / 1e9;
        let copy = t("copy");
        for op in ["prune", "dropout"] {
            let (radix, sort, par) = (
                t(op),
                t(&format!("{op}_sort")),
                t(&format!("{op}_sort_rayon")),
            );
            println!(
                "| {op} | {id} | {:.2} ms ({:.2} GB/s) | {:.1} ms | {:.1}x | {:.1} ms | {:.1}x | {:.2} ms | {:.1}x |",
                radix * 1e3,
                gbs(radix),
                sort * 1e3,
                sort / radix,
                par * 1e3,
                par / radix,
                copy * 1e3,
                radix / copy,
            );
        }
        println!(
            "|  | {id} | dropout / prune = {:.2}x |  |  |  |  |  |  |",
            t("dropout") / t("prune")
        );
        // N:M: the groups' own oracle (one thread) is the sort column; no rayon sort.
        for op in ["prune_2:4", "dropout_2:4"] {
            let (nm, sort) = (t(op), t(&format!("{op}_sort")));
            println!(
                "| {op} | {id} | {:.2} ms ({:.2} GB/s) | {:.1} ms | {:.1}x |  |  | {:.2} ms | {:.1}x |",
                nm * 1e3,
                gbs(nm),
                sort * 1e3,
                sort / nm,
                copy * 1e3,
                nm / copy,
            );
        }
    }
}
