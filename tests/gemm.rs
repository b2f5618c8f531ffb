//! GEMM and linear: against the definition for every transpose combination and awkward
//! sizes, and finite differences for linear backward, on every backend (the CUDA backend
//! rounds the inputs to FP16 for the products: its tolerances say so); the tensor-core
//! GEMM kernels against the definition and the reference kernel through `gemm_nt`.

#[macro_use]
mod common;

use common::{DeviceUnderTest, Rng, assert_close, check_gradient, dot, host, randn, tensor};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;

fn gemm_matches_definition_for_all_transposes<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    let mut rng = Rng::new(30);
    let tol = dut.product_tol(1e-5, 1e-5);
    for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (17, 9, 1), (33, 65, 31), (4, 128, 70)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rng.vec(m * k, -1.0, 1.0);
            let bm = rng.vec(n * k, -1.0, 1.0);
            let c0 = rng.vec(m * n, -1.0, 1.0);
            let (alpha, beta) = (0.75, -0.5);
            let mut c = tensor(b, [m, n], &c0);
            let (a_dims, b_dims) = (if ta { [k, m] } else { [m, k] }, if tb { [n, k] } else { [k, n] });
            b.gemm(alpha, &tensor(b, a_dims, &a), ta, &tensor(b, b_dims, &bm), tb, beta, &mut c).unwrap();
            let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if tb { bm[j * k + p] } else { bm[p * n + j] };
            let want: Vec<f32> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let s: f64 = (0..k).map(|p| at(i, p) as f64 * bt(p, j) as f64).sum();
                    (alpha as f64 * s + beta as f64 * c0[ij] as f64) as f32
                })
                .collect();
            let what = format!("gemm m{m} n{n} k{k} ta{ta} tb{tb}");
            assert_close(&what, &host(b, &c), &want, tol.atol, tol.rtol);
        }
    }
}
test_device!(
    gemm_matches_definition_for_all_transposes,
    gemm_matches_definition_for_all_transposes_cpu,
    gemm_matches_definition_for_all_transposes_cuda
);

fn gemm_with_beta_zero_ignores_garbage_in_c<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(31);
    let a = randn(b, &mut rng, [3, 4], 1.0);
    let bm = randn(b, &mut rng, [4, 2], 1.0);
    let mut c = tensor(b, [3, 2], &[f32::NAN; 6]);
    b.gemm(1.0, &a, false, &bm, false, 0.0, &mut c).unwrap();
    let c = host(b, &c);
    assert!(c.iter().all(|v| v.is_finite()), "β = 0 must not read C: {c:?}");
}
test_device!(
    gemm_with_beta_zero_ignores_garbage_in_c,
    gemm_with_beta_zero_ignores_garbage_in_c_cpu,
    gemm_with_beta_zero_ignores_garbage_in_c_cuda
);

fn gemm_rejects_mismatched_inner_dimensions<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(32);
    let a = randn(b, &mut rng, [3, 4], 1.0);
    let bm = randn(b, &mut rng, [5, 2], 1.0);
    let mut c = b.zeros(Shape::from([3, 2])).unwrap();
    let err = b.gemm(1.0, &a, false, &bm, false, 0.0, &mut c).unwrap_err().to_string();
    assert!(err.contains("gemm") && err.contains("3×4") && err.contains("5×2"), "{err}");
}
test_device!(
    gemm_rejects_mismatched_inner_dimensions,
    gemm_rejects_mismatched_inner_dimensions_cpu,
    gemm_rejects_mismatched_inner_dimensions_cuda
);

fn linear_fwd_matches_definition<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    let mut rng = Rng::new(33);
    let (x, w, bias) = (rng.vec(5 * 7, -1.0, 1.0), rng.vec(3 * 7, -1.0, 1.0), rng.vec(3, -1.0, 1.0));
    let y = b.linear_fwd(&tensor(b, [5, 7], &x), &tensor(b, [3, 7], &w), &tensor(b, [3], &bias)).unwrap();
    let want: Vec<f32> = (0..15)
        .map(|ij| {
            let (i, o) = (ij / 3, ij % 3);
            bias[o] + (0..7).map(|p| x[i * 7 + p] * w[o * 7 + p]).sum::<f32>()
        })
        .collect();
    let tol = dut.product_tol(1e-5, 1e-5);
    assert_close("linear", &host(b, &y), &want, tol.atol, tol.rtol);
}
test_device!(
    linear_fwd_matches_definition,
    linear_fwd_matches_definition_cpu,
    linear_fwd_matches_definition_cuda
);

fn linear_bwd_matches_finite_differences<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    let mut rng = Rng::new(34);
    let (x, w, bias) =
        (randn(b, &mut rng, [5, 7], 1.0), randn(b, &mut rng, [3, 7], 1.0), randn(b, &mut rng, [3], 1.0));
    let r = rng.vec(5 * 3, -1.0, 1.0);
    let g = b.linear_bwd(&tensor(b, [5, 3], &r), &x, &w).unwrap();
    let tol = dut.product_fd_tol(1e-3);
    let loss_x = |v: &[f32]| dot(&host(b, &b.linear_fwd(&tensor(b, [5, 7], v), &w, &bias).unwrap()), &r);
    check_gradient("linear dx", &host(b, &x), &host(b, &g.dx), loss_x, 1e-2, tol, 35);
    let loss_w = |v: &[f32]| dot(&host(b, &b.linear_fwd(&x, &tensor(b, [3, 7], v), &bias).unwrap()), &r);
    check_gradient("linear dw", &host(b, &w), &host(b, &g.dw), loss_w, 1e-2, tol, 21);
    let loss_b = |v: &[f32]| dot(&host(b, &b.linear_fwd(&x, &w, &tensor(b, [3], v)).unwrap()), &r);
    check_gradient("linear db", &host(b, &bias), &host(b, &g.db), loss_b, 1e-2, tol, 3);
}
test_device!(
    linear_bwd_matches_finite_differences,
    linear_bwd_matches_finite_differences_cpu,
    linear_bwd_matches_finite_differences_cuda
);

/// `gemm_nt` on the GPU — the tensor-core kernels `gemm_tc_f16_<tile>` (C = α·A·Bᵀ +
/// β·C, bias, ReLU, FP32 or FP16 out) where K is a multiple of 8, the reference kernel
/// otherwise — against the definition in f64 on the f16-rounded inputs, on shapes that
/// are not multiples of the tiles (edges, a single row, K = 8, several K tiles, odd K;
/// N = 64 and small grids take the 128×64 tile, the rest 128×128). Also the tensor-core
/// result against the on-device oracle `gemm_ref_f16` (K odd forces it).
///
/// Sizes: on a card, up to 512×512×1024 and a 4096×1152 grid of 288 wide tiles (more
/// than one wave of an H200). On the software GPU (~1000× slower) the three cases above
/// 2·10⁷ multiply-adds shrink to ones with the same traits — ragged M and N with many K
/// tiles (160×136×520), one row of tiles across N = 1000 (K = 136, a K tail of 8), and a
/// grid of 2·(sm_count + 1) wide tiles (M = 128·sm_count + 3, so past one wave): ~4·10⁷
/// multiply-adds in all.
#[cfg(feature = "cuda")]
#[test]
fn gemm_nt_matches_the_definition_and_the_reference_kernel_cuda() {
    use dfengine::backend::cuda::gemm::{GemmNt, GemmOut, gemm_nt, kernel_for, uses_tensor_cores};
    use half::f16;

    let Some(dev) = common::gpu_device() else { return };
    let stream = dev.stream().clone();
    let mut rng = Rng::new(31);
    let software = common::is_software_gpu(&dev);
    // (m, n, k, beta, bias + ReLU, f16 out)
    let mut cases = vec![
        (128, 128, 32, false, false, false),
        (130, 77, 40, true, false, false),
        (1, 9, 8, false, true, false),
        (257, 129, 264, true, true, true),
        (300, 64, 8, true, true, false),
        (33, 17, 147, true, false, false),
    ];
    if software {
        cases.extend([
            (64, 1000, 136, false, false, true),
            (160, 136, 520, false, false, false),
            // 2·(sm_count + 1) tiles of 128×128: more than one wave, so the wide tile.
            (128 * dev.sm_count + 3, 129, 32, false, true, true),
        ]);
    } else {
        cases.extend([
            (64, 1000, 512, false, false, true),
            (512, 512, 1024, false, false, false),
            // 288 tiles of 128×128: more than one wave, so the wide tile.
            (4096, 1152, 32, false, true, true),
        ]);
    }
    let mut seen = std::collections::HashSet::new();
    for (m, n, k, with_beta, with_bias, f16_out) in cases {
        let a: Vec<f16> = rng.vec(m * k, -1.0, 1.0).into_iter().map(f16::from_f32).collect();
        let bt: Vec<f16> = rng.vec(n * k, -1.0, 1.0).into_iter().map(f16::from_f32).collect();
        let c0: Vec<f32> = rng.vec(m * n, -1.0, 1.0);
        let bias: Vec<f32> = rng.vec(n, -0.5, 0.5);
        let (alpha, beta) = (1.25f32, if with_beta { -0.5f32 } else { 0.0 });
        let want: Vec<f32> = (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                let s: f64 = (0..k).map(|p| a[i * k + p].to_f64() * bt[j * k + p].to_f64()).sum();
                let old = if f16_out { f16::from_f32(c0[ij]).to_f64() } else { c0[ij] as f64 };
                let mut v = alpha as f64 * s + beta as f64 * old;
                if with_bias {
                    v = (v + bias[j] as f64).max(0.0);
                }
                v as f32
            })
            .collect();
        let (d_a, d_b, d_bias) = (
            stream.clone_htod(&a).unwrap(),
            stream.clone_htod(&bt).unwrap(),
            stream.clone_htod(&bias).unwrap(),
        );
        let g = GemmNt {
            m,
            n,
            k,
            alpha,
            a: &d_a,
            b: &d_b,
            beta,
            bias: with_bias.then_some(&d_bias),
            relu: with_bias,
        };
        let got: Vec<f32> = if f16_out {
            let mut d_c =
                stream.clone_htod(&c0.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()).unwrap();
            gemm_nt(&dev, &g, GemmOut::F16(&mut d_c)).unwrap();
            stream.clone_dtoh(&d_c).unwrap().into_iter().map(f16::to_f32).collect()
        } else {
            let mut d_c = stream.clone_htod(&c0).unwrap();
            gemm_nt(&dev, &g, GemmOut::F32(&mut d_c)).unwrap();
            stream.clone_dtoh(&d_c).unwrap()
        };
        dev.synchronize("gemm_nt").unwrap();
        let kernel = kernel_for(&dev, m, n, k);
        seen.insert(kernel.name);
        let what = format!("{kernel} {m}×{n}×{k} beta={with_beta} bias+relu={with_bias} f16_out={f16_out}");
        // FP32 accumulation of ≤1024 products of O(1): error ~1e-5; an f16 output rounds by
        // 2⁻¹¹ relative.
        if f16_out {
            assert_close(&what, &got, &want, 1e-2, 2e-3);
        } else {
            assert_close(&what, &got, &want, 1e-3, 1e-4);
        }
    }
    // The same plain product through both kernels: K = 264 pads to 272 (zeros add nothing)
    // for the tensor cores, and runs unpadded through the reference kernel.
    let (m, n, k, kp) = (150, 90, 264, 272);
    let a: Vec<f32> = rng.vec(m * k, -1.0, 1.0);
    let b: Vec<f32> = rng.vec(n * k, -1.0, 1.0);
    let padded = |x: &[f32], rows: usize, width: usize| -> Vec<f16> {
        (0..rows * width)
            .map(|i| if i % width < k { f16::from_f32(x[i / width * k + i % width]) } else { f16::ZERO })
            .collect()
    };
    let run = |width: usize| {
        let (d_a, d_b) = (
            stream.clone_htod(&padded(&a, m, width)).unwrap(),
            stream.clone_htod(&padded(&b, n, width)).unwrap(),
        );
        let mut d_c = stream.alloc_zeros::<f32>(m * n).unwrap();
        let g = GemmNt { m, n, k: width, alpha: 1.0, a: &d_a, b: &d_b, beta: 0.0, bias: None, relu: false };
        gemm_nt(&dev, &g, GemmOut::F32(&mut d_c)).unwrap();
        stream.clone_dtoh(&d_c).unwrap()
    };
    let tensor_cores = run(kp);
    seen.insert(kernel_for(&dev, m, n, kp).name);
    for tile in ["gemm_tc_f16_128x128", "gemm_tc_f16_128x64"] {
        assert!(seen.contains(tile), "no case ran {tile}: {seen:?}");
    }
    let oracle = run(k + 1); // K = 265: not a multiple of 8, so the reference kernel
    assert!(uses_tensor_cores(kp) && !uses_tensor_cores(k + 1));
    assert_close("gemm_tc_f16_* vs gemm_ref_f16", &tensor_cores, &oracle, 1e-3, 1e-4);
}
