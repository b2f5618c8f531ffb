//! Binary cross-entropy with logits on the CPU, mean over the batch, forward and backward.
//!
//! With p = pos_weight and y the (smoothed) target:
//!   loss = p·y·softplus(−x) + (1−y)·softplus(x)
//!   ∂loss/∂x = (1−y)·σ(x) − p·y·σ(−x)
//! softplus(z) = max(z, 0) + log1p(e^−|z|) never overflows; that is PyTorch's form too.

use super::eltwise::sigmoid_scalar;
use crate::backend::params::BceParams;

fn softplus(z: f32) -> f64 {
    z.max(0.0) as f64 + (-(z.abs() as f64)).exp().ln_1p()
}

fn smoothed(y: f32, p: &BceParams) -> f32 {
    y * (1.0 - p.label_smoothing) + 0.5 * p.label_smoothing
}

pub fn bce_with_logits_fwd(logits: &[f32], targets: &[f32], p: &BceParams) -> f32 {
    if logits.is_empty() {
        return 0.0;
    }
    let sum: f64 = logits
        .iter()
        .zip(targets)
        .map(|(&x, &t)| {
            let y = smoothed(t, p) as f64;
            p.pos_weight as f64 * y * softplus(-x) + (1.0 - y) * softplus(x)
        })
        .sum();
    (sum / logits.len() as f64) as f32
}

/// grad = scale · ∂(mean loss)/∂logits; `scale` carries the mixed-precision loss scale.
pub fn bce_with_logits_bwd(logits: &[f32], targets: &[f32], p: &BceParams, scale: f32, grad: &mut [f32]) {
    let k = scale / logits.len() as f32;
    for ((g, &x), &t) in grad.iter_mut().zip(logits).zip(targets) {
        let y = smoothed(t, p);
        *g = k * ((1.0 - y) * sigmoid_scalar(x) - p.pos_weight * y * sigmoid_scalar(-x));
    }
}
