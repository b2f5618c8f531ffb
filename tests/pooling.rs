//! Pooling: max pool (ceil mode too), global average pool and the temporal mean over a
//! clip's frames, against their definitions and finite differences on every backend; the
//! kernels (kernels/pooling.cu) against their CPU twins, bit for bit, through the host
//! functions.

#[macro_use]
mod common;

use common::{DeviceUnderTest, Rng, assert_close, check_gradient, dot, host, randn, tensor};
use dfengine::backend::ops::Backend;

/// Distinct values at least 0.05 apart, shuffled: no max-pool window has a tie, and a
/// finite-difference step of 1e-3 never changes which cell wins.
fn distinct(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - n as f32 * 0.025).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// Max pool by its definition over `xs` [n, h, w, c]: output (pi, qi) takes the maximum of
/// the input cells of rows pi·stride − pad + [0, win) and the same columns that lie inside.
fn max_pool_reference(
    xs: &[f32],
    [n, h, w, c]: [usize; 4],
    win: usize,
    stride: usize,
    pad: usize,
    [p, q]: [usize; 2],
) -> Vec<f32> {
    let inside = |o: usize, extent: usize| {
        (o * stride).saturating_sub(pad)..(o * stride + win).saturating_sub(pad).min(extent)
    };
    let mut want = Vec::new();
    for ni in 0..n {
        for pi in 0..p {
            for qi in 0..q {
                for ci in 0..c {
                    let mut m = f32::NEG_INFINITY;
                    for hh in inside(pi, h) {
                        for ww in inside(qi, w) {
                            m = m.max(xs[((ni * h + hh) * w + ww) * c + ci]);
                        }
                    }
                    want.push(m);
                }
            }
        }
    }
    want
}

fn max_pool2d_fwd_matches_definition<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(20);
    for (dims, win, stride, pad) in
        [([2, 9, 8, 3], 3, 2, 1), ([1, 7, 7, 2], 3, 2, 1), ([1, 4, 6, 5], 2, 2, 0)]
    {
        let [n, h, w, c] = dims;
        let x = randn(b, &mut rng, dims, 1.0);
        let xs = host(b, &x);
        let y = b.max_pool2d_fwd(&x, win, stride, pad).unwrap();
        let (p, q) = ((h + 2 * pad - win) / stride + 1, (w + 2 * pad - win) / stride + 1);
        assert_eq!(y.dims(), [n, p, q, c]);
        let want = max_pool_reference(&xs, dims, win, stride, pad, [p, q]);
        assert_close("max_pool2d", &host(b, &y), &want, 0.0, 0.0);
    }
}
test_device!(
    max_pool2d_fwd_matches_definition,
    max_pool2d_fwd_matches_definition_cpu,
    max_pool2d_fwd_matches_definition_cuda
);

/// Ceil mode (MTCNN's pools): the last window may hang over the bottom and right edges
/// and takes the maximum of the cells it covers (PyTorch's `ceil_mode=True`).
fn max_pool2d_ceil_fwd_matches_definition<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(24);
    // (H, W, window, stride, expected P, Q): odd sizes leave a partial last window; a
    // window smaller than the stride drops a last window that would start past the input.
    for (h, w, win, stride, p, q) in [
        (10, 10, 2, 2, 5, 5),
        (11, 9, 2, 2, 6, 5),
        (22, 22, 3, 2, 11, 11),
        (9, 8, 3, 2, 4, 4),
        (3, 3, 1, 2, 2, 2),
    ] {
        let (n, c) = (2, 3);
        let x = randn(b, &mut rng, [n, h, w, c], 1.0);
        let xs = host(b, &x);
        let y = b.max_pool2d_ceil_fwd(&x, win, stride).unwrap();
        assert_eq!(y.dims(), [n, p, q, c], "output size for {h}×{w} window {win} stride {stride}");
        let want = max_pool_reference(&xs, [n, h, w, c], win, stride, 0, [p, q]);
        assert_close(
            &format!("ceil-mode max pool {h}×{w} window {win} stride {stride}"),
            &host(b, &y),
            &want,
            0.0,
            0.0,
        );
    }
    let small = randn(b, &mut rng, [1, 2, 5, 1], 1.0);
    let err = b.max_pool2d_ceil_fwd(&small, 3, 2).err().expect("a 2×5 input is too small").to_string();
    assert!(err.contains("does not fit input 2×5"), "{err}");
}
test_device!(
    max_pool2d_ceil_fwd_matches_definition,
    max_pool2d_ceil_fwd_matches_definition_cpu,
    max_pool2d_ceil_fwd_matches_definition_cuda
);

fn max_pool2d_bwd_matches_finite_differences<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(21);
    let dims = [2, 9, 8, 3];
    let xs = distinct(&mut rng, dims.iter().product());
    let x = tensor(b, dims, &xs);
    let y = b.max_pool2d_fwd(&x, 3, 2, 1).unwrap();
    let r = randn(b, &mut rng, y.shape().clone(), 1.0);
    let rs = host(b, &r);
    let dx = host(b, &b.max_pool2d_bwd(&x, &r, 3, 2, 1).unwrap());
    let loss = |v: &[f32]| dot(&host(b, &b.max_pool2d_fwd(&tensor(b, dims, v), 3, 2, 1).unwrap()), &rs);
    check_gradient("max_pool2d dx", &xs, &dx, loss, 1e-3, 1e-2, 96);
    // Overlapping windows (3 wide, stride 2) route several gradients to one cell: the
    // total must be conserved.
    let (sum_dx, sum_dy): (f32, f32) = (dx.iter().sum(), rs.iter().sum());
    assert!((sum_dx - sum_dy).abs() < 1e-4, "Σdx {sum_dx} ≠ Σdy {sum_dy}");
}
test_device!(
    max_pool2d_bwd_matches_finite_differences,
    max_pool2d_bwd_matches_finite_differences_cpu,
    max_pool2d_bwd_matches_finite_differences_cuda
);

fn global_avg_pool_and_temporal_mean_match_definition<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(22);
    let x = randn(b, &mut rng, [3, 5, 4, 6], 1.0);
    let y = b.global_avg_pool_fwd(&x).unwrap();
    let mut want = vec![0.0f32; 3 * 6];
    for (i, &v) in host(b, &x).iter().enumerate() {
        want[(i / (5 * 4 * 6)) * 6 + i % 6] += v / 20.0;
    }
    assert_close("global_avg_pool", &host(b, &y), &want, 1e-6, 1e-5);

    let frames = randn(b, &mut rng, [6, 5], 1.0);
    let clips = b.temporal_mean_fwd(&frames, 3).unwrap();
    assert_eq!(clips.dims(), [2, 5]);
    let f = host(b, &frames);
    let want: Vec<f32> = (0..10)
        .map(|i| (f[(i / 5) * 15 + i % 5] + f[(i / 5) * 15 + 5 + i % 5] + f[(i / 5) * 15 + 10 + i % 5]) / 3.0)
        .collect();
    assert_close("temporal_mean", &host(b, &clips), &want, 1e-6, 1e-5);
    assert!(b.temporal_mean_fwd(&frames, 4).is_err(), "6 frames do not split into clips of 4");
}
test_device!(
    global_avg_pool_and_temporal_mean_match_definition,
    global_avg_pool_and_temporal_mean_match_definition_cpu,
    global_avg_pool_and_temporal_mean_match_definition_cuda
);

fn mean_pools_bwd_match_finite_differences<B: Backend>(b: &B, _: &DeviceUnderTest) {
    let mut rng = Rng::new(23);
    let dims = [2, 3, 5, 4];
    let x = randn(b, &mut rng, dims, 1.0);
    let r = randn(b, &mut rng, [2, 4], 1.0);
    let rs = host(b, &r);
    let dx = host(b, &b.global_avg_pool_bwd(&r, dims).unwrap());
    let loss = |v: &[f32]| dot(&host(b, &b.global_avg_pool_fwd(&tensor(b, dims, v)).unwrap()), &rs);
    check_gradient("global_avg_pool dx", &host(b, &x), &dx, loss, 1e-2, 1e-3, 64);

    let frames = randn(b, &mut rng, [8, 3], 1.0);
    let r = randn(b, &mut rng, [2, 3], 1.0);
    let rs = host(b, &r);
    let dx = host(b, &b.temporal_mean_bwd(&r, 4).unwrap());
    let loss = |v: &[f32]| dot(&host(b, &b.temporal_mean_fwd(&tensor(b, [8, 3], v), 4).unwrap()), &rs);
    check_gradient("temporal_mean dx", &host(b, &frames), &dx, loss, 1e-2, 1e-3, 24);
}
test_device!(
    mean_pools_bwd_match_finite_differences,
    mean_pools_bwd_match_finite_differences_cpu,
    mean_pools_bwd_match_finite_differences_cuda
);

/// The pooling kernels against their CPU twins, bit for bit: max pool on odd sizes with
/// ties and a NaN (ceil-mode geometries too), the mean over rows as global average pool
/// (group H·W = 49) and as the temporal mean (group T = 16). At most 150 k elements a
/// case: the same shapes on a card and on the software GPU.
#[cfg(feature = "cuda")]
#[test]
fn pooling_kernels_match_the_cpu_cuda() {
    use common::download;
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
        assert_eq!(bits(&download(&dev, &d_y)), bits(&want), "max pool forward {dims:?}");
        let mut d_dx = s.alloc_zeros::<f32>(xn).unwrap();
        gpu_pooling::max_pool2d_bwd(&dev, &g, &dx_dev, &ddy, &mut d_dx).unwrap();
        let mut want = vec![0.0; xn];
        pooling::max_pool2d_bwd(&g, &x, &dy, &mut want);
        assert_eq!(bits(&download(&dev, &d_dx)), bits(&want), "max pool backward {dims:?}");
    }
    // Ceil mode: windows over the bottom and right edges (MTCNN's 2/2 and 3/2 pools).
    for (dims, window, stride) in [([2, 17, 15, 5], 3, 2), ([1, 11, 9, 10], 2, 2), ([3, 8, 7, 28], 3, 2)] {
        let g = Pool2dGeom::ceil_mode(dims, window, stride).unwrap();
        let xn = dims.iter().product::<usize>();
        let mut x: Vec<f32> = (0..xn).map(|_| rng.below(4) as f32 - 1.0).collect();
        x[xn - 1] = f32::NAN; // in the last window, which hangs over both edges
        let yn = g.n * g.p * g.q * g.c;
        let d_x = s.clone_htod(&x).unwrap();
        let mut d_y = s.alloc_zeros::<f32>(yn).unwrap();
        gpu_pooling::max_pool2d_fwd(&dev, &g, &d_x, &mut d_y).unwrap();
        let mut want = vec![0.0; yn];
        pooling::max_pool2d_fwd(&g, &x, &mut want);
        assert_eq!(bits(&download(&dev, &d_y)), bits(&want), "ceil-mode max pool forward {dims:?}");
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
        assert_eq!(bits(&download(&dev, &d_y)), bits(&want), "mean over {group} rows");
        let mut d_dx = s.alloc_zeros::<f32>(blocks * group * c).unwrap();
        gpu_pooling::mean_rows_bwd(&dev, &d_dy, &mut d_dx, blocks, group, c).unwrap();
        let mut want = vec![0.0; blocks * group * c];
        pooling::mean_rows_bwd(&dy, group, c, &mut want);
        assert_eq!(bits(&download(&dev, &d_dx)), bits(&want), "mean backward over {group} rows");
    }
}

/// The FP16 pooling kernels (`_f16`, mixed precision's activations) against their CPU
/// twins on FP16 storage, bit for bit: the same cases as the FP32 test, values rounded
/// to FP16 (windows with ties and a NaN), sums in FP32 or f64 rounded once on both sides.
#[cfg(feature = "cuda")]
#[test]
fn pooling_f16_kernels_match_the_cpu_cuda() {
    use common::download;
    use dfengine::backend::cpu::pooling;
    use dfengine::backend::cuda::pooling as gpu_pooling;
    use dfengine::backend::params::Pool2dGeom;
    use half::f16;

    let Some(dev) = common::gpu_device() else { return };
    let mut rng = Rng::new(47);
    let halves = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
    let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (dims, window, stride, pad) in
        [([2, 17, 15, 5], 3, 2, 1), ([1, 8, 8, 3], 2, 2, 0), ([3, 5, 9, 2], 3, 1, 1)]
    {
        let g = Pool2dGeom::new(dims, window, stride, pad).unwrap();
        let xn = dims.iter().product::<usize>();
        let mut x = halves((0..xn).map(|_| rng.below(4) as f32 * 0.3 - 1.0).collect());
        x[xn / 3] = f16::NAN;
        let yn = g.n * g.p * g.q * g.c;
        let dy = halves(rng.vec(yn, -1.0, 1.0));
        let (d_x, d_dy) = (dev.upload(&x).unwrap(), dev.upload(&dy).unwrap());
        let mut d_y = dev.alloc::<f16>(yn).unwrap();
        gpu_pooling::max_pool2d_fwd(&dev, &g, &d_x, &mut d_y).unwrap();
        let mut want = vec![f16::ZERO; yn];
        pooling::max_pool2d_fwd(&g, &x, &mut want);
        assert_eq!(bits(&download(&dev, &d_y)), bits(&want), "max pool forward f16 {dims:?}");
        let mut d_dx = dev.alloc::<f16>(xn).unwrap();
        gpu_pooling::max_pool2d_bwd(&dev, &g, &d_x, &d_dy, &mut d_dx).unwrap();
        let mut want = vec![f16::ZERO; xn];
        pooling::max_pool2d_bwd(&g, &x, &dy, &mut want);
        assert_eq!(bits(&download(&dev, &d_dx)), bits(&want), "max pool backward f16 {dims:?}");
    }
    for (blocks, group, c) in [(6, 49, 512), (3, 1, 7), (2, 9, 33)] {
        let x = halves(rng.vec(blocks * group * c, -2.0, 2.0));
        let dy = halves(rng.vec(blocks * c, -1.0, 1.0));
        let (d_x, d_dy) = (dev.upload(&x).unwrap(), dev.upload(&dy).unwrap());
        let mut d_y = dev.alloc::<f16>(blocks * c).unwrap();
        gpu_pooling::mean_rows(&dev, &d_x, &mut d_y, blocks, group, c).unwrap();
        let mut want = vec![f16::ZERO; blocks * c];
        pooling::mean_rows(&x, group, c, &mut want);
        assert_eq!(bits(&download(&dev, &d_y)), bits(&want), "f16 mean over {group} rows");
        let mut d_dx = dev.alloc::<f16>(blocks * group * c).unwrap();
        gpu_pooling::mean_rows_bwd(&dev, &d_dy, &mut d_dx, blocks, group, c).unwrap();
        let mut want = vec![f16::ZERO; blocks * group * c];
        pooling::mean_rows_bwd(&dy, group, c, &mut want);
        assert_eq!(bits(&download(&dev, &d_dx)), bits(&want), "f16 mean backward over {group} rows");
    }
}
