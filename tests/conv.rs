//! conv2d: against the direct definition (forward), the adjoint identities that tie
//! forward, dgrad and wgrad together exactly, and finite differences (backward) on every
//! backend (the CUDA backend rounds the inputs to FP16 for the tensor cores: its
//! tolerances say so); the kernels of kernels/conv.cu against the CPU reference through
//! the host functions.

#[macro_use]
mod common;

use common::{BTensor, DeviceUnderTest, Rng, assert_close, check_gradient, dot, host, randn, tensor};
use dfengine::backend::ops::Backend;

type ConvCase = (usize, usize, usize, usize, usize, usize, [usize; 2], [usize; 2]);

/// (N, H, W, C, K, R×S, stride, pad): odd sizes, stride 2 on odd inputs, 1×1 and 7×7
/// windows, C = 3, pad 0/1/3, 1×1 stride-1 cases (the GEMM path; C = 40 splits wgrad's
/// columns between tasks), N = 9 (a batch that the CPU's groups of images do not fill
/// evenly), and 2 × 48² pixels through a 7×7 window (the CPU's wgrad sums two blocks of
/// rows, the first ending inside the second image).
const CASES: &[ConvCase] = &[
    (2, 7, 5, 5, 6, 3, [1, 1], [1, 1]),
    (1, 11, 11, 3, 4, 7, [2, 2], [3, 3]),
    (2, 9, 9, 4, 8, 1, [2, 2], [0, 0]),
    (2, 6, 6, 8, 8, 1, [1, 1], [0, 0]),
    (1, 8, 7, 3, 5, 3, [2, 2], [1, 1]),
    (3, 5, 5, 2, 3, 3, [1, 1], [0, 0]),
    (9, 4, 5, 3, 2, 3, [2, 1], [1, 0]),
    (1, 1, 1, 7, 3, 1, [1, 1], [0, 0]),
    (3, 5, 4, 40, 6, 1, [1, 1], [0, 0]),
    (2, 48, 48, 3, 4, 7, [1, 1], [3, 3]),
];

/// Cases like the first, second and seventh of `CASES` with K a multiple of 8, so that
/// the gradients of a device that needs that (`DeviceUnderTest::conv_grad_channels`) run
/// on 3×3 and 7×7 windows, C = 3 and 5, and mixed strides too.
const GRAD_CASES: &[ConvCase] = &[
    (2, 7, 5, 5, 8, 3, [1, 1], [1, 1]),
    (1, 11, 11, 3, 8, 7, [2, 2], [3, 3]),
    (9, 4, 5, 3, 16, 3, [2, 1], [1, 0]),
];

/// The definition: y[n,p,q,k] = Σ_{r,s,c} x[n, p·sh − ph + r, q·sw − pw + s, c] · w[k,r,s,c].
fn conv_definition(
    x: &[f32],
    xd: [usize; 4],
    w: &[f32],
    wd: [usize; 4],
    st: [usize; 2],
    pd: [usize; 2],
) -> Vec<f32> {
    let [n, h, wi, c] = xd;
    let [k, r, s, _] = wd;
    let p = (h + 2 * pd[0] - r) / st[0] + 1;
    let q = (wi + 2 * pd[1] - s) / st[1] + 1;
    let mut y = vec![0.0f32; n * p * q * k];
    for ni in 0..n {
        for pi in 0..p {
            for qi in 0..q {
                for ki in 0..k {
                    let mut acc = 0.0f64;
                    for ri in 0..r {
                        for si in 0..s {
                            let hh = (pi * st[0] + ri) as isize - pd[0] as isize;
                            let ww = (qi * st[1] + si) as isize - pd[1] as isize;
                            if hh < 0 || ww < 0 || hh >= h as isize || ww >= wi as isize {
                                continue;
                            }
                            for ci in 0..c {
                                let xv = x[((ni * h + hh as usize) * wi + ww as usize) * c + ci];
                                let wv = w[((ki * r + ri) * s + si) * c + ci];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((ni * p + pi) * q + qi) * k + ki] = acc as f32;
                }
            }
        }
    }
    y
}

fn conv2d_fwd_matches_definition<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    let mut rng = Rng::new(1);
    // f32 sums of at most 7·7·3 products of O(1) terms against an f64 sum.
    let tol = dut.product_tol(1e-5, 1e-5);
    for &(n, h, w, c, k, rs, stride, pad) in CASES.iter().chain(GRAD_CASES) {
        let x = randn(b, &mut rng, [n, h, w, c], 1.0);
        let wt = randn(b, &mut rng, [k, rs, rs, c], 1.0);
        let y = b.conv2d_fwd(&x, &wt, stride, pad).unwrap();
        let want = conv_definition(&host(b, &x), [n, h, w, c], &host(b, &wt), [k, rs, rs, c], stride, pad);
        let what = format!("conv2d_fwd {:?}", (n, h, w, c, k, rs, stride, pad));
        assert_close(&what, &host(b, &y), &want, tol.atol, tol.rtol);
    }
}
test_device!(
    conv2d_fwd_matches_definition,
    conv2d_fwd_matches_definition_cpu,
    conv2d_fwd_matches_definition_cuda
);

/// dgrad(dy, w) and wgrad(x, dy) of `case`, or `None` where the device refuses its K —
/// after checking that both say why.
fn gradients<B: Backend>(
    b: &B,
    dut: &DeviceUnderTest,
    x: &BTensor<B>,
    wt: &BTensor<B>,
    dy: &BTensor<B>,
    case: ConvCase,
) -> Option<(BTensor<B>, BTensor<B>)> {
    let (n, h, w, c, k, rs, stride, pad) = case;
    let dx = b.conv2d_dgrad(dy, wt, [n, h, w, c], stride, pad);
    let dw = b.conv2d_wgrad(x, dy, [k, rs, rs, c], stride, pad);
    if k % dut.conv_grad_channels == 0 {
        return Some((dx.unwrap(), dw.unwrap()));
    }
    let why = format!("multiple of {}", dut.conv_grad_channels);
    for (op, refused) in [("dgrad", dx.err()), ("wgrad", dw.err())] {
        let err = refused.unwrap_or_else(|| panic!("{case:?}: {op} ran with K = {k}")).to_string();
        assert!(err.contains(&why), "{case:?}: {op} refused K = {k} without saying why: {err}");
    }
    None
}

fn conv2d_dgrad_and_wgrad_are_adjoints_of_forward<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    // conv is bilinear, so ⟨conv(x, w), dy⟩ = ⟨x, dgrad(dy, w)⟩ = ⟨w, wgrad(x, dy)⟩ holds
    // exactly up to rounding: a tight check of every index in both backward ops.
    let mut rng = Rng::new(2);
    let norm = |v: &[f32]| dot(v, v).sqrt();
    for &case in CASES.iter().chain(GRAD_CASES) {
        let (n, h, w, c, k, rs, stride, pad) = case;
        let x = randn(b, &mut rng, [n, h, w, c], 1.0);
        let wt = randn(b, &mut rng, [k, rs, rs, c], 1.0);
        let y = b.conv2d_fwd(&x, &wt, stride, pad).unwrap();
        let dy = randn(b, &mut rng, y.shape().clone(), 1.0);
        let Some((dx, dw)) = gradients(b, dut, &x, &wt, &dy, case) else { continue };
        assert_eq!(dx.dims(), x.dims());
        assert_eq!(dw.dims(), wt.dims());
        let (ys, dys) = (host(b, &y), host(b, &dy));
        let lhs = dot(&ys, &dys);
        let via_dx = dot(&host(b, &x), &host(b, &dx));
        let via_dw = dot(&host(b, &wt), &host(b, &dw));
        let tol = 1e-4 * lhs.abs().max(1.0) + dut.adjoint as f64 * norm(&ys) * norm(&dys);
        assert!((lhs - via_dx).abs() < tol, "{case:?}: ⟨y,dy⟩ {lhs} vs ⟨x,dx⟩ {via_dx}");
        assert!((lhs - via_dw).abs() < tol, "{case:?}: ⟨y,dy⟩ {lhs} vs ⟨w,dw⟩ {via_dw}");
    }
}
test_device!(
    conv2d_dgrad_and_wgrad_are_adjoints_of_forward,
    conv2d_dgrad_and_wgrad_are_adjoints_of_forward_cpu,
    conv2d_dgrad_and_wgrad_are_adjoints_of_forward_cuda
);

fn conv2d_dgrad_and_wgrad_match_finite_differences<B: Backend>(b: &B, dut: &DeviceUnderTest) {
    let mut rng = Rng::new(3);
    let tol = dut.product_fd_tol(1e-2);
    for &case in CASES[..5].iter().chain(GRAD_CASES) {
        let (n, h, w, c, k, rs, stride, pad) = case;
        let x = randn(b, &mut rng, [n, h, w, c], 1.0);
        let wt = randn(b, &mut rng, [k, rs, rs, c], 1.0);
        let y = b.conv2d_fwd(&x, &wt, stride, pad).unwrap();
        let r = randn(b, &mut rng, y.shape().clone(), 1.0);
        let Some((dx, dw)) = gradients(b, dut, &x, &wt, &r, case) else { continue };
        let (xs, ws, rs_) = (host(b, &x), host(b, &wt), host(b, &r));
        // Σ conv(x, w)·r as a function of the input, or of the weights.
        let loss = |xs: &[f32], ws: &[f32]| {
            let (xt, wt) = (tensor(b, [n, h, w, c], xs), tensor(b, [k, rs, rs, c], ws));
            dot(&host(b, &b.conv2d_fwd(&xt, &wt, stride, pad).unwrap()), &rs_)
        };
        let of_x = |v: &[f32]| loss(v, &ws);
        check_gradient("conv2d_dgrad", &xs, &host(b, &dx), of_x, 1e-2, tol, 48);
        let of_w = |v: &[f32]| loss(&xs, v);
        check_gradient("conv2d_wgrad", &ws, &host(b, &dw), of_w, 1e-2, tol, 48);
    }
}
test_device!(
    conv2d_dgrad_and_wgrad_match_finite_differences,
    conv2d_dgrad_and_wgrad_match_finite_differences_cpu,
    conv2d_dgrad_and_wgrad_match_finite_differences_cuda
);

fn conv2d_rejects_mismatched_shapes_with_context<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(5);
    let x = randn(b, &mut rng, [1, 5, 5, 3], 1.0);
    let w = randn(b, &mut rng, [4, 3, 3, 2], 1.0);
    let err =
        b.conv2d_fwd(&x, &w, [1, 1], [1, 1]).err().expect("3 channels against 2 are refused").to_string();
    assert!(err.contains("conv2d") && err.contains("3 channels") && err.contains("expects 2"), "{err}");
    let w = randn(b, &mut rng, [4, 7, 7, 3], 1.0);
    assert!(b.conv2d_fwd(&x, &w, [1, 1], [0, 0]).is_err(), "a 7×7 window cannot fit a 5×5 unpadded input");
}
test_device!(
    conv2d_rejects_mismatched_shapes_with_context,
    conv2d_rejects_mismatched_shapes_with_context_cpu,
    conv2d_rejects_mismatched_shapes_with_context_cuda
);

/// The convolution on the GPU against the CPU reference on f16-rounded inputs: forward
/// (`conv2d_fwd_implicit_f16_<tile>`, the GEMM for pointwise layers, channels padded to 8
/// for C = 3 and 5, fused epilogue on some; the direct kernel `conv2d_fwd_ref_f16` too),
/// input gradient (`conv2d_dgrad_implicit_f16_<tile>`, stride 1 and 2, accumulating with
/// beta on some) and weight gradient (`conv2d_wgrad_implicit_f16_<tile>` with split-K and
/// `conv2d_wgrad_reduce_f32`; the same bits on a second run, and close to the unsplit
/// plan). Shapes: awkward ones (odd H and W, C not a multiple of 8, stride 2 on odd
/// sizes, padding 0, 1 and 3), enough 128×128 tiles for the wide tile, and ResNet layers
/// (the stem included).
///
/// Sizes: on a card, every distinct ResNet-18 and ResNet-50 layer at batch 2 on 64²
/// input and an 8×56×56×64 → 128 layer that fills an H200. On the software GPU (~1000×
/// slower; each case runs eight passes, one on the scalar reference kernel) the awkward
/// shapes stay (≤ 7·10⁵ multiply-adds each), the wide-tile case shrinks to one image of
/// just over 128·(sm_count + 1) pixels with C = 8 (~1·10⁷ at 8 multiprocessors), and the
/// ResNet layers are ResNet-18's at batch 2 on 32² input (11 shapes, ≤ 5·10⁶ each: the
/// same stem, 3×3 stride 1 and 2 and 1×1 stride-2 kinds; ResNet-50's bottlenecks add
/// only channel counts, whose pointwise GEMM path the awkward 1×1 case already takes).
#[cfg(feature = "cuda")]
#[test]
fn conv2d_kernels_match_the_cpu_cuda() {
    use dfengine::backend::cpu::conv as cpu_conv;
    use dfengine::backend::cuda::conv::{
        Epilogue, conv2d_dgrad, conv2d_fwd, conv2d_fwd_reference, conv2d_wgrad, conv2d_wgrad_planned,
        fwd_kernel_for, wgrad_plan,
    };
    use dfengine::backend::cuda::gemm::GemmOut;
    use dfengine::backend::cuda::tiles::WgradPlan;
    use dfengine::backend::params::Conv2dGeom;
    use dfengine::config::Backbone;
    use dfengine::model::arch::{ResNetSpec, conv_layers};
    use half::f16;

    let Some(dev) = common::gpu_device() else { return };
    let s = dev.stream().clone();
    let software = common::is_software_gpu(&dev);
    // Enough 128×128 tiles to fill the device: the wide tile. An odd side just over
    // √(128·(sm_count + 1)) on the software GPU.
    let wide = if software {
        let side = ((128 * (dev.sm_count + 1)) as f64).sqrt().ceil() as usize | 1;
        ([1, side, side, 8], 128, 3, 1, 1)
    } else {
        ([8, 56, 56, 64], 128, 3, 1, 1)
    };
    let (backbones, side) = if software {
        (&[Backbone::Resnet18][..], 32)
    } else {
        (&[Backbone::Resnet18, Backbone::Resnet50][..], 64)
    };
    // (x dims, k, r, stride, pad)
    let mut shapes: Vec<([usize; 4], usize, usize, usize, usize)> = vec![
        ([2, 9, 11, 16], 24, 3, 1, 1),
        ([1, 13, 7, 8], 16, 3, 2, 1),
        ([2, 15, 15, 32], 40, 1, 2, 0),
        ([1, 23, 21, 8], 8, 7, 2, 3),
        ([2, 10, 9, 5], 12, 3, 1, 1),
        ([3, 9, 9, 3], 16, 3, 2, 1),
        ([2, 7, 5, 24], 136, 1, 1, 0),
        wide,
    ];
    let mut seen = std::collections::HashSet::new();
    for &backbone in backbones {
        for l in conv_layers(&ResNetSpec::of(backbone), side) {
            let key = ([2, l.h_in, l.w_in, l.cin], l.cout, l.kernel, l.stride, l.pad());
            if seen.insert(key) {
                shapes.push(key);
            }
        }
    }
    let mut kernels = std::collections::HashSet::new();
    let mut rng = Rng::new(50);
    let round = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
    let widen = |v: &[f16]| v.iter().map(|h| h.to_f32()).collect::<Vec<f32>>();
    for (i, (xd, k, r, stride, pad)) in shapes.into_iter().enumerate() {
        let g = Conv2dGeom::new(xd, [k, r, r, xd[3]], [stride; 2], [pad; 2]).unwrap();
        let (xn, wn, yn) = (xd.iter().product::<usize>(), k * r * r * xd[3], g.n * g.p * g.q * g.k);
        let x = round(rng.vec(xn, -1.0, 1.0));
        let w = round(rng.vec(wn, -1.0, 1.0));
        let bias = rng.vec(k, -0.5, 0.5);
        let (xf, wf) = (widen(&x), widen(&w));
        let mut want = vec![0.0f32; yn];
        cpu_conv::conv2d_fwd(&g, &xf, &wf, &mut want);
        let (d_x, d_w, d_bias) =
            (s.clone_htod(&x).unwrap(), s.clone_htod(&w).unwrap(), s.clone_htod(&bias).unwrap());

        // The direct kernel, plain.
        let mut d_y = s.alloc_zeros::<f16>(yn).unwrap();
        conv2d_fwd_reference(&dev, &g, &d_x, &d_w, &mut d_y).unwrap();
        let got: Vec<f32> = widen(&s.clone_dtoh(&d_y).unwrap());
        // FP16 output: 2⁻¹¹ relative rounding on sums up to ~|100|.
        assert_close(&format!("conv2d_fwd_ref_f16 {g:?}"), &got, &want, 2e-2, 2e-3);

        // Every third case with bias + ReLU fused.
        let fused = i % 3 == 0;
        if fused {
            for (j, v) in want.iter_mut().enumerate() {
                *v = (*v + bias[j % k]).max(0.0);
            }
        }
        let epi = Epilogue { beta: 0.0, bias: fused.then_some(&d_bias), relu: fused };
        let kernel = fwd_kernel_for(&dev, &g);
        kernels.insert(kernel.name);
        let what = format!("{kernel} {g:?} fused={fused}");
        if i % 2 == 0 {
            let mut d_y = s.alloc_zeros::<f32>(yn).unwrap();
            conv2d_fwd(&dev, &g, &d_x, &d_w, GemmOut::F32(&mut d_y), epi).unwrap();
            // FP32 sums of ≤ 4608 products of O(1) values.
            assert_close(&what, &s.clone_dtoh(&d_y).unwrap(), &want, 2e-3, 1e-4);
        } else {
            let mut d_y = s.alloc_zeros::<f16>(yn).unwrap();
            conv2d_fwd(&dev, &g, &d_x, &d_w, GemmOut::F16(&mut d_y), epi).unwrap();
            assert_close(&what, &widen(&s.clone_dtoh(&d_y).unwrap()), &want, 2e-2, 2e-3);
        }
        if k % 8 != 0 {
            continue; // the gradients need output channels in 8-channel runs
        }

        // Input gradient; every fourth case accumulates onto dx (beta = 1).
        let dy = round(rng.vec(yn, -1.0, 1.0));
        let dyf = widen(&dy);
        let d_dy = s.clone_htod(&dy).unwrap();
        let accumulate = i % 4 == 1;
        let dx0 = rng.vec(xn, -1.0, 1.0);
        let mut want = vec![0.0f32; xn];
        cpu_conv::conv2d_dgrad(&g, &dyf, &wf, &mut want);
        let mut d_dx = if accumulate {
            want.iter_mut().zip(&dx0).for_each(|(v, o)| *v += o);
            s.clone_htod(&dx0).unwrap()
        } else {
            s.alloc_zeros::<f32>(xn).unwrap()
        };
        let beta = if accumulate { 1.0 } else { 0.0 };
        conv2d_dgrad(&dev, &g, &d_dy, &d_w, GemmOut::F32(&mut d_dx), beta).unwrap();
        assert_close(&format!("dgrad {g:?} beta={beta}"), &s.clone_dtoh(&d_dx).unwrap(), &want, 2e-3, 1e-4);

        // Weight gradient: a sum over N·P·Q ≤ 8192 pixels.
        let mut want = vec![0.0f32; wn];
        cpu_conv::conv2d_wgrad(&g, &xf, &dyf, &mut want);
        let dw0 = rng.vec(wn, -1.0, 1.0);
        let mut want_acc = want.clone();
        want_acc.iter_mut().zip(&dw0).for_each(|(v, o)| *v += o);
        let plan = wgrad_plan(&dev, &g);
        kernels.insert(plan.tile.suffix());
        let what = format!("wgrad {g:?} {plan:?}");
        let mut d_dw = s.alloc_zeros::<f32>(wn).unwrap();
        conv2d_wgrad(&dev, &g, &d_x, &d_dy, &mut d_dw, 0.0).unwrap();
        let first = s.clone_dtoh(&d_dw).unwrap();
        assert_close(&what, &first, &want, 5e-3, 1e-4);
        conv2d_wgrad(&dev, &g, &d_x, &d_dy, &mut d_dw, 0.0).unwrap();
        let second = s.clone_dtoh(&d_dw).unwrap();
        assert!(
            first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: two runs differ in their bits"
        );
        let mut d_dw = s.clone_htod(&dw0).unwrap();
        conv2d_wgrad(&dev, &g, &d_x, &d_dy, &mut d_dw, 1.0).unwrap();
        assert_close(&format!("{what} beta=1"), &s.clone_dtoh(&d_dw).unwrap(), &want_acc, 5e-3, 1e-4);
        // Unsplit and split into as many pieces as there are reduction tiles.
        let k_tiles = (g.n * g.p * g.q).div_ceil(32);
        for plan in [
            WgradPlan { splits: 1, tiles_per_split: k_tiles, ..plan },
            WgradPlan { splits: k_tiles, tiles_per_split: 1, ..plan },
        ] {
            let mut d_dw = s.alloc_zeros::<f32>(wn).unwrap();
            conv2d_wgrad_planned(&dev, &g, &d_x, &d_dy, &mut d_dw, 0.0, plan).unwrap();
            assert_close(&format!("wgrad {g:?} {plan:?}"), &s.clone_dtoh(&d_dw).unwrap(), &want, 5e-3, 1e-4);
        }
        // A plan that leaves reduction tiles out is refused.
        let short = WgradPlan { splits: 1, tiles_per_split: k_tiles.saturating_sub(1).max(1), ..plan };
        if k_tiles > 1 {
            let mut d_dw = s.alloc_zeros::<f32>(wn).unwrap();
            let err = conv2d_wgrad_planned(&dev, &g, &d_x, &d_dy, &mut d_dw, 0.0, short).unwrap_err();
            assert!(err.to_string().contains("reduction tiles"), "{err}");
        }
    }
    for expected in ["conv2d_fwd_implicit_f16_128x128", "conv2d_fwd_implicit_f16_128x64"] {
        assert!(kernels.iter().any(|k| *k == expected), "no case ran {expected}: {kernels:?}");
    }
    assert!(
        kernels.iter().any(|k| k.starts_with("gemm_tc_f16")),
        "no pointwise case took the GEMM: {kernels:?}"
    );
    for wgrad_tile in ["128x128", "64x128"] {
        assert!(kernels.contains(wgrad_tile), "no weight gradient ran the {wgrad_tile} tile: {kernels:?}");
    }
}
