//! The host side of kernels/norm.cu: batch norm over the channels of an [M, C] tensor,
//! the statistics reduced in two deterministic passes (chunk partials, then their sum).
//! The f64 scratch of a call (C·⌈M/256⌉ partials and a few per-channel vectors) comes
//! from the device pool. Activations (x, y, dy, relu_y, dx) are FP32 or FP16 (`T`);
//! statistics, γ, β and their gradients FP32. `batch_norm_normalize` and
//! `batch_norm_relu_bwd` are what backward uses to recompute a forward's output and a
//! fused ReLU's mask instead of keeping the output.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::buffer::{DeviceElem, PoolSlice};
use super::device::{CudaError, Device, check_len, grid_1d, push_optional};
use crate::backend::params::{BatchNormParams, STATS_CHUNK_ROWS};
use crate::kernels::entries;

/// kernels/norm.cu's `BnSum`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sum {
    X = 0,
    SqDev = 1,
    /// Σg and Σg·x̂ in one pass over dy and x.
    Grads = 2,
}

impl Sum {
    /// Sums per channel: Grads gives two.
    fn per_channel(self) -> usize {
        if self == Sum::Grads { 2 } else { 1 }
    }
}

/// A per-channel vector the caller passes (γ, β, running statistics, saved statistics).
/// Optional tensors of the sums kernel; absent ones are null pointers.
struct SumInputs<'a, T> {
    x: Option<&'a CudaSlice<T>>,
    dy: Option<&'a CudaSlice<T>>,
    relu_y: Option<&'a CudaSlice<T>>,
    mean_d: Option<&'a CudaSlice<f64>>,
    mean_f: Option<&'a CudaSlice<f32>>,
    invstd: Option<&'a CudaSlice<f32>>,
    /// γ and β of a ReLU mask recomputed from x (kernels/norm.cu's `ReluMask`).
    mask_gamma: Option<&'a CudaSlice<f32>>,
    mask_beta: Option<&'a CudaSlice<f32>>,
}

/// Per-channel f64 sums of `kind` over M rows, in the CPU twin's order: C values, or for
/// `Sum::Grads` 2C (Σg's, then Σg·x̂'s).
fn channel_sums<T: DeviceElem>(
    dev: &Device,
    kind: Sum,
    inp: &SumInputs<'_, T>,
    m: usize,
    c: usize,
) -> Result<PoolSlice<f64>, CudaError> {
    let chunks = m.div_ceil(STATS_CHUNK_ROWS);
    let sums = kind.per_channel();
    let mut partials = dev.alloc::<f64>(chunks * c * sums)?;
    let mut out = dev.alloc::<f64>(c * sums)?;
    let (kind_i, mm, ci, chunks_i) = (kind as i32, m as i64, c as i32, chunks as i64);
    let rows = STATS_CHUNK_ROWS as i64;
    let pass1 =
        dev.kernel(T::entry(entries::BATCH_NORM_CHUNK_SUMS_F64, entries::BATCH_NORM_CHUNK_SUMS_F16))?;
    let mut args = dev.args(&pass1);
    push_optional(&mut args, inp.x);
    push_optional(&mut args, inp.dy);
    push_optional(&mut args, inp.relu_y);
    push_optional(&mut args, inp.mean_d);
    push_optional(&mut args, inp.mean_f);
    push_optional(&mut args, inp.invstd);
    push_optional(&mut args, inp.mask_gamma);
    push_optional(&mut args, inp.mask_beta);
    args.arg(&kind_i).arg(&mm).arg(&ci).arg(&rows).arg(&mut partials);
    let shapes = || format!("M={m} C={c}");
    // SAFETY: arguments follow batch_norm_chunk_sums_f64; the kind reads only the tensors given,
    // each of M·C (or C) elements, checked by the callers.
    unsafe { dev.launch(&pass1, args, grid_1d(chunks * c), shapes) }?;
    // Each chunk's partials are `sums`·C values in a row, so one reduction over that many
    // columns gives every sum.
    let pass2 = dev.kernel(entries::BATCH_NORM_REDUCE_CHUNKS_F64)?;
    let columns = (c * sums) as i32;
    let mut args = dev.args(&pass2);
    args.arg(&partials).arg(&chunks_i).arg(&columns).arg(&mut out);
    // SAFETY: partials holds chunks·C·sums values, out C·sums.
    unsafe { dev.launch(&pass2, args, grid_1d(c * sums), shapes) }?;
    Ok(out)
}

/// Training-mode forward: y, and the saved (mean, invstd) written to `mean`, `invstd`;
/// the running statistics updated in place.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_fwd_train<T: DeviceElem>(
    dev: &Device,
    x: &CudaSlice<T>,
    m: usize,
    c: usize,
    gamma: &CudaSlice<f32>,
    beta: &CudaSlice<f32>,
    running_mean: &mut CudaSlice<f32>,
    running_var: &mut CudaSlice<f32>,
    params: &BatchNormParams,
    y: &mut CudaSlice<T>,
    mean: &mut CudaSlice<f32>,
    invstd: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let entry = entries::BATCH_NORM_TRAIN_STATS_F32;
    check_len(entry, "x", x.len(), m * c)?;
    check_len(entry, "y", y.len(), m * c)?;
    for (what, len) in [("gamma", gamma.len()), ("beta", beta.len()), ("running_mean", running_mean.len())] {
        check_len(entry, what, len, c)?;
    }
    for (what, len) in [("running_var", running_var.len()), ("mean", mean.len()), ("invstd", invstd.len())] {
        check_len(entry, what, len, c)?;
    }
    let none = SumInputs {
        x: Some(x),
        dy: None,
        relu_y: None,
        mean_d: None,
        mean_f: None,
        invstd: None,
        mask_gamma: None,
        mask_beta: None,
    };
    let sum = channel_sums(dev, Sum::X, &none, m, c)?;
    let (mm, ci) = (m as i64, c as i32);
    let mut mean_d = dev.alloc::<f64>(c)?;
    let k = dev.kernel(entries::BATCH_NORM_MEAN_F64)?;
    let mut args = dev.args(&k);
    args.arg(&sum).arg(&mm).arg(&ci).arg(&mut mean_d);
    // SAFETY: C-element vectors.
    unsafe { dev.launch(&k, args, grid_1d(c), || format!("C={c}")) }?;
    let sqdev = channel_sums(dev, Sum::SqDev, &SumInputs { mean_d: Some(&mean_d), ..none }, m, c)?;
    let k = dev.kernel(entry)?;
    let mut args = dev.args(&k);
    args.arg(&mean_d).arg(&sqdev).arg(&mm).arg(&ci).arg(&params.eps).arg(&params.momentum);
    args.arg(&mut *mean).arg(&mut *invstd).arg(running_mean).arg(running_var);
    // SAFETY: C-element vectors, checked above.
    unsafe { dev.launch(&k, args, grid_1d(c), || format!("C={c}")) }?;
    batch_norm_normalize(dev, x, m, c, mean, invstd, gamma, beta, params.relu, y)
}

/// Eval-mode forward with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_fwd_eval<T: DeviceElem>(
    dev: &Device,
    x: &CudaSlice<T>,
    m: usize,
    c: usize,
    gamma: &CudaSlice<f32>,
    beta: &CudaSlice<f32>,
    running_mean: &CudaSlice<f32>,
    running_var: &CudaSlice<f32>,
    params: &BatchNormParams,
    y: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    let entry = entries::BATCH_NORM_INVSTD_F32;
    check_len(entry, "running_var", running_var.len(), c)?;
    check_len(entry, "x", x.len(), m * c)?;
    check_len(entry, "y", y.len(), m * c)?;
    let mut invstd = dev.alloc::<f32>(c)?;
    let k = dev.kernel(entry)?;
    let ci = c as i32;
    let mut args = dev.args(&k);
    args.arg(running_var).arg(&ci).arg(&params.eps).arg(&mut invstd);
    // SAFETY: C-element vectors.
    unsafe { dev.launch(&k, args, grid_1d(c), || format!("C={c}")) }?;
    batch_norm_normalize(dev, x, m, c, running_mean, &invstd, gamma, beta, params.relu, y)
}

/// y = (x − mean)·invstd·γ + β, then ReLU if asked: the forwards' last pass, and the
/// recomputation of a training forward's output from its input and saved statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_normalize<T: DeviceElem>(
    dev: &Device,
    x: &CudaSlice<T>,
    m: usize,
    c: usize,
    mean: &CudaSlice<f32>,
    invstd: &CudaSlice<f32>,
    gamma: &CudaSlice<f32>,
    beta: &CudaSlice<f32>,
    relu: bool,
    y: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    let entry = T::entry(entries::BATCH_NORM_NORMALIZE_F32, entries::BATCH_NORM_NORMALIZE_F16);
    for (what, len) in [("mean", mean.len()), ("gamma", gamma.len()), ("beta", beta.len())] {
        check_len(entry, what, len, c)?;
    }
    let k = dev.kernel(entry)?;
    let (mm, ci, relu_i) = (m as i64, c as i32, relu as i32);
    let mut args = dev.args(&k);
    args.arg(x).arg(&mm).arg(&ci).arg(mean).arg(invstd).arg(gamma).arg(beta).arg(&relu_i).arg(y);
    // SAFETY: x and y hold M·C elements, the vectors C (checked by the callers and here).
    unsafe { dev.launch(&k, args, grid_1d(m * c), || format!("M={m} C={c}")) }
}

/// Where a fused ReLU's mask comes from (kernels/norm.cu's `ReluMask`).
#[derive(Clone, Copy)]
enum Mask<'a, T> {
    None,
    Output(&'a CudaSlice<T>),
    FromInput { beta: &'a CudaSlice<f32> },
}

/// Backward of the training forward: dx, and dγ, dβ. `relu_y` is the forward output when
/// the ReLU was fused (it masks dy).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_bwd<T: DeviceElem>(
    dev: &Device,
    dy: &CudaSlice<T>,
    x: &CudaSlice<T>,
    m: usize,
    c: usize,
    gamma: &CudaSlice<f32>,
    mean: &CudaSlice<f32>,
    invstd: &CudaSlice<f32>,
    relu_y: Option<&CudaSlice<T>>,
    dx: &mut CudaSlice<T>,
    dgamma: &mut CudaSlice<f32>,
    dbeta: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let mask = relu_y.map_or(Mask::None, Mask::Output);
    bwd(dev, dy, x, m, c, gamma, mean, invstd, mask, dx, dgamma, dbeta)
}

/// Backward of a training forward with a fused ReLU, the mask recomputed from x and β:
/// the gradients `batch_norm_bwd` gives with the stored output.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_relu_bwd<T: DeviceElem>(
    dev: &Device,
    dy: &CudaSlice<T>,
    x: &CudaSlice<T>,
    m: usize,
    c: usize,
    gamma: &CudaSlice<f32>,
    beta: &CudaSlice<f32>,
    mean: &CudaSlice<f32>,
    invstd: &CudaSlice<f32>,
    dx: &mut CudaSlice<T>,
    dgamma: &mut CudaSlice<f32>,
    dbeta: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    check_len(
        T::entry(entries::BATCH_NORM_RELU_BWD_DX_F32, entries::BATCH_NORM_RELU_BWD_DX_F16),
        "beta",
        beta.len(),
        c,
    )?;
    bwd(dev, dy, x, m, c, gamma, mean, invstd, Mask::FromInput { beta }, dx, dgamma, dbeta)
}

#[allow(clippy::too_many_arguments)]
fn bwd<T: DeviceElem>(
    dev: &Device,
    dy: &CudaSlice<T>,
    x: &CudaSlice<T>,
    m: usize,
    c: usize,
    gamma: &CudaSlice<f32>,
    mean: &CudaSlice<f32>,
    invstd: &CudaSlice<f32>,
    mask: Mask<'_, T>,
    dx: &mut CudaSlice<T>,
    dgamma: &mut CudaSlice<f32>,
    dbeta: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let entry = match mask {
        Mask::FromInput { .. } => {
            T::entry(entries::BATCH_NORM_RELU_BWD_DX_F32, entries::BATCH_NORM_RELU_BWD_DX_F16)
        }
        _ => T::entry(entries::BATCH_NORM_BWD_DX_F32, entries::BATCH_NORM_BWD_DX_F16),
    };
    for (what, len) in [("dy", dy.len()), ("x", x.len()), ("dx", dx.len())] {
        check_len(entry, what, len, m * c)?;
    }
    let (relu_y, mask_beta) = match mask {
        Mask::None => (None, None),
        Mask::Output(y) => (Some(y), None),
        Mask::FromInput { beta } => (None, Some(beta)),
    };
    if let Some(r) = relu_y {
        check_len(entry, "relu_y", r.len(), m * c)?;
    }
    for (what, len) in [("gamma", gamma.len()), ("mean", mean.len()), ("invstd", invstd.len())] {
        check_len(entry, what, len, c)?;
    }
    check_len(entry, "dgamma", dgamma.len(), c)?;
    check_len(entry, "dbeta", dbeta.len(), c)?;
    let grads = SumInputs {
        x: Some(x),
        dy: Some(dy),
        relu_y,
        mean_d: None,
        mean_f: Some(mean),
        invstd: Some(invstd),
        mask_gamma: mask_beta.map(|_| gamma),
        mask_beta,
    };
    let sums = channel_sums(dev, Sum::Grads, &grads, m, c)?;
    let (mut mean_g, mut mean_gx) = (dev.alloc::<f32>(c)?, dev.alloc::<f32>(c)?);
    let (mm, ci) = (m as i64, c as i32);
    let k = dev.kernel(entries::BATCH_NORM_BWD_STATS_F32)?;
    let mut args = dev.args(&k);
    args.arg(&sums).arg(&mm).arg(&ci).arg(&mut mean_g).arg(&mut mean_gx).arg(dgamma).arg(dbeta);
    // SAFETY: C-element vectors.
    unsafe { dev.launch(&k, args, grid_1d(c), || format!("C={c}")) }?;
    let k = dev.kernel(entry)?;
    let mut args = dev.args(&k);
    args.arg(dy).arg(x);
    match mask_beta {
        // batch_norm_relu_bwd_dx: (dy, x, M, C, gamma, beta, mean, invstd, mean_g, mean_gx, dx)
        Some(beta) => {
            args.arg(&mm).arg(&ci).arg(gamma).arg(beta);
        }
        // batch_norm_bwd_dx: (dy, x, relu_y, M, C, gamma, mean, invstd, mean_g, mean_gx, dx)
        None => {
            push_optional(&mut args, relu_y);
            args.arg(&mm).arg(&ci).arg(gamma);
        }
    }
    args.arg(mean).arg(invstd).arg(&mean_g).arg(&mean_gx).arg(dx);
    // SAFETY: M·C tensors and C vectors, checked above; the arguments follow the entry's
    // signature, as the match says.
    unsafe { dev.launch(&k, args, grid_1d(m * c), || format!("M={m} C={c}")) }
}
