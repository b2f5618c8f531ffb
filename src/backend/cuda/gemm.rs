//! The host side of kernels/gemm.cu: picks the tensor-core kernel when the operands meet
//! its requirements and the reference kernel otherwise, checks shapes, and launches.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::f16;

use super::device::{CudaError, Device};
use crate::kernels::KernelModule;

/// Where C lives and in which precision.
pub enum GemmOut<'a> {
    F32(&'a mut CudaSlice<f32>),
    F16(&'a mut CudaSlice<f16>),
}

/// C [m, n] = alpha · A [m, k] · B [n, k]ᵀ + beta · C (+ bias [n]) (then ReLU), FP32
/// accumulation. Row-major, dense (lda = ldb = k, ldc = n).
pub struct GemmNt<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: &'a CudaSlice<f16>,
    pub b: &'a CudaSlice<f16>,
    pub beta: f32,
    pub bias: Option<&'a CudaSlice<f32>>,
    pub relu: bool,
}

/// Which kernel `gemm_nt` runs for these sizes.
pub fn uses_tensor_cores(k: usize) -> bool {
    // 16-byte cp.async copies need every row of A and B to start 16-byte aligned.
    k % 8 == 0
}

pub fn gemm_nt(dev: &Device, g: &GemmNt<'_>, c: GemmOut<'_>) -> Result<(), CudaError> {
    let (m, n, k) = (g.m, g.n, g.k);
    let kernel_name = if uses_tensor_cores(k) { "gemm_tc_f16" } else { "gemm_ref_f16" };
    let bad = |detail: String| CudaError::Arguments { kernel: kernel_name, detail };
    let c_len = match &c {
        GemmOut::F32(s) => s.len(),
        GemmOut::F16(s) => s.len(),
    };
    if g.a.len() < m * k || g.b.len() < n * k || c_len < m * n || g.bias.is_some_and(|b| b.len() < n) {
        return Err(bad(format!(
            "buffers A {} B {} C {} bias {:?} too small for {m}×{n}×{k}",
            g.a.len(),
            g.b.len(),
            c_len,
            g.bias.map(|b| b.len())
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let shapes = || format!("M={m} N={n} K={k}");
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    if uses_tensor_cores(k) {
        let kernel = dev.kernel(KernelModule::Gemm, "gemm_tc_f16")?;
        let (relu, null) = (g.relu as i32, 0u64);
        let mut args = dev.args(&kernel);
        args.arg(&mi).arg(&ni).arg(&ki).arg(&g.alpha).arg(g.a).arg(&ki).arg(g.b).arg(&ki).arg(&g.beta);
        let out_f16: i32;
        match c {
            GemmOut::F32(s) => {
                out_f16 = 0;
                args.arg(s)
            }
            GemmOut::F16(s) => {
                out_f16 = 1;
                args.arg(s)
            }
        };
        args.arg(&ni).arg(&out_f16);
        match g.bias {
            Some(b) => args.arg(b),
            None => args.arg(&null),
        };
        args.arg(&relu);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(128) as u32, m.div_ceil(128) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 48 * 1024,
        };
        // SAFETY: the arguments follow gemm_tc_f16's signature and the lengths were
        // checked above.
        return unsafe { dev.launch(&kernel, args, cfg, shapes) };
    }
    // The reference kernel: FP32 output, no epilogue beyond alpha and beta.
    let GemmOut::F32(c) = c else {
        return Err(bad(format!("K = {k} is not a multiple of 8: only FP32 output is supported there")));
    };
    if g.bias.is_some() || g.relu {
        return Err(bad(format!("K = {k} is not a multiple of 8: no fused bias or ReLU there")));
    }
    let kernel = dev.kernel(KernelModule::Gemm, "gemm_ref_f16")?;
    let (no_trans, trans) = (0i32, 1i32);
    let mut args = dev.args(&kernel);
    args.arg(&mi)
        .arg(&ni)
        .arg(&ki)
        .arg(&g.alpha)
        .arg(g.a)
        .arg(&ki)
        .arg(&no_trans)
        .arg(g.b)
        .arg(&ki)
        .arg(&trans);
    args.arg(&g.beta).arg(c).arg(&ni);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1),
        block_dim: (16, 16, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments follow gemm_ref_f16's signature (B transposed, N×K) and the
    // lengths were checked above.
    unsafe { dev.launch(&kernel, args, cfg, shapes) }
}
