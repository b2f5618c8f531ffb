//! Preprocessing on the CPU, the twin of `kernels/preprocess.cu` (`preprocess_u8_f16`):
//! u8 RGB frames → crop → bilinear resize to `side × side` → optional horizontal flip →
//! brightness/contrast jitter → normalise with mean/std, NHWC out. The same arithmetic,
//! in the same order, as the kernel, so that their outputs agree to f16 rounding.

use rayon::prelude::*;

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

/// ImageNet statistics, the default for ResNets pretrained on it.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `src` holds frames of `h × w × 3` bytes, one per entry of `ops`; the result is
/// `ops.len() × side × side × 3`.
pub fn preprocess(
    src: &[u8],
    h: usize,
    w: usize,
    ops: &[FrameOp],
    side: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<f32> {
    let frame_bytes = h * w * 3;
    assert_eq!(
        src.len(),
        frame_bytes * ops.len(),
        "preprocess: {} frames need {} bytes",
        ops.len(),
        frame_bytes * ops.len()
    );
    let mut out = vec![0.0f32; ops.len() * side * side * 3];
    let inv_std = std.map(|s| 1.0 / s);
    out.par_chunks_mut(side * side * 3).zip(src.par_chunks(frame_bytes)).zip(ops.par_iter()).for_each(
        |((dst, frame), op)| {
            let Rect { y0, x0, h: bh, w: bw } = op.crop;
            let at = |yy: usize, xx: usize, c: usize| -> f32 {
                let gy = (y0 + yy).min(h - 1);
                let gx = (x0 + xx).min(w - 1);
                frame[(gy * w + gx) * 3 + c] as f32
            };
            for oy in 0..side {
                // Pixel centres map to pixel centres (align_corners = false), clamped.
                let sy = ((oy as f32 + 0.5) * bh as f32 / side as f32 - 0.5).clamp(0.0, (bh - 1) as f32);
                let (iy, fy) = (sy as usize, sy - (sy as usize) as f32);
                let iy1 = (iy + 1).min(bh - 1);
                for ox in 0..side {
                    let src_x = if op.flip { side - 1 - ox } else { ox };
                    let sx =
                        ((src_x as f32 + 0.5) * bw as f32 / side as f32 - 0.5).clamp(0.0, (bw - 1) as f32);
                    let (ix, fx) = (sx as usize, sx - (sx as usize) as f32);
                    let ix1 = (ix + 1).min(bw - 1);
                    for c in 0..3 {
                        let top = at(iy, ix, c) * (1.0 - fx) + at(iy, ix1, c) * fx;
                        let bottom = at(iy1, ix, c) * (1.0 - fx) + at(iy1, ix1, c) * fx;
                        let v = (top * (1.0 - fy) + bottom * fy) * (1.0 / 255.0);
                        let v = (v - 0.5) * op.contrast + 0.5 + op.brightness;
                        dst[(oy * side + ox) * 3 + c] = (v - mean[c]) * inv_std[c];
                    }
                }
            }
        },
    );
    out
}
