//! Optimizer steps on fp32 master weights, and the gradient bookkeeping of mixed
//! precision: unscale with a non-finite check, global norm, clipping.

use rayon::prelude::*;

use super::simd::vectorized;

use crate::backend::params::{AdamWParams, SgdParams};

/// One AdamW step (`step` counts from 1), exactly `torch.optim.AdamW`'s update:
/// p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε).
pub fn adamw_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamWParams, step: u64) {
    let bc1 = 1.0 - (hp.beta1 as f64).powi(step as i32);
    let bc2_sqrt = (1.0 - (hp.beta2 as f64).powi(step as i32)).sqrt();
    let step_size = (hp.lr as f64 / bc1) as f32;
    let decay = 1.0 - hp.lr * hp.weight_decay;
    let (ps, ms, vs) = (p.par_chunks_mut(CHUNK), m.par_chunks_mut(CHUNK), v.par_chunks_mut(CHUNK));
    ps.zip(g.par_chunks(CHUNK))
        .zip(ms)
        .zip(vs)
        .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, hp, [decay, step_size], bc2_sqrt));
}

/// Elements per task of the optimizer steps: each task's loop runs vectorized.
const CHUNK: usize = 1 << 14;

vectorized! {
    /// `adamw_step` on one chunk, given the decay factor and the step size.
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamWParams, factors: [f32; 2], bc2_sqrt: f64) {
        let [decay, step_size] = factors;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *p *= decay;
            *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
            *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
            let denom = (v.sqrt() as f64 / bc2_sqrt) as f32 + hp.eps;
            *p -= step_size * *m / denom;
        }
    }
}

/// One SGD step, `torch.optim.SGD` with dampening 0: g ← g + wd·p; buf ← μ·buf + g
/// (buf = g on the first step); p ← p − lr·(g + μ·buf if Nesterov, else buf).
pub fn sgd_step(p: &mut [f32], g: &[f32], buf: &mut [f32], hp: &SgdParams, first_step: bool) {
    p.par_iter_mut().zip(g.par_iter()).zip(buf.par_iter_mut()).for_each(|((p, &g), b)| {
        let g = g + hp.weight_decay * *p;
        if hp.momentum == 0.0 {
            *p -= hp.lr * g;
            return;
        }
        *b = if first_step { g } else { hp.momentum * *b + g };
        let d = if hp.nesterov { g + hp.momentum * *b } else { *b };
        *p -= hp.lr * d;
    });
}

/// g ← g · inv_scale; returns true when any element is inf or NaN (the step must then
/// be skipped and the loss scale lowered).
pub fn unscale_check(g: &mut [f32], inv_scale: f32) -> bool {
    g.par_iter_mut()
        .map(|v| {
            *v *= inv_scale;
            !v.is_finite()
        })
        .reduce(|| false, |a, b| a | b)
}

/// Σ g² in f64 over fixed chunks, added in order (deterministic).
pub fn sum_squares(g: &[f32]) -> f64 {
    let partials: Vec<f64> =
        g.par_chunks(1 << 14).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
    partials.iter().sum()
}
