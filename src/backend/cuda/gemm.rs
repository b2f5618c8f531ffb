//! The host side of kernels/gemm.cu: picks the tensor-core kernel (and its tile, from
//! the tile table) when the operands meet its requirements and the reference kernel
//! otherwise, checks shapes, and launches.

use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};
use half::f16;

use super::device::{CudaError, Device, check_len, push_optional};
use super::tiles::{TileShape, pick_n64};
use crate::kernels::{Entry, entries};

/// Where C lives and in which precision.
pub enum GemmOut<'a> {
    F32(&'a mut CudaSlice<f32>),
    F16(&'a mut CudaSlice<f16>),
}

impl GemmOut<'_> {
    pub fn len(&self) -> usize {
        match self {
            GemmOut::F32(s) => s.len(),
            GemmOut::F16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The tensor-core kernels' `out_f16` flag for this output.
    pub fn f16_flag(&self) -> i32 {
        matches!(self, GemmOut::F16(_)) as i32
    }
    /// Pushes the output pointer.
    pub fn push<'a>(&'a mut self, args: &mut LaunchArgs<'a>) {
        match self {
            GemmOut::F32(s) => args.arg(&mut **s),
            GemmOut::F16(s) => args.arg(&mut **s),
        };
    }
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
    k.is_multiple_of(8)
}

/// The tensor-core entry point built with `tile` (kernels/gemm.cu).
fn tc_entry(tile: TileShape) -> Entry {
    match tile {
        TileShape::M128N64 => entries::GEMM_TC_F16_128X64,
        _ => entries::GEMM_TC_F16_128X128,
    }
}

/// The kernel `gemm_nt` runs for these sizes on `dev`.
pub fn kernel_for(dev: &Device, m: usize, n: usize, k: usize) -> Entry {
    if uses_tensor_cores(k) { tc_entry(pick_n64(m, n, dev.sm_count)) } else { entries::GEMM_REF_F16 }
}

pub fn gemm_nt(dev: &Device, g: &GemmNt<'_>, mut c: GemmOut<'_>) -> Result<(), CudaError> {
    let (m, n, k) = (g.m, g.n, g.k);
    let entry = kernel_for(dev, m, n, k);
    let bad = |detail: String| CudaError::Arguments { kernel: entry, detail };
    check_len(entry, "A", g.a.len(), m * k)?;
    check_len(entry, "B", g.b.len(), n * k)?;
    check_len(entry, "C", c.len(), m * n)?;
    check_len(entry, "bias", g.bias.map_or(n, |b| b.len()), n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let shapes = || format!("M={m} N={n} K={k}");
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    if uses_tensor_cores(k) {
        let tile = pick_n64(m, n, dev.sm_count);
        let kernel = dev.kernel(entry)?;
        let (relu, out_f16) = (g.relu as i32, c.f16_flag());
        let mut args = dev.args(&kernel);
        args.arg(&mi).arg(&ni).arg(&ki).arg(&g.alpha).arg(g.a).arg(&ki).arg(g.b).arg(&ki).arg(&g.beta);
        c.push(&mut args);
        args.arg(&ni).arg(&out_f16);
        push_optional(&mut args, g.bias);
        args.arg(&relu);
        // SAFETY: the arguments follow gemm_tc_f16's signature and the lengths were
        // checked above.
        return unsafe { dev.launch(&kernel, args, tile.launch(m, n, 1), shapes) };
    }
    // The reference kernel: FP32 output, no epilogue beyond alpha and beta.
    let GemmOut::F32(c) = c else {
        return Err(bad(format!("K = {k} is not a multiple of 8: only FP32 output is supported there")));
    };
    if g.bias.is_some() || g.relu {
        return Err(bad(format!("K = {k} is not a multiple of 8: no fused bias or ReLU there")));
    }
    let r = GemmRef { m, n, k, alpha: g.alpha, a: g.a, trans_a: false, b: g.b, trans_b: true, beta: g.beta };
    gemm_reference(dev, &r, c)
}

/// C [m, n] (FP32, row-major) = alpha · op(A) · op(B) + beta · C with A stored M×K (or
/// K×M when `trans_a`) and B stored K×N (or N×K when `trans_b`), dense.
pub struct GemmRef<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: &'a CudaSlice<f16>,
    pub trans_a: bool,
    pub b: &'a CudaSlice<f16>,
    pub trans_b: bool,
    pub beta: f32,
}

/// The reference kernel `gemm_ref_f16`, any transposes: the on-device oracle, and the
/// path for products too small or too oddly shaped to matter (a classifier head).
pub fn gemm_reference(dev: &Device, g: &GemmRef<'_>, c: &mut CudaSlice<f32>) -> Result<(), CudaError> {
    let (m, n, k) = (g.m, g.n, g.k);
    let entry = entries::GEMM_REF_F16;
    check_len(entry, "A", g.a.len(), m * k)?;
    check_len(entry, "B", g.b.len(), n * k)?;
    check_len(entry, "C", c.len(), m * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let kernel = dev.kernel(entry)?;
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    let lda = if g.trans_a { mi } else { ki };
    let ldb = if g.trans_b { ki } else { ni };
    let (ta, tb) = (g.trans_a as i32, g.trans_b as i32);
    let mut args = dev.args(&kernel);
    args.arg(&mi).arg(&ni).arg(&ki).arg(&g.alpha).arg(g.a).arg(&lda).arg(&ta).arg(g.b).arg(&ldb).arg(&tb);
    args.arg(&g.beta).arg(c).arg(&ni);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1),
        block_dim: (16, 16, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: gemm_ref_f16's signature; the lengths were checked above.
    unsafe { dev.launch(&kernel, args, cfg, || format!("M={m} N={n} K={k} trans_a={ta} trans_b={tb}")) }
}
