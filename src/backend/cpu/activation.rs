//! Activations beyond ReLU, forward only, for the MTCNN face detector: PReLU with one
//! slope per channel, a per-channel bias, and softmax over the channels of each row.
//! Channels are the last (fastest) dimension, as everywhere in dfengine (NHWC, [N, C]).

use rayon::prelude::*;

/// Rows per rayon task: a P-Net pyramid level has ~10⁵ rows of 10–32 channels.
const ROWS_PER_TASK: usize = 4096;

/// y = x + bias[c] for each row of `c` channels, in place.
pub fn bias_add(y: &mut [f32], bias: &[f32]) {
    let c = bias.len();
    y.par_chunks_mut(c * ROWS_PER_TASK).for_each(|block| {
        for row in block.chunks_exact_mut(c) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    });
}

/// PReLU in place (PyTorch's `nn.PReLU(C)`): y = x for x ≥ 0, alpha[c]·x below.
pub fn prelu(y: &mut [f32], alpha: &[f32]) {
    let c = alpha.len();
    y.par_chunks_mut(c * ROWS_PER_TASK).for_each(|block| {
        for row in block.chunks_exact_mut(c) {
            // A select rather than a branch, so that the row vectorises.
            row.iter_mut().zip(alpha).for_each(|(v, a)| *v = if *v < 0.0 { *v * a } else { *v });
        }
    });
}

/// Softmax over each row of `x` [rows, c] into `y`: exp(x − max) / Σ exp(x − max).
pub fn softmax_rows(x: &[f32], c: usize, y: &mut [f32]) {
    y.par_chunks_mut(c * ROWS_PER_TASK).zip(x.par_chunks(c * ROWS_PER_TASK)).for_each(|(yb, xb)| {
        for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
            let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v - m).exp();
                sum += *o;
            }
            yr.iter_mut().for_each(|o| *o /= sum);
        }
    });
}
