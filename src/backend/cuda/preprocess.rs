//! The host side of kernels/preprocess.cu: a batch of frames as stored (packed u8 RGB, or
//! I420 planes straight from the decoder), each with its crop, flip and jitter, into the
//! model's normalised FP16 NHWC input. The CPU twin is `data::preprocess`.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::f16;

use super::device::{CudaError, Device, check_len};
use crate::backend::params::{FrameParams, Normalize};
use crate::kernels::{Entry, entries};

pub use crate::data::preprocess::FrameFormat;

fn entry(format: FrameFormat) -> Entry {
    match format {
        FrameFormat::Rgb => entries::PREPROCESS_U8_F16,
        FrameFormat::I420 => entries::PREPROCESS_YUV420_F16,
    }
}

/// dst [N, side, side, 3] (FP16) from N source frames of `h × w` in `format`, N being the
/// number of frames `params` describes. One thread per output pixel.
#[allow(clippy::too_many_arguments)]
pub fn preprocess_frames(
    dev: &Device,
    format: FrameFormat,
    src: &CudaSlice<u8>,
    (h, w): (usize, usize),
    params: &FrameParams,
    side: usize,
    norm: Normalize,
    dst: &mut CudaSlice<f16>,
) -> Result<(), CudaError> {
    let entry = entry(format);
    let n = params.crops.len();
    if params.flips.len() != n || params.jitter.len() != n {
        return Err(CudaError::Arguments {
            kernel: entry,
            detail: format!(
                "{n} crops but {} flips and {} jitters: one of each per frame",
                params.flips.len(),
                params.jitter.len()
            ),
        });
    }
    check_len(entry, "src", src.len(), n * format.frame_bytes(h, w))?;
    check_len(entry, "dst", dst.len(), n * side * side * 3)?;
    if n == 0 || side == 0 {
        return Ok(());
    }
    let crops = dev.upload(&params.crops.concat())?;
    let flips = dev.upload(&params.flips)?;
    let jitter = dev.upload(&params.jitter.concat())?;
    let kernel = dev.kernel(entry)?;
    let (ni, hi, wi, si) = (n as i32, h as i32, w as i32, side as i32);
    let [mr, mg, mb] = norm.mean;
    let [sr, sg, sb] = norm.std;
    let mut args = dev.args(&kernel);
    args.arg(src).arg(&ni).arg(&hi).arg(&wi).arg(&*crops).arg(&*flips).arg(&*jitter).arg(dst);
    args.arg(&si).arg(&mr).arg(&mg).arg(&mb).arg(&sr).arg(&sg).arg(&sb);
    let pixels = (n * side * side) as u32;
    let cfg =
        LaunchConfig { grid_dim: (pixels.div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: both preprocess kernels take these arguments; src holds N frames, dst N·S²·3
    // halves, and the per-frame arrays N entries each (checked above).
    unsafe { dev.launch(&kernel, args, cfg, || format!("{n} frames {h}×{w} → {side}²")) }
}
