//! Elementwise ops on the CPU: ReLU, add, scale, fill, casts, sigmoid. ReLU and add run
//! on FP32 or FP16 elements (`Elem`: FP32 arithmetic, rounded to nearest even on store).

use half::f16;
use rayon::prelude::*;

use super::storage::Elem;

/// Below this many elements a single thread beats rayon's fork/join.
const PAR_MIN: usize = 1 << 15;

fn map_into<X: Elem, Y: Elem>(x: &[X], y: &mut [Y], f: impl Fn(f32) -> f32 + Sync + Send) {
    let f = |o: &mut Y, v: &X| *o = Y::from_f32(f(v.to_f32()));
    if x.len() < PAR_MIN {
        y.iter_mut().zip(x).for_each(|(o, v)| f(o, v));
    } else {
        y.par_iter_mut().zip(x.par_iter()).for_each(|(o, v)| f(o, v));
    }
}

fn update<E: Elem>(y: &mut [E], x: &[E], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    let f = |o: &mut E, v: &E| *o = E::from_f32(f(o.to_f32(), v.to_f32()));
    if x.len() < PAR_MIN {
        y.iter_mut().zip(x).for_each(|(o, v)| f(o, v));
    } else {
        y.par_iter_mut().zip(x.par_iter()).for_each(|(o, v)| f(o, v));
    }
}

pub fn relu_fwd<E: Elem>(x: &[E], y: &mut [E]) {
    map_into(x, y, |v| v.max(0.0));
}

/// dx = dy where the forward output y was positive, else 0 (y = 0 counts as clipped).
pub fn relu_bwd<E: Elem>(dy: &[E], y: &[E], dx: &mut [E]) {
    dx.copy_from_slice(dy);
    update(dx, y, |d, v| if v > 0.0 { d } else { 0.0 });
}

/// y += x (residual add; also gradient accumulation), rounded once to y's type.
pub fn add_assign<E: Elem>(y: &mut [E], x: &[E]) {
    update(y, x, |a, b| a + b);
}

pub fn scale(y: &mut [f32], alpha: f32) {
    if y.len() < PAR_MIN {
        y.iter_mut().for_each(|v| *v *= alpha);
    } else {
        y.par_iter_mut().for_each(|v| *v *= alpha);
    }
}

pub fn fill(y: &mut [f32], value: f32) {
    y.fill(value);
}

pub fn sigmoid(x: &[f32], y: &mut [f32]) {
    map_into(x, y, sigmoid_scalar);
}

/// 1 / (1 + e^−x), without overflow for large |x|.
pub fn sigmoid_scalar(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Round to nearest even, as `__float2half_rn`; out-of-range values become ±inf.
pub fn cast_f32_f16(x: &[f32], y: &mut [f16]) {
    y.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = f16::from_f32(v));
}

pub fn cast_f16_f32(x: &[f16], y: &mut [f32]) {
    y.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = v.to_f32());
}
