//! The shape checks every backend makes before an op runs, so that a mistake in model
//! code gets the same error — naming the op, the argument and the shapes — on any device.

use std::sync::Arc;

use super::error::{OpError, shape_err};
use super::ops::BnSaved;
use crate::tensor::{Shape, Tensor};

/// The storage of a tensor an op updates in place, which must not be shared.
pub fn exclusive<'a, B>(
    op: &'static str,
    name: &str,
    t: &'a mut Tensor<Arc<B>>,
) -> Result<&'a mut B, OpError> {
    Arc::get_mut(t.storage_mut()).ok_or_else(|| {
        shape_err(op, format!("{name} is shared with another tensor and cannot be updated in place"))
    })
}

pub fn dims<const R: usize, S>(op: &'static str, name: &str, t: &Tensor<S>) -> Result<[usize; R], OpError> {
    t.shape().as_array().ok_or_else(|| shape_err(op, format!("{name} must have rank {R}, got {}", t.shape())))
}

pub fn same_shape<S>(op: &'static str, a: (&str, &Tensor<S>), b: (&str, &Tensor<S>)) -> Result<(), OpError> {
    if a.1.shape() != b.1.shape() {
        return Err(shape_err(op, format!("{} {} and {} {} must match", a.0, a.1.shape(), b.0, b.1.shape())));
    }
    Ok(())
}

/// `t` must have exactly `expected` dims (a gradient matching its forward output).
pub fn expect_dims<S>(
    op: &'static str,
    name: &str,
    t: &Tensor<S>,
    expected: &[usize],
) -> Result<(), OpError> {
    if t.dims() != expected {
        return Err(shape_err(op, format!("{name} must be {}, got {}", Shape::from(expected), t.shape())));
    }
    Ok(())
}

/// The channel count of an activation (its last dimension) and the rows before it.
pub fn rows_channels<S>(op: &'static str, x: &Tensor<S>) -> Result<(usize, usize), OpError> {
    let c = *x.dims().last().ok_or_else(|| shape_err(op, "input is a scalar"))?;
    if c == 0 {
        return Err(shape_err(op, format!("input {} has no channels", x.shape())));
    }
    Ok((x.numel() / c, c))
}

/// [B·T, C] splits into clips of `t` frames.
pub fn clips(op: &'static str, bt: usize, t: usize) -> Result<usize, OpError> {
    if t == 0 || bt % t != 0 {
        return Err(shape_err(op, format!("{bt} frames do not split into clips of {t}")));
    }
    Ok(bt / t)
}

/// (n, in, out) of a linear layer: x [n, in], w [out, in], b [out].
pub fn linear<S>(x: &Tensor<S>, w: &Tensor<S>, b: &Tensor<S>) -> Result<(usize, usize, usize), OpError> {
    let [n, fin] = dims("linear", "x", x)?;
    let [fout, win] = dims("linear", "w", w)?;
    if win != fin {
        return Err(shape_err("linear", format!("x {} and w {}: in-features differ", x.shape(), w.shape())));
    }
    expect_dims("linear", "b", b, &[fout])?;
    Ok((n, fin, fout))
}

/// (n, in, out) of a linear layer's backward, dy [n, out] checked against x and w.
pub fn linear_bwd<S>(dy: &Tensor<S>, x: &Tensor<S>, w: &Tensor<S>) -> Result<(usize, usize, usize), OpError> {
    let [n, fin] = dims("linear_bwd", "x", x)?;
    let [fout, _] = dims("linear_bwd", "w", w)?;
    expect_dims("linear_bwd", "dy", dy, &[n, fout])?;
    Ok((n, fin, fout))
}

/// The channels of a batch norm over `x`, its per-channel vectors checked.
pub fn batch_norm<S>(
    op: &'static str,
    x: &Tensor<S>,
    vectors: &[(&str, &Tensor<S>)],
) -> Result<usize, OpError> {
    let (_, c) = rows_channels(op, x)?;
    for (name, t) in vectors {
        expect_dims(op, name, t, &[c])?;
    }
    Ok(c)
}

/// The channels of a batch norm's backward, every argument checked against x.
pub fn batch_norm_bwd<S>(
    dy: &Tensor<S>,
    x: &Tensor<S>,
    gamma: &Tensor<S>,
    saved: &BnSaved<Tensor<S>>,
    relu_y: Option<&Tensor<S>>,
) -> Result<usize, OpError> {
    let op = "batch_norm_bwd";
    same_shape(op, ("dy", dy), ("x", x))?;
    if let Some(y) = relu_y {
        same_shape(op, ("relu_y", y), ("x", x))?;
    }
    batch_norm(op, x, &[("gamma", gamma), ("mean", &saved.mean), ("invstd", &saved.invstd)])
}
