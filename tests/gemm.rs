//! GEMM and linear: the CPU reference against the definition for every transpose
//! combination and awkward sizes, and finite differences for linear backward.

mod common;

use common::{Rng, assert_close, check_gradient, cpu, dot, randn_tensor};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;

#[test]
fn gemm_matches_definition_for_all_transposes() {
    let b = cpu();
    let mut rng = Rng::new(30);
    for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (17, 9, 1), (33, 65, 31), (4, 128, 70)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = randn_tensor(&mut rng, if ta { [k, m] } else { [m, k] }, 1.0);
            let bm = randn_tensor(&mut rng, if tb { [n, k] } else { [k, n] }, 1.0);
            let c0 = randn_tensor(&mut rng, [m, n], 1.0);
            let (alpha, beta) = (0.75, -0.5);
            let mut c = b.tensor(c0.shape().clone(), c0.storage()).unwrap();
            b.gemm(alpha, &a, ta, &bm, tb, beta, &mut c).unwrap();
            let at = |i: usize, p: usize| if ta { a.storage()[p * m + i] } else { a.storage()[i * k + p] };
            let bt = |p: usize, j: usize| if tb { bm.storage()[j * k + p] } else { bm.storage()[p * n + j] };
            let want: Vec<f32> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let s: f64 = (0..k).map(|p| at(i, p) as f64 * bt(p, j) as f64).sum();
                    (alpha as f64 * s + beta as f64 * c0.storage()[ij] as f64) as f32
                })
                .collect();
            assert_close(&format!("gemm m{m} n{n} k{k} ta{ta} tb{tb}"), c.storage(), &want, 1e-5, 1e-5);
        }
    }
}

#[test]
fn gemm_with_beta_zero_ignores_garbage_in_c() {
    let b = cpu();
    let mut rng = Rng::new(31);
    let a = randn_tensor(&mut rng, [3, 4], 1.0);
    let bm = randn_tensor(&mut rng, [4, 2], 1.0);
    let mut c = b.tensor(Shape::from([3, 2]), &[f32::NAN; 6]).unwrap();
    b.gemm(1.0, &a, false, &bm, false, 0.0, &mut c).unwrap();
    assert!(c.storage().iter().all(|v| v.is_finite()), "β = 0 must not read C: {:?}", c.storage());
}

#[test]
fn gemm_rejects_mismatched_inner_dimensions() {
    let b = cpu();
    let mut rng = Rng::new(32);
    let a = randn_tensor(&mut rng, [3, 4], 1.0);
    let bm = randn_tensor(&mut rng, [5, 2], 1.0);
    let mut c = b.zeros(Shape::from([3, 2])).unwrap();
    let err = b.gemm(1.0, &a, false, &bm, false, 0.0, &mut c).unwrap_err().to_string();
    assert!(err.contains("gemm") && err.contains("3×4") && err.contains("5×2"), "{err}");
}

#[test]
fn linear_fwd_matches_definition() {
    let b = cpu();
    let mut rng = Rng::new(33);
    let (x, w, bias) = (
        randn_tensor(&mut rng, [5, 7], 1.0),
        randn_tensor(&mut rng, [3, 7], 1.0),
        randn_tensor(&mut rng, [3], 1.0),
    );
    let y = b.linear_fwd(&x, &w, &bias).unwrap();
    let want: Vec<f32> = (0..15)
        .map(|ij| {
            let (i, o) = (ij / 3, ij % 3);
            bias.storage()[o] + (0..7).map(|p| x.storage()[i * 7 + p] * w.storage()[o * 7 + p]).sum::<f32>()
        })
        .collect();
    assert_close("linear", y.storage(), &want, 1e-5, 1e-5);
}

#[test]
fn linear_bwd_matches_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(34);
    let (x, w, bias) = (
        randn_tensor(&mut rng, [5, 7], 1.0),
        randn_tensor(&mut rng, [3, 7], 1.0),
        randn_tensor(&mut rng, [3], 1.0),
    );
    let r = randn_tensor(&mut rng, [5, 3], 1.0);
    let g = b.linear_bwd(&r, &x, &w).unwrap();
    let tensor = |dims: &[usize], v: &[f32]| b.tensor(Shape::from(dims), v).unwrap();
    let loss_x =
        |v: &[f32]| dot(b.linear_fwd(&tensor(&[5, 7], v), &w, &bias).unwrap().storage(), r.storage());
    check_gradient("linear dx", x.storage(), g.dx.storage(), loss_x, 1e-2, 1e-3, 35);
    let loss_w =
        |v: &[f32]| dot(b.linear_fwd(&x, &tensor(&[3, 7], v), &bias).unwrap().storage(), r.storage());
    check_gradient("linear dw", w.storage(), g.dw.storage(), loss_w, 1e-2, 1e-3, 21);
    let loss_b = |v: &[f32]| dot(b.linear_fwd(&x, &w, &tensor(&[3], v)).unwrap().storage(), r.storage());
    check_gradient("linear db", bias.storage(), g.db.storage(), loss_b, 1e-2, 1e-3, 3);
}
