//! Hand-computed answers, checked against both the library and the oracle: the magnitude
//! keys of f16, bf16 and f64 (signed zeros, subnormals, NaN, infinities, ties by index) and
//! the unit scores in their documented order. Whatever the two share by mistake, these do not.
mod common;

use candle_core::{DType, Device, Result, Tensor};
use candle_targeted_dropout::reference::{self, Draws};
use candle_targeted_dropout::*;
use common::*;
use half::{bf16, f16};

fn check_prune_bits(w: &Tensor, gamma: f64, want: &[u64], what: &str) -> Result<()> {
    let got = prune_weights(w, gamma)?;
    assert_eq!(bits(&got)?, want, "{what}: library");
    let oracle_out = oracle(w, w, DropoutKind::Weight, gamma, Draws::PRUNE)?;
    assert_eq!(bits(&oracle_out)?, want, "{what}: oracle");
    Ok(())
}

#[test]
fn f16_keys_by_hand() -> Result<()> {
    // 1.0, -0.0, NaN, -Inf, the smallest subnormal, -2.0, +0.0
    let raw = [0x3c00u16, 0x8000, 0x7e00, 0xfc00, 0x0001, 0xc000, 0x0000];
    let keys: Vec<u64> = raw
        .iter()
        .map(|&b| reference::key(f16::from_bits(b)))
        .collect();
    assert_eq!(keys, [0x3c00, 0, 0x7e00, 0x7c00, 1, 0x4000, 0]);
    let w = Tensor::from_vec(raw.map(f16::from_bits).to_vec(), 7, &Device::Cpu)?;
    // k = floor(0.6 * 7) = 4: -0.0 (index 1) and +0.0 (index 6) tie at key 0, then the
    // subnormal, then 1.0. Dropped elements are +0.0, even the -0.0.
    let want = [0, 0, 0x7e00, 0xfc00, 0, 0xc000, 0];
    check_prune_bits(&w, 0.6, &want, "f16")?;
    // k = 1: of the two zeros, the lower index.
    let want = [0x3c00, 0, 0x7e00, 0xfc00, 0x0001, 0xc000, 0x0000];
    check_prune_bits(&w, 0.15, &want, "f16 tie")
}

#[test]
fn bf16_keys_by_hand() -> Result<()> {
    // 1.0, -0.0, NaN, -Inf, the smallest subnormal, -2.0, +0.0
    let raw = [0x3f80u16, 0x8000, 0x7fc0, 0xff80, 0x0001, 0xc000, 0x0000];
    let keys: Vec<u64> = raw
        .iter()
        .map(|&b| reference::key(bf16::from_bits(b)))
        .collect();
    assert_eq!(keys, [0x3f80, 0, 0x7fc0, 0x7f80, 1, 0x4000, 0]);
    let w = Tensor::from_vec(raw.map(bf16::from_bits).to_vec(), (1, 7), &Device::Cpu)?;
    // k = floor(6/7 * 7) = 6: everything but the NaN, which ranks above -Inf.
    let want = [0, 0, 0x7fc0, 0, 0, 0, 0];
    check_prune_bits(&w, 0.86, &want, "bf16")
}

#[test]
fn f64_keys_by_hand() -> Result<()> {
    let vals = [3.0f64, -1e-310, 2.5, -2.5, f64::NAN, 1e300];
    let keys: Vec<u64> = vals.iter().map(|&x| reference::key(x)).collect();
    assert_eq!(keys[1], (-1e-310f64).to_bits() & !(1 << 63));
    assert_eq!(keys[2], keys[3], "2.5 and -2.5 tie");
    let w = Tensor::from_vec(vals.to_vec(), (1, 6), &Device::Cpu)?;
    let b = |x: f64| x.to_bits();
    // k = 3: the subnormal and both 2.5s.
    let want = [b(3.0), 0, 0, 0, f64::NAN.to_bits(), b(1e300)];
    check_prune_bits(&w, 0.5, &want, "f64")?;
    // k = floor(0.34 * 6) = 2: the tie at 2.5 is cut by index, -2.5 (index 3) stays.
    let want = [b(3.0), 0, 0, b(-2.5), f64::NAN.to_bits(), b(1e300)];
    check_prune_bits(&w, 0.34, &want, "f64 tie cut")
}

#[test]
fn unit_scores_by_hand() -> Result<()> {
    // Squares, not values: [-3, 1] scores 10, [2, 0] 4, [0.5, 0.5] 0.5.
    let w = Tensor::new(&[[-3f32, 1.0], [2.0, 0.0], [0.5, 0.5]], &Device::Cpu)?;
    assert_eq!(unit_scores(&w)?.to_vec1::<f32>()?, [10.0, 4.0, 0.5]);
    let want = [[-3f32, 1.0], [0.0, 0.0], [0.0, 0.0]];
    assert_eq!(prune_units(&w, 0.67)?.to_vec2::<f32>()?, want);
    let o = oracle(&w, &w, DropoutKind::Unit, 0.67, Draws::PRUNE)?;
    assert_eq!(o.to_vec2::<f32>()?, want);

    // The documented order: 1024 lanes, then pairwise folds. Unit A = 4096 at 0, ones at 1,
    // 1024 and 1025: lane 0 = 2^24 + 1, rounded to 2^24 in f32; lane 1 = 1 + 1 = 2; the fold
    // gives 2^24 + 2 (exact). A plain running sum would give 2^24, an f64 sum 2^24 + 3.
    // Unit B = 4096 at 0 and a one at 1: 2^24 + 1, rounded to 2^24.
    let n = 1026;
    let mut a = vec![0f32; n];
    a[0] = 4096.0;
    a[1] = 1.0;
    a[1024] = 1.0;
    a[1025] = 1.0;
    let mut b = vec![0f32; n];
    b[0] = 4096.0;
    b[1] = 1.0;
    let w = Tensor::from_vec([a.clone(), b.clone()].concat(), (2, n), &Device::Cpu)?;
    assert_eq!(
        unit_scores(&w)?.to_vec1::<f32>()?,
        [16_777_218.0, 16_777_216.0]
    );
    assert_eq!(reference::unit_score(&a), 16_777_218.0);
    assert_eq!(reference::unit_score(&b), 16_777_216.0);
    // The weaker unit is B (index 1), though it comes second.
    let p = prune_units(&w, 0.5)?;
    assert_eq!(bits(&p.get(0)?)?, bits(&w.get(0)?)?);
    assert!(p
        .get(1)?
        .to_vec1::<f32>()?
        .iter()
        .all(|&x| x.to_bits() == 0));
    // f16 input accumulates in f32: 300^2 = 90000 overflows f16 but not the score.
    let h = Tensor::new(&[[300f32, 0.0], [1.0, 1.0]], &Device::Cpu)?.to_dtype(DType::F16)?;
    assert_eq!(unit_scores(&h)?.to_vec1::<f32>()?, [90_000.0, 2.0]);
    // f64 input accumulates in f64: 2^30 squared plus 1 is exact.
    let d = Tensor::new(&[[1073741824f64, 1.0]], &Device::Cpu)?;
    assert_eq!(unit_scores(&d)?.to_vec1::<f64>()?, [1152921504606846977.0]);
    // A NaN score is canonical and ranks above every number.
    let w = Tensor::new(&[[f32::NAN, 1.0], [f32::INFINITY, 0.0]], &Device::Cpu)?;
    let s = unit_scores(&w)?.to_vec1::<f32>()?;
    assert!(s[0].is_nan() && s[0].to_bits() == f32::NAN.to_bits() && s[1] == f32::INFINITY);
    let p = prune_units(&w, 0.5)?;
    assert_eq!(
        p.get(1)?.to_vec1::<f32>()?,
        [0.0, 0.0],
        "Inf ranks below NaN"
    );
    Ok(())
}
