//! The checks every op makes before a backend runs it, written once: shapes, dtypes and
//! exclusivity, so that a mistake in model code gets the same error — naming the op, the
//! argument and the shapes — on any device. Each check returns what the backend needs
//! next (the geometry, the channel count), so a backend never re-derives it.

use std::sync::Arc;

use super::error::{OpError, dtype_err, shape_err};
use super::ops::{BnSaved, GemmGeom, LinearGeom, Storage};
use super::params::{Conv2dGeom, Pool2dGeom};
use crate::tensor::{DType, Shape, Tensor};

/// A tensor an op updates in place must not be shared.
pub fn exclusive<S: Storage>(op: &'static str, name: &str, t: &mut Tensor<S>) -> Result<(), OpError> {
    if !t.storage_mut().is_unique() {
        return Err(shape_err(
            op,
            format!("{name} is shared with another tensor and cannot be updated in place"),
        ));
    }
    Ok(())
}

/// The storage of a tensor the checks found exclusive (or that the backend just made).
pub fn unique<X>(t: &mut Tensor<Arc<X>>) -> &mut X {
    Arc::get_mut(t.storage_mut()).expect("checked exclusive by Backend, or freshly allocated")
}

/// `shape` must hold `len` elements.
pub fn element_count(op: &'static str, shape: &Shape, len: usize) -> Result<(), OpError> {
    if shape.numel() != len {
        return Err(shape_err(op, format!("{} needs {} elements, got {len}", shape, shape.numel())));
    }
    Ok(())
}

pub fn dims<const R: usize, S>(op: &'static str, name: &str, t: &Tensor<S>) -> Result<[usize; R], OpError> {
    t.shape().as_array().ok_or_else(|| shape_err(op, format!("{name} must have rank {R}, got {}", t.shape())))
}

pub fn dtype<S>(op: &'static str, name: &str, t: &Tensor<S>, want: DType) -> Result<(), OpError> {
    if t.dtype() != want {
        return Err(dtype_err(op, format!("{name} {} must be {want}, got {}", t.shape(), t.dtype())));
    }
    Ok(())
}

pub fn same_dtype<S>(op: &'static str, a: (&str, &Tensor<S>), b: (&str, &Tensor<S>)) -> Result<(), OpError> {
    if a.1.dtype() != b.1.dtype() {
        return Err(dtype_err(
            op,
            format!("{} is {} but {} is {}: they must be of one dtype", a.0, a.1.dtype(), b.0, b.1.dtype()),
        ));
    }
    Ok(())
}

pub fn same_shape<S>(op: &'static str, a: (&str, &Tensor<S>), b: (&str, &Tensor<S>)) -> Result<(), OpError> {
    if a.1.shape() != b.1.shape() {
        return Err(shape_err(op, format!("{} {} and {} {} must match", a.0, a.1.shape(), b.0, b.1.shape())));
    }
    Ok(())
}

pub fn same_shape_dtype<S>(
    op: &'static str,
    a: (&str, &Tensor<S>),
    b: (&str, &Tensor<S>),
) -> Result<(), OpError> {
    same_shape(op, a, b)?;
    same_dtype(op, a, b)
}

/// Two FP32 tensors of one shape (the loss's logits and targets).
pub fn f32_pair<S>(op: &'static str, a: (&str, &Tensor<S>), b: (&str, &Tensor<S>)) -> Result<(), OpError> {
    same_shape(op, a, b)?;
    dtype(op, a.0, a.1, DType::F32)?;
    dtype(op, b.0, b.1, DType::F32)
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
    if t == 0 || !bt.is_multiple_of(t) {
        return Err(shape_err(op, format!("{bt} frames do not split into clips of {t}")));
    }
    Ok(bt / t)
}

/// c = α·op(a)·op(b) + β·c, all 2-D and FP32.
pub fn gemm<S>(
    a: &Tensor<S>,
    trans_a: bool,
    b: &Tensor<S>,
    trans_b: bool,
    c: &Tensor<S>,
) -> Result<GemmGeom, OpError> {
    let [ar, ac] = dims("gemm", "a", a)?;
    let [br, bc] = dims("gemm", "b", b)?;
    let [cr, cc] = dims("gemm", "c", c)?;
    for (name, t) in [("a", a), ("b", b), ("c", c)] {
        dtype("gemm", name, t, DType::F32)?;
    }
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != kb || m != cr || n != cc {
        return Err(shape_err(
            "gemm",
            format!("op(a) {m}×{k} · op(b) {kb}×{n} does not give c {}", c.shape()),
        ));
    }
    Ok(GemmGeom { m, n, k, trans_a, trans_b })
}

/// A linear layer: x [n, in], w [out, in], b [out], all FP32 (the head).
pub fn linear<S>(x: &Tensor<S>, w: &Tensor<S>, b: &Tensor<S>) -> Result<LinearGeom, OpError> {
    let [n, fin] = dims("linear", "x", x)?;
    let [fout, win] = dims("linear", "w", w)?;
    if win != fin {
        return Err(shape_err("linear", format!("x {} and w {}: in-features differ", x.shape(), w.shape())));
    }
    expect_dims("linear", "b", b, &[fout])?;
    for (name, t) in [("x", x), ("w", w), ("b", b)] {
        dtype("linear", name, t, DType::F32)?;
    }
    Ok(LinearGeom { n, fin, fout })
}

/// A linear layer's backward, dy [n, out] checked against x and w.
pub fn linear_bwd<S>(dy: &Tensor<S>, x: &Tensor<S>, w: &Tensor<S>) -> Result<LinearGeom, OpError> {
    let [n, fin] = dims("linear_bwd", "x", x)?;
    let [fout, win] = dims("linear_bwd", "w", w)?;
    if win != fin {
        return Err(shape_err(
            "linear_bwd",
            format!("x {} and w {}: in-features differ", x.shape(), w.shape()),
        ));
    }
    expect_dims("linear_bwd", "dy", dy, &[n, fout])?;
    for (name, t) in [("dy", dy), ("x", x), ("w", w)] {
        dtype("linear_bwd", name, t, DType::F32)?;
    }
    Ok(LinearGeom { n, fin, fout })
}

pub fn conv2d_fwd<S>(
    x: &Tensor<S>,
    w: &Tensor<S>,
    stride: [usize; 2],
    pad: [usize; 2],
) -> Result<Conv2dGeom, OpError> {
    same_dtype("conv2d", ("x", x), ("w", w))?;
    Conv2dGeom::new(dims("conv2d", "x", x)?, dims("conv2d", "w", w)?, stride, pad)
}

pub fn conv2d_dgrad<S>(
    dy: &Tensor<S>,
    w: &Tensor<S>,
    x_dims: [usize; 4],
    stride: [usize; 2],
    pad: [usize; 2],
) -> Result<Conv2dGeom, OpError> {
    same_dtype("conv2d_dgrad", ("dy", dy), ("w", w))?;
    let g = Conv2dGeom::new(x_dims, dims("conv2d_dgrad", "w", w)?, stride, pad)?;
    expect_dims("conv2d_dgrad", "dy", dy, &g.y_dims())?;
    Ok(g)
}

pub fn conv2d_wgrad<S>(
    x: &Tensor<S>,
    dy: &Tensor<S>,
    w_dims: [usize; 4],
    stride: [usize; 2],
    pad: [usize; 2],
) -> Result<Conv2dGeom, OpError> {
    same_dtype("conv2d_wgrad", ("x", x), ("dy", dy))?;
    let g = Conv2dGeom::new(dims("conv2d_wgrad", "x", x)?, w_dims, stride, pad)?;
    expect_dims("conv2d_wgrad", "dy", dy, &g.y_dims())?;
    Ok(g)
}

pub fn max_pool2d_bwd<S>(
    x: &Tensor<S>,
    dy: &Tensor<S>,
    window: usize,
    stride: usize,
    pad: usize,
) -> Result<Pool2dGeom, OpError> {
    same_dtype("max_pool2d_bwd", ("x", x), ("dy", dy))?;
    let g = Pool2dGeom::new(dims("max_pool2d_bwd", "x", x)?, window, stride, pad)?;
    expect_dims("max_pool2d_bwd", "dy", dy, &g.y_dims())?;
    Ok(g)
}

/// The channels of a batch norm over `x`, its per-channel vectors checked (FP32).
pub fn batch_norm<S>(
    op: &'static str,
    x: &Tensor<S>,
    vectors: &[(&str, &Tensor<S>)],
) -> Result<usize, OpError> {
    per_channel(op, x, vectors)
}

/// The channels C of `x` (its last dimension), each of `vectors` checked to be FP32 [C]
/// (a batch norm's γ and β, a bias, PReLU's slopes).
pub fn per_channel<S>(
    op: &'static str,
    x: &Tensor<S>,
    vectors: &[(&str, &Tensor<S>)],
) -> Result<usize, OpError> {
    let (_, c) = rows_channels(op, x)?;
    for (name, t) in vectors {
        expect_dims(op, name, t, &[c])?;
        dtype(op, name, t, DType::F32)?;
    }
    Ok(c)
}

/// The channels of a batch norm's backward, every argument checked against x.
pub fn batch_norm_bwd<S>(
    op: &'static str,
    dy: &Tensor<S>,
    x: &Tensor<S>,
    gamma: &Tensor<S>,
    saved: &BnSaved<Tensor<S>>,
    relu_y: Option<&Tensor<S>>,
) -> Result<usize, OpError> {
    same_shape_dtype(op, ("dy", dy), ("x", x))?;
    if let Some(y) = relu_y {
        same_shape_dtype(op, ("relu_y", y), ("x", x))?;
    }
    batch_norm(op, x, &[("gamma", gamma), ("mean", &saved.mean), ("invstd", &saved.invstd)])
}

/// An optimizer step: the parameter, its gradient and its state, FP32 and of one shape;
/// the parameter and the state updated in place.
pub fn optimizer<S: Storage>(
    op: &'static str,
    p: &mut Tensor<S>,
    g: &Tensor<S>,
    state: &mut [(&str, &mut Tensor<S>)],
) -> Result<(), OpError> {
    f32_pair(op, ("param", p), ("grad", g))?;
    exclusive(op, "param", p)?;
    for (name, t) in state.iter_mut() {
        f32_pair(op, (name, t), ("grad", g))?;
        exclusive(op, name, t)?;
    }
    Ok(())
}
