//! Thinning removes dead units and computes the same function: Linear -> Linear,
//! Conv2d -> Conv2d and Conv2d -> flatten -> Linear, with and without constants to fold.
mod common;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
use candle_targeted_dropout::*;
use common::*;

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

fn randn(rng: &mut Rng, shape: &[usize]) -> Result<Tensor> {
    tensor(rng, shape, DType::F32, Data::Plain)
}

/// Two layers as a function of their weights and biases: `(w1, b1, w2, b2)`.
type Net<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor, Option<Tensor>) -> Result<Tensor>;
type Layers<'a> = (&'a Tensor, &'a Tensor, &'a Tensor, Option<Tensor>);

/// `net` of the weights before thinning and of the thinned ones agree (not bit for bit: the
/// sums have fewer terms).
fn same_function(net: Net, (w1, b1, w2, b2): Layers, t: &Thinned) -> Result<()> {
    let before = net(w1, b1, w2, b2)?;
    let b = t.bias.as_ref().expect("a thinned bias");
    let after = net(&t.weight, b, &t.next_weight, t.next_bias.clone())?;
    assert!(max_diff(&before, &after)? < 1e-4);
    Ok(())
}

#[test]
fn linear_to_linear() -> Result<()> {
    let mut rng = Rng(1);
    let w1 = prune_units(&randn(&mut rng, &[30, 7])?, 0.7)?;
    let w2 = randn(&mut rng, &[4, 30])?;
    let b2 = randn(&mut rng, &[4])?;
    let x = randn(&mut rng, &[9, 7])?;
    for b1 in [None, Some(randn(&mut rng, &[30])?)] {
        let t = thin_units(&w1, b1.as_ref(), &w2, Some(&b2), |x| x.relu())?;
        assert_eq!(t.kept.len(), 9);
        assert_eq!(t.weight.dims(), [9, 7]);
        assert_eq!(t.next_weight.dims(), [4, 9]);
        let before = Linear::new(w2.clone(), Some(b2.clone()))
            .forward(&Linear::new(w1.clone(), b1.clone()).forward(&x)?.relu()?)?;
        let after = Linear::new(t.next_weight, t.next_bias)
            .forward(&Linear::new(t.weight, t.bias).forward(&x)?.relu()?)?;
        assert!(
            max_diff(&before, &after)? < 1e-4,
            "with bias {}",
            b1.is_some()
        );
        // Not bit for bit: the matmul sums fewer terms, in another blocking order.
    }
    Ok(())
}

#[test]
fn conv_to_conv_and_conv_to_linear() -> Result<()> {
    let mut rng = Rng(2);
    let cfg = Conv2dConfig::default();
    let w1 = prune_units(&randn(&mut rng, &[6, 1, 3, 3])?, 0.5)?;
    let b1 = randn(&mut rng, &[6])?;
    let w2 = randn(&mut rng, &[5, 6, 3, 3])?;
    let b2 = randn(&mut rng, &[5])?;
    let x = randn(&mut rng, &[2, 1, 12, 12])?;
    let t = thin_units(&w1, Some(&b1), &w2, Some(&b2), |x| x.relu())?;
    assert_eq!(t.weight.dims(), [3, 1, 3, 3]);
    assert_eq!(t.next_weight.dims(), [5, 3, 3, 3]);
    let net = |w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: Option<Tensor>| -> Result<Tensor> {
        let h = Conv2d::new(w1.clone(), Some(b1.clone()), cfg)
            .forward(&x)?
            .relu()?
            .max_pool2d(2)?;
        Conv2d::new(w2.clone(), b2, cfg).forward(&h)
    };
    same_function(&net, (&w1, &b1, &w2, Some(b2.clone())), &t)?;

    // Conv -> flatten -> Linear: each channel owns h * w = 25 inputs of the next layer.
    let w3 = randn(&mut rng, &[4, 6 * 25])?;
    let t = thin_units(&w1, Some(&b1), &w3, None, |x| x.relu())?;
    assert_eq!(t.next_weight.dims(), [4, 3 * 25]);
    let net = |w1: &Tensor, b1: &Tensor, w3: &Tensor, b3: Option<Tensor>| -> Result<Tensor> {
        let h = Conv2d::new(w1.clone(), Some(b1.clone()), cfg)
            .forward(&x)?
            .relu()?
            .max_pool2d(2)?;
        Linear::new(w3.clone(), b3).forward(&h.flatten_from(1)?)
    };
    same_function(&net, (&w1, &b1, &w3, None), &t)?;
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let w = Tensor::ones((4, 3), DType::F32, &dev)?;
    let relu = |x: &Tensor| x.relu();
    let e = thin_units(
        &w,
        None,
        &Tensor::ones((2, 7), DType::F32, &dev)?,
        None,
        relu,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[2, 7]"), "{e}");
    let e = thin_units(
        &w,
        Some(&Tensor::ones(5, DType::F32, &dev)?),
        &w.t()?,
        None,
        relu,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[4]") && e.contains("[5]"), "{e}");
    let e = thin_units(&w.zeros_like()?, None, &w.t()?, None, relu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("all 4 units are dead"), "{e}");
    Ok(())
}
