//! The host side of kernels/conv.cu: forward, input gradient and weight gradient on
//! tensor cores (implicit GEMM, tile from the tile table), with the stem's 3 channels
//! padded to 8 and stride-1 1×1 convolutions sent to the GEMM; the direct reference
//! kernel stays as the on-device oracle.

use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};
use half::f16;

use super::buffer::PoolSlice;
use super::device::{CudaError, Device, check_len, check_lens, grid_1d, push_optional};
use super::gemm::{GemmNt, GemmOut, gemm_nt};
use super::tiles::{TileShape, WgradPlan, pick_n64, plan_wgrad, reduction_tiles};
use crate::backend::params::Conv2dGeom;
use crate::kernels::{Entry, entries};

/// Channels the implicit-GEMM loaders copy at a time (16 bytes of FP16).
const VECTOR: usize = 8;
/// Bytes of split-K partial sums the weight gradient may use.
pub const WGRAD_WORKSPACE: usize = 64 << 20;

/// The fused epilogue: y = alpha·conv + beta·y (+ bias [K]) (then ReLU).
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub beta: f32,
    pub bias: Option<&'a CudaSlice<f32>>,
    pub relu: bool,
}

/// A stride-1, unpadded 1×1 convolution: a plain GEMM over the NHWC pixels.
pub fn is_pointwise(g: &Conv2dGeom) -> bool {
    g.r == 1 && g.s == 1 && g.stride == [1, 1] && g.pad == [0, 0]
}

/// The geometry with its channels padded to the loaders' vector width.
fn padded(g: &Conv2dGeom) -> Conv2dGeom {
    Conv2dGeom { c: g.c.next_multiple_of(VECTOR), ..*g }
}

/// Pushes the 13 geometry arguments every conv kernel takes after its pointers.
fn push_geom<'a>(args: &mut LaunchArgs<'a>, dims: &'a [i32; 13]) {
    for v in dims {
        args.arg(v);
    }
}

fn geom_args(g: &Conv2dGeom) -> [i32; 13] {
    let i = |v: usize| v as i32;
    [
        i(g.n),
        i(g.h),
        i(g.w),
        i(g.c),
        i(g.k),
        i(g.r),
        i(g.s),
        i(g.p),
        i(g.q),
        i(g.stride[0]),
        i(g.stride[1]),
        i(g.pad[0]),
        i(g.pad[1]),
    ]
}

/// The element counts of x, w and y, checked against the 32-bit row indices of the kernels.
fn sizes(entry: Entry, g: &Conv2dGeom) -> Result<(usize, usize, usize), CudaError> {
    let (xn, wn, yn) = (g.n * g.h * g.w * g.c, g.k * g.r * g.s * g.c, g.n * g.p * g.q * g.k);
    let rows = (g.n * g.h * g.w).max(g.n * g.p * g.q);
    if rows > i32::MAX as usize || g.r * g.s * g.c.max(g.k) > i32::MAX as usize {
        return Err(CudaError::Arguments {
            kernel: entry,
            detail: format!("{g:?}: more pixels or taps than the kernels' 32-bit indices"),
        });
    }
    Ok((xn, wn, yn))
}

/// src [rows, c] → [rows, c_pad] with zero channels added.
fn pad_channels(
    dev: &Device,
    src: &CudaSlice<f16>,
    rows: usize,
    c: usize,
) -> Result<PoolSlice<f16>, CudaError> {
    let c_pad = c.next_multiple_of(VECTOR);
    // SAFETY: the kernel below writes every element, the padding as zeros.
    let mut dst = unsafe { dev.alloc_uninit::<f16>(rows * c_pad) }?;
    let kernel = dev.kernel(entries::CONV_PAD_CHANNELS_F16)?;
    let (rows_i, c_i, c_pad_i) = (rows as i64, c as i32, c_pad as i32);
    let mut args = dev.args(&kernel);
    args.arg(src).arg(&mut dst).arg(&rows_i).arg(&c_i).arg(&c_pad_i);
    // SAFETY: src holds rows·c halves (the callers' checks), dst rows·c_pad.
    unsafe {
        dev.launch(&kernel, args, grid_1d(rows * c_pad), || format!("{rows}×{c} → {rows}×{c_pad}"))
    }?;
    Ok(dst)
}

/// The forward entry point built with `tile` (kernels/conv.cu).
fn fwd_entry(tile: TileShape) -> Entry {
    match tile {
        TileShape::M128N64 => entries::CONV2D_FWD_IMPLICIT_F16_128X64,
        _ => entries::CONV2D_FWD_IMPLICIT_F16_128X128,
    }
}

/// The kernel `conv2d_fwd` runs for `g` on `dev` (after padding the stem's channels).
pub fn fwd_kernel_for(dev: &Device, g: &Conv2dGeom) -> Entry {
    let g = padded(g);
    if is_pointwise(&g) {
        return super::gemm::kernel_for(dev, g.n * g.p * g.q, g.k, g.c);
    }
    fwd_entry(pick_n64(g.n * g.p * g.q, g.k, dev.sm_count))
}

/// y [N, P, Q, K] = conv(x [N, H, W, C], w [K, R, S, C]) with the epilogue, on tensor
/// cores for every C (a C that is not a multiple of 8 — the stem's 3 — is zero-padded in
/// scratch, input and filter alike).
pub fn conv2d_fwd(
    dev: &Device,
    g: &Conv2dGeom,
    x: &CudaSlice<f16>,
    w: &CudaSlice<f16>,
    y: GemmOut<'_>,
    epi: Epilogue<'_>,
) -> Result<(), CudaError> {
    let entry = fwd_kernel_for(dev, g);
    let (xn, wn, yn) = sizes(entry, g)?;
    check_lens(entry, &[("x", x.len(), xn), ("w", w.len(), wn), ("y", y.len(), yn)])?;
    check_len(entry, "bias", epi.bias.map_or(g.k, |b| b.len()), g.k)?;
    if !g.c.is_multiple_of(VECTOR) {
        let xp = pad_channels(dev, x, g.n * g.h * g.w, g.c)?;
        let wp = pad_channels(dev, w, g.k * g.r * g.s, g.c)?;
        return conv2d_fwd(dev, &padded(g), &xp, &wp, y, epi);
    }
    if is_pointwise(g) {
        let (m, n, k) = (g.n * g.p * g.q, g.k, g.c);
        let gemm = GemmNt { m, n, k, alpha: 1.0, a: x, b: w, beta: epi.beta, bias: epi.bias, relu: epi.relu };
        return gemm_nt(dev, &gemm, y);
    }
    let tile = pick_n64(g.n * g.p * g.q, g.k, dev.sm_count);
    let kernel = dev.kernel(entry)?;
    let (dims, alpha, relu) = (geom_args(g), 1.0f32, epi.relu as i32);
    let mut y = y;
    let out_f16 = y.f16_flag();
    let mut args = dev.args(&kernel);
    args.arg(x).arg(w);
    y.push(&mut args);
    push_geom(&mut args, &dims);
    args.arg(&alpha).arg(&epi.beta).arg(&out_f16);
    push_optional(&mut args, epi.bias);
    args.arg(&relu);
    // SAFETY: conv2d_fwd_implicit_f16's signature; lengths checked above.
    unsafe { dev.launch(&kernel, args, tile.launch(g.n * g.p * g.q, g.k, 1), || format!("{g:?}")) }
}

/// The direct definition (`conv2d_fwd_ref_f16`, any C, FP16 out, no epilogue): the
/// on-device oracle of the tensor-core paths, far from any roofline.
pub fn conv2d_fwd_reference(
    dev: &Device,
    g: &Conv2dGeom,
    x: &CudaSlice<f16>,
    w: &CudaSlice<f16>,
    y: &mut CudaSlice<f16>,
) -> Result<(), CudaError> {
    let entry = entries::CONV2D_FWD_REF_F16;
    let (xn, wn, yn) = sizes(entry, g)?;
    check_lens(entry, &[("x", x.len(), xn), ("w", w.len(), wn), ("y", y.len(), yn)])?;
    let kernel = dev.kernel(entry)?;
    let dims = geom_args(g);
    let mut args = dev.args(&kernel);
    args.arg(x).arg(w).arg(y);
    push_geom(&mut args, &dims);
    let cfg = LaunchConfig {
        grid_dim: (yn.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: conv2d_fwd_ref_f16's signature; lengths checked above.
    unsafe { dev.launch(&kernel, args, cfg, || format!("{g:?}")) }
}

fn dgrad_entry(tile: TileShape) -> Entry {
    match tile {
        TileShape::M128N64 => entries::CONV2D_DGRAD_IMPLICIT_F16_128X64,
        _ => entries::CONV2D_DGRAD_IMPLICIT_F16_128X128,
    }
}

/// Positions along an axis of `n` in stride phase `phase` (kernels/conv.cu
/// `phase_first`/`phase_count`): those h with (h + pad) ≡ phase (mod stride).
fn phase_positions(phase: usize, n: usize, pad: usize, stride: usize) -> usize {
    let first = (phase + stride - pad % stride) % stride;
    if first < n { (n - first).div_ceil(stride) } else { 0 }
}

/// dx [N, H, W, C] (= alpha·… + beta·dx) = the input gradient of the convolution, from
/// dy [N, P, Q, K] and w [K, R, S, C]: the filter is transposed to C×R×S×K per stride
/// phase into scratch, then the implicit-GEMM kernel runs once per phase (stride 1: once;
/// 2: four times, each over a quarter of the rows and its own taps), or for a pointwise
/// convolution the GEMM. Needs K (output channels) a multiple of 8, as every ResNet layer
/// has; any C.
pub fn conv2d_dgrad(
    dev: &Device,
    g: &Conv2dGeom,
    dy: &CudaSlice<f16>,
    w: &CudaSlice<f16>,
    dx: GemmOut<'_>,
    beta: f32,
) -> Result<(), CudaError> {
    let pixels = g.n * g.h * g.w;
    let entry = dgrad_entry(pick_n64(pixels, g.c, dev.sm_count));
    let bad = |detail: String| CudaError::Arguments { kernel: entry, detail };
    if !g.k.is_multiple_of(VECTOR) {
        return Err(bad(format!("K = {} output channels: the kernel needs a multiple of 8", g.k)));
    }
    let (xn, wn, yn) = sizes(entry, g)?;
    check_lens(entry, &[("dy", dy.len(), yn), ("w", w.len(), wn), ("dx", dx.len(), xn)])?;
    let shapes = || format!("{g:?}");
    // SAFETY: the transpose below writes every element.
    let mut wt = unsafe { dev.alloc_uninit::<f16>(wn) }?;
    let transpose = dev.kernel(entries::CONV_WEIGHT_KRSC_TO_CRSK_F16)?;
    let [_, _, _, c, k, r, s, _, _, sh, sw, ..] = geom_args(g);
    let mut args = dev.args(&transpose);
    args.arg(w).arg(&mut wt).arg(&k).arg(&r).arg(&s).arg(&c).arg(&sh).arg(&sw);
    // SAFETY: both buffers hold K·R·S·C halves (the phase blocks partition the taps).
    unsafe { dev.launch(&transpose, args, grid_1d(wn), shapes) }?;

    if is_pointwise(g) {
        let gemm =
            GemmNt { m: pixels, n: g.c, k: g.k, alpha: 1.0, a: dy, b: &wt, beta, bias: None, relu: false };
        return gemm_nt(dev, &gemm, dx);
    }
    let (dims, alpha) = (geom_args(g), 1.0f32);
    let mut dx = dx;
    let out_f16 = dx.f16_flag();
    let [stride_h, stride_w] = g.stride;
    for (phase_h, phase_w) in (0..stride_h).flat_map(|ph| (0..stride_w).map(move |pw| (ph, pw))) {
        let rows = g.n
            * phase_positions(phase_h, g.h, g.pad[0], stride_h)
            * phase_positions(phase_w, g.w, g.pad[1], stride_w);
        if rows == 0 {
            continue;
        }
        let tile = pick_n64(rows, g.c, dev.sm_count);
        let kernel = dev.kernel(dgrad_entry(tile))?;
        let phase = [phase_h as i32, phase_w as i32];
        let mut args = dev.args(&kernel);
        args.arg(dy).arg(&wt);
        dx.push(&mut args);
        push_geom(&mut args, &dims);
        args.arg(&phase[0]).arg(&phase[1]).arg(&alpha).arg(&beta).arg(&out_f16);
        // SAFETY: conv2d_dgrad_implicit_f16's signature; lengths checked above, and the
        // phase's rows are pixels of dx.
        unsafe { dev.launch(&kernel, args, tile.launch(rows, g.c, 1), || format!("{g:?} phase {phase:?}")) }?;
    }
    Ok(())
}

fn wgrad_entry(tile: TileShape) -> Entry {
    match tile {
        TileShape::M64N128 => entries::CONV2D_WGRAD_IMPLICIT_F16_64X128,
        _ => entries::CONV2D_WGRAD_IMPLICIT_F16_128X128,
    }
}

/// The split-K plan `conv2d_wgrad` uses for `g` on `dev`.
pub fn wgrad_plan(dev: &Device, g: &Conv2dGeom) -> WgradPlan {
    let gp = padded(g);
    plan_wgrad(gp.k, gp.r * gp.s * gp.c, gp.n * gp.p * gp.q, dev.sm_count, WGRAD_WORKSPACE)
}

/// dw [K, R, S, C] (FP32, = … + beta·dw) = the weight gradient from x [N, H, W, C] and
/// dy [N, P, Q, K], split over the pixels as `wgrad_plan` says.
pub fn conv2d_wgrad(
    dev: &Device,
    g: &Conv2dGeom,
    x: &CudaSlice<f16>,
    dy: &CudaSlice<f16>,
    dw: &mut CudaSlice<f32>,
    beta: f32,
) -> Result<(), CudaError> {
    conv2d_wgrad_planned(dev, g, x, dy, dw, beta, wgrad_plan(dev, g))
}

/// `conv2d_wgrad` with a given plan (tests compare plans; the bits differ only by the
/// order of the FP32 sums).
pub fn conv2d_wgrad_planned(
    dev: &Device,
    g: &Conv2dGeom,
    x: &CudaSlice<f16>,
    dy: &CudaSlice<f16>,
    dw: &mut CudaSlice<f32>,
    beta: f32,
    plan: WgradPlan,
) -> Result<(), CudaError> {
    let entry = wgrad_entry(plan.tile);
    let bad = |detail: String| CudaError::Arguments { kernel: entry, detail };
    if !g.k.is_multiple_of(VECTOR) {
        return Err(bad(format!("K = {} output channels: the kernel needs a multiple of 8", g.k)));
    }
    let (xn, wn, yn) = sizes(entry, g)?;
    check_lens(entry, &[("x", x.len(), xn), ("dy", dy.len(), yn), ("dw", dw.len(), wn)])?;
    let pixels = g.n * g.p * g.q;
    if !plan.covers(pixels) {
        let k_tiles = reduction_tiles(pixels);
        return Err(bad(format!("{plan:?} does not cover the {k_tiles} reduction tiles of {g:?} once")));
    }
    let xp;
    let (gp, x) = if !g.c.is_multiple_of(VECTOR) {
        xp = pad_channels(dev, x, g.n * g.h * g.w, g.c)?;
        (padded(g), &*xp)
    } else {
        (*g, x)
    };
    let cols = gp.r * gp.s * gp.c;
    let direct = plan.splits == 1 && gp.c == g.c;
    // SAFETY: every split writes its whole K × cols slice (the plan covers each
    // reduction tile once; a split's epilogue stores its tile whatever it summed).
    let mut workspace =
        if direct { None } else { Some(unsafe { dev.alloc_uninit::<f32>(plan.splits * g.k * cols) }?) };
    let shapes = || format!("{g:?} {plan:?}");
    let kernel = dev.kernel(entry)?;
    let dims = geom_args(&gp);
    let tps = plan.tiles_per_split as i32;
    let (alpha, out_beta) = if direct { (1.0f32, beta) } else { (1.0f32, 0.0f32) };
    let mut args = dev.args(&kernel);
    args.arg(x).arg(dy);
    match workspace.as_mut() {
        Some(ws) => args.arg(ws),
        None => args.arg(&mut *dw),
    };
    push_geom(&mut args, &dims);
    args.arg(&tps).arg(&alpha).arg(&out_beta);
    // SAFETY: conv2d_wgrad_implicit_f16's signature; x holds N·H·W·C' halves (padded
    // when C' ≠ C), the output splits·K·R·S·C' floats (or dw, K·R·S·C, when direct).
    unsafe { dev.launch(&kernel, args, plan.tile.launch(g.k, cols, plan.splits), shapes) }?;

    if let Some(ws) = workspace {
        let reduce = dev.kernel(entries::CONV2D_WGRAD_REDUCE_F32)?;
        let (splits, krs, c_pad, c) = (plan.splits as i32, (g.k * g.r * g.s) as i64, gp.c as i32, g.c as i32);
        let mut args = dev.args(&reduce);
        args.arg(&ws).arg(&mut *dw).arg(&splits).arg(&krs).arg(&c_pad).arg(&c).arg(&alpha).arg(&beta);
        // SAFETY: conv2d_wgrad_reduce_f32's signature; ws holds splits·K·R·S·C' floats,
        // dw K·R·S·C.
        unsafe { dev.launch(&reduce, args, grid_1d(wn), shapes) }?;
    }
    Ok(())
}
