//! The host side of kernels/activation.cu: the face detector's per-channel bias (alone
//! or fused with PReLU), in place on a fresh convolution output, and softmax over rows.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::device::{CudaError, Device, check_len, check_lens, grid_1d};
use crate::kernels::{Entry, entries};

/// y [rows, c] += bias [c].
pub fn bias_add(
    dev: &Device,
    y: &mut CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    rows: usize,
    c: usize,
) -> Result<(), CudaError> {
    per_channel(dev, entries::BIAS_ADD_F32, y, &[("bias", bias)], rows, c)
}

/// y [rows, c] ← PReLU(y + bias) with slopes alpha [c].
pub fn bias_prelu(
    dev: &Device,
    y: &mut CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    alpha: &CudaSlice<f32>,
    rows: usize,
    c: usize,
) -> Result<(), CudaError> {
    per_channel(dev, entries::BIAS_PRELU_F32, y, &[("bias", bias), ("alpha", alpha)], rows, c)
}

/// The kernels of the form (y, per-channel vectors..., n, c), updating y in place.
fn per_channel(
    dev: &Device,
    entry: Entry,
    y: &mut CudaSlice<f32>,
    vectors: &[(&str, &CudaSlice<f32>)],
    rows: usize,
    c: usize,
) -> Result<(), CudaError> {
    check_len(entry, "y", y.len(), rows * c)?;
    for (name, v) in vectors {
        check_len(entry, name, v.len(), c)?;
    }
    let kernel = dev.kernel(entry)?;
    let (n, ci) = ((rows * c) as i64, c as i32);
    let mut args = dev.args(&kernel);
    args.arg(y);
    for (_, v) in vectors {
        args.arg(*v);
    }
    args.arg(&n).arg(&ci);
    // SAFETY: bias_add_f32 takes (y, bias, n, c) and bias_prelu_f32 (y, bias, alpha, n, c),
    // the vectors in that order; y holds rows·c floats, each vector c.
    unsafe { dev.launch(&kernel, args, grid_1d(rows * c), || format!("{rows} rows of {c}")) }
}

/// y [rows, c] = softmax of each row of x [rows, c]; one thread per row.
pub fn softmax_rows(
    dev: &Device,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    rows: usize,
    c: usize,
) -> Result<(), CudaError> {
    let entry = entries::SOFTMAX_ROWS_F32;
    check_lens(entry, &[("x", x.len(), rows * c), ("y", y.len(), rows * c)])?;
    let kernel = dev.kernel(entry)?;
    let (r, ci) = (rows as i64, c as i32);
    let mut args = dev.args(&kernel);
    args.arg(x).arg(y).arg(&r).arg(&ci);
    // SAFETY: softmax_rows_f32's signature; x and y hold rows·c floats.
    unsafe { dev.launch(&kernel, args, grid_1d(rows), || format!("{rows} rows of {c}")) }
}
