//! conv2d on the CPU: forward, grad-input (dgrad) and grad-weight (wgrad), NHWC × KRSC.
//!
//! Each image is lowered to its im2col matrix `col` [P·Q, R·S·C] (one row per output
//! pixel, the R×S×C window it sees, zeros where it hangs over the padding) and the
//! convolution becomes a GEMM against the weights seen as [K, R·S·C]:
//!   forward  y_n [PQ, K]   = col_n · Wᵀ
//!   dgrad    dcol [PQ, RSC] = dy_n · W, then col2im adds each row back to its pixels
//!   wgrad    dW [K, RSC]   = Σ_n dy_nᵀ · col_n
//! 1×1, stride-1, unpadded convolutions skip the lowering: `col` is the input itself.
//! Images run in parallel (rayon); wgrad sums fixed chunks of images and adds the chunk
//! results in order, so the result does not depend on the thread count.
//!
//! Activations are FP32 or FP16 (`Elem`), the filter FP32 (an FP16 filter is widened by
//! the caller, once): each image is widened to f32 on its own, multiplied in f32, and an
//! FP16 output rounded once at the end, as the tensor-core kernels accumulate in FP32.

use rayon::prelude::*;

use super::gemm::{MatRef, gemm};
use super::storage::Elem;
use crate::backend::params::Conv2dGeom;

/// wgrad splits the batch into this many chunks at most (partial sums held at once).
const WGRAD_CHUNKS: usize = 8;

fn is_pointwise(g: &Conv2dGeom) -> bool {
    g.r == 1 && g.s == 1 && g.stride == [1, 1] && g.pad == [0, 0]
}

/// Writes image `x_n` [H, W, C] lowered to `col` [P·Q, R·S·C].
fn im2col(g: &Conv2dGeom, x_n: &[f32], col: &mut [f32]) {
    let rsc = g.r * g.s * g.c;
    col.par_chunks_mut(g.q * rsc).enumerate().for_each(|(p, rows)| {
        for q in 0..g.q {
            let row = &mut rows[q * rsc..(q + 1) * rsc];
            for r in 0..g.r {
                let h = (p * g.stride[0] + r) as isize - g.pad[0] as isize;
                for s in 0..g.s {
                    let w = (q * g.stride[1] + s) as isize - g.pad[1] as isize;
                    let dst = &mut row[(r * g.s + s) * g.c..(r * g.s + s + 1) * g.c];
                    if h < 0 || h >= g.h as isize || w < 0 || w >= g.w as isize {
                        dst.fill(0.0);
                    } else {
                        let at = (h as usize * g.w + w as usize) * g.c;
                        dst.copy_from_slice(&x_n[at..at + g.c]);
                    }
                }
            }
        }
    });
}

/// Adds `dcol` [P·Q, R·S·C] back onto image `dx_n` [H, W, C] (which it overwrites).
fn col2im(g: &Conv2dGeom, dcol: &[f32], dx_n: &mut [f32]) {
    dx_n.fill(0.0);
    let rsc = g.r * g.s * g.c;
    for p in 0..g.p {
        for q in 0..g.q {
            let row = &dcol[(p * g.q + q) * rsc..(p * g.q + q + 1) * rsc];
            for r in 0..g.r {
                let h = (p * g.stride[0] + r) as isize - g.pad[0] as isize;
                if h < 0 || h >= g.h as isize {
                    continue;
                }
                for s in 0..g.s {
                    let w = (q * g.stride[1] + s) as isize - g.pad[1] as isize;
                    if w < 0 || w >= g.w as isize {
                        continue;
                    }
                    let at = (h as usize * g.w + w as usize) * g.c;
                    let src = &row[(r * g.s + s) * g.c..(r * g.s + s + 1) * g.c];
                    dx_n[at..at + g.c].iter_mut().zip(src).for_each(|(d, v)| *d += v);
                }
            }
        }
    }
}

/// y [N, P, Q, K] = conv(x [N, H, W, C], w [K, R, S, C]).
pub fn conv2d_fwd<E: Elem>(g: &Conv2dGeom, x: &[E], w: &[f32], y: &mut [E]) {
    let (hwc, pq, rsc) = (g.h * g.w * g.c, g.p * g.q, g.r * g.s * g.c);
    let wt = MatRef::row_major(w, g.k, rsc).t();
    y.par_chunks_mut(pq * g.k).zip(x.par_chunks(hwc)).for_each(|(y_n, x_n)| {
        let x_n = E::widen(x_n);
        E::through_f32(y_n, |y_n| {
            if is_pointwise(g) {
                gemm(1.0, MatRef::row_major(&x_n, pq, rsc), wt, 0.0, y_n);
            } else {
                let mut col = vec![0.0; pq * rsc];
                im2col(g, &x_n, &mut col);
                gemm(1.0, MatRef::row_major(&col, pq, rsc), wt, 0.0, y_n);
            }
        });
    });
}

/// dx [N, H, W, C] = ∂(Σ y·dy)/∂x for y = conv(x, w).
pub fn conv2d_dgrad<E: Elem>(g: &Conv2dGeom, dy: &[E], w: &[f32], dx: &mut [E]) {
    let (hwc, pq, rsc) = (g.h * g.w * g.c, g.p * g.q, g.r * g.s * g.c);
    let wm = MatRef::row_major(w, g.k, rsc);
    dx.par_chunks_mut(hwc).zip(dy.par_chunks(pq * g.k)).for_each(|(dx_n, dy_n)| {
        let dy_n = E::widen(dy_n);
        let dy_m = MatRef::row_major(&dy_n, pq, g.k);
        E::through_f32(dx_n, |dx_n| {
            if is_pointwise(g) {
                gemm(1.0, dy_m, wm, 0.0, dx_n);
            } else {
                let mut dcol = vec![0.0; pq * rsc];
                gemm(1.0, dy_m, wm, 0.0, &mut dcol);
                col2im(g, &dcol, dx_n);
            }
        });
    });
}

/// dw [K, R, S, C] = ∂(Σ y·dy)/∂w for y = conv(x, w).
pub fn conv2d_wgrad<E: Elem>(g: &Conv2dGeom, x: &[E], dy: &[E], dw: &mut [f32]) {
    let (hwc, pq, rsc) = (g.h * g.w * g.c, g.p * g.q, g.r * g.s * g.c);
    let per_chunk = g.n.div_ceil(WGRAD_CHUNKS).max(1);
    let partials: Vec<Vec<f32>> = (0..g.n)
        .step_by(per_chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|first| {
            let mut acc = vec![0.0; g.k * rsc];
            let mut col = if is_pointwise(g) { Vec::new() } else { vec![0.0; pq * rsc] };
            for n in first..(first + per_chunk).min(g.n) {
                let x_n = E::widen(&x[n * hwc..(n + 1) * hwc]);
                let dy_n = E::widen(&dy[n * pq * g.k..(n + 1) * pq * g.k]);
                let dy_t = MatRef::row_major(&dy_n, pq, g.k).t();
                let cols = if is_pointwise(g) {
                    &x_n[..]
                } else {
                    im2col(g, &x_n, &mut col);
                    &col
                };
                gemm(1.0, dy_t, MatRef::row_major(cols, pq, rsc), 1.0, &mut acc);
            }
            acc
        })
        .collect();
    dw.fill(0.0);
    for partial in &partials {
        dw.iter_mut().zip(partial).for_each(|(d, p)| *d += p);
    }
}
