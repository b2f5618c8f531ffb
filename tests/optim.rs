//! Optimizer steps and gradient bookkeeping against their scalar definitions.

mod common;

use common::{Rng, assert_close, cpu, randn_tensor};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::{AdamWParams, SgdParams};
use dfengine::tensor::Shape;

#[test]
fn adamw_matches_definition_over_three_steps() {
    let b = cpu();
    let mut rng = Rng::new(60);
    let hp = AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
    let mut p = randn_tensor(&mut rng, [37], 1.0);
    let (mut m, mut v) = (b.zeros(Shape::from([37])).unwrap(), b.zeros(Shape::from([37])).unwrap());
    let mut want_p: Vec<f64> = p.storage().iter().map(|&x| x as f64).collect();
    let (mut want_m, mut want_v) = (vec![0.0f64; 37], vec![0.0f64; 37]);
    for step in 1..=3u64 {
        let g = randn_tensor(&mut rng, [37], 1.0);
        b.adamw_step(&mut p, &g, &mut m, &mut v, &hp, step).unwrap();
        for i in 0..37 {
            let gi = g.storage()[i] as f64;
            want_p[i] *= 1.0 - 1e-2 * 0.05;
            want_m[i] = 0.9 * want_m[i] + 0.1 * gi;
            want_v[i] = 0.999 * want_v[i] + 0.001 * gi * gi;
            let mhat = want_m[i] / (1.0 - 0.9f64.powi(step as i32));
            let vhat = want_v[i] / (1.0 - 0.999f64.powi(step as i32));
            want_p[i] -= 1e-2 * mhat / (vhat.sqrt() + 1e-8);
        }
        let want: Vec<f32> = want_p.iter().map(|&x| x as f32).collect();
        assert_close(&format!("adamw step {step}"), p.storage(), &want, 1e-6, 1e-5);
    }
    let g = randn_tensor(&mut rng, [37], 1.0);
    assert!(b.adamw_step(&mut p, &g, &mut m, &mut v, &hp, 0).is_err(), "step 0 has no bias correction");
}

#[test]
fn sgd_matches_definition_with_and_without_nesterov() {
    let b = cpu();
    for nesterov in [false, true] {
        let mut rng = Rng::new(61);
        let hp = SgdParams { lr: 0.1, momentum: 0.9, nesterov, weight_decay: 1e-3 };
        let mut p = randn_tensor(&mut rng, [11], 1.0);
        let mut buf = b.zeros(Shape::from([11])).unwrap();
        let mut want_p: Vec<f32> = p.storage().to_vec();
        let mut want_buf = [0.0f32; 11];
        for step in 0..3 {
            let g = randn_tensor(&mut rng, [11], 1.0);
            b.sgd_step(&mut p, &g, &mut buf, &hp, step == 0).unwrap();
            for i in 0..11 {
                let gi = g.storage()[i] + 1e-3 * want_p[i];
                want_buf[i] = if step == 0 { gi } else { 0.9 * want_buf[i] + gi };
                want_p[i] -= 0.1 * if nesterov { gi + 0.9 * want_buf[i] } else { want_buf[i] };
            }
            assert_close(&format!("sgd nesterov={nesterov} step {step}"), p.storage(), &want_p, 1e-6, 1e-6);
        }
    }
}

#[test]
fn unscale_finds_non_finite_gradients() {
    let b = cpu();
    let mut g = b.tensor(Shape::from([4]), &[1024.0, -2048.0, 512.0, 0.0]).unwrap();
    assert!(!b.unscale_check(&mut g, 1.0 / 1024.0).unwrap());
    assert_eq!(&g.storage()[..], &[1.0, -2.0, 0.5, 0.0]);
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let mut data = vec![1.0; 70_000];
        data[65_537] = bad;
        let mut g = b.tensor(Shape::from([70_000]), &data).unwrap();
        assert!(b.unscale_check(&mut g, 0.5).unwrap(), "{bad} went unnoticed");
    }
}

#[test]
fn grad_norm_and_clipping_match_definition() {
    let b = cpu();
    let g1 = b.tensor(Shape::from([2]), &[3.0, 0.0]).unwrap();
    let g2 = b.tensor(Shape::from([1]), &[4.0]).unwrap();
    assert_eq!(b.grad_norm(&[&g1, &g2]).unwrap(), 5.0);
    let mut grads = vec![g1, g2];
    let before = b.clip_grad_norm(&mut grads, 1.0).unwrap();
    assert_eq!(before, 5.0);
    let after = b.grad_norm(&grads.iter().collect::<Vec<_>>()).unwrap();
    assert!((after - 1.0).abs() < 1e-5, "clipped norm {after}");
    let before = b.clip_grad_norm(&mut grads, 10.0).unwrap();
    let unchanged = b.grad_norm(&grads.iter().collect::<Vec<_>>()).unwrap();
    assert!((before - unchanged).abs() < 1e-12, "a norm under the limit must not be scaled");
}
