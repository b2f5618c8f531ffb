//! Batch norm: against the definition (training and eval mode, running statistics) and
//! finite differences for backward (with and without the fused ReLU) on every backend;
//! the kernels (kernels/norm.cu) against their CPU twins, bit for bit, through the host
//! functions; and the recomputations "lean" activation memory relies on
//! (`batch_norm_normalize`, `batch_norm_relu_bwd`) against what they replace.

#[macro_use]
mod common;

use common::{BTensor, DeviceUnderTest, Rng, assert_close, check_gradient, dot, host, randn, tensor};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::BatchNormParams;
use dfengine::tensor::{DType, Shape};

/// Per-channel batch mean and biased variance of x [M, C], in f64.
fn stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let m = x.len() / c;
    let mut mean = vec![0.0; c];
    for row in x.chunks(c) {
        row.iter().enumerate().for_each(|(i, &v)| mean[i] += v as f64 / m as f64);
    }
    let mut var = vec![0.0; c];
    for row in x.chunks(c) {
        row.iter().enumerate().for_each(|(i, &v)| var[i] += (v as f64 - mean[i]).powi(2) / m as f64);
    }
    (mean, var)
}

fn vector<B: Backend>(b: &B, data: &[f32]) -> BTensor<B> {
    tensor(b, [data.len()], data)
}

fn batch_norm_train_matches_definition_and_updates_running_stats<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(10);
    for (dims, relu) in [([2, 5, 3, 6], false), ([3, 4, 4, 5], true), ([1, 1, 7, 3], false)] {
        let c = dims[3];
        // An offset mean (3.0) checks that the variance is not computed as E[x²] − E[x]².
        let xs: Vec<f32> =
            rng.vec(dims.iter().product(), -1.0, 1.0).into_iter().map(|v| v * 2.0 + 3.0).collect();
        let x = tensor(b, dims, &xs);
        let gamma = rng.vec(c, 0.5, 1.5);
        let beta = rng.vec(c, -0.5, 0.5);
        let rm0 = rng.vec(c, -1.0, 1.0);
        let rv0 = rng.vec(c, 0.5, 2.0);
        let (mut rm, mut rv) = (vector(b, &rm0), vector(b, &rv0));
        let p = BatchNormParams { relu, ..BatchNormParams::default() };
        let out =
            b.batch_norm_fwd_train(&x, &vector(b, &gamma), &vector(b, &beta), &mut rm, &mut rv, &p).unwrap();

        let (mean, var) = stats(&xs, c);
        let m = (xs.len() / c) as f64;
        let want: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = i % c;
                let z = (v as f64 - mean[ch]) / (var[ch] + 1e-5).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                (if relu { z.max(0.0) } else { z }) as f32
            })
            .collect();
        assert_close("batch_norm y", &host(b, &out.y), &want, 1e-5, 1e-5);
        let want_rm: Vec<f32> = (0..c).map(|i| (0.9 * rm0[i] as f64 + 0.1 * mean[i]) as f32).collect();
        let want_rv: Vec<f32> =
            (0..c).map(|i| (0.9 * rv0[i] as f64 + 0.1 * var[i] * m / (m - 1.0)) as f32).collect();
        assert_close("running_mean", &host(b, &rm), &want_rm, 1e-6, 1e-6);
        assert_close("running_var (unbiased)", &host(b, &rv), &want_rv, 1e-6, 1e-6);
        let want_invstd: Vec<f32> = var.iter().map(|v| (1.0 / (v + 1e-5).sqrt()) as f32).collect();
        assert_close("saved invstd", &host(b, &out.saved.invstd), &want_invstd, 1e-6, 1e-6);
    }
}
test_device!(
    batch_norm_train_matches_definition_and_updates_running_stats,
    batch_norm_train_matches_definition_and_updates_running_stats_cpu,
    batch_norm_train_matches_definition_and_updates_running_stats_cuda
);

fn batch_norm_eval_uses_running_stats<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(11);
    let x = randn(b, &mut rng, [2, 3, 3, 4], 2.0);
    let gamma = rng.vec(4, 0.5, 1.5);
    let beta = rng.vec(4, -0.5, 0.5);
    let rm = rng.vec(4, -1.0, 1.0);
    let rv = rng.vec(4, 0.5, 2.0);
    let y = b
        .batch_norm_fwd_eval(
            &x,
            &vector(b, &gamma),
            &vector(b, &beta),
            &vector(b, &rm),
            &vector(b, &rv),
            &BatchNormParams::default(),
        )
        .unwrap();
    let want: Vec<f32> = host(b, &x)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i % 4;
            (v - rm[ch]) / (rv[ch] + 1e-5).sqrt() * gamma[ch] + beta[ch]
        })
        .collect();
    assert_close("batch_norm eval", &host(b, &y), &want, 1e-6, 1e-6);
}
test_device!(
    batch_norm_eval_uses_running_stats,
    batch_norm_eval_uses_running_stats_cpu,
    batch_norm_eval_uses_running_stats_cuda
);

fn batch_norm_bwd_matches_finite_differences<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(12);
    for relu in [false, true] {
        let dims = [2, 3, 5, 4];
        let x = randn(b, &mut rng, dims, 1.5);
        let gamma = vector(b, &rng.vec(4, 0.5, 1.5));
        let beta = vector(b, &rng.vec(4, -0.5, 0.5));
        let p = BatchNormParams { relu, ..BatchNormParams::default() };
        let fwd = |x: &BTensor<B>, gamma: &BTensor<B>, beta: &BTensor<B>| {
            let (mut rm, mut rv) = (vector(b, &[0.0; 4]), vector(b, &[1.0; 4]));
            b.batch_norm_fwd_train(x, gamma, beta, &mut rm, &mut rv, &p).unwrap()
        };
        let out = fwd(&x, &gamma, &beta);
        let r = randn(b, &mut rng, dims, 1.0);
        let rs = host(b, &r);
        let g = b.batch_norm_bwd(&r, &x, &gamma, &out.saved, relu.then_some(&out.y)).unwrap();
        let what = if relu { "batch_norm+relu" } else { "batch_norm" };
        let loss_x = |xs: &[f32]| dot(&host(b, &fwd(&tensor(b, dims, xs), &gamma, &beta).y), &rs);
        check_gradient(&format!("{what} dx"), &host(b, &x), &host(b, &g.dx), loss_x, 1e-3, 2e-2, 48);
        let loss_g = |gs: &[f32]| dot(&host(b, &fwd(&x, &vector(b, gs), &beta).y), &rs);
        let (gammas, dgamma) = (host(b, &gamma), host(b, &g.dgamma));
        check_gradient(&format!("{what} dgamma"), &gammas, &dgamma, loss_g, 1e-3, 2e-2, 8);
        let loss_b = |bs: &[f32]| dot(&host(b, &fwd(&x, &gamma, &vector(b, bs)).y), &rs);
        let (betas, dbeta) = (host(b, &beta), host(b, &g.dbeta));
        check_gradient(&format!("{what} dbeta"), &betas, &dbeta, loss_b, 1e-3, 2e-2, 8);
    }
}
test_device!(
    batch_norm_bwd_matches_finite_differences,
    batch_norm_bwd_matches_finite_differences_cpu,
    batch_norm_bwd_matches_finite_differences_cuda
);

/// The batch-norm kernels against their CPU twins, bit for bit: row counts around the
/// 256-row statistics chunk, a mean far from zero, ReLU fused or not. At most 33 k
/// elements a case: the same shapes on a card and on the software GPU.
#[cfg(feature = "cuda")]
#[test]
fn batch_norm_kernels_match_the_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::norm;
    use dfengine::backend::cuda::norm as gpu_norm;

    let Some(dev) = common::gpu_device() else { return };
    let s = dev.stream().clone();
    let mut rng = Rng::new(43);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
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
        assert_eq!(bits(&download(&dev, &d_mean)), bits(&mean), "saved mean, {what}");
        assert_eq!(bits(&download(&dev, &d_invstd)), bits(&invstd), "saved invstd, {what}");
        assert_eq!(bits(&download(&dev, &d_rm)), bits(&rm), "running mean, {what}");
        assert_eq!(bits(&download(&dev, &d_rv)), bits(&rv), "running var, {what}");
        assert_eq!(bits(&download(&dev, &d_y)), bits(&y), "y, {what}");

        let mut d_ye = s.alloc_zeros::<f32>(m * c).unwrap();
        gpu_norm::batch_norm_fwd_eval(&dev, &d_x, m, c, &d_gamma, &d_beta, &d_rm, &d_rv, &params, &mut d_ye)
            .unwrap();
        let mut ye = vec![0.0; m * c];
        norm::batch_norm_fwd_eval(&x, c, &gamma, &beta, &rm, &rv, &params, &mut ye);
        assert_eq!(bits(&download(&dev, &d_ye)), bits(&ye), "eval y, {what}");

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
        assert_eq!(bits(&download(&dev, &d_dg)), bits(&dg), "dgamma, {what}");
        assert_eq!(bits(&download(&dev, &d_db)), bits(&db), "dbeta, {what}");
        assert_eq!(bits(&download(&dev, &d_dx)), bits(&dx), "dx, {what}");
    }
}

/// The FP16 batch-norm kernels (`_f16`: FP16 activations, FP32 statistics) against their
/// CPU twins on FP16 storage, bit for bit: the same cases as the FP32 test with x, dy
/// rounded to FP16; statistics, running statistics, dγ, dβ FP32 and identical, y and dx
/// rounded once on both sides.
#[cfg(feature = "cuda")]
#[test]
fn batch_norm_f16_kernels_match_the_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::norm;
    use dfengine::backend::cuda::norm as gpu_norm;
    use half::f16;

    let Some(dev) = common::gpu_device() else { return };
    let mut rng = Rng::new(44);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let hbits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let halves = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
    for (m, c, relu) in [(1000, 3, false), (513, 64, true), (245, 130, true)] {
        let params = BatchNormParams { relu, ..BatchNormParams::default() };
        let x = halves(rng.vec(m * c, -1.0, 1.0).iter().map(|v| 3.0 + 2.0 * v).collect());
        let dy = halves(rng.vec(m * c, -1.0, 1.0));
        let gamma = rng.vec(c, 0.5, 1.5);
        let beta = rng.vec(c, -0.2, 0.2);
        let rm0 = rng.vec(c, -0.1, 0.1);
        let rv0 = rng.vec(c, 0.9, 1.1);
        let (d_x, d_dy) = (dev.upload(&x).unwrap(), dev.upload(&dy).unwrap());
        let (d_gamma, d_beta) = (dev.upload(&gamma).unwrap(), dev.upload(&beta).unwrap());
        let (mut d_rm, mut d_rv) = (dev.upload(&rm0).unwrap(), dev.upload(&rv0).unwrap());
        let mut d_y = dev.alloc::<f16>(m * c).unwrap();
        let (mut d_mean, mut d_invstd) = (dev.alloc::<f32>(c).unwrap(), dev.alloc::<f32>(c).unwrap());
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
        let (mut rm, mut rv, mut y) = (rm0.clone(), rv0.clone(), vec![f16::ZERO; m * c]);
        let (mean, invstd) =
            norm::batch_norm_fwd_train(&x, c, &gamma, &beta, &mut rm, &mut rv, &params, &mut y);
        let what = format!("f16 M={m} C={c} relu={relu}");
        assert_eq!(bits(&download(&dev, &d_mean)), bits(&mean), "saved mean, {what}");
        assert_eq!(bits(&download(&dev, &d_invstd)), bits(&invstd), "saved invstd, {what}");
        assert_eq!(bits(&download(&dev, &d_rm)), bits(&rm), "running mean, {what}");
        assert_eq!(bits(&download(&dev, &d_rv)), bits(&rv), "running var, {what}");
        assert_eq!(hbits(&download(&dev, &d_y)), hbits(&y), "y, {what}");

        let mut d_ye = dev.alloc::<f16>(m * c).unwrap();
        gpu_norm::batch_norm_fwd_eval(&dev, &d_x, m, c, &d_gamma, &d_beta, &d_rm, &d_rv, &params, &mut d_ye)
            .unwrap();
        let mut ye = vec![f16::ZERO; m * c];
        norm::batch_norm_fwd_eval(&x, c, &gamma, &beta, &rm, &rv, &params, &mut ye);
        assert_eq!(hbits(&download(&dev, &d_ye)), hbits(&ye), "eval y, {what}");

        let mut d_dx = dev.alloc::<f16>(m * c).unwrap();
        let (mut d_dg, mut d_db) = (dev.alloc::<f32>(c).unwrap(), dev.alloc::<f32>(c).unwrap());
        let relu_y = relu.then_some(&*d_y);
        gpu_norm::batch_norm_bwd(
            &dev, &d_dy, &d_x, m, c, &d_gamma, &d_mean, &d_invstd, relu_y, &mut d_dx, &mut d_dg, &mut d_db,
        )
        .unwrap();
        let mut dx = vec![f16::ZERO; m * c];
        let (dg, db) =
            norm::batch_norm_bwd(&dy, &x, c, &gamma, &mean, &invstd, relu.then_some(y.as_slice()), &mut dx);
        assert_eq!(bits(&download(&dev, &d_dg)), bits(&dg), "dgamma, {what}");
        assert_eq!(bits(&download(&dev, &d_db)), bits(&db), "dbeta, {what}");
        assert_eq!(hbits(&download(&dev, &d_dx)), hbits(&dx), "dx, {what}");
    }
}

/// x [m, c] whose channel 0 has the mean 0.5 exactly (0.5, 0.75, 0.25 repeated), so that
/// with β₀ = 10⁻⁸ its 0.5s normalise to a positive output that FP16 rounds to zero: the
/// case where a mask recomputed without the rounding would differ from the stored
/// output's. The other channels are random; β and dy too.
fn relu_edge_case(rng: &mut Rng, m: usize, c: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut x = rng.vec(m * c, -1.0, 2.0);
    for row in 0..m {
        x[row * c] = [0.5, 0.75, 0.25][row % 3];
    }
    let x = x.into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect();
    let gamma = rng.vec(c, 0.5, 1.5);
    let mut beta = rng.vec(c, -0.5, 0.5);
    beta[0] = 1e-8;
    (x, gamma, beta, rng.vec(m * c, -1.0, 1.0))
}

/// "lean" activation memory's two batch-norm ops give the bits of what they replace, in
/// FP32 and FP16: `batch_norm_normalize` the training forward's output (with and without
/// the ReLU), and `batch_norm_relu_bwd` (the fused ReLU's mask recomputed from x and β)
/// the gradients of `batch_norm_bwd` given that output, including outputs that round to
/// FP16's zero.
fn batch_norm_recomputation_matches_the_stored_output<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(14);
    let (m, c) = (300, 5);
    let bits = |t: &BTensor<B>| host(b, t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for dtype in [DType::F32, DType::F16] {
        for relu in [false, true] {
            let (x, gamma, beta, dy) = relu_edge_case(&mut rng, m, c);
            let shape = Shape::from([m, c]);
            let (x, dy) =
                (b.tensor_as(shape.clone(), &x, dtype).unwrap(), b.tensor_as(shape, &dy, dtype).unwrap());
            let (gamma, beta) = (vector(b, &gamma), vector(b, &beta));
            let p = BatchNormParams { relu, ..BatchNormParams::default() };
            let (mut rm, mut rv) = (vector(b, &[0.0; 5]), vector(b, &[1.0; 5]));
            let fwd = b.batch_norm_fwd_train(&x, &gamma, &beta, &mut rm, &mut rv, &p).unwrap();
            let what = format!("{dtype} relu={relu}");
            let y = b.batch_norm_normalize(&x, &gamma, &beta, &fwd.saved, relu).unwrap();
            assert_eq!((y.dtype(), bits(&y)), (dtype, bits(&fwd.y)), "batch_norm_normalize, {what}");
            if !relu {
                continue;
            }
            let want = b.batch_norm_bwd(&dy, &x, &gamma, &fwd.saved, Some(&fwd.y)).unwrap();
            let got = b.batch_norm_relu_bwd(&dy, &x, &gamma, &beta, &fwd.saved).unwrap();
            assert_eq!(bits(&got.dx), bits(&want.dx), "batch_norm_relu_bwd dx, {what}");
            assert_eq!(bits(&got.dgamma), bits(&want.dgamma), "batch_norm_relu_bwd dgamma, {what}");
            assert_eq!(bits(&got.dbeta), bits(&want.dbeta), "batch_norm_relu_bwd dbeta, {what}");
            if dtype == DType::F16 {
                let zeroed = host(b, &fwd.y).iter().step_by(c).filter(|v| **v == 0.0).count();
                assert!(zeroed >= m / 3, "{what}: the edge case rounds channel 0's 0.5s to zero");
            }
        }
    }
}
test_device!(
    batch_norm_recomputation_matches_the_stored_output,
    batch_norm_recomputation_matches_the_stored_output_cpu,
    batch_norm_recomputation_matches_the_stored_output_cuda
);

/// `batch_norm_relu_bwd_f32`/`_f16` (kernels/norm.cu, through the host function) against
/// the CPU twin, bit for bit, on the FP16 rounding edge case and around the 256-row
/// statistics chunk.
#[cfg(feature = "cuda")]
#[test]
fn batch_norm_relu_bwd_matches_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::norm;
    use dfengine::backend::cuda::buffer::DeviceElem;
    use dfengine::backend::cuda::device::Device;
    use dfengine::backend::cuda::norm as gpu_norm;
    use half::f16;

    fn case<E: DeviceElem + dfengine::backend::cpu::storage::Elem>(
        dev: &Device,
        rng: &mut Rng,
        m: usize,
        c: usize,
        round: impl Fn(f32) -> E,
        widen: impl Fn(E) -> f32,
    ) {
        let (x, gamma, beta, dy) = relu_edge_case(rng, m, c);
        let (x, dy): (Vec<E>, Vec<E>) =
            (x.into_iter().map(&round).collect(), dy.into_iter().map(&round).collect());
        // Channel 0's mean is its 0.5s, exactly: they normalise to β₀ = 10⁻⁸.
        let mut mean = rng.vec(c, -0.1, 0.1);
        mean[0] = 0.5;
        let invstd = rng.vec(c, 0.5, 2.0);
        let (mut dx, mut d_dx) = (x.clone(), dev.alloc::<E>(m * c).unwrap());
        let (dg, db) = norm::batch_norm_relu_bwd(&dy, &x, c, &gamma, &beta, &mean, &invstd, &mut dx);
        let (mut d_dg, mut d_db) = (dev.alloc::<f32>(c).unwrap(), dev.alloc::<f32>(c).unwrap());
        let up = |v: &[f32]| dev.upload(v).unwrap();
        gpu_norm::batch_norm_relu_bwd(
            dev,
            &dev.upload(&dy).unwrap(),
            &dev.upload(&x).unwrap(),
            m,
            c,
            &up(&gamma),
            &up(&beta),
            &up(&mean),
            &up(&invstd),
            &mut d_dx,
            &mut d_dg,
            &mut d_db,
        )
        .unwrap();
        let what = format!("M={m} C={c} {}", std::any::type_name::<E>());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&download(dev, &d_dg)), bits(&dg), "dgamma, {what}");
        assert_eq!(bits(&download(dev, &d_db)), bits(&db), "dbeta, {what}");
        let wide = |v: Vec<E>| bits(&v.into_iter().map(&widen).collect::<Vec<_>>());
        assert_eq!(wide(download(dev, &d_dx)), wide(dx), "dx, {what}");
    }

    let Some(dev) = common::gpu_device() else { return };
    let mut rng = Rng::new(45);
    for (m, c) in [(300, 5), (513, 64), (255, 3)] {
        case::<f32>(&dev, &mut rng, m, c, |v| v, |v| v);
        case::<f16>(&dev, &mut rng, m, c, f16::from_f32, f16::to_f32);
    }
}
