//! Batch norm: the CPU reference against the definition (training and eval mode,
//! running statistics) and finite differences for backward (with and without the fused
//! ReLU).

mod common;

use common::{Rng, assert_close, check_gradient, cpu, dot, randn_tensor};
use dfengine::backend::cpu::{CpuBackend, CpuTensor};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::BatchNormParams;
use dfengine::tensor::Shape;

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

fn vector(b: &CpuBackend, data: Vec<f32>) -> CpuTensor {
    b.tensor(Shape::from([data.len()]), &data).unwrap()
}

#[test]
fn batch_norm_train_matches_definition_and_updates_running_stats() {
    let b = cpu();
    let mut rng = Rng::new(10);
    for (dims, relu) in [([2, 5, 3, 6], false), ([3, 4, 4, 5], true), ([1, 1, 7, 3], false)] {
        let c = dims[3];
        // An offset mean (3.0) checks that the variance is not computed as E[x²] − E[x]².
        let xs: Vec<f32> =
            rng.vec(dims.iter().product(), -1.0, 1.0).into_iter().map(|v| v * 2.0 + 3.0).collect();
        let x = b.tensor(Shape::from(dims), &xs).unwrap();
        let gamma = vector(&b, rng.vec(c, 0.5, 1.5));
        let beta = vector(&b, rng.vec(c, -0.5, 0.5));
        let rm0 = rng.vec(c, -1.0, 1.0);
        let rv0 = rng.vec(c, 0.5, 2.0);
        let (mut rm, mut rv) = (vector(&b, rm0.clone()), vector(&b, rv0.clone()));
        let p = BatchNormParams { relu, ..BatchNormParams::default() };
        let out = b.batch_norm_fwd_train(&x, &gamma, &beta, &mut rm, &mut rv, &p).unwrap();

        let (mean, var) = stats(&xs, c);
        let m = (xs.len() / c) as f64;
        let want: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = i % c;
                let z = (v as f64 - mean[ch]) / (var[ch] + 1e-5).sqrt() * gamma.storage()[ch] as f64
                    + beta.storage()[ch] as f64;
                (if relu { z.max(0.0) } else { z }) as f32
            })
            .collect();
        assert_close("batch_norm y", out.y.storage(), &want, 1e-5, 1e-5);
        let want_rm: Vec<f32> = (0..c).map(|i| (0.9 * rm0[i] as f64 + 0.1 * mean[i]) as f32).collect();
        let want_rv: Vec<f32> =
            (0..c).map(|i| (0.9 * rv0[i] as f64 + 0.1 * var[i] * m / (m - 1.0)) as f32).collect();
        assert_close("running_mean", rm.storage(), &want_rm, 1e-6, 1e-6);
        assert_close("running_var (unbiased)", rv.storage(), &want_rv, 1e-6, 1e-6);
        let want_invstd: Vec<f32> = var.iter().map(|v| (1.0 / (v + 1e-5).sqrt()) as f32).collect();
        assert_close("saved invstd", out.saved.invstd.storage(), &want_invstd, 1e-6, 1e-6);
    }
}

#[test]
fn batch_norm_eval_uses_running_stats() {
    let b = cpu();
    let mut rng = Rng::new(11);
    let x = randn_tensor(&mut rng, [2, 3, 3, 4], 2.0);
    let gamma = vector(&b, rng.vec(4, 0.5, 1.5));
    let beta = vector(&b, rng.vec(4, -0.5, 0.5));
    let rm = vector(&b, rng.vec(4, -1.0, 1.0));
    let rv = vector(&b, rng.vec(4, 0.5, 2.0));
    let y = b.batch_norm_fwd_eval(&x, &gamma, &beta, &rm, &rv, &BatchNormParams::default()).unwrap();
    let want: Vec<f32> = x
        .storage()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i % 4;
            (v - rm.storage()[ch]) / (rv.storage()[ch] + 1e-5).sqrt() * gamma.storage()[ch]
                + beta.storage()[ch]
        })
        .collect();
    assert_close("batch_norm eval", y.storage(), &want, 1e-6, 1e-6);
}

#[test]
fn batch_norm_bwd_matches_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(12);
    for relu in [false, true] {
        let dims = [2, 3, 5, 4];
        let x = randn_tensor(&mut rng, dims, 1.5);
        let gamma = vector(&b, rng.vec(4, 0.5, 1.5));
        let beta = vector(&b, rng.vec(4, -0.5, 0.5));
        let p = BatchNormParams { relu, ..BatchNormParams::default() };
        let fwd = |x: &CpuTensor, gamma: &CpuTensor, beta: &CpuTensor| {
            let (mut rm, mut rv) = (vector(&b, vec![0.0; 4]), vector(&b, vec![1.0; 4]));
            b.batch_norm_fwd_train(x, gamma, beta, &mut rm, &mut rv, &p).unwrap()
        };
        let out = fwd(&x, &gamma, &beta);
        let r = randn_tensor(&mut rng, dims, 1.0);
        let g = b.batch_norm_bwd(&r, &x, &gamma, &out.saved, relu.then_some(&out.y)).unwrap();
        let what = if relu { "batch_norm+relu" } else { "batch_norm" };
        let loss_x = |xs: &[f32]| {
            dot(fwd(&b.tensor(Shape::from(dims), xs).unwrap(), &gamma, &beta).y.storage(), r.storage())
        };
        check_gradient(&format!("{what} dx"), x.storage(), g.dx.storage(), loss_x, 1e-3, 2e-2, 48);
        let loss_g = |gs: &[f32]| dot(fwd(&x, &vector(&b, gs.to_vec()), &beta).y.storage(), r.storage());
        check_gradient(&format!("{what} dgamma"), gamma.storage(), g.dgamma.storage(), loss_g, 1e-3, 2e-2, 8);
        let loss_b = |bs: &[f32]| dot(fwd(&x, &gamma, &vector(&b, bs.to_vec())).y.storage(), r.storage());
        check_gradient(&format!("{what} dbeta"), beta.storage(), g.dbeta.storage(), loss_b, 1e-3, 2e-2, 8);
    }
}
