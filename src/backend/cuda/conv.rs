//! The host side of kernels/conv.cu: the forward convolution on tensor cores (implicit
//! GEMM) when the channels come in 16-byte runs, the reference kernel otherwise; the
//! input gradient (implicit GEMM over a transposed filter).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::f16;

use super::device::{CudaError, Device};
use super::gemm::GemmOut;
use crate::backend::params::Conv2dGeom;
use crate::kernels::KernelModule;

/// The fused epilogue: y = alpha·conv + beta·y (+ bias [K]) (then ReLU).
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub beta: f32,
    pub bias: Option<&'a CudaSlice<f32>>,
    pub relu: bool,
}

/// Whether `conv2d_fwd` uses the tensor-core kernel for this geometry: the implicit-GEMM
/// loader copies 8 channels (16 bytes) of one filter tap at a time.
pub fn uses_tensor_cores(g: &Conv2dGeom) -> bool {
    g.c % 8 == 0
}

/// y [N, P, Q, K] = conv(x [N, H, W, C], w [K, R, S, C]) with the epilogue.
pub fn conv2d_fwd(
    dev: &Device,
    g: &Conv2dGeom,
    x: &CudaSlice<f16>,
    w: &CudaSlice<f16>,
    y: GemmOut<'_>,
    epi: Epilogue<'_>,
) -> Result<(), CudaError> {
    let tensor_cores = uses_tensor_cores(g);
    let name = if tensor_cores { "conv2d_fwd_implicit_f16" } else { "conv2d_fwd_ref_f16" };
    let bad = |detail: String| CudaError::Arguments { kernel: name, detail };
    let (xn, wn, yn) = (g.n * g.h * g.w * g.c, g.k * g.r * g.s * g.c, g.n * g.p * g.q * g.k);
    let y_len = match &y {
        GemmOut::F32(s) => s.len(),
        GemmOut::F16(s) => s.len(),
    };
    if x.len() < xn || w.len() < wn || y_len < yn || epi.bias.is_some_and(|b| b.len() < g.k) {
        return Err(bad(format!("buffers x {} w {} y {y_len} too small for {g:?}", x.len(), w.len())));
    }
    if g.n * g.p * g.q > i32::MAX as usize {
        return Err(bad(format!(
            "{} output pixels: more than the kernel's 32-bit row index",
            g.n * g.p * g.q
        )));
    }
    let i = |v: usize| v as i32;
    let dims = [i(g.n), i(g.h), i(g.w), i(g.c), i(g.k), i(g.r), i(g.s), i(g.p), i(g.q)];
    let conv = [i(g.stride[0]), i(g.stride[1]), i(g.pad[0]), i(g.pad[1])];
    let shapes = || format!("{g:?}");
    let kernel = dev.kernel(KernelModule::Conv, name)?;
    let mut args = dev.args(&kernel);
    if !tensor_cores {
        // The reference kernel: FP16 output, no epilogue.
        let GemmOut::F16(y) = y else {
            return Err(bad(format!("C = {} is not a multiple of 8: only FP16 output there", g.c)));
        };
        if epi.beta != 0.0 || epi.bias.is_some() || epi.relu {
            return Err(bad(format!("C = {} is not a multiple of 8: no fused epilogue there", g.c)));
        }
        args.arg(x).arg(w).arg(y);
        for v in dims.iter().chain(&conv) {
            args.arg(v);
        }
        let cfg = LaunchConfig {
            grid_dim: (yn.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: conv2d_fwd_ref_f16's signature; lengths checked above.
        return unsafe { dev.launch(&kernel, args, cfg, shapes) };
    }
    let (alpha, null) = (1.0f32, 0u64);
    let relu = epi.relu as i32;
    args.arg(x).arg(w);
    let out_f16: i32 = match y {
        GemmOut::F32(s) => {
            args.arg(s);
            0
        }
        GemmOut::F16(s) => {
            args.arg(s);
            1
        }
    };
    for v in dims.iter().chain(&conv) {
        args.arg(v);
    }
    args.arg(&alpha).arg(&epi.beta).arg(&out_f16);
    match epi.bias {
        Some(b) => args.arg(b),
        None => args.arg(&null),
    };
    args.arg(&relu);
    let cfg = LaunchConfig {
        grid_dim: (g.k.div_ceil(128) as u32, (g.n * g.p * g.q).div_ceil(128) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 48 * 1024,
    };
    // SAFETY: conv2d_fwd_implicit_f16's signature; lengths checked above.
    unsafe { dev.launch(&kernel, args, cfg, shapes) }
}

/// dx [N, H, W, C] = the input gradient of the convolution, from dy [N, P, Q, K] and
/// w [K, R, S, C]: the filter is transposed to C×R×S×K into scratch, then the
/// implicit-GEMM kernel runs. Needs K (output channels) a multiple of 8.
pub fn conv2d_dgrad(
    dev: &Device,
    g: &Conv2dGeom,
    dy: &CudaSlice<f16>,
    w: &CudaSlice<f16>,
    dx: GemmOut<'_>,
    beta: f32,
) -> Result<(), CudaError> {
    let name = "conv2d_dgrad_implicit_f16";
    let bad = |detail: String| CudaError::Arguments { kernel: name, detail };
    if g.k % 8 != 0 {
        return Err(bad(format!("K = {} output channels: the kernel needs a multiple of 8", g.k)));
    }
    let (xn, wn, yn) = (g.n * g.h * g.w * g.c, g.k * g.r * g.s * g.c, g.n * g.p * g.q * g.k);
    let dx_len = match &dx {
        GemmOut::F32(s) => s.len(),
        GemmOut::F16(s) => s.len(),
    };
    if dy.len() < yn || w.len() < wn || dx_len < xn {
        return Err(bad(format!("buffers dy {} w {} dx {dx_len} too small for {g:?}", dy.len(), w.len())));
    }
    if xn / g.c > i32::MAX as usize {
        return Err(bad(format!("{} input pixels: more than the kernel's 32-bit row index", xn / g.c)));
    }
    let i = |v: usize| v as i32;
    let shapes = || format!("{g:?}");
    let mut wt = dev
        .stream()
        .alloc_zeros::<f16>(wn)
        .map_err(|source| CudaError::Device { ordinal: dev.ordinal, source })?;
    let transpose = dev.kernel(KernelModule::Conv, "conv_weight_krsc_to_crsk_f16")?;
    let mut args = dev.args(&transpose);
    let (k, r, s, c) = (i(g.k), i(g.r), i(g.s), i(g.c));
    args.arg(w).arg(&mut wt).arg(&k).arg(&r).arg(&s).arg(&c);
    // SAFETY: both buffers hold K·R·S·C halves.
    unsafe { dev.launch(&transpose, args, super::device::grid_1d(wn), shapes) }?;

    let kernel = dev.kernel(KernelModule::Conv, name)?;
    let dims = [i(g.n), i(g.h), i(g.w), i(g.c), i(g.k), i(g.r), i(g.s), i(g.p), i(g.q)];
    let conv = [i(g.stride[0]), i(g.stride[1]), i(g.pad[0]), i(g.pad[1])];
    let alpha = 1.0f32;
    let mut args = dev.args(&kernel);
    args.arg(dy).arg(&wt);
    let out_f16: i32 = match dx {
        GemmOut::F32(s) => {
            args.arg(s);
            0
        }
        GemmOut::F16(s) => {
            args.arg(s);
            1
        }
    };
    for v in dims.iter().chain(&conv) {
        args.arg(v);
    }
    args.arg(&alpha).arg(&beta).arg(&out_f16);
    let cfg = LaunchConfig {
        grid_dim: (g.c.div_ceil(128) as u32, (xn / g.c).div_ceil(128) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 48 * 1024,
    };
    // SAFETY: conv2d_dgrad_implicit_f16's signature; lengths checked above.
    unsafe { dev.launch(&kernel, args, cfg, shapes) }
}
