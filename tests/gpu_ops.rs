//! The element-wise and optimizer kernels (kernels/eltwise.cu, kernels/optim.cu) against
//! their CPU twins, on sizes with and without a float4 tail. Exact where both sides do
//! the same IEEE FP32 operations; the tolerances elsewhere say why. Skips with the reason
//! without a GPU.
#![cfg(feature = "cuda")]

mod common;

use common::{Rng, assert_close};
use cudarc::driver::CudaSlice;
use dfengine::backend::cpu::{eltwise, optim};
use dfengine::backend::cuda::device::Device;
use dfengine::backend::cuda::{eltwise as gpu, optim as gpu_optim};
use dfengine::backend::params::{AdamWParams, SgdParams};
use half::f16;

/// A tail of 3 after the float4 vectors, and a size past one grid's worth of threads.
const SIZES: [usize; 3] = [3, 4099, 1_000_003];

fn host<T: cudarc::driver::DeviceRepr + Default + Clone>(dev: &Device, d: &CudaSlice<T>) -> Vec<T> {
    dev.synchronize("the kernel under test").unwrap();
    dev.download(d).unwrap()
}

#[test]
fn elementwise_kernels_match_the_cpu() {
    let Some(dev) = common::gpu_device() else { return };
    let mut rng = Rng::new(40);
    for n in SIZES {
        let x = rng.vec(n, -3.0, 3.0);
        let y0 = rng.vec(n, -3.0, 3.0);
        let (dx, dy0) = (dev.upload(&x).unwrap(), dev.upload(&y0).unwrap());

        // relu forward and backward (the forward output of x masks dy0)
        let mut d_out = dev.alloc::<f32>(n).unwrap();
        gpu::relu_fwd(&dev, &dx, &mut d_out, n).unwrap();
        let mut want = vec![0.0; n];
        eltwise::relu_fwd(&x, &mut want);
        let y_relu = host(&dev, &d_out);
        assert_eq!(y_relu, want, "relu_fwd_f32, n = {n}");

        let d_y = dev.upload(&y_relu).unwrap();
        let mut d_dx = dev.alloc::<f32>(n).unwrap();
        gpu::relu_bwd(&dev, &dy0, &d_y, &mut d_dx, n).unwrap();
        eltwise::relu_bwd(&y0, &y_relu, &mut want);
        assert_eq!(host(&dev, &d_dx), want, "relu_bwd_f32, n = {n}");

        // y += x, then y *= alpha, then fill
        let mut d_acc = dev.upload(&y0).unwrap();
        gpu::add_assign(&dev, &mut d_acc, &dx, n).unwrap();
        let mut want = y0.clone();
        eltwise::add_assign(&mut want, &x);
        assert_eq!(host(&dev, &d_acc), want, "add_assign_f32, n = {n}");

        let alpha = 0.37f32;
        gpu::scale(&dev, &mut d_acc, alpha, n).unwrap();
        eltwise::scale(&mut want, alpha);
        assert_eq!(host(&dev, &d_acc), want, "scale_f32, n = {n}");

        let value = -1.5f32;
        gpu::fill(&dev, &mut d_acc, value, n).unwrap();
        assert!(host(&dev, &d_acc).iter().all(|&v| v == value), "fill_f32, n = {n}");

        // sigmoid: the kernel's exp is the fast one (a couple of ulp)
        gpu::sigmoid(&dev, &dx, &mut d_out, n).unwrap();
        let mut want = vec![0.0; n];
        eltwise::sigmoid(&x, &mut want);
        assert_close(&format!("sigmoid_f32, n = {n}"), &host(&dev, &d_out), &want, 1e-6, 1e-6);

        // casts: round to nearest even both ways, bit for bit
        let mut d_h = dev.alloc::<f16>(n).unwrap();
        gpu::cast_f32_f16(&dev, &dx, &mut d_h, n).unwrap();
        let mut want_h = vec![f16::ZERO; n];
        eltwise::cast_f32_f16(&x, &mut want_h);
        assert_eq!(host(&dev, &d_h), want_h, "cast_f32_f16, n = {n}");
        gpu::cast_f16_f32(&dev, &d_h, &mut d_out, n).unwrap();
        let mut want = vec![0.0; n];
        eltwise::cast_f16_f32(&want_h, &mut want);
        assert_eq!(host(&dev, &d_out), want, "cast_f16_f32, n = {n}");
    }
}

#[test]
fn optimizer_kernels_match_the_cpu() {
    let Some(dev) = common::gpu_device() else { return };
    let mut rng = Rng::new(41);
    for n in SIZES {
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
        assert_close(&format!("adamw m, n = {n}"), &host(&dev, &dm), &m, 1e-9, 1e-6);
        assert_close(&format!("adamw v, n = {n}"), &host(&dev, &dv), &v, 1e-12, 1e-6);
        assert_close(&format!("adamw p, n = {n}"), &host(&dev, &dp), &p, 1e-7, 1e-6);

        // SGD with momentum and Nesterov, first step and a later one.
        let hp = SgdParams { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 1e-4 };
        let (mut dp, mut db) = (dev.upload(&p0).unwrap(), dev.upload(&m0).unwrap());
        let (mut p, mut b) = (p0.clone(), m0.clone());
        for first in [true, false] {
            gpu_optim::sgd_step(&dev, &mut dp, &dg, &mut db, n, &hp, first).unwrap();
            optim::sgd_step(&mut p, &g, &mut b, &hp, first);
        }
        assert_close(&format!("sgd p, n = {n}"), &host(&dev, &dp), &p, 1e-7, 1e-6);
        assert_close(&format!("sgd buf, n = {n}"), &host(&dev, &db), &b, 1e-7, 1e-6);

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
            assert_eq!(host(&dev, &dgs), gs, "unscale_check values, n = {n}");
        }

        // Σ g² in f64, twice: the same bits both times, and the CPU's sum to rounding.
        let runs: Vec<f64> = (0..2).map(|_| gpu_optim::sum_squares(&dev, &dg, n).unwrap()).collect();
        assert_eq!(runs[0].to_bits(), runs[1].to_bits(), "sum of squares is not deterministic");
        let want = optim::sum_squares(&g);
        assert!((runs[0] - want).abs() <= 1e-12 * want, "sum of squares {} vs CPU {want}", runs[0]);
    }
}

#[test]
fn pooling_kernels_match_the_cpu_bit_for_bit() {
    use dfengine::backend::cpu::pooling;
    use dfengine::backend::cuda::pooling as gpu_pooling;
    use dfengine::backend::params::Pool2dGeom;

    let Some(dev) = common::gpu_device() else { return };
    let s = dev.stream().clone();
    let mut rng = Rng::new(42);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // Odd sizes; values from a few levels so that windows hold ties; one NaN.
    for (dims, window, stride, pad) in
        [([2, 17, 15, 5], 3, 2, 1), ([1, 8, 8, 3], 2, 2, 0), ([3, 5, 9, 2], 3, 1, 1)]
    {
        let g = Pool2dGeom::new(dims, window, stride, pad).unwrap();
        let xn = dims.iter().product::<usize>();
        let mut x: Vec<f32> = (0..xn).map(|_| rng.below(4) as f32 - 1.0).collect();
        x[xn / 3] = f32::NAN;
        let yn = g.n * g.p * g.q * g.c;
        let dy = rng.vec(yn, -1.0, 1.0);
        let (dx_dev, ddy) = (s.clone_htod(&x).unwrap(), s.clone_htod(&dy).unwrap());
        let mut d_y = s.alloc_zeros::<f32>(yn).unwrap();
        gpu_pooling::max_pool2d_fwd(&dev, &g, &dx_dev, &mut d_y).unwrap();
        let mut want = vec![0.0; yn];
        pooling::max_pool2d_fwd(&g, &x, &mut want);
        assert_eq!(bits(&host(&dev, &d_y)), bits(&want), "max pool forward {dims:?}");
        let mut d_dx = s.alloc_zeros::<f32>(xn).unwrap();
        gpu_pooling::max_pool2d_bwd(&dev, &g, &dx_dev, &ddy, &mut d_dx).unwrap();
        let mut want = vec![0.0; xn];
        pooling::max_pool2d_bwd(&g, &x, &dy, &mut want);
        assert_eq!(bits(&host(&dev, &d_dx)), bits(&want), "max pool backward {dims:?}");
    }
    // Global average pool (group = H·W = 49) and temporal mean (group = T = 16).
    for (blocks, group, c) in [(6, 49, 512), (4, 16, 2048), (3, 1, 7)] {
        let x = rng.vec(blocks * group * c, -2.0, 2.0);
        let dy = rng.vec(blocks * c, -1.0, 1.0);
        let (d_x, d_dy) = (s.clone_htod(&x).unwrap(), s.clone_htod(&dy).unwrap());
        let mut d_y = s.alloc_zeros::<f32>(blocks * c).unwrap();
        gpu_pooling::mean_rows(&dev, &d_x, &mut d_y, blocks, group, c).unwrap();
        let mut want = vec![0.0; blocks * c];
        pooling::mean_rows(&x, group, c, &mut want);
        assert_eq!(bits(&host(&dev, &d_y)), bits(&want), "mean over {group} rows");
        let mut d_dx = s.alloc_zeros::<f32>(blocks * group * c).unwrap();
        gpu_pooling::mean_rows_bwd(&dev, &d_dy, &mut d_dx, blocks, group, c).unwrap();
        let mut want = vec![0.0; blocks * group * c];
        pooling::mean_rows_bwd(&dy, group, c, &mut want);
        assert_eq!(bits(&host(&dev, &d_dx)), bits(&want), "mean backward over {group} rows");
    }
}

#[test]
fn batch_norm_kernels_match_the_cpu_bit_for_bit() {
    use dfengine::backend::cpu::norm;
    use dfengine::backend::cuda::norm as gpu_norm;
    use dfengine::backend::params::BatchNormParams;

    let Some(dev) = common::gpu_device() else { return };
    let s = dev.stream().clone();
    let mut rng = Rng::new(43);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // Row counts around the 256-row chunk, a mean far from zero, ReLU fused or not.
    for (m, c, relu) in [(1000, 3, false), (513, 64, true), (245, 130, true), (256, 1, false)] {
        let params = BatchNormParams { relu, ..BatchNormParams::default() };
        let x: Vec<f32> = rng.vec(m * c, -1.0, 1.0).iter().map(|v| 3.0 + 2.0 * v).collect();
        let dy = rng.vec(m * c, -1.0, 1.0);
        let gamma = rng.vec(c, 0.5, 1.5);
        let beta = rng.vec(c, -0.2, 0.2);
        let rm0 = rng.vec(c, -0.1, 0.1);
        let rv0 = rng.vec(c, 0.9, 1.1);
        let up = |v: &[f32]| s.clone_htod(v).unwrap();
        let (d_x, d_dy, d_gamma, d_beta) = (up(&x), up(&dy), up(&gamma), up(&beta));
        let (mut d_rm, mut d_rv) = (up(&rm0), up(&rv0));
        let mut d_y = s.alloc_zeros::<f32>(m * c).unwrap();
        let (mut d_mean, mut d_invstd) = (s.alloc_zeros::<f32>(c).unwrap(), s.alloc_zeros::<f32>(c).unwrap());
        gpu_norm::batch_norm_fwd_train(
            &dev,
            &d_x,
            m,
            c,
            &d_gamma,
            &d_beta,
            &mut d_rm,
            &mut d_rv,
            &params,
            &mut d_y,
            &mut d_mean,
            &mut d_invstd,
        )
        .unwrap();
        let (mut rm, mut rv, mut y) = (rm0.clone(), rv0.clone(), vec![0.0; m * c]);
        let (mean, invstd) =
            norm::batch_norm_fwd_train(&x, c, &gamma, &beta, &mut rm, &mut rv, &params, &mut y);
        let what = format!("M={m} C={c} relu={relu}");
        assert_eq!(bits(&host(&dev, &d_mean)), bits(&mean), "saved mean, {what}");
        assert_eq!(bits(&host(&dev, &d_invstd)), bits(&invstd), "saved invstd, {what}");
        assert_eq!(bits(&host(&dev, &d_rm)), bits(&rm), "running mean, {what}");
        assert_eq!(bits(&host(&dev, &d_rv)), bits(&rv), "running var, {what}");
        assert_eq!(bits(&host(&dev, &d_y)), bits(&y), "y, {what}");

        let mut d_ye = s.alloc_zeros::<f32>(m * c).unwrap();
        gpu_norm::batch_norm_fwd_eval(&dev, &d_x, m, c, &d_gamma, &d_beta, &d_rm, &d_rv, &params, &mut d_ye)
            .unwrap();
        let mut ye = vec![0.0; m * c];
        norm::batch_norm_fwd_eval(&x, c, &gamma, &beta, &rm, &rv, &params, &mut ye);
        assert_eq!(bits(&host(&dev, &d_ye)), bits(&ye), "eval y, {what}");

        let mut d_dx = s.alloc_zeros::<f32>(m * c).unwrap();
        let (mut d_dg, mut d_db) = (s.alloc_zeros::<f32>(c).unwrap(), s.alloc_zeros::<f32>(c).unwrap());
        let relu_y = relu.then_some(&d_y);
        gpu_norm::batch_norm_bwd(
            &dev, &d_dy, &d_x, m, c, &d_gamma, &d_mean, &d_invstd, relu_y, &mut d_dx, &mut d_dg, &mut d_db,
        )
        .unwrap();
        let mut dx = vec![0.0; m * c];
        let (dg, db) =
            norm::batch_norm_bwd(&dy, &x, c, &gamma, &mean, &invstd, relu.then_some(y.as_slice()), &mut dx);
        assert_eq!(bits(&host(&dev, &d_dg)), bits(&dg), "dgamma, {what}");
        assert_eq!(bits(&host(&dev, &d_db)), bits(&db), "dbeta, {what}");
        assert_eq!(bits(&host(&dev, &d_dx)), bits(&dx), "dx, {what}");
    }
}

#[test]
fn bce_kernels_match_the_cpu() {
    use dfengine::backend::cpu::loss;
    use dfengine::backend::cuda::loss as gpu_loss;
    use dfengine::backend::params::BceParams;

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
        assert_close(&format!("bce forward, n = {n}, {p:?}"), &host(&dev, &d_loss), &[want], 1e-6, 1e-5);

        let scale = 512.0f32;
        let mut d_g = s.alloc_zeros::<f32>(n).unwrap();
        gpu_loss::bce_with_logits_bwd(&dev, &d_l, &d_t, n, &p, scale, &mut d_g).unwrap();
        let mut want = vec![0.0; n];
        loss::bce_with_logits_bwd(&logits, &targets, &p, scale, &mut want);
        assert_close(&format!("bce backward, n = {n}, {p:?}"), &host(&dev, &d_g), &want, 1e-6, 1e-5);
    }
}
