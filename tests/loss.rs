//! BCE with logits: against the textbook definition (with pos_weight and label
//! smoothing), its stability for large logits, and finite differences on every backend;
//! the kernels (kernels/loss.cu) against their CPU twins through the host functions.

#[macro_use]
mod common;

use common::{DeviceUnderTest, Rng, assert_close, check_gradient, host, tensor};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::BceParams;

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

fn bce_matches_definition<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(50);
    for p in [BceParams::default(), BceParams { pos_weight: 2.5, label_smoothing: 0.1 }] {
        let xs = rng.vec(33, -6.0, 6.0);
        let ts: Vec<f32> = (0..33).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let x = tensor(b, [33], &xs);
        let t = tensor(b, [33], &ts);
        let loss = b.bce_with_logits_fwd(&x, &t, &p).unwrap();
        let want = bce_definition(&xs, &ts, &p) as f32;
        assert_close(&format!("bce {p:?}"), &[loss], &[want], 1e-6, 1e-5);
    }
}
test_device!(bce_matches_definition, bce_matches_definition_cpu, bce_matches_definition_cuda);

fn bce_is_exact_for_large_logits<B: Backend>(b: &B, _: &DeviceUnderTest) {
    // The naive form overflows (log 0); the stable form gives the linear asymptote.
    let x = tensor(b, [4], &[100.0, -100.0, 100.0, -100.0]);
    let t = tensor(b, [4], &[0.0, 1.0, 1.0, 0.0]);
    let loss = b.bce_with_logits_fwd(&x, &t, &BceParams::default()).unwrap();
    assert_close("bce at ±100", &[loss], &[50.0], 1e-4, 1e-6);
    let g = b.bce_with_logits_bwd(&x, &t, &BceParams::default(), 1.0).unwrap();
    assert_close("bce grad at ±100", &host(b, &g), &[0.25, -0.25, 0.0, 0.0], 1e-7, 0.0);
}
test_device!(
    bce_is_exact_for_large_logits,
    bce_is_exact_for_large_logits_cpu,
    bce_is_exact_for_large_logits_cuda
);

fn bce_bwd_matches_finite_differences_and_applies_the_loss_scale<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(51);
    let p = BceParams { pos_weight: 2.5, label_smoothing: 0.1 };
    let xs = rng.vec(17, -4.0, 4.0);
    let ts: Vec<f32> = (0..17).map(|i| (i % 2) as f32).collect();
    let t = tensor(b, [17], &ts);
    let x = tensor(b, [17], &xs);
    let g = host(b, &b.bce_with_logits_bwd(&x, &t, &p, 1.0).unwrap());
    let loss = |v: &[f32]| b.bce_with_logits_fwd(&tensor(b, [17], v), &t, &p).unwrap() as f64;
    check_gradient("bce dlogits", &xs, &g, loss, 1e-2, 1e-2, 17);
    let scaled = b.bce_with_logits_bwd(&x, &t, &p, 1024.0).unwrap();
    let want: Vec<f32> = g.iter().map(|v| v * 1024.0).collect();
    assert_close("bce loss scale", &host(b, &scaled), &want, 0.0, 1e-6);
}
test_device!(
    bce_bwd_matches_finite_differences_and_applies_the_loss_scale,
    bce_bwd_matches_finite_differences_and_applies_the_loss_scale_cpu,
    bce_bwd_matches_finite_differences_and_applies_the_loss_scale_cuda
);

/// The BCE kernels against their CPU twins, with and without pos_weight and label
/// smoothing, on one logit, a dozen and a thousand: the same sizes on a card and on the
/// software GPU.
#[cfg(feature = "cuda")]
#[test]
fn bce_kernels_match_the_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::loss;
    use dfengine::backend::cuda::loss as gpu_loss;

    let Some(dev) = common::gpu_device() else { return };
    let s = dev.stream().clone();
    let mut rng = Rng::new(44);
    let weighted = BceParams { pos_weight: 2.5, label_smoothing: 0.1 };
    for (n, p) in
        [(1usize, BceParams::default()), (12, weighted), (1000, BceParams::default()), (1000, weighted)]
    {
        let logits: Vec<f32> = rng.vec(n, -8.0, 8.0);
        let targets: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
        let (d_l, d_t) = (s.clone_htod(&logits).unwrap(), s.clone_htod(&targets).unwrap());
        let mut d_loss = s.alloc_zeros::<f32>(1).unwrap();
        gpu_loss::bce_with_logits_fwd(&dev, &d_l, &d_t, n, &p, &mut d_loss).unwrap();
        let want = loss::bce_with_logits_fwd(&logits, &targets, &p);
        // A block tree sum in FP32 against the CPU's f64 one, and the fast exp: ~1e-6.
        let got = download(&dev, &d_loss);
        assert_close(&format!("bce forward, n = {n}, {p:?}"), &got, &[want], 1e-6, 1e-5);

        let scale = 512.0f32;
        let mut d_g = s.alloc_zeros::<f32>(n).unwrap();
        gpu_loss::bce_with_logits_bwd(&dev, &d_l, &d_t, n, &p, scale, &mut d_g).unwrap();
        let mut want = vec![0.0; n];
        loss::bce_with_logits_bwd(&logits, &targets, &p, scale, &mut want);
        assert_close(&format!("bce backward, n = {n}, {p:?}"), &download(&dev, &d_g), &want, 1e-6, 1e-5);
    }
}
