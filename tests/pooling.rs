//! Pooling: max pool, global average pool and the temporal mean over a clip's frames,
//! against their definitions and finite differences.

mod common;

use common::{Rng, assert_close, check_gradient, cpu, dot, randn_tensor};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;

/// Distinct values at least 0.05 apart, shuffled: no max-pool window has a tie, and a
/// finite-difference step of 1e-3 never changes which cell wins.
fn distinct(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - n as f32 * 0.025).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

#[test]
fn max_pool2d_fwd_matches_definition() {
    let b = cpu();
    let mut rng = Rng::new(20);
    for (dims, win, stride, pad) in
        [([2, 9, 8, 3], 3, 2, 1), ([1, 7, 7, 2], 3, 2, 1), ([1, 4, 6, 5], 2, 2, 0)]
    {
        let [n, h, w, c] = dims;
        let x = randn_tensor(&mut rng, dims, 1.0);
        let y = b.max_pool2d_fwd(&x, win, stride, pad).unwrap();
        let (p, q) = ((h + 2 * pad - win) / stride + 1, (w + 2 * pad - win) / stride + 1);
        assert_eq!(y.dims(), [n, p, q, c]);
        let mut want = Vec::new();
        for ni in 0..n {
            for pi in 0..p {
                for qi in 0..q {
                    for ci in 0..c {
                        let mut m = f32::NEG_INFINITY;
                        for r in 0..win {
                            for s in 0..win {
                                let (hh, ww) = (
                                    (pi * stride + r) as isize - pad as isize,
                                    (qi * stride + s) as isize - pad as isize,
                                );
                                if hh >= 0 && ww >= 0 && (hh as usize) < h && (ww as usize) < w {
                                    m = m.max(
                                        x.storage()[((ni * h + hh as usize) * w + ww as usize) * c + ci],
                                    );
                                }
                            }
                        }
                        want.push(m);
                    }
                }
            }
        }
        assert_close("max_pool2d", y.storage(), &want, 0.0, 0.0);
    }
}

#[test]
fn max_pool2d_bwd_matches_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(21);
    let dims = [2, 9, 8, 3];
    let xs = distinct(&mut rng, dims.iter().product());
    let x = b.tensor(Shape::from(dims), &xs).unwrap();
    let y = b.max_pool2d_fwd(&x, 3, 2, 1).unwrap();
    let r = randn_tensor(&mut rng, y.shape().clone(), 1.0);
    let dx = b.max_pool2d_bwd(&x, &r, 3, 2, 1).unwrap();
    let loss = |v: &[f32]| {
        dot(
            b.max_pool2d_fwd(&b.tensor(Shape::from(dims), v).unwrap(), 3, 2, 1).unwrap().storage(),
            r.storage(),
        )
    };
    check_gradient("max_pool2d dx", &xs, dx.storage(), loss, 1e-3, 1e-2, 96);
    // Overlapping windows (3 wide, stride 2) route several gradients to one cell: the
    // total must be conserved.
    let (sum_dx, sum_dy): (f32, f32) = (dx.storage().iter().sum(), r.storage().iter().sum());
    assert!((sum_dx - sum_dy).abs() < 1e-4, "Σdx {sum_dx} ≠ Σdy {sum_dy}");
}

#[test]
fn global_avg_pool_and_temporal_mean_match_definition() {
    let b = cpu();
    let mut rng = Rng::new(22);
    let x = randn_tensor(&mut rng, [3, 5, 4, 6], 1.0);
    let y = b.global_avg_pool_fwd(&x).unwrap();
    let mut want = vec![0.0f32; 3 * 6];
    for (i, &v) in x.storage().iter().enumerate() {
        want[(i / (5 * 4 * 6)) * 6 + i % 6] += v / 20.0;
    }
    assert_close("global_avg_pool", y.storage(), &want, 1e-6, 1e-5);

    let frames = randn_tensor(&mut rng, [6, 5], 1.0);
    let clips = b.temporal_mean_fwd(&frames, 3).unwrap();
    assert_eq!(clips.dims(), [2, 5]);
    let f = frames.storage();
    let want: Vec<f32> = (0..10)
        .map(|i| (f[(i / 5) * 15 + i % 5] + f[(i / 5) * 15 + 5 + i % 5] + f[(i / 5) * 15 + 10 + i % 5]) / 3.0)
        .collect();
    assert_close("temporal_mean", clips.storage(), &want, 1e-6, 1e-5);
    assert!(b.temporal_mean_fwd(&frames, 4).is_err(), "6 frames do not split into clips of 4");
}

#[test]
fn mean_pools_bwd_match_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(23);
    let dims = [2, 3, 5, 4];
    let x = randn_tensor(&mut rng, dims, 1.0);
    let r = randn_tensor(&mut rng, [2, 4], 1.0);
    let dx = b.global_avg_pool_bwd(&r, dims).unwrap();
    let loss = |v: &[f32]| {
        dot(b.global_avg_pool_fwd(&b.tensor(Shape::from(dims), v).unwrap()).unwrap().storage(), r.storage())
    };
    check_gradient("global_avg_pool dx", x.storage(), dx.storage(), loss, 1e-2, 1e-3, 64);

    let frames = randn_tensor(&mut rng, [8, 3], 1.0);
    let r = randn_tensor(&mut rng, [2, 3], 1.0);
    let dx = b.temporal_mean_bwd(&r, 4).unwrap();
    let loss = |v: &[f32]| {
        dot(
            b.temporal_mean_fwd(&b.tensor(Shape::from([8, 3]), v).unwrap(), 4).unwrap().storage(),
            r.storage(),
        )
    };
    check_gradient("temporal_mean dx", frames.storage(), dx.storage(), loss, 1e-2, 1e-3, 24);
}
