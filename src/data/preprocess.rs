//! Preprocessing on the CPU, the twin of `kernels/preprocess.cu` (`preprocess_u8_f16`):
//! u8 RGB frames → crop → bilinear resize to `side × side` → optional horizontal flip →
//! brightness/contrast jitter → normalise with mean/std, NHWC out. The same arithmetic,
//! in the same order, as the kernel, so that their outputs agree to f16 rounding.

use rayon::prelude::*;

use crate::backend::params::FrameParams;

/// A crop rectangle inside a frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub y0: usize,
    pub x0: usize,
    pub h: usize,
    pub w: usize,
}

/// What happens to one frame: where to crop, whether to mirror, and the jitter
/// (`v ← (v − ½)·contrast + ½ + brightness`, on 0..1 values; 0 and 1 leave it alone).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameOp {
    pub crop: Rect,
    pub flip: bool,
    pub brightness: f32,
    pub contrast: f32,
}

/// The frames' parameters in the layout the preprocessing kernels read.
pub fn frame_params(ops: &[FrameOp]) -> FrameParams {
    FrameParams {
        crops: ops.iter().map(|o| [o.crop.y0, o.crop.x0, o.crop.h, o.crop.w].map(|v| v as i32)).collect(),
        flips: ops.iter().map(|o| o.flip as u8).collect(),
        jitter: ops.iter().map(|o| [o.brightness, o.contrast]).collect(),
    }
}

/// How frames are stored: what the loader hands over and the preprocessing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// h·w·3 bytes per frame.
    Rgb,
    /// h·w luma bytes, then ⌈h/2⌉·⌈w/2⌉ bytes of U and of V per frame.
    I420,
}

impl FrameFormat {
    /// Bytes of one `h × w` frame.
    pub fn frame_bytes(self, h: usize, w: usize) -> usize {
        match self {
            FrameFormat::Rgb => h * w * 3,
            FrameFormat::I420 => yuv420_len(h, w),
        }
    }
}

/// `preprocess` or `preprocess_yuv420`, as `format` says.
pub fn preprocess_as(
    format: FrameFormat,
    src: &[u8],
    (h, w): (usize, usize),
    ops: &[FrameOp],
    side: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    match format {
        FrameFormat::Rgb => preprocess(src, h, w, ops, side, mean, std),
        FrameFormat::I420 => preprocess_yuv420(src, h, w, ops, side, mean, std),
    }
}

/// ImageNet statistics, the default for ResNets pretrained on it.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The bilinear taps of one output pixel in crop coordinates (pixel centres map to pixel
/// centres, align_corners = false, clamped inside the crop).
#[derive(Debug, Clone, Copy)]
struct Taps {
    iy: usize,
    iy1: usize,
    fy: f32,
    ix: usize,
    ix1: usize,
    fx: f32,
    /// The continuous sample position, for planes at another resolution.
    sy: f32,
    sx: f32,
}

fn lerp2(taps: &Taps, at: impl Fn(usize, usize) -> f32) -> f32 {
    let Taps { iy, iy1, fy, ix, ix1, fx, .. } = *taps;
    let top = at(iy, ix) * (1.0 - fx) + at(iy, ix1) * fx;
    let bottom = at(iy1, ix) * (1.0 - fx) + at(iy1, ix1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Crop, resize, flip, jitter and normalise frames of `frame_len` bytes; `sample` gives
/// the RGB value (0..255) of a frame at the taps of an output pixel.
fn resample(
    src: &[u8],
    frame_len: usize,
    ops: &[FrameOp],
    side: usize,
    mean: [f32; 3],
    std: [f32; 3],
    sample: impl Fn(&[u8], &Rect, &Taps) -> [f32; 3] + Sync,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        frame_len * ops.len(),
        "preprocess: {} frames need {} bytes",
        ops.len(),
        frame_len * ops.len()
    );
    let mut out = vec![0.0f32; ops.len() * side * side * 3];
    let inv_std = std.map(|s| 1.0 / s);
    out.par_chunks_mut(side * side * 3).zip(src.par_chunks(frame_len)).zip(ops.par_iter()).for_each(
        |((dst, frame), op)| {
            let (bh, bw) = (op.crop.h, op.crop.w);
            for oy in 0..side {
                let sy = ((oy as f32 + 0.5) * bh as f32 / side as f32 - 0.5).clamp(0.0, (bh - 1) as f32);
                let (iy, fy) = (sy as usize, sy - (sy as usize) as f32);
                for ox in 0..side {
                    let src_x = if op.flip { side - 1 - ox } else { ox };
                    let sx =
                        ((src_x as f32 + 0.5) * bw as f32 / side as f32 - 0.5).clamp(0.0, (bw - 1) as f32);
                    let (ix, fx) = (sx as usize, sx - (sx as usize) as f32);
                    let taps =
                        Taps { iy, iy1: (iy + 1).min(bh - 1), fy, ix, ix1: (ix + 1).min(bw - 1), fx, sy, sx };
                    let rgb = sample(frame, &op.crop, &taps);
                    for c in 0..3 {
                        let v = rgb[c] * (1.0 / 255.0);
                        let v = (v - 0.5) * op.contrast + 0.5 + op.brightness;
                        dst[(oy * side + ox) * 3 + c] = (v - mean[c]) * inv_std[c];
                    }
                }
            }
        },
    );
    out
}

/// `src` holds frames of `h × w × 3` bytes (packed RGB), one per entry of `ops`; the
/// result is `ops.len() × side × side × 3`.
pub fn preprocess(
    src: &[u8],
    h: usize,
    w: usize,
    ops: &[FrameOp],
    side: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    resample(src, h * w * 3, ops, side, mean, std, |frame, crop, taps| {
        let at = |c: usize| {
            move |yy: usize, xx: usize| {
                let gy = (crop.y0 + yy).min(h - 1);
                let gx = (crop.x0 + xx).min(w - 1);
                frame[(gy * w + gx) * 3 + c] as f32
            }
        };
        [lerp2(taps, at(0)), lerp2(taps, at(1)), lerp2(taps, at(2))]
    })
}

/// Bytes of one I420 frame of `h × w`: a full-size Y plane, then U and V at half size
/// (rounded up for odd sizes).
pub fn yuv420_len(h: usize, w: usize) -> usize {
    h * w + 2 * h.div_ceil(2) * w.div_ceil(2)
}

/// BT.601 limited range ("MPEG" range, what H.264 streams without colour metadata carry
/// and FFmpeg's converter assumes) to RGB, 0..255, clamped as FFmpeg clamps.
pub fn yuv_to_rgb(y: f32, u: f32, v: f32) -> [f32; 3] {
    let (y, u, v) = (1.164_383 * (y - 16.0), u - 128.0, v - 128.0);
    [y + 1.596_027 * v, y - 0.391_762 * u - 0.812_968 * v, y + 2.017_232 * u].map(|c| c.clamp(0.0, 255.0))
}

/// As `preprocess`, from I420 frames (`yuv420_len(h, w)` bytes each) straight from the
/// decoder: luma is sampled at the taps, chroma bilinearly at the same point of its
/// half-resolution plane (centre-sited), and the three are converted to RGB before the
/// jitter and normalisation.
pub fn preprocess_yuv420(
    src: &[u8],
    h: usize,
    w: usize,
    ops: &[FrameOp],
    side: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let (ch, cw) = (h.div_ceil(2), w.div_ceil(2));
    resample(src, yuv420_len(h, w), ops, side, mean, std, |frame, crop, taps| {
        let luma =
            lerp2(taps, |yy, xx| frame[(crop.y0 + yy).min(h - 1) * w + (crop.x0 + xx).min(w - 1)] as f32);
        // The sample point in frame pixels, then in chroma pixels.
        let cy = (((crop.y0 as f32 + taps.sy) + 0.5) * 0.5 - 0.5).clamp(0.0, (ch - 1) as f32);
        let cx = (((crop.x0 as f32 + taps.sx) + 0.5) * 0.5 - 0.5).clamp(0.0, (cw - 1) as f32);
        let (iy, ix) = (cy as usize, cx as usize);
        let chroma_taps = Taps {
            iy,
            iy1: (iy + 1).min(ch - 1),
            fy: cy - iy as f32,
            ix,
            ix1: (ix + 1).min(cw - 1),
            fx: cx - ix as f32,
            sy: cy,
            sx: cx,
        };
        let plane = |offset: usize| move |yy: usize, xx: usize| frame[offset + yy * cw + xx] as f32;
        let u = lerp2(&chroma_taps, plane(h * w));
        let v = lerp2(&chroma_taps, plane(h * w + ch * cw));
        yuv_to_rgb(luma, u, v)
    })
}
