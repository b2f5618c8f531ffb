//! The host side of kernels/eltwise.cu: element-wise ops over whole FP32 buffers (and the
//! FP32 → FP16 cast that feeds the tensor-core kernels).

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::f16;

use super::device::{CudaError, Device, check_lens, grid_1d};
use crate::kernels::KernelModule;

/// The element-wise kernels, named as in kernels/eltwise.cu.
#[derive(Debug, Clone, Copy)]
pub enum Unary {
    /// y = max(x, 0)
    Relu,
    /// y = σ(x)
    Sigmoid,
}

/// y[..n] = op(x[..n]).
pub fn unary(
    dev: &Device,
    op: Unary,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    let name = match op {
        Unary::Relu => "relu_fwd_f32",
        Unary::Sigmoid => "sigmoid_f32",
    };
    check_lens(name, &[("x", x.len(), n), ("y", y.len(), n)])?;
    let kernel = dev.kernel(KernelModule::Eltwise, name)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(x).arg(y).arg(&nn);
    // SAFETY: (x, y, n) is the kernel's signature; both hold n floats.
    unsafe { dev.launch(&kernel, args, grid_1d(n.div_ceil(4)), || format!("n = {n}")) }
}

/// dx = dy where y > 0, else 0.
pub fn relu_bwd(
    dev: &Device,
    dy: &CudaSlice<f32>,
    y: &CudaSlice<f32>,
    dx: &mut CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    let name = "relu_bwd_f32";
    check_lens(name, &[("dy", dy.len(), n), ("y", y.len(), n), ("dx", dx.len(), n)])?;
    let kernel = dev.kernel(KernelModule::Eltwise, name)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(dy).arg(y).arg(dx).arg(&nn);
    // SAFETY: relu_bwd_f32's signature; all hold n floats.
    unsafe { dev.launch(&kernel, args, grid_1d(n.div_ceil(4)), || format!("n = {n}")) }
}

/// y += x.
pub fn add_assign(
    dev: &Device,
    y: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    let name = "add_assign_f32";
    check_lens(name, &[("y", y.len(), n), ("x", x.len(), n)])?;
    let kernel = dev.kernel(KernelModule::Eltwise, name)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(y).arg(x).arg(&nn);
    // SAFETY: add_assign_f32's signature; both hold n floats.
    unsafe { dev.launch(&kernel, args, grid_1d(n.div_ceil(4)), || format!("n = {n}")) }
}

/// y ← alpha·y (`scale_f32`) or y ← value (`fill_f32`).
pub fn scalar(
    dev: &Device,
    name: &'static str,
    y: &mut CudaSlice<f32>,
    value: f32,
    n: usize,
) -> Result<(), CudaError> {
    check_lens(name, &[("y", y.len(), n)])?;
    let kernel = dev.kernel(KernelModule::Eltwise, name)?;
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
    let name = "cast_f32_f16";
    check_lens(name, &[("x", x.len(), n), ("y", y.len(), n)])?;
    let kernel = dev.kernel(KernelModule::Eltwise, name)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(x).arg(y).arg(&nn);
    // SAFETY: cast_f32_f16's signature; x holds n floats, y n halves.
    unsafe { dev.launch(&kernel, args, grid_1d(n), || format!("n = {n}")) }
}
