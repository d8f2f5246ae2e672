//! GPU checks of the CUDA launch path (issue 9): many host threads on one device with
//! different row lengths and dtypes (each kernel's functions, shared-memory limits and
//! occupancy are resolved once per device; nothing per launch may race), and a bf16 row of
//! more than 2^31 elements through pruning (64-bit positions). Without a CUDA device the
//! cases skip with a message; with TD_ONLY_CUDA set (the GPU machine's run) they must run.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Result, Tensor};
use candle_targeted_dropout::{
    prune_units, prune_weights, targeted_dropout_mask, targeted_unit_dropout_seeded,
    targeted_weight_dropout_seeded, TargetedDropout,
};
use common::{assert_same_bits, Data, Rng};
use half::bf16;

fn cuda_device() -> Option<Device> {
    common::devices().into_iter().find(|d| d.is_cuda())
}

/// Every op on `w` (on the CPU) and on its copy on `dev`: the same bits.
fn check_all_ops(w: &Tensor, dev: &Device, seed: u64, what: &str) -> Result<()> {
    let g = w.to_device(dev)?;
    let (gamma, alpha) = (0.4, 0.6);
    let pairs: [(&str, Tensor, Tensor); 5] = [
        (
            "weight dropout",
            targeted_weight_dropout_seeded(w, gamma, alpha, seed, 3)?,
            targeted_weight_dropout_seeded(&g, gamma, alpha, seed, 3)?,
        ),
        (
            "unit dropout",
            targeted_unit_dropout_seeded(w, gamma, alpha, seed, 4)?,
            targeted_unit_dropout_seeded(&g, gamma, alpha, seed, 4)?,
        ),
        (
            "prune weights",
            prune_weights(w, gamma)?,
            prune_weights(&g, gamma)?,
        ),
        (
            "prune units",
            prune_units(w, gamma)?,
            prune_units(&g, gamma)?,
        ),
        (
            "weight mask",
            targeted_dropout_mask(w, TargetedDropout::weight(gamma, alpha)?, seed, 5)?,
            targeted_dropout_mask(&g, TargetedDropout::weight(gamma, alpha)?, seed, 5)?,
        ),
    ];
    for (op, cpu, gpu) in pairs {
        assert_same_bits(&gpu, &cpu, &format!("{what}: {op}"))?;
    }
    Ok(())
}

#[test]
fn eight_threads_one_device() -> Result<()> {
    let Some(dev) = cuda_device() else {
        eprintln!("eight_threads_one_device: no CUDA device, skipped");
        return Ok(());
    };
    // Row lengths for every kernel, with shared memory below and above 48 KB: tiny rows (f64
    // rows of 31: a 63 KB tile), block rows (f32 rows of 16000: 64000 B), long rows.
    let cases: [(&[usize], DType); 8] = [
        (&[4096, 9], DType::BF16),
        (&[2048, 31], DType::F64),
        (&[64, 16000], DType::F32),
        (&[96, 4097], DType::F16),
        (&[3, 70001], DType::F32),
        (&[5, 40003], DType::F64),
        (&[300, 1027], DType::BF16),
        (&[2, 3, 33, 5], DType::F32),
    ];
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(t, (shape, dt))| {
                let dev = dev.clone();
                s.spawn(move || -> Result<()> {
                    let mut rng = Rng(1000 + t as u64);
                    for round in 0..4 {
                        let w = common::tensor(&mut rng, shape, *dt, Data::Edgy)?;
                        let what = format!("thread {t} {shape:?} {dt:?} round {round}");
                        check_all_ops(&w, &dev, 77 + round, &what)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a thread panicked")?;
        }
        Ok(())
    })
}

/// Level of element i of the long row: a permutation of 0..251 repeated, so that every
/// level has about n / 251 elements and the boundary level has ties across many chunks.
const L: u64 = 251;
fn level(i: u64) -> u64 {
    (i % L) * 7 % L
}
fn level_bits(j: u64) -> u16 {
    let v = (j * 7 % L) as u16;
    // Increasing positive magnitudes, every third one negative (the key ignores the sign).
    (0x3c00 + v) | if j.is_multiple_of(3) { 0x8000 } else { 0 }
}

#[test]
fn bf16_row_over_2_31_pruned_exactly() -> Result<()> {
    let Some(dev) = cuda_device() else {
        eprintln!("bf16_row_over_2_31_pruned_exactly: no CUDA device, skipped");
        return Ok(());
    };
    let n: u64 = (1 << 31) + 4099;
    let pattern: Vec<bf16> = (0..L).map(|j| bf16::from_bits(level_bits(j))).collect();
    let reps = n.div_ceil(L) as usize;
    let w = Tensor::from_vec(pattern, L as usize, &dev)?
        .unsqueeze(0)?
        .broadcast_as((reps, L as usize))?
        .contiguous()?
        .flatten_all()?
        .narrow(0, 0, n as usize)?
        .contiguous()?;
    let gamma = 0.3;
    let got = prune_weights(&w, gamma)?;
    drop(w);
    // The expected set: every level below the boundary level b, and the first `take`
    // elements (by index) of level b.
    let k = (gamma * n as f64).floor() as u64;
    let count = |v: u64| {
        // the j with level(j) == v: j = v * 7^-1 mod 251 (7 * 36 = 252 = 1 mod 251)
        let j = v * 36 % L;
        n / L + u64::from(j < n % L)
    };
    let (mut below, mut b) = (0u64, 0u64);
    while below + count(b) < k {
        below += count(b);
        b += 1;
    }
    let take = k - below;
    let jb = b * 36 % L;
    let last_taken = jb + L * (take - 1); // the take-th element of level b
    let got = got.to_vec1::<bf16>()?;
    assert_eq!(got.len() as u64, n);
    use rayon::prelude::*;
    let bad = got
        .par_chunks(1 << 20)
        .enumerate()
        .map(|(c, chunk)| {
            let mut bad = 0u64;
            for (o, x) in chunk.iter().enumerate() {
                let i = (c as u64) * (1 << 20) + o as u64;
                let lv = level(i);
                let pruned = lv < b || (lv == b && i <= last_taken);
                let want = if pruned { 0 } else { level_bits(i % L) };
                bad += u64::from(x.to_bits() != want);
            }
            bad
        })
        .sum::<u64>();
    assert_eq!(
        bad, 0,
        "{bad} of {n} elements differ (k = {k}, boundary level {b}, take {take})"
    );
    Ok(())
}
