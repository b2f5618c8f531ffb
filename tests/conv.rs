//! conv2d: the CPU reference against the direct definition (forward), the adjoint
//! identities that tie forward, dgrad and wgrad together exactly, and finite
//! differences (backward).

mod common;

use common::{Rng, assert_close, check_gradient, cpu, dot, randn_tensor};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;

type ConvCase = (usize, usize, usize, usize, usize, usize, [usize; 2], [usize; 2]);

/// (N, H, W, C, K, R×S, stride, pad): odd sizes, stride 2 on odd inputs, 1×1 and 7×7
/// windows, C = 3, pad 0/1/3, a 1×1 stride-1 case (the GEMM path), and N = 9 (wgrad
/// splits the batch into chunks that 9 does not fill evenly).
const CASES: &[ConvCase] = &[
    (2, 7, 5, 5, 6, 3, [1, 1], [1, 1]),
    (1, 11, 11, 3, 4, 7, [2, 2], [3, 3]),
    (2, 9, 9, 4, 8, 1, [2, 2], [0, 0]),
    (2, 6, 6, 8, 8, 1, [1, 1], [0, 0]),
    (1, 8, 7, 3, 5, 3, [2, 2], [1, 1]),
    (3, 5, 5, 2, 3, 3, [1, 1], [0, 0]),
    (9, 4, 5, 3, 2, 3, [2, 1], [1, 0]),
    (1, 1, 1, 7, 3, 1, [1, 1], [0, 0]),
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

#[test]
fn conv2d_fwd_matches_definition() {
    let b = cpu();
    let mut rng = Rng::new(1);
    for &(n, h, w, c, k, rs, stride, pad) in CASES {
        let x = randn_tensor(&mut rng, [n, h, w, c], 1.0);
        let wt = randn_tensor(&mut rng, [k, rs, rs, c], 1.0);
        let y = b.conv2d_fwd(&x, &wt, stride, pad).unwrap();
        let want = conv_definition(x.storage(), [n, h, w, c], wt.storage(), [k, rs, rs, c], stride, pad);
        // f32 sums of at most 7·7·3 products of O(1) terms against an f64 sum.
        assert_close(
            &format!("conv2d_fwd {:?}", (n, h, w, c, k, rs, stride, pad)),
            y.storage(),
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn conv2d_dgrad_and_wgrad_are_adjoints_of_forward() {
    // conv is bilinear, so ⟨conv(x, w), dy⟩ = ⟨x, dgrad(dy, w)⟩ = ⟨w, wgrad(x, dy)⟩ holds
    // exactly up to rounding: a tight check of every index in both backward ops.
    let b = cpu();
    let mut rng = Rng::new(2);
    for &(n, h, w, c, k, rs, stride, pad) in CASES {
        let x = randn_tensor(&mut rng, [n, h, w, c], 1.0);
        let wt = randn_tensor(&mut rng, [k, rs, rs, c], 1.0);
        let y = b.conv2d_fwd(&x, &wt, stride, pad).unwrap();
        let dy = randn_tensor(&mut rng, y.shape().clone(), 1.0);
        let dx = b.conv2d_dgrad(&dy, &wt, [n, h, w, c], stride, pad).unwrap();
        let dw = b.conv2d_wgrad(&x, &dy, [k, rs, rs, c], stride, pad).unwrap();
        assert_eq!(dx.dims(), x.dims());
        assert_eq!(dw.dims(), wt.dims());
        let lhs = dot(y.storage(), dy.storage());
        let via_dx = dot(x.storage(), dx.storage());
        let via_dw = dot(wt.storage(), dw.storage());
        let tol = 1e-4 * lhs.abs().max(1.0);
        let case = (n, h, w, c, k, rs, stride, pad);
        assert!((lhs - via_dx).abs() < tol, "{case:?}: ⟨y,dy⟩ {lhs} vs ⟨x,dx⟩ {via_dx}");
        assert!((lhs - via_dw).abs() < tol, "{case:?}: ⟨y,dy⟩ {lhs} vs ⟨w,dw⟩ {via_dw}");
    }
}

#[test]
fn conv2d_dgrad_and_wgrad_match_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(3);
    for &(n, h, w, c, k, rs, stride, pad) in &CASES[..5] {
        let x = randn_tensor(&mut rng, [n, h, w, c], 1.0);
        let wt = randn_tensor(&mut rng, [k, rs, rs, c], 1.0);
        let y = b.conv2d_fwd(&x, &wt, stride, pad).unwrap();
        let r = randn_tensor(&mut rng, y.shape().clone(), 1.0);
        let dx = b.conv2d_dgrad(&r, &wt, [n, h, w, c], stride, pad).unwrap();
        let dw = b.conv2d_wgrad(&x, &r, [k, rs, rs, c], stride, pad).unwrap();
        // Σ conv(x, w)·r as a function of the input, or of the weights.
        let loss = |xs: &[f32], ws: &[f32]| {
            let xt = b.tensor(Shape::from([n, h, w, c]), xs).unwrap();
            let wt = b.tensor(Shape::from([k, rs, rs, c]), ws).unwrap();
            dot(b.conv2d_fwd(&xt, &wt, stride, pad).unwrap().storage(), r.storage())
        };
        let of_x = |xs: &[f32]| loss(xs, wt.storage());
        check_gradient("conv2d_dgrad", x.storage(), dx.storage(), of_x, 1e-2, 1e-2, 48);
        let of_w = |ws: &[f32]| loss(x.storage(), ws);
        check_gradient("conv2d_wgrad", wt.storage(), dw.storage(), of_w, 1e-2, 1e-2, 48);
    }
}

#[test]
fn conv2d_rejects_mismatched_shapes_with_context() {
    let b = cpu();
    let mut rng = Rng::new(5);
    let x = randn_tensor(&mut rng, [1, 5, 5, 3], 1.0);
    let w = randn_tensor(&mut rng, [4, 3, 3, 2], 1.0);
    let err = b.conv2d_fwd(&x, &w, [1, 1], [1, 1]).unwrap_err().to_string();
    assert!(err.contains("conv2d") && err.contains("3 channels") && err.contains("expects 2"), "{err}");
    let w = randn_tensor(&mut rng, [4, 7, 7, 3], 1.0);
    assert!(b.conv2d_fwd(&x, &w, [1, 1], [0, 0]).is_err(), "a 7×7 window cannot fit a 5×5 unpadded input");
}

/// The forward convolution on the GPU (`conv2d_fwd_implicit_f16` where C is a multiple of
/// 8, the reference kernel otherwise) and the input gradient (`conv2d_dgrad_implicit_f16`,
/// stride 1 and 2) against the CPU reference on the f16-rounded inputs: every distinct ResNet-18 and ResNet-50 layer shape at batch 2 on 64² input,
/// and awkward shapes (odd H and W, C not a multiple of 8, stride 2 on odd sizes, padding
/// 0, 1 and 3), with the fused epilogue on some. Skips with the reason without a GPU.
#[cfg(feature = "cuda")]
#[test]
fn conv2d_fwd_on_the_gpu_matches_the_cpu() {
    use dfengine::backend::cpu::conv as cpu_conv;
    use dfengine::backend::cuda::conv::{Epilogue, conv2d_dgrad, conv2d_fwd, uses_tensor_cores};
    use dfengine::backend::cuda::device::{CudaError, Device};
    use dfengine::backend::cuda::gemm::GemmOut;
    use dfengine::backend::params::Conv2dGeom;
    use dfengine::config::Backbone;
    use dfengine::model::arch::{ResNetSpec, conv_layers};
    use half::f16;

    let dev = match Device::open(0) {
        Ok(d) => d,
        Err(CudaError::Unavailable(why)) => {
            eprintln!("skipped: no GPU ({why})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let s = dev.stream().clone();
    // (x dims, k, r, stride, pad)
    let mut shapes: Vec<([usize; 4], usize, usize, usize, usize)> = vec![
        ([2, 9, 11, 16], 24, 3, 1, 1),
        ([1, 13, 7, 8], 16, 3, 2, 1),
        ([2, 15, 15, 32], 40, 1, 2, 0),
        ([1, 23, 21, 8], 8, 7, 2, 3),
        ([2, 10, 9, 5], 12, 3, 1, 1), // C = 5: the reference kernel
    ];
    let mut seen = std::collections::HashSet::new();
    for backbone in [Backbone::Resnet18, Backbone::Resnet50] {
        for l in conv_layers(&ResNetSpec::of(backbone), 64) {
            let key = ([2, l.h_in, l.w_in, l.cin], l.cout, l.kernel, l.stride, l.pad());
            if seen.insert(key) {
                shapes.push(key);
            }
        }
    }
    let mut rng = Rng::new(50);
    for (i, (xd, k, r, stride, pad)) in shapes.into_iter().enumerate() {
        let g = Conv2dGeom::new(xd, [k, r, r, xd[3]], [stride; 2], [pad; 2]).unwrap();
        let round = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
        let x = round(rng.vec(xd.iter().product(), -1.0, 1.0));
        let w = round(rng.vec(k * r * r * xd[3], -1.0, 1.0));
        let bias = rng.vec(k, -0.5, 0.5);
        let (xf, wf): (Vec<f32>, Vec<f32>) =
            (x.iter().map(|v| v.to_f32()).collect(), w.iter().map(|v| v.to_f32()).collect());
        let yn = g.n * g.p * g.q * g.k;
        let mut want = vec![0.0f32; yn];
        cpu_conv::conv2d_fwd(&g, &xf, &wf, &mut want);
        let tc = uses_tensor_cores(&g);
        // Every third tensor-core case with bias + ReLU fused.
        let fused = tc && i % 3 == 0;
        if fused {
            for (j, v) in want.iter_mut().enumerate() {
                *v = (*v + bias[j % k]).max(0.0);
            }
        }
        let (d_x, d_w, d_bias) =
            (s.clone_htod(&x).unwrap(), s.clone_htod(&w).unwrap(), s.clone_htod(&bias).unwrap());
        let epi = Epilogue { beta: 0.0, bias: fused.then_some(&d_bias), relu: fused };
        let what = format!("conv {g:?} fused={fused} tensor_cores={tc}");
        // The tensor-core path writes FP32 here (tight check of the accumulation); the
        // reference kernel only FP16.
        if tc && i % 2 == 0 {
            let mut d_y = s.alloc_zeros::<f32>(yn).unwrap();
            conv2d_fwd(&dev, &g, &d_x, &d_w, GemmOut::F32(&mut d_y), epi).unwrap();
            let got = s.clone_dtoh(&d_y).unwrap();
            // FP32 sums of ≤ 4608 products of O(1) values.
            assert_close(&what, &got, &want, 2e-3, 1e-4);
        } else {
            let mut d_y = s.alloc_zeros::<f16>(yn).unwrap();
            conv2d_fwd(&dev, &g, &d_x, &d_w, GemmOut::F16(&mut d_y), epi).unwrap();
            let got: Vec<f32> = s.clone_dtoh(&d_y).unwrap().into_iter().map(f16::to_f32).collect();
            // FP16 output: 2⁻¹¹ relative rounding on sums up to ~|100|.
            assert_close(&what, &got, &want, 2e-2, 2e-3);
        }

        // The input gradient, where the output channels allow the tensor-core kernel.
        if k % 8 == 0 {
            let dy = round(rng.vec(yn, -1.0, 1.0));
            let dyf: Vec<f32> = dy.iter().map(|v| v.to_f32()).collect();
            let xn = xd.iter().product::<usize>();
            let mut want = vec![0.0f32; xn];
            cpu_conv::conv2d_dgrad(&g, &dyf, &wf, &mut want);
            let d_dy = s.clone_htod(&dy).unwrap();
            let mut d_dx = s.alloc_zeros::<f32>(xn).unwrap();
            conv2d_dgrad(&dev, &g, &d_dy, &d_w, GemmOut::F32(&mut d_dx), 0.0).unwrap();
            let got = s.clone_dtoh(&d_dx).unwrap();
            assert_close(&format!("dgrad {g:?}"), &got, &want, 2e-3, 1e-4);
        }
    }
}
