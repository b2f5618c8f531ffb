//! Elementwise ops on the CPU: ReLU, add, scale, fill, casts, sigmoid. ReLU and add run
//! on FP32 or FP16 elements (`Elem`: FP32 arithmetic, rounded to nearest even on store).

use half::f16;
use rayon::prelude::*;

use super::simd::vectorized;
use super::storage::Elem;

/// Below this many elements a single thread beats rayon's fork/join.
const PAR_MIN: usize = 1 << 15;

/// Elements converted at a time where they are FP16: widened into f32 and the results
/// rounded back a block at a time (`Elem::as_f32`, `Elem::write_f32`: F16C eight at once)
/// rather than one by one, which left the conversions unvectorised (the residual add and
/// the ReLUs took 5% of a ResNet-18 FP16 "lean" step on the CPU, perf).
const BLOCK: usize = 1024;

/// Runs `block` on `y` and `x` cut into matching blocks of `BLOCK` elements, on the pool
/// when they are large.
fn blocks<Y: Send, X: Sync>(y: &mut [Y], x: &[X], block: impl Fn(&mut [Y], &[X]) + Sync + Send) {
    if x.len() < PAR_MIN {
        y.chunks_mut(BLOCK).zip(x.chunks(BLOCK)).for_each(|(y, x)| block(y, x));
    } else {
        y.par_chunks_mut(BLOCK).zip(x.par_chunks(BLOCK)).for_each(|(y, x)| block(y, x));
    }
}

vectorized! {
    /// y = f(x), a block at a time. (The block closure is defined in the vectorized body,
    /// so it is compiled for the same instruction set wherever rayon runs it.)
    fn map_into<X: Elem, Y: Elem>(x: &[X], y: &mut [Y], f: impl Fn(f32) -> f32 + Sync + Send) {
        blocks(y, x, |y, x| {
            let mut scratch = [[0.0f32; BLOCK]; 2];
            let [xs, ys] = &mut scratch;
            let x = X::as_f32(x, &mut xs[..x.len()]);
            Y::write_f32(y, &mut ys[..x.len()], |y| y.iter_mut().zip(x).for_each(|(o, v)| *o = f(*v)));
        });
    }
}

vectorized! {
    /// y = f(y, x), a block at a time.
    fn update<E: Elem>(y: &mut [E], x: &[E], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
        blocks(y, x, |y, x| {
            let mut scratch = [[0.0f32; BLOCK]; 2];
            let [xs, ys] = &mut scratch;
            let x = E::as_f32(x, &mut xs[..x.len()]);
            E::update_f32(y, &mut ys[..x.len()], |y| y.iter_mut().zip(x).for_each(|(o, v)| *o = f(*o, *v)));
        });
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
