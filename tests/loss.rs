//! BCE with logits: the CPU reference against the textbook definition (with pos_weight
//! and label smoothing), its stability for large logits, and finite differences.

mod common;

use common::{Rng, assert_close, check_gradient, cpu};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::BceParams;
use dfengine::tensor::Shape;

/// −mean[p·y·log σ(x) + (1−y)·log(1−σ(x))] in f64, y smoothed.
fn bce_definition(x: &[f32], t: &[f32], p: &BceParams) -> f64 {
    let eps = p.label_smoothing as f64;
    x.iter()
        .zip(t)
        .map(|(&x, &t)| {
            let y = t as f64 * (1.0 - eps) + 0.5 * eps;
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            -(p.pos_weight as f64 * y * s.ln() + (1.0 - y) * (1.0 - s).ln())
        })
        .sum::<f64>()
        / x.len() as f64
}

#[test]
fn bce_matches_definition() {
    let b = cpu();
    let mut rng = Rng::new(50);
    for p in [BceParams::default(), BceParams { pos_weight: 2.5, label_smoothing: 0.1 }] {
        let xs = rng.vec(33, -6.0, 6.0);
        let ts: Vec<f32> = (0..33).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let x = b.tensor(Shape::from([33]), &xs).unwrap();
        let t = b.tensor(Shape::from([33]), &ts).unwrap();
        let loss = b.bce_with_logits_fwd(&x, &t, &p).unwrap();
        let want = bce_definition(&xs, &ts, &p) as f32;
        assert_close(&format!("bce {p:?}"), &[loss], &[want], 1e-6, 1e-5);
    }
}

#[test]
fn bce_is_exact_for_large_logits() {
    // The naive form overflows (log 0); the stable form gives the linear asymptote.
    let b = cpu();
    let x = b.tensor(Shape::from([4]), &[100.0, -100.0, 100.0, -100.0]).unwrap();
    let t = b.tensor(Shape::from([4]), &[0.0, 1.0, 1.0, 0.0]).unwrap();
    let loss = b.bce_with_logits_fwd(&x, &t, &BceParams::default()).unwrap();
    assert_close("bce at ±100", &[loss], &[50.0], 1e-4, 1e-6);
    let g = b.bce_with_logits_bwd(&x, &t, &BceParams::default(), 1.0).unwrap();
    assert_close("bce grad at ±100", g.storage(), &[0.25, -0.25, 0.0, 0.0], 1e-7, 0.0);
}

#[test]
fn bce_bwd_matches_finite_differences_and_applies_the_loss_scale() {
    let b = cpu();
    let mut rng = Rng::new(51);
    let p = BceParams { pos_weight: 2.5, label_smoothing: 0.1 };
    let xs = rng.vec(17, -4.0, 4.0);
    let ts: Vec<f32> = (0..17).map(|i| (i % 2) as f32).collect();
    let t = b.tensor(Shape::from([17]), &ts).unwrap();
    let x = b.tensor(Shape::from([17]), &xs).unwrap();
    let g = b.bce_with_logits_bwd(&x, &t, &p, 1.0).unwrap();
    let loss =
        |v: &[f32]| b.bce_with_logits_fwd(&b.tensor(Shape::from([17]), v).unwrap(), &t, &p).unwrap() as f64;
    check_gradient("bce dlogits", &xs, g.storage(), loss, 1e-2, 1e-2, 17);
    let scaled = b.bce_with_logits_bwd(&x, &t, &p, 1024.0).unwrap();
    let want: Vec<f32> = g.storage().iter().map(|v| v * 1024.0).collect();
    assert_close("bce loss scale", scaled.storage(), &want, 0.0, 1e-6);
}
