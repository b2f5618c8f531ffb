//! The CUDA backend against the CPU reference through the `Backend` trait: each op on the
//! same inputs (argument order, shapes, in-place updates, errors), a whole ResNet
//! training step (logits, loss, every gradient, running statistics) and a few optimizer
//! steps, and an out-of-memory under a small budget that the governor can act on.
//! Tolerances allow for the FP16 rounding of the tensor-core inputs. Each test opens the
//! backend through `common::cuda_backend` (skips with the reason without a GPU, fails
//! under `DFENGINE_REQUIRE_GPU=1`).
#![cfg(feature = "cuda")]

mod common;

use common::{Rng, assert_close, cpu};
use dfengine::backend::OpError;
use dfengine::backend::cpu::{CpuBackend, CpuTensor};
use dfengine::backend::cuda::backend::{CudaBackend, CudaTensor};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::{AdamWParams, BatchNormParams, BceParams, SgdParams};
use dfengine::config::{Backbone, OptimizerKind};
use dfengine::model::arch::ResNetSpec;
use dfengine::model::resnet::ResNet;
use dfengine::tensor::{DType, Shape};
use dfengine::train::optimizer::Optimizer;

/// The same values on both backends.
fn pair(
    c: &CpuBackend,
    g: &CudaBackend,
    rng: &mut Rng,
    dims: &[usize],
    lo: f32,
    hi: f32,
) -> (CpuTensor, CudaTensor) {
    let shape = Shape::from(dims);
    let v = rng.vec(shape.numel(), lo, hi);
    (c.tensor(shape.clone(), &v).unwrap(), g.tensor(shape, &v).unwrap())
}

fn same(
    what: &str,
    c: &CpuBackend,
    g: &CudaBackend,
    want: &CpuTensor,
    got: &CudaTensor,
    atol: f32,
    rtol: f32,
) {
    assert_eq!(want.shape(), got.shape(), "{what}: shapes");
    assert_close(what, &g.to_vec(got).unwrap(), &c.to_vec(want).unwrap(), atol, rtol);
}

/// Small shapes (the largest convolution 4·10⁵ multiply-adds): the same on a card and on
/// the software GPU.
#[test]
fn every_op_matches_the_cpu_cuda() {
    let Some((g, _)) = common::cuda_backend() else { return };
    let c = cpu();
    let mut rng = Rng::new(90);
    // Exact FP32 element-wise ops.
    let (xc, xg) = pair(&c, &g, &mut rng, &[3, 5, 7, 6], -1.0, 1.0);
    let (dc, dg) = pair(&c, &g, &mut rng, &[3, 5, 7, 6], -1.0, 1.0);
    let (yc, yg) = (c.relu_fwd(&xc).unwrap(), g.relu_fwd(&xg).unwrap());
    same("relu", &c, &g, &yc, &yg, 0.0, 0.0);
    same("relu_bwd", &c, &g, &c.relu_bwd(&dc, &yc).unwrap(), &g.relu_bwd(&dg, &yg).unwrap(), 0.0, 0.0);
    same("sigmoid", &c, &g, &c.sigmoid(&xc).unwrap(), &g.sigmoid(&xg).unwrap(), 1e-6, 1e-6);
    let (mut ac, mut ag) = (c.relu_fwd(&xc).unwrap(), g.relu_fwd(&xg).unwrap());
    c.add_assign(&mut ac, &dc).unwrap();
    g.add_assign(&mut ag, &dg).unwrap();
    c.scale(&mut ac, 0.75).unwrap();
    g.scale(&mut ag, 0.75).unwrap();
    same("add_assign + scale", &c, &g, &ac, &ag, 0.0, 0.0);
    g.fill(&mut ag, 2.5).unwrap();
    assert!(g.to_vec(&ag).unwrap().iter().all(|&v| v == 2.5), "fill");
    // In place on a shared tensor is refused, as on the CPU.
    let shared = yg.clone();
    let err = g.scale(&mut yg.clone(), 2.0).unwrap_err().to_string();
    assert!(err.contains("shared"), "{err}");
    drop(shared);

    // Pooling and means.
    for (window, stride, pad) in [(3, 2, 1), (2, 2, 0)] {
        let yc = c.max_pool2d_fwd(&xc, window, stride, pad).unwrap();
        let yg = g.max_pool2d_fwd(&xg, window, stride, pad).unwrap();
        same("max_pool2d", &c, &g, &yc, &yg, 0.0, 0.0);
        let (dyc, dyg) = pair(&c, &g, &mut rng, yc.dims(), -1.0, 1.0);
        let want = c.max_pool2d_bwd(&xc, &dyc, window, stride, pad).unwrap();
        same(
            "max_pool2d_bwd",
            &c,
            &g,
            &want,
            &g.max_pool2d_bwd(&xg, &dyg, window, stride, pad).unwrap(),
            0.0,
            0.0,
        );
    }
    let (pc, pg) = (c.global_avg_pool_fwd(&xc).unwrap(), g.global_avg_pool_fwd(&xg).unwrap());
    same("global_avg_pool", &c, &g, &pc, &pg, 1e-6, 1e-6);
    let (dpc, dpg) = pair(&c, &g, &mut rng, &[3, 6], -1.0, 1.0);
    let (want, got) = (
        c.global_avg_pool_bwd(&dpc, [3, 5, 7, 6]).unwrap(),
        g.global_avg_pool_bwd(&dpg, [3, 5, 7, 6]).unwrap(),
    );
    same("global_avg_pool_bwd", &c, &g, &want, &got, 1e-7, 1e-6);
    let (fc_, fg) = pair(&c, &g, &mut rng, &[8, 5], -1.0, 1.0);
    let (tc_, tg) = (c.temporal_mean_fwd(&fc_, 4).unwrap(), g.temporal_mean_fwd(&fg, 4).unwrap());
    same("temporal_mean", &c, &g, &tc_, &tg, 1e-6, 1e-6);
    same(
        "temporal_mean_bwd",
        &c,
        &g,
        &c.temporal_mean_bwd(&tc_, 4).unwrap(),
        &g.temporal_mean_bwd(&tg, 4).unwrap(),
        1e-7,
        1e-6,
    );
    assert!(g.temporal_mean_fwd(&fg, 3).is_err(), "8 frames do not split into clips of 3");

    // The face detector's ops (their own random stream, so that the cases after them see
    // the values they always saw): ceil-mode max pool, bias with and without PReLU in
    // place, softmax over the channels.
    let mut rng_faces = Rng::new(91);
    let (yc, yg) = (c.max_pool2d_ceil_fwd(&xc, 3, 2).unwrap(), g.max_pool2d_ceil_fwd(&xg, 3, 2).unwrap());
    same("max_pool2d (ceil mode)", &c, &g, &yc, &yg, 0.0, 0.0);
    let (bias_c, bias_g) = pair(&c, &g, &mut rng_faces, &[6], -0.5, 0.5);
    let (alpha_c, alpha_g) = pair(&c, &g, &mut rng_faces, &[6], 0.0, 0.5);
    let (mut bc, mut bg) = pair(&c, &g, &mut rng_faces, &[3, 5, 7, 6], -1.0, 1.0);
    c.bias_prelu(&mut bc, &bias_c, &alpha_c).unwrap();
    g.bias_prelu(&mut bg, &bias_g, &alpha_g).unwrap();
    same("bias_prelu", &c, &g, &bc, &bg, 0.0, 0.0);
    c.bias_add(&mut bc, &bias_c).unwrap();
    g.bias_add(&mut bg, &bias_g).unwrap();
    same("bias_prelu + bias_add", &c, &g, &bc, &bg, 0.0, 0.0);
    same("softmax_rows", &c, &g, &c.softmax_rows(&xc).unwrap(), &g.softmax_rows(&xg).unwrap(), 1e-7, 2e-6);

    // Batch norm, training and eval, with and without the fused ReLU.
    for relu in [false, true] {
        let params = BatchNormParams { relu, ..Default::default() };
        let (gamma_c, gamma_g) = pair(&c, &g, &mut rng, &[6], 0.5, 1.5);
        let (beta_c, beta_g) = pair(&c, &g, &mut rng, &[6], -0.5, 0.5);
        let (mut rm_c, mut rm_g) = pair(&c, &g, &mut rng, &[6], -0.1, 0.1);
        let (mut rv_c, mut rv_g) = pair(&c, &g, &mut rng, &[6], 0.9, 1.1);
        let fc_ = c.batch_norm_fwd_train(&xc, &gamma_c, &beta_c, &mut rm_c, &mut rv_c, &params).unwrap();
        let fg = g.batch_norm_fwd_train(&xg, &gamma_g, &beta_g, &mut rm_g, &mut rv_g, &params).unwrap();
        same("bn y", &c, &g, &fc_.y, &fg.y, 1e-5, 1e-5);
        same("bn running mean", &c, &g, &rm_c, &rm_g, 1e-6, 1e-5);
        same("bn running var", &c, &g, &rv_c, &rv_g, 1e-6, 1e-5);
        let relu_c = relu.then_some(&fc_.y);
        let relu_g = relu.then_some(&fg.y);
        let bc = c.batch_norm_bwd(&dc, &xc, &gamma_c, &fc_.saved, relu_c).unwrap();
        let bg = g.batch_norm_bwd(&dg, &xg, &gamma_g, &fg.saved, relu_g).unwrap();
        same("bn dx", &c, &g, &bc.dx, &bg.dx, 1e-5, 1e-4);
        same("bn dgamma", &c, &g, &bc.dgamma, &bg.dgamma, 1e-5, 1e-4);
        same("bn dbeta", &c, &g, &bc.dbeta, &bg.dbeta, 1e-5, 1e-4);
        let ec = c.batch_norm_fwd_eval(&xc, &gamma_c, &beta_c, &rm_c, &rv_c, &params).unwrap();
        let eg = g.batch_norm_fwd_eval(&xg, &gamma_g, &beta_g, &rm_g, &rv_g, &params).unwrap();
        same("bn eval", &c, &g, &ec, &eg, 1e-5, 1e-5);
    }

    // Products: FP16 inputs, FP32 accumulation (≤ 64 products of O(1): ~1e-2 absolute).
    for fin in [64, 12] {
        let (xc, xg) = pair(&c, &g, &mut rng, &[10, fin], -1.0, 1.0);
        let (wc, wg) = pair(&c, &g, &mut rng, &[3, fin], -1.0, 1.0);
        let (bc, bg) = pair(&c, &g, &mut rng, &[3], -1.0, 1.0);
        let (yc, yg) = (c.linear_fwd(&xc, &wc, &bc).unwrap(), g.linear_fwd(&xg, &wg, &bg).unwrap());
        same(&format!("linear in={fin}"), &c, &g, &yc, &yg, 2e-2, 1e-2);
        let (dyc, dyg) = pair(&c, &g, &mut rng, &[10, 3], -1.0, 1.0);
        let (lc, lg) = (c.linear_bwd(&dyc, &xc, &wc).unwrap(), g.linear_bwd(&dyg, &xg, &wg).unwrap());
        same("linear dx", &c, &g, &lc.dx, &lg.dx, 2e-2, 1e-2);
        same("linear dw", &c, &g, &lc.dw, &lg.dw, 2e-2, 1e-2);
        same("linear db", &c, &g, &lc.db, &lg.db, 1e-5, 1e-5);
    }
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (m, n, k) = (7, 5, 9);
        let (ac, ag) = pair(&c, &g, &mut rng, &if ta { [k, m] } else { [m, k] }, -1.0, 1.0);
        let (bc, bg) = pair(&c, &g, &mut rng, &if tb { [n, k] } else { [k, n] }, -1.0, 1.0);
        let (mut cc, mut cg) = pair(&c, &g, &mut rng, &[m, n], -1.0, 1.0);
        c.gemm(1.5, &ac, ta, &bc, tb, -0.5, &mut cc).unwrap();
        g.gemm(1.5, &ag, ta, &bg, tb, -0.5, &mut cg).unwrap();
        same(&format!("gemm ta={ta} tb={tb}"), &c, &g, &cc, &cg, 2e-2, 1e-2);
    }
    let err = g.gemm(1.0, &xg, false, &xg, false, 0.0, &mut ag).unwrap_err().to_string();
    assert!(err.contains("gemm"), "{err}");

    // Convolutions: the stem (C = 3) and a strided 3×3, every pass.
    for (xd, k, r, stride, pad) in [([2, 19, 17, 3], 16, 7, 2, 3), ([2, 9, 9, 16], 24, 3, 2, 1)] {
        let (xc, xg) = pair(&c, &g, &mut rng, &xd, -1.0, 1.0);
        let (wc, wg) = pair(&c, &g, &mut rng, &[k, r, r, xd[3]], -0.2, 0.2);
        let (yc, yg) = (
            c.conv2d_fwd(&xc, &wc, [stride; 2], [pad; 2]).unwrap(),
            g.conv2d_fwd(&xg, &wg, [stride; 2], [pad; 2]).unwrap(),
        );
        same(&format!("conv fwd {xd:?}"), &c, &g, &yc, &yg, 2e-2, 1e-2);
        let (dyc, dyg) = pair(&c, &g, &mut rng, yc.dims(), -1.0, 1.0);
        let want = c.conv2d_dgrad(&dyc, &wc, xd, [stride; 2], [pad; 2]).unwrap();
        let got = g.conv2d_dgrad(&dyg, &wg, xd, [stride; 2], [pad; 2]).unwrap();
        same(&format!("conv dgrad {xd:?}"), &c, &g, &want, &got, 2e-2, 1e-2);
        let wd = [k, r, r, xd[3]];
        let want = c.conv2d_wgrad(&xc, &dyc, wd, [stride; 2], [pad; 2]).unwrap();
        let got = g.conv2d_wgrad(&xg, &dyg, wd, [stride; 2], [pad; 2]).unwrap();
        same(&format!("conv wgrad {xd:?}"), &c, &g, &want, &got, 5e-2, 1e-2);
    }

    // Loss and optimizer.
    let p = BceParams { pos_weight: 1.5, label_smoothing: 0.1 };
    let (lc, lg) = pair(&c, &g, &mut rng, &[6, 1], -4.0, 4.0);
    let t: Vec<f32> = (0..6).map(|i| (i % 2) as f32).collect();
    let (tc_, tg) = (c.tensor(Shape::from([6, 1]), &t).unwrap(), g.tensor(Shape::from([6, 1]), &t).unwrap());
    let (want, got) =
        (c.bce_with_logits_fwd(&lc, &tc_, &p).unwrap(), g.bce_with_logits_fwd(&lg, &tg, &p).unwrap());
    assert!((want - got).abs() <= 1e-5 * want.abs().max(1.0), "bce {got} vs {want}");
    same(
        "bce bwd",
        &c,
        &g,
        &c.bce_with_logits_bwd(&lc, &tc_, &p, 64.0).unwrap(),
        &g.bce_with_logits_bwd(&lg, &tg, &p, 64.0).unwrap(),
        1e-5,
        1e-5,
    );
    let (mut pc, mut pg) = pair(&c, &g, &mut rng, &[1000], -1.0, 1.0);
    let (gc, gg) = pair(&c, &g, &mut rng, &[1000], -0.1, 0.1);
    let (mut mc, mut mg) = (c.zeros(Shape::from([1000])).unwrap(), g.zeros(Shape::from([1000])).unwrap());
    let (mut vc, mut vg) = (c.zeros(Shape::from([1000])).unwrap(), g.zeros(Shape::from([1000])).unwrap());
    for step in 1..=3 {
        c.adamw_step(&mut pc, &gc, &mut mc, &mut vc, &AdamWParams::default(), step).unwrap();
        g.adamw_step(&mut pg, &gg, &mut mg, &mut vg, &AdamWParams::default(), step).unwrap();
    }
    same("adamw p", &c, &g, &pc, &pg, 1e-6, 1e-5);
    let (mut bufc, mut bufg) = (c.zeros(Shape::from([1000])).unwrap(), g.zeros(Shape::from([1000])).unwrap());
    let hp = SgdParams { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 1e-4 };
    for first in [true, false] {
        c.sgd_step(&mut pc, &gc, &mut bufc, &hp, first).unwrap();
        g.sgd_step(&mut pg, &gg, &mut bufg, &hp, first).unwrap();
    }
    same("sgd p", &c, &g, &pc, &pg, 1e-6, 1e-5);
    let (want, got) = (c.sum_squares(&gc).unwrap(), g.sum_squares(&gg).unwrap());
    assert!((want - got).abs() <= 1e-9 * want, "sum of squares {got} vs {want}");
    let mut inf = g.tensor(Shape::from([5]), &[1.0, 2.0, f32::INFINITY, 4.0, 5.0]).unwrap();
    assert!(g.unscale_check(&mut inf, 0.5).unwrap(), "an inf is found");
    let (mut gc2, mut gg2) = (gc.clone(), gg.clone());
    drop((gc, gg));
    assert_eq!(c.unscale_check(&mut gc2, 0.25).unwrap(), g.unscale_check(&mut gg2, 0.25).unwrap());
    same("unscaled", &c, &g, &gc2, &gg2, 0.0, 0.0);
}

/// Relative distance of two gradient tensors: ‖a − b‖ / ‖b‖.
fn rel_dist(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// Whole ResNet training steps, op wiring included, against the CPU backend. Each step
/// starts from the same weights on both (the GPU net takes the CPU net's after every
/// update): the comparison is of one step's numerics, not of two trajectories — AdamW's
/// first updates are ±lr wherever a gradient is near zero, so two runs whose gradients
/// differ in the last bits drift apart by design. The input is FP16-representable, so the
/// tensor cores see exactly what the CPU sees; what remains is FP16 weights and
/// activations between layers (a few parts in 10³ per layer) and max-pool/ReLU decisions
/// that such differences can flip.
///
/// Sizes: 4 clips × 2 frames at 64² (the last stage's batch norm averages 8 frames × 2×2
/// values: at 32² it would average 1×1 maps of 8 frames, where those few-ulp differences
/// are amplified past any fixed tolerance); three steps on a card, two on the software
/// GPU (~3·10⁸ multiply-adds a step: seconds there).
#[test]
fn resnet_training_steps_match_the_cpu_cuda() {
    resnet_training_steps_match_the_cpu(DType::F32);
}

/// The same steps with FP16 activations on both backends (the CPU stores FP16 too): each
/// layer's output is rounded to FP16 on both sides, so the CPU sees what the GPU keeps.
#[test]
fn resnet_mixed_precision_steps_match_the_cpu_cuda() {
    resnet_training_steps_match_the_cpu(DType::F16);
}

fn resnet_training_steps_match_the_cpu(activations: DType) {
    let Some((g, dut)) = common::cuda_backend() else { return };
    let c = cpu();
    let (clips, frames, side) = (4, 2, 64);
    let steps = if dut.software_gpu { 2 } else { 3 };
    let mut rng = Rng::new(91);
    let x: Vec<f32> = rng
        .vec(clips * frames * side * side * 3, -1.0, 1.0)
        .into_iter()
        .map(|v| half::f16::from_f32(v).to_f32())
        .collect();
    let shape = Shape::from([clips * frames, side, side, 3]);
    let (xc, xg) = (c.tensor(shape.clone(), &x).unwrap(), g.tensor(shape, &x).unwrap());
    let labels: Vec<f32> = (0..clips).map(|i| (i % 2) as f32).collect();
    let (yc, yg) = (
        c.tensor(Shape::from([clips, 1]), &labels).unwrap(),
        g.tensor(Shape::from([clips, 1]), &labels).unwrap(),
    );
    let spec = ResNetSpec::of(Backbone::ResnetTiny);
    let mut net_c = ResNet::new(&c, spec, frames, 92).unwrap();
    let mut net_g = ResNet::new(&g, spec, frames, 92).unwrap();
    net_c.activations = activations;
    net_g.activations = activations;
    let mut opt_c = Optimizer::new(&c, OptimizerKind::Adamw, 0.01, &net_c.trainable_mut()).unwrap();
    let bce = BceParams::default();
    for step in 0..steps {
        // The GPU net takes the CPU net's weights and running statistics.
        for ((_, tc, _), (_, tg, _)) in net_c.named().into_iter().zip(net_g.named_mut()) {
            *tg = g.tensor(tc.shape().clone(), &c.to_vec(tc).unwrap()).unwrap();
        }
        net_c.prepare_step(&c).unwrap();
        net_g.prepare_step(&g).unwrap();
        let (lc, cache_c) = net_c.forward_train(&c, &xc).unwrap();
        let (lg, cache_g) = net_g.forward_train(&g, &xg).unwrap();
        same(&format!("step {step} clip logits"), &c, &g, &lc.clips, &lg.clips, 2e-2, 2e-2);
        let (loss_c, loss_g) = (
            c.bce_with_logits_fwd(&lc.clips, &yc, &bce).unwrap(),
            g.bce_with_logits_fwd(&lg.clips, &yg, &bce).unwrap(),
        );
        assert!(
            (loss_c - loss_g).abs() < 2e-2 * loss_c.max(0.1),
            "step {step}: loss {loss_g} vs CPU {loss_c}"
        );
        let dc = c.bce_with_logits_bwd(&lc.clips, &yc, &bce, 1.0).unwrap();
        let dg = g.bce_with_logits_bwd(&lg.clips, &yg, &bce, 1.0).unwrap();
        let grads_c = net_c.backward(&c, &dc, cache_c).unwrap();
        let grads_g = net_g.backward(&g, &dg, cache_g).unwrap();
        assert_eq!(grads_c.len(), grads_g.len());
        for (i, (gc, gg)) in grads_c.iter().zip(&grads_g).enumerate() {
            let d = rel_dist(&g.to_vec(gg).unwrap(), &c.to_vec(gc).unwrap());
            // FP16 weights and activations through a dozen layers, into sums that mostly
            // cancel (a batch-norm β gradient is Σ dy over a zero-mean dy): measured up to
            // 0.06 on convolution weights and 0.10 on batch-norm vectors (software GPU,
            // these sizes). A wiring bug (a wrong tensor, a missing term) is off by O(1).
            assert!(d < 0.15, "step {step}: gradient {i} {} differs by {d:.3} (relative)", gc.shape());
        }
        for (bc, bg) in net_c.buffers().into_iter().zip(net_g.buffers()) {
            assert_close(
                &format!("step {step} running statistics"),
                &g.to_vec(bg).unwrap(),
                &c.to_vec(bc).unwrap(),
                1e-3,
                1e-2,
            );
        }
        net_c.release_step_weights();
        opt_c.step(&c, net_c.trainable_mut(), &grads_c, 1e-3).unwrap();
    }
}

#[test]
fn a_small_budget_gives_an_out_of_memory_the_governor_can_act_on_cuda() {
    let Some((g, _)) = common::cuda_backend_with(Some(64 << 20), false) else { return };
    let small = g.zeros(Shape::from([1 << 20])).unwrap();
    match g.zeros(Shape::from([32 << 20])) {
        Err(OpError::OutOfMemory(oom)) => assert!(oom.requested >= 128 << 20, "{oom:?}"),
        other => panic!("128 MiB under a 64 MiB budget: {:?}", other.map(|t| t.shape().clone())),
    }
    let stats = g.pool_stats();
    assert_eq!(stats.num_ooms, 1);
    assert!(stats.allocated_bytes >= 4 << 20 && stats.budget_bytes == 64 << 20, "{stats:?}");
    drop(small);
    assert!(g.trim_pool() > 0 || g.pool_stats().reserved_bytes == 0, "trim returns the freed block's memory");
}

#[test]
fn staged_uploads_arrive_whole_and_return_to_the_pool_cuda() {
    use dfengine::backend::cuda::staging::STAGED_MIN;
    // `pin_memory = true`: uploads from STAGED_MIN bytes up go through the page-locked
    // ring on the copy stream, smaller ones straight to the compute stream.
    let Some((g, _)) = common::cuda_backend_with(None, true) else { return };
    let base = g.pool_stats().allocated_bytes;
    let mut rng = Rng::new(11);
    // Below and above the threshold, growing and shrinking, more than the ring's slots.
    let floats = STAGED_MIN / 4;
    let lens = [10, floats, 300_000, 17, 120_000, 300_001, floats - 1, 50_000];
    let uploaded: Vec<(Vec<f32>, CudaTensor)> = lens
        .iter()
        .map(|&n| {
            let v = rng.vec(n, -3.0, 3.0);
            let t = g.tensor(Shape::from([n]), &v).unwrap();
            (v, t)
        })
        .collect();
    for (v, t) in &uploaded {
        assert_eq!(&g.to_vec(t).unwrap(), v, "{} floats", v.len());
    }
    // FP16 uploads are converted on the host and staged as halves.
    let v = rng.vec(200_000, -3.0, 3.0);
    let h = g.tensor_as(Shape::from([v.len()]), &v, DType::F16).unwrap();
    let want: Vec<f32> = v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    assert_eq!(g.to_vec(&h).unwrap(), want);
    // Two slots, each grown to the largest upload it carried.
    let staged = g.device().staged_bytes();
    let largest = 300_001 * 4;
    assert!(
        (largest..=2 * largest).contains(&staged),
        "{staged} bytes pinned for a largest upload of {largest}"
    );
    drop((uploaded, h));
    assert_eq!(g.pool_stats().allocated_bytes, base, "every staged block went back to the pool");
}
