//! Pooling on the CPU: max pool (ResNet's 3×3 stride-2 stem pool), global average pool
//! over H×W, and the mean over the T frames of a clip. NHWC throughout. Ceil mode (the
//! MTCNN face detector's pools) is a geometry, not another kernel. FP32 or FP16
//! elements (`Elem`); sums are FP32 (max-pool gradients) or f64 (means), rounded once.

use rayon::prelude::*;

use super::storage::Elem;
use crate::backend::error::{OpError, shape_err};
use crate::backend::params::Pool2dGeom;

/// The geometry of an unpadded max pool in ceil mode (PyTorch's `ceil_mode=True`):
/// P = ⌈(H − window) / stride⌉ + 1, so that the last window may hang over the bottom and
/// right edges and takes the maximum of the cells it covers. `max_pool2d_fwd` runs it
/// as it is, since cells outside the input never win. As in PyTorch, a last window that
/// would start past the input (possible when the window is smaller than the stride) is
/// dropped.
pub fn ceil_mode_geom(x: [usize; 4], window: usize, stride: usize) -> Result<Pool2dGeom, OpError> {
    let [n, h, w, c] = x;
    if window == 0 || stride == 0 || h < window || w < window {
        return Err(shape_err(
            "max_pool2d (ceil mode)",
            format!("window {window} stride {stride} does not fit input {h}×{w}"),
        ));
    }
    let out = |extent: usize| {
        let n = (extent - window).div_ceil(stride) + 1;
        if (n - 1) * stride >= extent { n - 1 } else { n }
    };
    Ok(Pool2dGeom { n, h, w, c, window, stride, pad: 0, p: out(h), q: out(w) })
}

/// The input cell that wins output (p, q, ch) of image `x_n`: the first maximum in
/// window scan order (PyTorch's tie rule). Padded cells never win.
fn argmax<E: Elem>(g: &Pool2dGeom, x_n: &[E], p: usize, q: usize, ch: usize) -> usize {
    let mut best = (usize::MAX, f32::NEG_INFINITY);
    for r in 0..g.window {
        let h = (p * g.stride + r) as isize - g.pad as isize;
        if h < 0 || h >= g.h as isize {
            continue;
        }
        for s in 0..g.window {
            let w = (q * g.stride + s) as isize - g.pad as isize;
            if w < 0 || w >= g.w as isize {
                continue;
            }
            let at = (h as usize * g.w + w as usize) * g.c + ch;
            let v = x_n[at].to_f32();
            // NaN wins, as in PyTorch, so that it propagates instead of vanishing.
            if best.0 == usize::MAX || v > best.1 || v.is_nan() {
                best = (at, v);
            }
        }
    }
    best.0
}

pub fn max_pool2d_fwd<E: Elem>(g: &Pool2dGeom, x: &[E], y: &mut [E]) {
    let (hwc, pqc) = (g.h * g.w * g.c, g.p * g.q * g.c);
    y.par_chunks_mut(pqc).zip(x.par_chunks(hwc)).for_each(|(y_n, x_n)| {
        for (i, out) in y_n.iter_mut().enumerate() {
            let (p, q, ch) = (i / (g.q * g.c), (i / g.c) % g.q, i % g.c);
            *out = x_n[argmax(g, x_n, p, q, ch)];
        }
    });
}

/// Routes each output gradient to the input cell that won the forward window; a cell
/// that won several windows sums their gradients in output order (FP32), rounded once.
pub fn max_pool2d_bwd<E: Elem>(g: &Pool2dGeom, x: &[E], dy: &[E], dx: &mut [E]) {
    let (hwc, pqc) = (g.h * g.w * g.c, g.p * g.q * g.c);
    dx.par_chunks_mut(hwc).zip(x.par_chunks(hwc)).zip(dy.par_chunks(pqc)).for_each(|((dx_n, x_n), dy_n)| {
        let mut acc = vec![0.0f32; hwc];
        for (i, d) in dy_n.iter().enumerate() {
            let (p, q, ch) = (i / (g.q * g.c), (i / g.c) % g.q, i % g.c);
            acc[argmax(g, x_n, p, q, ch)] += d.to_f32();
        }
        dx_n.iter_mut().zip(&acc).for_each(|(o, &v)| *o = E::from_f32(v));
    });
}

/// Mean over the `group` consecutive rows of each block of `x` [N·group, C] → y [N, C].
/// Global average pool is `group = H·W`; the temporal mean over a clip is `group = T`.
pub fn mean_rows<E: Elem>(x: &[E], group: usize, c: usize, y: &mut [E]) {
    let inv = 1.0 / group as f64;
    y.par_chunks_mut(c).zip(x.par_chunks(group * c)).for_each(|(y_n, x_n)| {
        let mut acc = vec![0.0f64; c];
        for row in x_n.chunks_exact(c) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v.to_f32() as f64);
        }
        y_n.iter_mut().zip(&acc).for_each(|(o, &a)| *o = E::from_f32((a * inv) as f32));
    });
}

/// Backward of `mean_rows`: each of the `group` rows gets dy / group.
pub fn mean_rows_bwd<E: Elem>(dy: &[E], group: usize, c: usize, dx: &mut [E]) {
    let inv = 1.0 / group as f32;
    dx.par_chunks_mut(group * c).zip(dy.par_chunks(c)).for_each(|(dx_n, dy_n)| {
        for row in dx_n.chunks_exact_mut(c) {
            row.iter_mut().zip(dy_n).for_each(|(o, d)| *o = E::from_f32(d.to_f32() * inv));
        }
    });
}
