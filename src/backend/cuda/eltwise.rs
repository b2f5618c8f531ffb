//! The host side of kernels/eltwise.cu: element-wise ops over whole FP32 buffers (ReLU and
//! the residual add over FP16 ones too), and the FP32 ↔ FP16 casts.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::f16;

use super::buffer::DeviceElem;
use super::device::{CudaError, Device, check_lens, grid_1d};
use crate::kernels::{Entry, entries};
use crate::tensor::DType;

/// The grid of a kernel over n elements: float4 vectors for FP32, single halves for FP16.
fn grid_of<T: DeviceElem>(n: usize) -> LaunchConfig {
    match T::DTYPE {
        DType::F32 => grid_1d(n.div_ceil(4)),
        DType::F16 => grid_1d(n),
    }
}

/// y[..n] = max(x[..n], 0).
pub fn relu_fwd<T: DeviceElem>(
    dev: &Device,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    n: usize,
) -> Result<(), CudaError> {
    map(dev, T::entry(entries::RELU_FWD_F32, entries::RELU_FWD_F16), x, y, n, grid_of::<T>(n))
}

/// y[..n] = σ(x[..n]).
pub fn sigmoid(dev: &Device, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<(), CudaError> {
    map(dev, entries::SIGMOID_F32, x, y, n, grid_1d(n))
}

/// The kernels of the form (x, y, n): y = f(x) element by element, over `grid` (one
/// thread per float4 where the kernel vectorises, per element otherwise).
fn map<X, Y>(
    dev: &Device,
    entry: Entry,
    x: &CudaSlice<X>,
    y: &mut CudaSlice<Y>,
    n: usize,
    grid: LaunchConfig,
) -> Result<(), CudaError> {
    check_lens(entry, &[("x", x.len(), n), ("y", y.len(), n)])?;
    let kernel = dev.kernel(entry)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(x).arg(y).arg(&nn);
    // SAFETY: (x, y, n) is the kernel's signature, with the element types of x and y;
    // both hold n elements.
    unsafe { dev.launch(&kernel, args, grid, || format!("n = {n}")) }
}

/// dx = dy where y > 0, else 0.
pub fn relu_bwd<T: DeviceElem>(
    dev: &Device,
    dy: &CudaSlice<T>,
    y: &CudaSlice<T>,
    dx: &mut CudaSlice<T>,
    n: usize,
) -> Result<(), CudaError> {
    let entry = T::entry(entries::RELU_BWD_F32, entries::RELU_BWD_F16);
    check_lens(entry, &[("dy", dy.len(), n), ("y", y.len(), n), ("dx", dx.len(), n)])?;
    let kernel = dev.kernel(entry)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(dy).arg(y).arg(dx).arg(&nn);
    // SAFETY: relu_bwd_f32's / _f16's signature; all hold n elements of T.
    unsafe { dev.launch(&kernel, args, grid_of::<T>(n), || format!("n = {n}")) }
}

/// y += x.
pub fn add_assign<T: DeviceElem>(
    dev: &Device,
    y: &mut CudaSlice<T>,
    x: &CudaSlice<T>,
    n: usize,
) -> Result<(), CudaError> {
    let entry = T::entry(entries::ADD_ASSIGN_F32, entries::ADD_ASSIGN_F16);
    check_lens(entry, &[("y", y.len(), n), ("x", x.len(), n)])?;
    let kernel = dev.kernel(entry)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(y).arg(x).arg(&nn);
    // SAFETY: add_assign_f32's / _f16's signature; both hold n elements of T.
    unsafe { dev.launch(&kernel, args, grid_of::<T>(n), || format!("n = {n}")) }
}

/// y[..n] ← alpha·y.
pub fn scale(dev: &Device, y: &mut CudaSlice<f32>, alpha: f32, n: usize) -> Result<(), CudaError> {
    with_scalar(dev, entries::SCALE_F32, y, alpha, n)
}

/// y[..n] ← value.
pub fn fill(dev: &Device, y: &mut CudaSlice<f32>, value: f32, n: usize) -> Result<(), CudaError> {
    with_scalar(dev, entries::FILL_F32, y, value, n)
}

/// The kernels of the form (y, value, n).
fn with_scalar(
    dev: &Device,
    entry: Entry,
    y: &mut CudaSlice<f32>,
    value: f32,
    n: usize,
) -> Result<(), CudaError> {
    check_lens(entry, &[("y", y.len(), n)])?;
    let kernel = dev.kernel(entry)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(y).arg(&value).arg(&nn);
    // SAFETY: scale_f32 and fill_f32 both take (y, value, n); y holds n floats.
    unsafe { dev.launch(&kernel, args, grid_1d(n.div_ceil(4)), || format!("n = {n}")) }
}

/// y[..n] = x[..n] rounded to FP16.
pub fn cast_f32_f16(
    dev: &Device,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f16>,
    n: usize,
) -> Result<(), CudaError> {
    map(dev, entries::CAST_F32_F16, x, y, n, grid_1d(n))
}

/// y[..n] = x[..n] widened to FP32.
pub fn cast_f16_f32(
    dev: &Device,
    x: &CudaSlice<f16>,
    y: &mut CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    map(dev, entries::CAST_F16_F32, x, y, n, grid_1d(n))
}
