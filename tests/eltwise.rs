//! Elementwise ops: ReLU, add, scale, fill, sigmoid and the f32↔f16 casts.

mod common;

use common::{Rng, assert_close, cpu, randn_tensor};
use dfengine::backend::cpu::eltwise::{cast_f16_f32, cast_f32_f16};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;
use half::f16;

#[test]
fn relu_fwd_and_bwd_match_definition() {
    let b = cpu();
    let x = b.tensor(Shape::from([5]), &[-2.0, -0.0, 0.0, 0.5, 3.0]).unwrap();
    let y = b.relu_fwd(&x).unwrap();
    assert_eq!(&y.storage()[..], &[0.0, 0.0, 0.0, 0.5, 3.0]);
    let dy = b.tensor(Shape::from([5]), &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    // The gradient at exactly 0 is 0, as in PyTorch.
    assert_eq!(&b.relu_bwd(&dy, &y).unwrap().storage()[..], &[0.0, 0.0, 0.0, 4.0, 5.0]);
}

#[test]
fn add_scale_fill_on_large_tensors_use_every_element() {
    // Large enough to take the parallel path.
    let b = cpu();
    let mut rng = Rng::new(40);
    let n = 100_003;
    let x = randn_tensor(&mut rng, [n], 1.0);
    let mut y = randn_tensor(&mut rng, [n], 1.0);
    let y0 = y.storage().to_vec();
    b.add_assign(&mut y, &x).unwrap();
    let want: Vec<f32> = y0.iter().zip(x.storage().iter()).map(|(a, b)| a + b).collect();
    assert_close("add", y.storage(), &want, 0.0, 0.0);
    b.scale(&mut y, -2.0).unwrap();
    let want: Vec<f32> = want.iter().map(|v| v * -2.0).collect();
    assert_close("scale", y.storage(), &want, 0.0, 0.0);
    b.fill(&mut y, 0.25).unwrap();
    assert!(y.storage().iter().all(|&v| v == 0.25));
    let mut short = b.zeros(Shape::from([3])).unwrap();
    assert!(b.add_assign(&mut short, &x).is_err(), "add must reject different shapes");
}

#[test]
fn sigmoid_is_stable_at_extremes() {
    let b = cpu();
    let x = b.tensor(Shape::from([5]), &[-100.0, -1.0, 0.0, 1.0, 100.0]).unwrap();
    let y = b.sigmoid(&x).unwrap();
    let want: Vec<f32> =
        [-100.0f64, -1.0, 0.0, 1.0, 100.0].iter().map(|v| (1.0 / (1.0 + (-v).exp())) as f32).collect();
    assert_close("sigmoid", y.storage(), &want, 1e-7, 1e-6);
    assert!(y.storage()[0] > 0.0, "σ(−100) underflowed to 0");
}

#[test]
fn casts_round_to_nearest_even_and_saturate_to_inf() {
    let x = [1.0 / 3.0, 65504.0, 65520.0, -1e6, 6e-8, 1.0 + 1.0 / 2048.0, f32::NAN];
    let mut h = vec![f16::ZERO; x.len()];
    cast_f32_f16(&x, &mut h);
    assert_eq!(h[0].to_f32(), 0.333_251_95, "1/3 rounds to the nearest f16");
    assert_eq!(h[1], f16::MAX);
    assert_eq!(h[2], f16::INFINITY, "65520 is past the rounding midpoint of f16::MAX");
    assert_eq!(h[3], f16::NEG_INFINITY);
    assert!(h[4] > f16::ZERO && h[4] < f16::MIN_POSITIVE, "6e-8 is an f16 subnormal, not 0");
    assert_eq!(h[5], f16::ONE, "a tie rounds to even");
    assert!(h[6].is_nan());
    let mut back = vec![0.0f32; x.len()];
    cast_f16_f32(&h, &mut back);
    assert_eq!(back[1], 65504.0);
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|v| v.is_finite()).collect();
    let mut wide = vec![0.0; all.len()];
    cast_f16_f32(&all, &mut wide);
    let mut again = vec![f16::ZERO; all.len()];
    cast_f32_f16(&wide, &mut again);
    assert!(all.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "f16 → f32 → f16 is not exact");
}
