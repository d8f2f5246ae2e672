//! The long-row kernels (`kernels/weight.cu`, "Long rows": rows past what one block holds)
//! under emulation, bit for bit against the CPU path, on both profiles: rows past what one
//! block holds for every dtype, plain data (the candidates of the first
//! digit fit the list), ties (four magnitudes: the count passes past the first digit), an
//! all-zero row (ties to the last digit, resolved by index), gamma = 1 (the output pass
//! alone), the recomputing backward (values from the gradient) and a shard (elem_base). The
//! launches are read back through `emulate::run_traced`: the count passes, the resolve and
//! the output pass, and no block kernel.
#![cfg(feature = "emulate")]
mod common;

use candle_core::{DType, Result, Tensor, Var};
use candle_targeted_dropout::emulate::{self, Gpu};
use candle_targeted_dropout::*;
use common::*;

/// The kernels that `f` launched on `gpu`, and its result, after checking it against the CPU.
fn same_bits_and_kernels(
    gpu: &Gpu,
    what: &str,
    f: impl Fn() -> Result<Tensor>,
) -> Result<Vec<String>> {
    let cpu = f()?;
    let (emu, launches) = emulate::run_traced(gpu, &f)?;
    assert_same_bits(&emu, &cpu, &format!("{what} on {}", gpu.name))?;
    Ok(launches.into_iter().map(|l| l.kernel).collect())
}

#[test]
fn long_rows_match_the_cpu_path() -> Result<()> {
    let mut rng = Rng(0x22_2026);
    for gpu in [Gpu::h200(), Gpu::sm86()] {
        for (dt, shape, data) in [
            (DType::F32, [3, 20_000], Data::Plain),
            (DType::F32, [2, 17_001], Data::Ties),
            (DType::F64, [2, 8_300], Data::Edgy),
            (DType::BF16, [2, 40_000], Data::Ties),
            (DType::F16, [1, 33_001], Data::Plain),
        ] {
            let w = tensor(&mut rng, &shape, dt, data)?;
            let what = format!("{dt:?} {shape:?} {data:?}");
            for (gamma, alpha) in [(0.45, 0.6), (1.0, 0.5), (0.3, 1.0)] {
                let ks = same_bits_and_kernels(&gpu, &what, || {
                    targeted_weight_dropout_seeded(&w, gamma, alpha, 7, 3)
                })?;
                let all = gamma == 1.0;
                assert!(
                    ks.iter().any(|k| k.starts_with("td_long_apply_")),
                    "{what}: {ks:?}"
                );
                assert_eq!(
                    ks.iter().any(|k| k.starts_with("td_long_count_")),
                    !all,
                    "{what} gamma {gamma}: {ks:?}"
                );
                assert!(
                    !ks.iter().any(|k| k.starts_with("td_block")),
                    "{what}: {ks:?}"
                );
            }
            // Pruning, and a shard of the same rows (draws from its first row on).
            same_bits_and_kernels(&gpu, &what, || prune_weights(&w, 0.7))?;
            same_bits_and_kernels(&gpu, &what, || {
                targeted_weight_dropout_rows(&w, 0.5, 0.5, 11, 2, 5)
            })?;
        }
        // An all-zero row: every key ties, the cut is found by index in the last digits.
        let z = Tensor::zeros((2, 20_000), DType::F32, &candle_core::Device::Cpu)?;
        let ks = same_bits_and_kernels(&gpu, "zeros", || {
            targeted_weight_dropout_seeded(&z, 0.5, 0.5, 1, 1)
        })?;
        assert!(ks.iter().any(|k| k == "td_long_resolve_u32"), "{ks:?}");
    }
    Ok(())
}

/// The recomputing backward (values from the gradient) on the long-row kernels.
#[test]
fn the_gradient_of_a_long_row() -> Result<()> {
    let mut rng = Rng(0x22_0007);
    let w = tensor(&mut rng, &[2, 18_000], DType::F32, Data::Edgy)?;
    let grad = |w: &Tensor| -> Result<Tensor> {
        let v = Var::from_tensor(w)?;
        let y = targeted_weight_dropout_seeded(v.as_tensor(), 0.4, 0.7, 3, 9)?;
        let loss = (y.sqr()?.sum_all()? * 0.5)?;
        let g = loss.backward()?;
        Ok(g.get(v.as_tensor()).expect("a gradient").clone())
    };
    let cpu = grad(&w)?;
    for gpu in [Gpu::h200(), Gpu::sm86()] {
        let emu = emulate::run(&gpu, || grad(&w))?;
        assert_same_bits(&emu, &cpu, &format!("gradient on {}", gpu.name))?;
    }
    Ok(())
}
