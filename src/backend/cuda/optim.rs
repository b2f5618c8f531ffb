//! The host side of kernels/optim.cu: AdamW and SGD steps on FP32 master weights, the
//! loss-scale unscale-and-check, and the deterministic sum of squares behind gradient
//! clipping.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::device::{CudaError, Device, check_lens, grid_1d};
use crate::backend::params::{AdamWParams, SgdParams};
use crate::kernels::entries;

/// Elements per block of the sum of squares' first pass: fixed, so the partial sums —
/// and the norm's bits — depend on n alone.
const SUM_CHUNK: usize = 1 << 14;

/// One AdamW step (`step` counts from 1) on n parameters; the bias corrections are
/// computed here in f64, as the CPU twin does.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    dev: &Device,
    p: &mut CudaSlice<f32>,
    g: &CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    n: usize,
    hp: &AdamWParams,
    step: u64,
) -> Result<(), CudaError> {
    let entry = entries::ADAMW_STEP_F32;
    check_lens(entry, &[("p", p.len(), n), ("g", g.len(), n), ("m", m.len(), n), ("v", v.len(), n)])?;
    let t = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
    let bc2_sqrt = (1.0 - (hp.beta2 as f64).powi(t)).sqrt();
    let (step_size, decay) = ((hp.lr as f64 / bc1) as f32, 1.0 - hp.lr * hp.weight_decay);
    let kernel = dev.kernel(entry)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(p).arg(g).arg(m).arg(v).arg(&nn);
    args.arg(&hp.beta1).arg(&hp.beta2).arg(&hp.eps).arg(&decay).arg(&step_size).arg(&bc2_sqrt);
    // SAFETY: adamw_step_f32's signature; every buffer holds n floats.
    unsafe { dev.launch(&kernel, args, grid_1d(n), || format!("n = {n}")) }
}

/// One SGD step on n parameters.
#[allow(clippy::too_many_arguments)]
pub fn sgd_step(
    dev: &Device,
    p: &mut CudaSlice<f32>,
    g: &CudaSlice<f32>,
    buf: &mut CudaSlice<f32>,
    n: usize,
    hp: &SgdParams,
    first_step: bool,
) -> Result<(), CudaError> {
    let entry = entries::SGD_STEP_F32;
    check_lens(entry, &[("p", p.len(), n), ("g", g.len(), n), ("momentum buffer", buf.len(), n)])?;
    let kernel = dev.kernel(entry)?;
    let (nn, nesterov, first) = (n as i64, hp.nesterov as i32, first_step as i32);
    let mut args = dev.args(&kernel);
    args.arg(p).arg(g).arg(buf).arg(&nn).arg(&hp.lr).arg(&hp.momentum);
    args.arg(&nesterov).arg(&hp.weight_decay).arg(&first);
    // SAFETY: sgd_step_f32's signature; every buffer holds n floats.
    unsafe { dev.launch(&kernel, args, grid_1d(n), || format!("n = {n}")) }
}

/// g ← g·inv_scale; true when any element is inf or NaN.
pub fn unscale_check(
    dev: &Device,
    g: &mut CudaSlice<f32>,
    n: usize,
    inv_scale: f32,
) -> Result<bool, CudaError> {
    let entry = entries::UNSCALE_CHECK_F32;
    check_lens(entry, &[("g", g.len(), n)])?;
    let mut found = dev.alloc::<i32>(1)?;
    let kernel = dev.kernel(entry)?;
    let nn = n as i64;
    let mut args = dev.args(&kernel);
    args.arg(g).arg(&nn).arg(&inv_scale).arg(&mut found);
    // SAFETY: unscale_check_f32's signature; g holds n floats, found one int.
    unsafe { dev.launch(&kernel, args, grid_1d(n), || format!("n = {n}")) }?;
    let found = dev.stream().clone_dtoh(&*found).map_err(|source| CudaError::Launch {
        kernel: entry,
        shapes: "reading the flag".into(),
        source,
    })?;
    Ok(found[0] != 0)
}

/// Σ g² over n elements in f64, in a fixed order.
pub fn sum_squares(dev: &Device, g: &CudaSlice<f32>, n: usize) -> Result<f64, CudaError> {
    let entry = entries::SUM_SQUARES_PARTIAL_F32;
    check_lens(entry, &[("g", g.len(), n)])?;
    let blocks = n.div_ceil(SUM_CHUNK).max(1);
    let mut partials = dev.alloc::<f64>(blocks)?;
    let mut total = dev.alloc::<f64>(1)?;
    let shapes = || format!("n = {n}");
    let pass1 = dev.kernel(entry)?;
    let (nn, chunk, count) = (n as i64, SUM_CHUNK as i64, blocks as i32);
    let mut args = dev.args(&pass1);
    args.arg(g).arg(&nn).arg(&chunk).arg(&mut partials);
    let block = |grid: usize| LaunchConfig {
        grid_dim: (grid as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 256 * 8,
    };
    // SAFETY: sum_squares_partial_f32's signature; `blocks` partials, 256 doubles of
    // shared scratch for the 256-thread block.
    unsafe { dev.launch(&pass1, args, block(blocks), shapes) }?;
    let pass2 = dev.kernel(entries::SUM_PARTIALS_F64)?;
    let mut args = dev.args(&pass2);
    args.arg(&partials).arg(&count).arg(&mut total);
    // SAFETY: sum_partials_f64's signature; one block over `blocks` partials.
    unsafe { dev.launch(&pass2, args, block(1), shapes) }?;
    let total = dev.stream().clone_dtoh(&*total).map_err(|source| CudaError::Launch {
        kernel: entries::SUM_PARTIALS_F64,
        shapes: "reading the sum".into(),
        source,
    })?;
    Ok(total[0])
}
