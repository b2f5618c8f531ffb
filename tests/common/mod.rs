//! Helpers shared by the op tests: seeded random data, float comparison that prints the
//! first mismatches, and a finite-difference gradient check.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use dfengine::backend::cpu::{CpuBackend, CpuTensor};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;

pub use dfengine::rng::Rng;

/// Device 0, or `None` after printing why there is none (GPU tests then skip).
#[cfg(feature = "cuda")]
pub fn gpu_device() -> Option<dfengine::backend::cuda::device::Device> {
    use dfengine::backend::cuda::device::{CudaError, Device};
    match Device::open(0) {
        Ok(d) => Some(d),
        Err(CudaError::Unavailable(why)) => {
            eprintln!("skipped: no GPU ({why})");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

pub fn cpu() -> CpuBackend {
    CpuBackend::default()
}

pub fn randn_tensor(rng: &mut Rng, shape: impl Into<Shape>, scale: f32) -> CpuTensor {
    let shape = shape.into();
    let data = rng.vec(shape.numel(), -scale, scale);
    CpuBackend::default().tensor(shape, &data).unwrap()
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise; on failure prints the count and
/// the first mismatches with their indices.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let bad: Vec<(usize, f32, f32)> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| {
            // Written so that a NaN on either side counts as a mismatch.
            let within = (*g - *w).abs() <= atol + rtol * w.abs();
            !within
        })
        .map(|(i, (g, w))| (i, *g, *w))
        .collect();
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(8)
            .map(|(i, g, w)| format!("[{i}] got {g:.7} want {w:.7} (diff {:.2e})", (g - w).abs()))
            .collect();
        panic!(
            "{what}: {} of {} elements differ beyond atol {atol:e} + rtol {rtol:e}·|want|:\n  {}",
            bad.len(),
            got.len(),
            first.join("\n  ")
        );
    }
}

/// Checks an analytic gradient against central differences of a scalar function.
/// Up to `samples` coordinates of `x` are perturbed by ±eps (in f64 arithmetic on the f32
/// forward), so the check costs 2·samples forward passes.
#[track_caller]
pub fn check_gradient(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    mut f: impl FnMut(&[f32]) -> f64,
    eps: f32,
    tol: f32,
    samples: usize,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length differs from input");
    let mut rng = Rng::new(0xF00D ^ x.len() as u64);
    let coords: Vec<usize> = if x.len() <= samples {
        (0..x.len()).collect()
    } else {
        (0..samples).map(|_| rng.below(x.len())).collect()
    };
    let mut numeric = Vec::with_capacity(coords.len());
    let mut picked = Vec::with_capacity(coords.len());
    let mut probe = x.to_vec();
    for &i in &coords {
        probe[i] = x[i] + eps;
        let up = f(&probe);
        probe[i] = x[i] - eps;
        let down = f(&probe);
        probe[i] = x[i];
        numeric.push(((up - down) / (2.0 * eps as f64)) as f32);
        picked.push(analytic[i]);
    }
    let scale = numeric.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let bad: Vec<String> = coords
        .iter()
        .zip(picked.iter().zip(&numeric))
        .filter(|(_, (a, n))| (*a - *n).abs() > tol * scale)
        .take(8)
        .map(|(i, (a, n))| format!("[{i}] analytic {a:.6} numeric {n:.6}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: gradient differs from finite differences (tol {tol}·{scale:.3}):\n  {}",
        bad.join("\n  ")
    );
}

/// Σ y·r: a scalar whose gradient with respect to y is r, the usual way to turn a
/// backward op into something finite differences can check.
pub fn dot(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}
