//! Batch norm on the CPU, over an NHWC tensor seen as `[M, C]` (M = N·H·W).
//!
//! Statistics are accumulated in f64 over fixed row chunks and the chunk sums added in
//! order: deterministic whatever the thread count, and exact enough that the f32
//! variance of a large batch does not drift from PyTorch's. Variance is two-pass (mean
//! first), which stays accurate when |mean| ≫ std.
//!
//! Activations (x, y, dy, dx) are FP32 or FP16 (`Elem`); statistics, γ, β and their
//! gradients are FP32, and all arithmetic is FP32 or f64, rounded once on store.

use std::ops::Range;

use rayon::prelude::*;

use super::simd::vectorized;
use super::storage::Elem;

use crate::backend::params::{BatchNormParams, STATS_CHUNK_ROWS};

/// Per-channel sums over M rows of C channels, `S` of them in one pass over memory:
/// `add_rows(rows, sums)` adds the terms of the rows `rows` (at most one chunk) to
/// `sums[s][channel]`, each row in order.
fn channel_sums<const S: usize>(
    m: usize,
    c: usize,
    add_rows: impl Fn(Range<usize>, &mut [Vec<f64>; S]) + Sync,
) -> [Vec<f64>; S] {
    let partials: Vec<[Vec<f64>; S]> = (0..m.div_ceil(STATS_CHUNK_ROWS))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = std::array::from_fn(|_| vec![0.0f64; c]);
            add_rows(chunk * STATS_CHUNK_ROWS..((chunk + 1) * STATS_CHUNK_ROWS).min(m), &mut acc);
            acc
        })
        .collect();
    let mut total = std::array::from_fn(|_| vec![0.0f64; c]);
    for p in &partials {
        for (t, p) in total.iter_mut().zip(p) {
            t.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        }
    }
    total
}

vectorized! {
    /// Adds each of the row-major rows of C channels `rows` to `sum`.
    fn add_values<E: Elem>(rows: &[E], sum: &mut [f64]) {
        for row in rows.chunks_exact(sum.len()) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v.to_f32() as f64);
        }
    }
}

vectorized! {
    /// Adds the squared deviations from `mean` of each of the rows `rows` to `sum`.
    fn add_squared_deviations<E: Elem>(rows: &[E], mean: &[f64], sum: &mut [f64]) {
        for row in rows.chunks_exact(sum.len()) {
            sum.iter_mut()
                .zip(row.iter().zip(mean))
                .for_each(|(s, (v, m))| *s += (v.to_f32() as f64 - m).powi(2));
        }
    }
}

/// Training-mode forward: normalises with the batch statistics, writes `y`, returns the
/// saved `(mean, invstd)` for backward, and updates the running statistics (the running
/// variance with the unbiased batch variance, as PyTorch does).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_fwd_train<E: Elem>(
    x: &[E],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    params: &BatchNormParams,
    y: &mut [E],
) -> (Vec<f32>, Vec<f32>) {
    let m = x.len() / c;
    let rows = |r: Range<usize>| &x[r.start * c..r.end * c];
    let [sum] = channel_sums(m, c, |r, [sum]| add_values(rows(r), sum));
    let mean: Vec<f64> = sum.into_iter().map(|s| s / m as f64).collect();
    let [sum_sq] = channel_sums(m, c, |r, [sum]| add_squared_deviations(rows(r), &mean, sum));
    let var: Vec<f64> = sum_sq.into_iter().map(|s| s / m as f64).collect();
    let invstd: Vec<f32> = var.iter().map(|&v| (1.0 / (v + params.eps as f64).sqrt()) as f32).collect();
    let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let mom = params.momentum as f64;
    let unbias = if m > 1 { m as f64 / (m - 1) as f64 } else { 1.0 };
    for ch in 0..c {
        running_mean[ch] = ((1.0 - mom) * running_mean[ch] as f64 + mom * mean[ch]) as f32;
        running_var[ch] = ((1.0 - mom) * running_var[ch] as f64 + mom * var[ch] * unbias) as f32;
    }
    batch_norm_normalize(x, c, &mean32, &invstd, gamma, beta, params.relu, y);
    (mean32, invstd)
}

/// Eval-mode forward with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_fwd_eval<E: Elem>(
    x: &[E],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    params: &BatchNormParams,
    y: &mut [E],
) {
    let invstd: Vec<f32> = running_var.iter().map(|&v| 1.0 / (v + params.eps).sqrt()).collect();
    batch_norm_normalize(x, c, running_mean, &invstd, gamma, beta, params.relu, y);
}

/// The normalised value of `x` in a channel, before the ReLU and the rounding to the
/// stored dtype: one formula for the forward and for the ReLU mask recomputed in backward.
#[inline]
fn bn_value(x: f32, mean: f32, invstd: f32, gamma: f32, beta: f32) -> f32 {
    (x - mean) * invstd * gamma + beta
}

/// y = (x − mean)·invstd·γ + β (then ReLU) with given statistics: the forwards' last
/// pass, and the recomputation of a training forward's output from its input and saved
/// statistics (bit for bit the output the forward wrote).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_normalize<E: Elem>(
    x: &[E],
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
    y: &mut [E],
) {
    let affine = Affine { mean: &mean[..c], invstd: &invstd[..c], gamma: &gamma[..c], beta: &beta[..c] };
    y.par_chunks_mut(STATS_CHUNK_ROWS * c)
        .zip(x.par_chunks(STATS_CHUNK_ROWS * c))
        .for_each(|(yc, xc)| normalize_rows(xc, &affine, relu, yc));
}

/// A channel's normalisation, each vector cut to C so that the loops over a row's
/// channels need no bounds checks.
struct Affine<'a> {
    mean: &'a [f32],
    invstd: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
}

vectorized! {
    /// `batch_norm_normalize` on the rows `xc` into `yc`, a row at a time through f32:
    /// FP16 widened and rounded whole (`Elem::as_f32`, `Elem::write_f32`), not element by
    /// element.
    fn normalize_rows<E: Elem>(xc: &[E], a: &Affine<'_>, relu: bool, yc: &mut [E]) {
        let c = a.mean.len();
        let (mut xs, mut ys) = (vec![0.0f32; c], vec![0.0f32; c]);
        for (yr, xr) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
            let xr = &E::as_f32(xr, &mut xs)[..c];
            E::write_f32(yr, &mut ys, |yr| {
                for (ch, y) in yr[..c].iter_mut().enumerate() {
                    let v = bn_value(xr[ch], a.mean[ch], a.invstd[ch], a.gamma[ch], a.beta[ch]);
                    *y = if relu { v.max(0.0) } else { v };
                }
            });
        }
    }
}

/// Where the gradient of a fused ReLU is masked from.
#[derive(Clone, Copy)]
enum ReluMask<'a, E> {
    /// No ReLU was fused.
    None,
    /// The forward's stored output: zero where the ReLU clipped.
    Output(&'a [E]),
    /// Recomputed from x with β (and γ, the statistics): the value the stored output was
    /// rounded from, compared with the largest that rounds to E's zero, so that the mask
    /// is the one `Output` would give.
    FromInput { beta: &'a [f32] },
}

/// Backward of the training-mode forward. `y` is the forward output, needed only when
/// the ReLU was fused (it masks `dy`). Writes `dx`, returns `(dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_bwd<E: Elem>(
    dy: &[E],
    x: &[E],
    c: usize,
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    relu_y: Option<&[E]>,
    dx: &mut [E],
) -> (Vec<f32>, Vec<f32>) {
    let mask = relu_y.map_or(ReluMask::None, ReluMask::Output);
    bwd(dy, x, c, gamma, mean, invstd, mask, dx)
}

/// Backward of a training-mode forward with a fused ReLU, its mask recomputed from the
/// input `x` (the forward's output need not be kept): the same `dx`, dγ, dβ as
/// `batch_norm_bwd` given that output.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_relu_bwd<E: Elem>(
    dy: &[E],
    x: &[E],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    dx: &mut [E],
) -> (Vec<f32>, Vec<f32>) {
    bwd(dy, x, c, gamma, mean, invstd, ReluMask::FromInput { beta }, dx)
}

#[allow(clippy::too_many_arguments)]
fn bwd<E: Elem>(
    dy: &[E],
    x: &[E],
    c: usize,
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    mask: ReluMask<'_, E>,
    dx: &mut [E],
) -> (Vec<f32>, Vec<f32>) {
    let m = x.len() / c;
    // Vectors cut to C, so that the loops over a row's channels need no bounds checks.
    let (gamma, mean, invstd) = (&gamma[..c], &mean[..c], &invstd[..c]);
    let grad = Grad { dy, x, c, gamma, mean, invstd, mask };
    // Two passes over memory: dβ and dγ together, then dx; the gradient reaching the
    // normalisation is recomputed per row in each rather than stored.
    let [dbeta, dgamma] = channel_sums(m, c, |rows, [db, dg]| add_grad_sums(&grad, rows, db, dg));
    let (db32, dg32): (Vec<f32>, Vec<f32>) =
        dbeta.iter().zip(&dgamma).map(|(&b, &g)| ((b / m as f64) as f32, (g / m as f64) as f32)).unzip();
    let means = [&db32[..c], &dg32[..c]];
    dx.par_chunks_mut(STATS_CHUNK_ROWS * c)
        .enumerate()
        .for_each(|(chunk, dxc)| write_dx(&grad, chunk * STATS_CHUNK_ROWS, means, dxc));
    (dgamma.iter().map(|&v| v as f32).collect(), dbeta.iter().map(|&v| v as f32).collect())
}

vectorized! {
    /// Adds the rows `rows` of the gradient reaching the normalisation to `db` (Σg) and
    /// of its product with x̂ to `dg` (Σg·x̂).
    fn add_grad_sums<E: Elem>(grad: &Grad<'_, E>, rows: Range<usize>, db: &mut [f64], dg: &mut [f64]) {
        let (c, mean, invstd) = (grad.c, grad.mean, grad.invstd);
        let mut row = Row::new(c);
        for r in rows {
            let (g, x) = grad.row(r, &mut row);
            let (db, dg) = (&mut db[..c], &mut dg[..c]);
            for ch in 0..c {
                db[ch] += g[ch] as f64;
                dg[ch] += g[ch] as f64 * ((x[ch] - mean[ch]) * invstd[ch]) as f64;
            }
        }
    }
}

vectorized! {
    /// The input gradient of the rows from `first` on into `dxc`, given the means of Σg
    /// and Σg·x̂ (`[dβ/M, dγ/M]`).
    fn write_dx<E: Elem>(grad: &Grad<'_, E>, first: usize, means: [&[f32]; 2], dxc: &mut [E]) {
        let (c, gamma, mean, invstd) = (grad.c, grad.gamma, grad.mean, grad.invstd);
        let (db, dg) = (&means[0][..c], &means[1][..c]);
        let (mut row, mut out) = (Row::new(c), vec![0.0f32; c]);
        for (i, dr) in dxc.chunks_exact_mut(c).enumerate() {
            let (g, x) = grad.row(first + i, &mut row);
            E::write_f32(dr, &mut out, |dr| {
                for (ch, d) in dr[..c].iter_mut().enumerate() {
                    let xhat = (x[ch] - mean[ch]) * invstd[ch];
                    *d = gamma[ch] * invstd[ch] * (g[ch] - db[ch] - xhat * dg[ch]);
                }
            });
        }
    }
}

/// The gradient reaching the normalisation in backward: dy, zeroed where the fused ReLU
/// clipped.
struct Grad<'a, E> {
    dy: &'a [E],
    x: &'a [E],
    c: usize,
    gamma: &'a [f32],
    mean: &'a [f32],
    invstd: &'a [f32],
    mask: ReluMask<'a, E>,
}

/// Scratch for one row of backward in f32: the gradient reaching the normalisation, and
/// x where it is FP16.
struct Row {
    g: Vec<f32>,
    x: Vec<f32>,
}

impl Row {
    fn new(c: usize) -> Self {
        Row { g: vec![0.0; c], x: vec![0.0; c] }
    }
}

impl<E: Elem> Grad<'_, E> {
    /// Row `row` (C channels) as f32: the gradient reaching the normalisation and x. The
    /// row's dy and x are widened whole (`Elem::as_f32`), then the mask zeroes the
    /// clipped channels.
    #[inline(always)]
    fn row<'r>(&'r self, row: usize, scratch: &'r mut Row) -> (&'r [f32], &'r [f32]) {
        let c = self.c;
        let at = row * c..(row + 1) * c;
        let g = &mut scratch.g[..c];
        g.copy_from_slice(&E::as_f32(&self.dy[at.clone()], &mut scratch.x)[..c]);
        let x = &E::as_f32(&self.x[at.clone()], &mut scratch.x)[..c];
        match self.mask {
            ReluMask::None => {}
            ReluMask::Output(y) => {
                for (g, v) in g.iter_mut().zip(&y[at]) {
                    *g = if v.to_f32() > 0.0 { *g } else { 0.0 };
                }
            }
            // The stored output would be positive exactly where the value before its
            // rounding is above the largest that rounds to zero.
            ReluMask::FromInput { beta } => {
                let (mean, invstd, gamma, beta) =
                    (&self.mean[..c], &self.invstd[..c], &self.gamma[..c], &beta[..c]);
                for ch in 0..c {
                    let v = bn_value(x[ch], mean[ch], invstd[ch], gamma[ch], beta[ch]);
                    g[ch] = if v > E::LARGEST_ROUNDED_TO_ZERO { g[ch] } else { 0.0 };
                }
            }
        }
        (g, x)
    }
}
