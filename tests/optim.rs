//! Optimizer steps and gradient bookkeeping against their scalar definitions on every
//! backend; the kernels (kernels/optim.cu) against their CPU twins through the host
//! functions.

#[macro_use]
mod common;

use common::{DeviceUnderTest, Rng, assert_close, host, randn, tensor};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::{AdamWParams, SgdParams};
use dfengine::tensor::Shape;

fn adamw_matches_definition_over_three_steps<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(60);
    let hp = AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
    let mut p = randn(b, &mut rng, [37], 1.0);
    let (mut m, mut v) = (b.zeros(Shape::from([37])).unwrap(), b.zeros(Shape::from([37])).unwrap());
    let mut want_p: Vec<f64> = host(b, &p).iter().map(|&x| x as f64).collect();
    let (mut want_m, mut want_v) = (vec![0.0f64; 37], vec![0.0f64; 37]);
    for step in 1..=3u64 {
        let g = randn(b, &mut rng, [37], 1.0);
        b.adamw_step(&mut p, &g, &mut m, &mut v, &hp, step).unwrap();
        let gs = host(b, &g);
        for i in 0..37 {
            let gi = gs[i] as f64;
            want_p[i] *= 1.0 - 1e-2 * 0.05;
            want_m[i] = 0.9 * want_m[i] + 0.1 * gi;
            want_v[i] = 0.999 * want_v[i] + 0.001 * gi * gi;
            let mhat = want_m[i] / (1.0 - 0.9f64.powi(step as i32));
            let vhat = want_v[i] / (1.0 - 0.999f64.powi(step as i32));
            want_p[i] -= 1e-2 * mhat / (vhat.sqrt() + 1e-8);
        }
        let want: Vec<f32> = want_p.iter().map(|&x| x as f32).collect();
        assert_close(&format!("adamw step {step}"), &host(b, &p), &want, 1e-6, 1e-5);
    }
    let g = randn(b, &mut rng, [37], 1.0);
    assert!(b.adamw_step(&mut p, &g, &mut m, &mut v, &hp, 0).is_err(), "step 0 has no bias correction");
}
test_device!(
    adamw_matches_definition_over_three_steps,
    adamw_matches_definition_over_three_steps_cpu,
    adamw_matches_definition_over_three_steps_cuda
);

fn sgd_matches_definition_with_and_without_nesterov<B: Backend>(b: &B, _: &DeviceUnderTest) {
    for nesterov in [false, true] {
        let mut rng = Rng::new(61);
        let hp = SgdParams { lr: 0.1, momentum: 0.9, nesterov, weight_decay: 1e-3 };
        let mut p = randn(b, &mut rng, [11], 1.0);
        let mut buf = b.zeros(Shape::from([11])).unwrap();
        let mut want_p: Vec<f32> = host(b, &p);
        let mut want_buf = [0.0f32; 11];
        for step in 0..3 {
            let g = randn(b, &mut rng, [11], 1.0);
            b.sgd_step(&mut p, &g, &mut buf, &hp, step == 0).unwrap();
            let gs = host(b, &g);
            for i in 0..11 {
                let gi = gs[i] + 1e-3 * want_p[i];
                want_buf[i] = if step == 0 { gi } else { 0.9 * want_buf[i] + gi };
                want_p[i] -= 0.1 * if nesterov { gi + 0.9 * want_buf[i] } else { want_buf[i] };
            }
            assert_close(&format!("sgd nesterov={nesterov} step {step}"), &host(b, &p), &want_p, 1e-6, 1e-6);
        }
    }
}
test_device!(
    sgd_matches_definition_with_and_without_nesterov,
    sgd_matches_definition_with_and_without_nesterov_cpu,
    sgd_matches_definition_with_and_without_nesterov_cuda
);

fn unscale_finds_non_finite_gradients<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut g = tensor(b, [4], &[1024.0, -2048.0, 512.0, 0.0]);
    assert!(!b.unscale_check(&mut g, 1.0 / 1024.0).unwrap());
    assert_eq!(host(b, &g), [1.0, -2.0, 0.5, 0.0]);
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let mut data = vec![1.0; 70_000];
        data[65_537] = bad;
        let mut g = tensor(b, [70_000], &data);
        assert!(b.unscale_check(&mut g, 0.5).unwrap(), "{bad} went unnoticed");
    }
}
test_device!(
    unscale_finds_non_finite_gradients,
    unscale_finds_non_finite_gradients_cpu,
    unscale_finds_non_finite_gradients_cuda
);

fn grad_norm_and_clipping_match_definition<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let g1 = tensor(b, [2], &[3.0, 0.0]);
    let g2 = tensor(b, [1], &[4.0]);
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
test_device!(
    grad_norm_and_clipping_match_definition,
    grad_norm_and_clipping_match_definition_cpu,
    grad_norm_and_clipping_match_definition_cuda
);

/// The optimizer kernels against their CPU twins (exact where both sides do the same
/// FP32 operations; the tolerances say why elsewhere). Sizes as in eltwise.rs: a float4
/// tail of 3, 4099, and 1_000_003 on a card, 65_539 on the software GPU.
#[cfg(feature = "cuda")]
#[test]
fn optim_kernels_match_the_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::optim;
    use dfengine::backend::cuda::optim as gpu_optim;

    let Some(dev) = common::gpu_device() else { return };
    let large = if common::is_software_gpu(&dev) { 65_539 } else { 1_000_003 };
    let mut rng = Rng::new(41);
    for n in [3, 4099, large] {
        let p0 = rng.vec(n, -1.0, 1.0);
        let g = rng.vec(n, -0.1, 0.1);
        let m0 = rng.vec(n, -0.01, 0.01);
        let v0 = rng.vec(n, 0.0, 1e-4);

        // AdamW at step 3 (bias corrections from the host in f64, as the CPU twin).
        let hp = AdamWParams { lr: 1e-3, weight_decay: 0.05, ..AdamWParams::default() };
        let (mut dp, dg) = (dev.upload(&p0).unwrap(), dev.upload(&g).unwrap());
        let (mut dm, mut dv) = (dev.upload(&m0).unwrap(), dev.upload(&v0).unwrap());
        gpu_optim::adamw_step(&dev, &mut dp, &dg, &mut dm, &mut dv, n, &hp, 3).unwrap();
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        optim::adamw_step(&mut p, &g, &mut m, &mut v, &hp, 3);
        // The device may fuse a multiply-add the CPU rounds twice: a few ulp.
        assert_close(&format!("adamw m, n = {n}"), &download(&dev, &dm), &m, 1e-9, 1e-6);
        assert_close(&format!("adamw v, n = {n}"), &download(&dev, &dv), &v, 1e-12, 1e-6);
        assert_close(&format!("adamw p, n = {n}"), &download(&dev, &dp), &p, 1e-7, 1e-6);

        // SGD with momentum and Nesterov, first step and a later one.
        let hp = SgdParams { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 1e-4 };
        let (mut dp, mut db) = (dev.upload(&p0).unwrap(), dev.upload(&m0).unwrap());
        let (mut p, mut b) = (p0.clone(), m0.clone());
        for first in [true, false] {
            gpu_optim::sgd_step(&dev, &mut dp, &dg, &mut db, n, &hp, first).unwrap();
            optim::sgd_step(&mut p, &g, &mut b, &hp, first);
        }
        assert_close(&format!("sgd p, n = {n}"), &download(&dev, &dp), &p, 1e-7, 1e-6);
        assert_close(&format!("sgd buf, n = {n}"), &download(&dev, &db), &b, 1e-7, 1e-6);

        // Unscale: finite gradients report nothing; one inf is found wherever it is.
        for poison in [None, Some(n - 1)] {
            let mut gs = g.clone();
            if let Some(i) = poison {
                gs[i] = f32::INFINITY;
            }
            let mut dgs = dev.upload(&gs).unwrap();
            let inv = 1.0f32 / 1024.0;
            let found = gpu_optim::unscale_check(&dev, &mut dgs, n, inv).unwrap();
            let want_found = optim::unscale_check(&mut gs, inv);
            assert_eq!(found, want_found, "unscale_check found, n = {n}");
            assert_eq!(download(&dev, &dgs), gs, "unscale_check values, n = {n}");
        }

        // Σ g² in f64, twice: the same bits both times, and the CPU's sum to rounding.
        let runs: Vec<f64> = (0..2).map(|_| gpu_optim::sum_squares(&dev, &dg, n).unwrap()).collect();
        assert_eq!(runs[0].to_bits(), runs[1].to_bits(), "sum of squares is not deterministic");
        let want = optim::sum_squares(&g);
        assert!((runs[0] - want).abs() <= 1e-12 * want, "sum of squares {} vs CPU {want}", runs[0]);
    }
}
