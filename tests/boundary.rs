//! The draw comparison at its boundary, on every path: a targeted element (or unit) whose
//! draw is `r` is kept at `alpha = (r >> 8) / 2^24` and dropped at `((r >> 8) + 1) / 2^24`
//! (DESIGN.md, "Random draws": dropped when `(r >> 8) < ceil(alpha * 2^24)`). A comparison
//! written `<=` instead of `<` changes one draw in 2^24, which random cases almost never hit;
//! this aims at it. Rows of every kernel path (tiny, block, long) and unit selections over
//! few and many scores, on the CPU, the emulated kernels of both profiles and a GPU.
mod common;

use candle_core::{DType, Result, Tensor};
use candle_targeted_dropout::philox::Bernoulli;
use candle_targeted_dropout::reference::Draws;
use candle_targeted_dropout::*;
use common::*;

const SEED: u64 = 0x5eed_b0d4;
const OFFSET: u64 = 3;

/// The alphas just at and just past the draw of element `e`: `(keeps, drops)`.
fn alphas(e: u64) -> (f64, f64) {
    let m = Bernoulli::new(SEED, OFFSET, 0.0).draw(e) >> 8;
    let two24 = (1u64 << 24) as f64;
    (m as f64 / two24, (m + 1) as f64 / two24)
}

/// `[rows, n]` of ones in `dt` with element `(r, j)` at 0.5: in row r it is the one smallest
/// magnitude (k = 1 targets it); in the other rows the ties target index 0.
fn one_small(dt: DType, rows: usize, n: usize, r: usize, j: usize) -> Result<Tensor> {
    let mut v = vec![1f64; rows * n];
    v[r * n + j] = 0.5;
    Tensor::from_vec(v, (rows, n), &candle_core::Device::Cpu)?.to_dtype(dt)
}

fn bit(t: &Tensor, i: usize) -> Result<u64> {
    Ok(bits(t)?[i])
}

fn weight_boundary(t: &Target) -> Result<()> {
    let dev = t.device();
    // Tiny rows, a block row, long rows (several chunks), 16-bit long rows.
    for (dt, rows, n, r, j) in [
        (DType::F32, 3, 8, 2, 5),
        (DType::F64, 2, 1000, 1, 777),
        (DType::F32, 2, 20_000, 1, 12_345),
        (DType::BF16, 1, 40_000, 0, 33_333),
    ] {
        let w = one_small(dt, rows, n, r, j)?;
        let wd = w.to_device(&dev)?;
        let gamma = 1.5 / n as f64;
        let e = r * n + j;
        let (keep, drop) = alphas(e as u64);
        for (alpha, dropped) in [(keep, false), (drop, true)] {
            let what = format!("{t:?} weight {dt:?} [{rows}, {n}] element {e} alpha {alpha}");
            let got = t.run(|| targeted_weight_dropout_seeded(&wd, gamma, alpha, SEED, OFFSET))?;
            assert_eq!(bit(&got, e)? == 0, dropped, "{what}");
            let draws = Draws {
                seed: SEED,
                offset: OFFSET,
                alpha,
            };
            let want = oracle(&w, &w, DropoutKind::Weight, gamma, draws)?;
            assert_same_bits(&got, &want, &what)?;
            // A shard holding row r alone draws at the same index.
            let shard = wd.narrow(0, r, 1)?;
            let got =
                t.run(|| targeted_weight_dropout_rows(&shard, gamma, alpha, SEED, OFFSET, r))?;
            assert_eq!(bit(&got, j)? == 0, dropped, "{what}, row shard");
        }
    }
    Ok(())
}

fn unit_boundary(t: &Target) -> Result<()> {
    let dev = t.device();
    // Few units (the tiny selection), a block row of scores, many units (the long rows).
    for (dt, d0, n, u) in [
        (DType::F16, 5, 7, 3),
        (DType::F32, 300, 4, 123),
        (DType::F64, 9000, 2, 8000),
    ] {
        // Unit u: every element small, so its norm is the one smallest.
        let mut v = vec![1f64; d0 * n];
        v[u * n..(u + 1) * n].fill(0.5);
        let w = Tensor::from_vec(v, (d0, n), &candle_core::Device::Cpu)?.to_dtype(dt)?;
        let wd = w.to_device(&dev)?;
        let gamma = 1.5 / d0 as f64;
        let (keep, drop) = alphas(u as u64);
        for (alpha, dropped) in [(keep, false), (drop, true)] {
            let what = format!("{t:?} unit {dt:?} [{d0}, {n}] unit {u} alpha {alpha}");
            let got = t.run(|| targeted_unit_dropout_seeded(&wd, gamma, alpha, SEED, OFFSET))?;
            let b = bits(&got)?;
            assert_eq!(
                b[u * n..(u + 1) * n].iter().all(|&x| x == 0),
                dropped,
                "{what}"
            );
            let draws = Draws {
                seed: SEED,
                offset: OFFSET,
                alpha,
            };
            let want = oracle(&w, &w, DropoutKind::Unit, gamma, draws)?;
            assert_same_bits(&got, &want, &what)?;
            // From the gathered scores, for a shard holding unit u alone.
            let got = t.run(|| {
                let scores = unit_scores(&wd)?;
                let shard = wd.narrow(0, u, 1)?;
                targeted_unit_dropout_from_scores(&shard, &scores, gamma, alpha, SEED, OFFSET, u)
            })?;
            assert_eq!(
                bits(&got)?.iter().all(|&x| x == 0),
                dropped,
                "{what}, from scores"
            );
        }
    }
    Ok(())
}

#[test]
fn a_targeted_element_is_dropped_exactly_below_its_draw() -> Result<()> {
    for t in targets() {
        weight_boundary(&t)?;
    }
    Ok(())
}

#[test]
fn a_targeted_unit_is_dropped_exactly_below_its_draw() -> Result<()> {
    for t in targets() {
        unit_boundary(&t)?;
    }
    Ok(())
}

/// The test can fail: with the comparison at `<=` (alpha one step lower drops), the element
/// at `keep` would be dropped. Checked here on the oracle, which shares no code with the
/// paths above: one step below `keep` keeps too, and `drop` is the first alpha that drops.
#[test]
fn the_boundary_is_one_step_wide() -> Result<()> {
    let w = one_small(DType::F32, 1, 8, 0, 4)?;
    let (keep, drop) = alphas(4);
    assert_eq!(drop - keep, 1.0 / (1u64 << 24) as f64);
    for (alpha, dropped) in [
        (keep - 1.0 / (1u64 << 24) as f64, false),
        (keep, false),
        (drop, true),
    ] {
        let alpha = alpha.max(0.0);
        let draws = Draws {
            seed: SEED,
            offset: OFFSET,
            alpha,
        };
        let got = oracle(&w, &w, DropoutKind::Weight, 1.5 / 8.0, draws)?;
        assert_eq!(bit(&got, 4)? == 0, dropped, "alpha {alpha}");
    }
    Ok(())
}
