//! The launches of each benchmarked op under the CUDA emulator, with the global-memory traffic
//! the emulator counted: what `scripts/perf/model.py` turns into bytes per element and a
//! predicted H200 time (issue 23).
//!
//! `cargo run --release --features emulate --example perf_traffic [-- OP...]`
//!
//! One line per launch, on the H200's launch plan (`Gpu::h200`):
//!
//! ```text
//! launch <op> <full shape> <dtype> scaled=<shape run> elems=<its elements>
//!   part=<op|select> kernel=<name> grid=x,y,z block=x,y,z smem=<dynamic bytes> ld=<bytes> st=<bytes>
//!   lds=<sectors> sts=<sectors>
//! ```
//!
//! Shapes are scaled down where the emulator is slow (fewer rows, the same row length, so the
//! same kernel and per-row work; unit dropout on [128,2^20] keeps 2 units): the per-element
//! figures carry to the full shape, and `scaled=` says what ran. Unit dropout's selection (one
//! row of d0 scores) depends on d0, so it is traced apart at the full d0 (`part=select`,
//! `scaled=[d0,1]`, `elems=d0`). `mask` is `targeted_dropout_mask` (the selection writing
//! bits, then `td_mask_u8`). Data: seeded normal values (as
//! the GPU benchmark's randn, `examples/gpu_bench.rs`, but the same on every run); gamma =
//! alpha = 0.5.

#[cfg(feature = "emulate")]
fn main() -> candle_core::Result<()> {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_targeted_dropout::emulate::{self, Gpu};
    use candle_targeted_dropout::*;

    let only: Vec<String> = std::env::args().skip(1).collect();
    // Seeded normal data (splitmix64 + Box-Muller): the same bits, and so the same unit
    // selection and the same counted bytes, on every run.
    let mut state = 0x5eed_2026_u64;
    let mut randn = |shape: &[usize], dt: DType| -> candle_core::Result<Tensor> {
        let numel: usize = shape.iter().product();
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let v: Vec<f32> = (0..numel)
            .map(|_| {
                let (u, w) = (next().max(1e-300), next());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * w).cos()) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dt)
    };
    let gpu = Gpu::h200();
    // (op, full shape as spelled in the model's lines, the shape run)
    // (full shape as spelled, its units d0, the shape run)
    let big: [(&str, usize, Vec<usize>); 4] = [
        ("[4096,4096]", 4096, vec![8, 4096]),
        ("[11008,4096]", 11008, vec![8, 4096]),
        ("[128,2^20]", 128, vec![1, 1 << 20]),
        ("[2^20,9]", 1 << 20, vec![4096, 9]),
    ];
    let units_of = |full: &str| big.iter().find(|b| b.0 == full).map_or(0, |b| b.1);
    let mut cases: Vec<(&str, String, Vec<usize>)> = Vec::new();
    for op in [
        "weight_dropout",
        "prune",
        "mask",
        "unit_dropout",
        "nm_2:4_dropout",
        "backward",
    ] {
        for (full, _, run) in &big {
            let mut run = run.clone();
            if op == "unit_dropout" && run[0] == 1 {
                run[0] = 2; // a unit selection needs units to choose from
            }
            if op == "nm_2:4_dropout" && run[1] % 4 != 0 {
                continue; // groups of four along axis 1
            }
            cases.push((op, full.to_string(), run));
        }
    }
    cases.push(("grouped_resnet32", "resnet32".to_string(), vec![]));
    for (op, full, run) in cases {
        if !only.is_empty() && !only.iter().any(|o| o == op) {
            continue;
        }
        for dt in [DType::F32, DType::BF16] {
            let dts = if dt == DType::F32 { "f32" } else { "bf16" };
            let t0 = std::time::Instant::now();
            let (elems, launches) = if op == "grouped_resnet32" {
                // ResNet-32 (CIFAR): conv1, three stages of ten 3x3 convs, the classifier.
                let mut shapes: Vec<Vec<usize>> = vec![vec![16, 3, 3, 3]];
                for (c_in, c) in [(16, 16), (16, 32), (32, 64)] {
                    for b in 0..5 {
                        shapes.push(vec![c, if b == 0 { c_in } else { c }, 3, 3]);
                        shapes.push(vec![c, c, 3, 3]);
                    }
                }
                shapes.push(vec![10, 64]);
                let ws = shapes
                    .iter()
                    .map(|s| randn(s, dt))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let td = TargetedDropout::weight(0.5, 0.5)?;
                let items: Vec<(&Tensor, TargetedDropout)> = ws.iter().map(|w| (w, td)).collect();
                let elems: usize = ws.iter().map(|w| w.elem_count()).sum();
                let (_, l) =
                    emulate::run_traced(&gpu, || targeted_dropout_many_seeded(&items, 7, 0))?;
                (elems, l)
            } else {
                let w = randn(&run, dt)?;
                let elems = w.elem_count();
                let l = match op {
                    "weight_dropout" => {
                        emulate::run_traced(&gpu, || {
                            targeted_weight_dropout_seeded(&w, 0.5, 0.5, 7, 0)
                        })?
                        .1
                    }
                    "prune" => emulate::run_traced(&gpu, || prune_weights(&w, 0.5))?.1,
                    "mask" => {
                        let td = TargetedDropout::weight(0.5, 0.5)?;
                        emulate::run_traced(&gpu, || targeted_dropout_mask(&w, td, 7, 0))?.1
                    }
                    "unit_dropout" => {
                        emulate::run_traced(&gpu, || {
                            targeted_unit_dropout_seeded(&w, 0.5, 0.5, 7, 0)
                        })?
                        .1
                    }
                    "nm_2:4_dropout" => {
                        emulate::run_traced(&gpu, || {
                            targeted_nm_dropout_seeded(&w, 2, 4, 0.5, 7, 0)
                        })?
                        .1
                    }
                    "backward" => {
                        // The forward outside the trace; the backward's launches only.
                        let v = Var::from_tensor(&w)?;
                        let g = randn(&run, dt)?;
                        let y = emulate::run(&gpu, || {
                            targeted_weight_dropout_seeded(&v, 0.5, 0.5, 7, 0)
                        })?;
                        let loss = (y * g)?.sum_all()?;
                        emulate::run_traced(&gpu, || loss.backward().map(drop))?.1
                    }
                    _ => unreachable!(),
                };
                (elems, l)
            };
            let scaled = if run.is_empty() {
                "full".to_string()
            } else {
                format!("{run:?}").replace(' ', "")
            };
            // Unit dropout's selection runs over one row of d0 scores: the scaled run has fewer
            // units, so the selection (td_tiny / td_block / td_long_*) is traced apart, at the
            // full d0, on [d0, 1] (its scores and output pass left out), marked `part=select`.
            let is_select = |k: &str| {
                k.starts_with("td_tiny_") || k.starts_with("td_block_") || k.starts_with("td_long_")
            };
            let mut launches: Vec<(String, usize, &str, emulate::Launch)> = launches
                .into_iter()
                .filter(|l| op != "unit_dropout" || !is_select(&l.kernel))
                .map(|l| (scaled.clone(), elems, "op", l))
                .collect();
            if op == "unit_dropout" {
                let d0 = units_of(&full);
                let w = randn(&[d0, 1], dt)?;
                let (_, l) =
                    emulate::run_traced(&gpu, || targeted_unit_dropout_seeded(&w, 0.5, 0.5, 7, 0))?;
                let at = format!("[{d0},1]");
                launches.extend(
                    l.into_iter()
                        .filter(|l| is_select(&l.kernel))
                        .map(|l| (at.clone(), d0, "select", l)),
                );
            }
            for (scaled, elems, part, l) in &launches {
                println!(
                    "launch {op} {full} {dts} scaled={scaled} elems={elems} part={part} kernel={} grid={},{},{} block={},{},{} smem={} ld={} st={} lds={} sts={}",
                    l.kernel,
                    l.grid[0],
                    l.grid[1],
                    l.grid[2],
                    l.block[0],
                    l.block[1],
                    l.block[2],
                    l.dynamic_smem,
                    l.load_bytes,
                    l.store_bytes,
                    l.load_sectors,
                    l.store_sectors
                );
            }
            eprintln!(
                "perf_traffic: {op} {full} {dts} ({scaled}): {} launches, {:.1} s",
                launches.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

#[cfg(not(feature = "emulate"))]
fn main() {
    eprintln!("perf_traffic runs the kernels under the emulator: build it with --features emulate");
    std::process::exit(2);
}
