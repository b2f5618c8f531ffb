//! Pooling on the CPU: max pool (ResNet's 3×3 stride-2 stem pool), global average pool
//! over H×W, and the mean over the T frames of a clip. NHWC throughout. Ceil mode (the
//! MTCNN face detector's pools) is a geometry (`Pool2dGeom::ceil_mode`), not another
//! kernel. FP32 or FP16 elements (`Elem`); sums are FP32 (max-pool gradients) or f64
//! (means), rounded once.

use rayon::prelude::*;

use super::storage::Elem;
use super::window::Taps;
use crate::backend::params::Pool2dGeom;

/// The winners of one output pixel's window, per channel: the maximum and the flat input
/// index holding it (what the backward routes its gradient to). Channels are innermost
/// (NHWC), so each cell's C values are compared as one contiguous run, with no index
/// arithmetic per element.
struct Winners {
    value: Vec<f32>,
    index: Vec<usize>,
}

impl Winners {
    fn new(c: usize) -> Self {
        Winners { value: vec![0.0; c], index: vec![0; c] }
    }

    /// Finds the winners of output pixel (p, q) of image `x_n`: the first maximum in
    /// window scan order (PyTorch's tie rule). Padded cells never win; every window of a
    /// valid geometry (pad < window) covers at least one input cell.
    fn find<E: Elem>(&mut self, g: &Pool2dGeom, x_n: &[E], p: usize, q: usize) {
        let cols = Taps::of(q, g.stride, g.pad, g.window, g.w).inputs();
        let mut first = true;
        for h in Taps::of(p, g.stride, g.pad, g.window, g.h).inputs() {
            for w in cols.clone() {
                let at = (h * g.w + w) * g.c;
                let cell = x_n[at..at + g.c].iter().zip(self.value.iter_mut().zip(&mut self.index));
                for (ch, (v, (best, index))) in cell.enumerate() {
                    let v = v.to_f32();
                    // NaN wins, as in PyTorch, so that it propagates instead of vanishing.
                    // Selects rather than a branch, so that the channel run vectorises.
                    let take = first || v > *best || v.is_nan();
                    *best = if take { v } else { *best };
                    *index = if take { at + ch } else { *index };
                }
                first = false;
            }
        }
    }
}

/// The forward keeps values only, by the rules `Winners` applies (the first maximum in
/// scan order; NaN wins), and splits the work by output row rather than by image: the
/// face detector pools one large pyramid level at a time (it was 27% of its CPU time when
/// each window carried its winners' indices and one thread took the whole image).
pub fn max_pool2d_fwd<E: Elem>(g: &Pool2dGeom, x: &[E], y: &mut [E]) {
    let (hwc, qc) = (g.h * g.w * g.c, g.q * g.c);
    if qc == 0 {
        return;
    }
    y.par_chunks_mut(qc).enumerate().for_each(|(row, y_row)| {
        let (n, p) = (row / g.p, row % g.p);
        let x_n = &x[n * hwc..(n + 1) * hwc];
        let rows = Taps::of(p, g.stride, g.pad, g.window, g.h).inputs();
        for (q, out) in y_row.chunks_exact_mut(g.c).enumerate() {
            let cols = Taps::of(q, g.stride, g.pad, g.window, g.w).inputs();
            let mut cells = rows.clone().flat_map(|h| cols.clone().map(move |w| (h * g.w + w) * g.c));
            let Some(first) = cells.next() else { continue };
            out.copy_from_slice(&x_n[first..first + g.c]);
            for at in cells {
                // A select rather than a branch, so that the channel run vectorises.
                for (o, v) in out.iter_mut().zip(&x_n[at..at + g.c]) {
                    let v32 = v.to_f32();
                    *o = if v32 > o.to_f32() || v32.is_nan() { *v } else { *o };
                }
            }
        }
    });
}

/// Routes each output gradient to the input cell that won the forward window; a cell
/// that won several windows sums their gradients in output order (FP32), rounded once.
pub fn max_pool2d_bwd<E: Elem>(g: &Pool2dGeom, x: &[E], dy: &[E], dx: &mut [E]) {
    let (hwc, pqc) = (g.h * g.w * g.c, g.p * g.q * g.c);
    dx.par_chunks_mut(hwc).zip(x.par_chunks(hwc)).zip(dy.par_chunks(pqc)).for_each(|((dx_n, x_n), dy_n)| {
        let mut winners = Winners::new(g.c);
        E::through_f32(dx_n, |acc| {
            acc.fill(0.0);
            for (pq, d) in dy_n.chunks_exact(g.c).enumerate() {
                winners.find(g, x_n, pq / g.q, pq % g.q);
                winners.index.iter().zip(d).for_each(|(&at, d)| acc[at] += d.to_f32());
            }
        });
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
