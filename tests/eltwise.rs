//! Elementwise ops: ReLU, add, scale, fill, sigmoid and the f32↔f16 casts, against their
//! definitions on every backend; the kernels (kernels/eltwise.cu) against their CPU twins
//! through the host functions, on sizes with and without a float4 tail.

#[macro_use]
mod common;

use common::{DeviceUnderTest, Rng, assert_close, host, randn, tensor};
use dfengine::backend::cpu::eltwise::{cast_f16_f32, cast_f32_f16};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;
use half::f16;

fn relu_fwd_and_bwd_match_definition<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let x = tensor(b, [5], &[-2.0, -0.0, 0.0, 0.5, 3.0]);
    let y = b.relu_fwd(&x).unwrap();
    assert_eq!(host(b, &y), [0.0, 0.0, 0.0, 0.5, 3.0]);
    let dy = tensor(b, [5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
    // The gradient at exactly 0 is 0, as in PyTorch.
    assert_eq!(host(b, &b.relu_bwd(&dy, &y).unwrap()), [0.0, 0.0, 0.0, 4.0, 5.0]);
}
test_device!(
    relu_fwd_and_bwd_match_definition,
    relu_fwd_and_bwd_match_definition_cpu,
    relu_fwd_and_bwd_match_definition_cuda
);

fn add_scale_fill_on_large_tensors_use_every_element<B: Backend>(b: &B, _: &DeviceUnderTest) {
    // Large enough to take the CPU's parallel path; a float4 tail of 3 on the GPU.
    let mut rng = Rng::new(40);
    let n = 100_003;
    let x = randn(b, &mut rng, [n], 1.0);
    let mut y = randn(b, &mut rng, [n], 1.0);
    let (x0, y0) = (host(b, &x), host(b, &y));
    b.add_assign(&mut y, &x).unwrap();
    let want: Vec<f32> = y0.iter().zip(&x0).map(|(a, b)| a + b).collect();
    assert_close("add", &host(b, &y), &want, 0.0, 0.0);
    b.scale(&mut y, -2.0).unwrap();
    let want: Vec<f32> = want.iter().map(|v| v * -2.0).collect();
    assert_close("scale", &host(b, &y), &want, 0.0, 0.0);
    b.fill(&mut y, 0.25).unwrap();
    assert!(host(b, &y).iter().all(|&v| v == 0.25));
    let mut short = b.zeros(Shape::from([3])).unwrap();
    assert!(b.add_assign(&mut short, &x).is_err(), "add must reject different shapes");
}
test_device!(
    add_scale_fill_on_large_tensors_use_every_element,
    add_scale_fill_on_large_tensors_use_every_element_cpu,
    add_scale_fill_on_large_tensors_use_every_element_cuda
);

fn sigmoid_is_stable_at_extremes<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    let x = tensor(b, [5], &[-100.0, -1.0, 0.0, 1.0, 100.0]);
    let y = host(b, &b.sigmoid(&x).unwrap());
    let want: Vec<f32> =
        [-100.0f64, -1.0, 0.0, 1.0, 100.0].iter().map(|v| (1.0 / (1.0 + (-v).exp())) as f32).collect();
    assert_close("sigmoid", &y, &want, 1e-7, 1e-6);
    assert!(!y.iter().any(|v| v.is_nan()), "sigmoid gave NaN: {y:?}");
    // A fast exp overflows to inf at 100, so σ(−100) = 1/(1 + inf) = 0 there.
    assert!(y[0] > 0.0 || dut.fast_exp, "σ(−100) underflowed to 0");
}
test_device!(
    sigmoid_is_stable_at_extremes,
    sigmoid_is_stable_at_extremes_cpu,
    sigmoid_is_stable_at_extremes_cuda
);

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

/// Each element-wise kernel against its CPU twin, exact where both sides do the same IEEE
/// FP32 operations (sigmoid: the kernel's fast exp, a couple of ulp). Sizes: a float4
/// tail of 3 on a short array, 4099, and 1_000_003 on a card; on the software GPU
/// 65_539 (2¹⁶ + 3: a tail of 3, 257 blocks of the scalar kernels) instead of the
/// million, a fifteenth of its work.
#[cfg(feature = "cuda")]
#[test]
fn eltwise_kernels_match_the_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::eltwise;
    use dfengine::backend::cuda::eltwise as gpu;

    let Some(dev) = common::gpu_device() else { return };
    let large = if common::is_software_gpu(&dev) { 65_539 } else { 1_000_003 };
    let mut rng = Rng::new(40);
    for n in [3, 4099, large] {
        let x = rng.vec(n, -3.0, 3.0);
        let y0 = rng.vec(n, -3.0, 3.0);
        let (dx, dy0) = (dev.upload(&x).unwrap(), dev.upload(&y0).unwrap());

        // relu forward and backward (the forward output of x masks dy0)
        let mut d_out = dev.alloc::<f32>(n).unwrap();
        gpu::relu_fwd(&dev, &dx, &mut d_out, n).unwrap();
        let mut want = vec![0.0; n];
        eltwise::relu_fwd(&x, &mut want);
        let y_relu = download(&dev, &d_out);
        assert_eq!(y_relu, want, "relu_fwd_f32, n = {n}");

        let d_y = dev.upload(&y_relu).unwrap();
        let mut d_dx = dev.alloc::<f32>(n).unwrap();
        gpu::relu_bwd(&dev, &dy0, &d_y, &mut d_dx, n).unwrap();
        eltwise::relu_bwd(&y0, &y_relu, &mut want);
        assert_eq!(download(&dev, &d_dx), want, "relu_bwd_f32, n = {n}");

        // y += x, then y *= alpha, then fill
        let mut d_acc = dev.upload(&y0).unwrap();
        gpu::add_assign(&dev, &mut d_acc, &dx, n).unwrap();
        let mut want = y0.clone();
        eltwise::add_assign(&mut want, &x);
        assert_eq!(download(&dev, &d_acc), want, "add_assign_f32, n = {n}");

        let alpha = 0.37f32;
        gpu::scale(&dev, &mut d_acc, alpha, n).unwrap();
        eltwise::scale(&mut want, alpha);
        assert_eq!(download(&dev, &d_acc), want, "scale_f32, n = {n}");

        let value = -1.5f32;
        gpu::fill(&dev, &mut d_acc, value, n).unwrap();
        assert!(download(&dev, &d_acc).iter().all(|&v| v == value), "fill_f32, n = {n}");

        // sigmoid: the kernel's exp is the fast one (a couple of ulp)
        gpu::sigmoid(&dev, &dx, &mut d_out, n).unwrap();
        let mut want = vec![0.0; n];
        eltwise::sigmoid(&x, &mut want);
        assert_close(&format!("sigmoid_f32, n = {n}"), &download(&dev, &d_out), &want, 1e-6, 1e-6);

        // casts: round to nearest even both ways, bit for bit
        let mut d_h = dev.alloc::<f16>(n).unwrap();
        gpu::cast_f32_f16(&dev, &dx, &mut d_h, n).unwrap();
        let mut want_h = vec![f16::ZERO; n];
        eltwise::cast_f32_f16(&x, &mut want_h);
        assert_eq!(common::download(&dev, &d_h), want_h, "cast_f32_f16, n = {n}");
        gpu::cast_f16_f32(&dev, &d_h, &mut d_out, n).unwrap();
        let mut want = vec![0.0; n];
        eltwise::cast_f16_f32(&want_h, &mut want);
        assert_eq!(download(&dev, &d_out), want, "cast_f16_f32, n = {n}");
    }
}

/// The FP16 element-wise kernels (ReLU forward and backward, the residual add: mixed
/// precision's activations) against their CPU twins on FP16 storage, bit for bit: FP32
/// arithmetic, one rounding to nearest even, on both sides. Odd sizes, and sums that
/// round (values up to 3 in FP16 have 2⁻⁹ spacing).
#[cfg(feature = "cuda")]
#[test]
fn eltwise_f16_kernels_match_the_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::eltwise;
    use dfengine::backend::cuda::eltwise as gpu;

    let Some(dev) = common::gpu_device() else { return };
    let large = if common::is_software_gpu(&dev) { 65_539 } else { 1_000_003 };
    let mut rng = Rng::new(41);
    let halves = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
    for n in [3, 4099, large] {
        let x = halves(rng.vec(n, -3.0, 3.0));
        let y0 = halves(rng.vec(n, -3.0, 3.0));
        let (d_x, d_y0) = (dev.upload(&x).unwrap(), dev.upload(&y0).unwrap());
        let mut d_out = dev.alloc::<f16>(n).unwrap();
        gpu::relu_fwd(&dev, &d_x, &mut d_out, n).unwrap();
        let mut want = vec![f16::ZERO; n];
        eltwise::relu_fwd(&x, &mut want);
        let y_relu = download(&dev, &d_out);
        assert_eq!(y_relu, want, "relu_fwd_f16, n = {n}");

        let d_relu = dev.upload(&y_relu).unwrap();
        let mut d_dx = dev.alloc::<f16>(n).unwrap();
        gpu::relu_bwd(&dev, &d_y0, &d_relu, &mut d_dx, n).unwrap();
        eltwise::relu_bwd(&y0, &y_relu, &mut want);
        assert_eq!(download(&dev, &d_dx), want, "relu_bwd_f16, n = {n}");

        let mut d_acc = dev.upload(&y0).unwrap();
        gpu::add_assign(&dev, &mut d_acc, &d_x, n).unwrap();
        let mut want = y0.clone();
        eltwise::add_assign(&mut want, &x);
        assert_eq!(download(&dev, &d_acc), want, "add_assign_f16, n = {n}");
    }
}
