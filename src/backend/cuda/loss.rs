//! The host side of kernels/loss.cu: BCE with logits, mean over the batch.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::device::{CudaError, Device, check_len, grid_1d};
use crate::backend::params::BceParams;
use crate::kernels::{Entry, entries};

fn check(kernel: Entry, n: usize, targets: usize, out: (&str, usize, usize)) -> Result<(), CudaError> {
    if n > i32::MAX as usize {
        return Err(CudaError::Arguments {
            kernel,
            detail: format!("{n} logits: more than the kernel's 32-bit count"),
        });
    }
    check_len(kernel, "targets", targets, n)?;
    check_len(kernel, out.0, out.1, out.2)
}

/// loss [1] = mean BCE of the first `n` logits.
pub fn bce_with_logits_fwd(
    dev: &Device,
    logits: &CudaSlice<f32>,
    targets: &CudaSlice<f32>,
    n: usize,
    p: &BceParams,
    loss: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let entry = entries::BCE_WITH_LOGITS_FWD_F32;
    check(entry, n, targets.len(), ("loss", loss.len(), 1))?;
    let kernel = dev.kernel(entry)?;
    let ni = n as i32;
    let mut args = dev.args(&kernel);
    args.arg(logits).arg(targets).arg(&ni).arg(&p.pos_weight).arg(&p.label_smoothing).arg(loss);
    // One block of 256 (a power of two) with its 256 floats of reduction scratch.
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 256 * 4 };
    // SAFETY: bce_with_logits_fwd_f32's signature; lengths checked above.
    unsafe { dev.launch(&kernel, args, cfg, || format!("n = {n}")) }
}

/// grad [n] = scale · ∂(mean loss)/∂logits.
pub fn bce_with_logits_bwd(
    dev: &Device,
    logits: &CudaSlice<f32>,
    targets: &CudaSlice<f32>,
    n: usize,
    p: &BceParams,
    scale: f32,
    grad: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let entry = entries::BCE_WITH_LOGITS_BWD_F32;
    check(entry, n, targets.len(), ("grad", grad.len(), n))?;
    let kernel = dev.kernel(entry)?;
    let ni = n as i32;
    let mut args = dev.args(&kernel);
    args.arg(logits).arg(targets).arg(&ni).arg(&p.pos_weight).arg(&p.label_smoothing).arg(&scale).arg(grad);
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1), ..grid_1d(0) };
    // SAFETY: bce_with_logits_bwd_f32's signature; lengths checked above; one thread per
    // logit (the kernel has no grid-stride loop).
    unsafe { dev.launch(&kernel, args, cfg, || format!("n = {n}")) }
}
