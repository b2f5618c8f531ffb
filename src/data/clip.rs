//! One clip, ready for the cache and the loader: the sampled frames of a video, quality
//! filtered, cropped around the face (or the centre) and resized to `frame_size`, as u8.

use std::collections::HashMap;
use std::path::Path;

use super::faces::{self, Crop, FaceBox};
use super::quality;

/// `frames` frames of `side × side × 3` bytes, one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipFrames {
    pub frames: usize,
    pub side: usize,
    pub data: Vec<u8>,
}

impl ClipFrames {
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Bilinear resize of the `crop` of an RGB24 frame `w × h` to `side × side` (pixel centres
/// aligned, as in preprocessing).
pub fn crop_resize(rgb: &[u8], w: usize, h: usize, crop: Crop, side: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(side * side * 3);
    let scale = crop.side as f32 / side as f32;
    let at = |y: usize, x: usize, c: usize| {
        rgb[((crop.y0 + y).min(h - 1) * w + (crop.x0 + x).min(w - 1)) * 3 + c] as f32
    };
    let last = (crop.side - 1) as f32;
    for oy in 0..side {
        let sy = ((oy as f32 + 0.5) * scale - 0.5).clamp(0.0, last);
        let (y0, fy) = (sy as usize, sy.fract());
        let y1 = (y0 + 1).min(crop.side - 1);
        for ox in 0..side {
            let sx = ((ox as f32 + 0.5) * scale - 0.5).clamp(0.0, last);
            let (x0, fx) = (sx as usize, sx.fract());
            let x1 = (x0 + 1).min(crop.side - 1);
            for c in 0..3 {
                let top = at(y0, x0, c) * (1.0 - fx) + at(y0, x1, c) * fx;
                let bottom = at(y1, x0, c) * (1.0 - fx) + at(y1, x1, c) * fx;
                out.push((top * (1.0 - fy) + bottom * fy).round() as u8);
            }
        }
    }
    out
}

/// Turns decoded frames (with their frame indices) into a clip: quality filter with
/// nearest-good replacement (missing frames too), face or centre crop, resize. Also
/// returns how many frames were rejected or missing. Face boxes come from the video's
/// sidecar.
pub fn assemble(
    video: &Path,
    decoded: &[(usize, usize, usize, Vec<u8>)],
    side: usize,
    quality_threshold: f64,
    face_scale: f64,
) -> Result<(ClipFrames, usize), String> {
    assemble_with_boxes(&faces::sidecar(video)?, decoded, side, quality_threshold, face_scale)
}

/// `assemble` with the face boxes given (by frame index; frames without one get the
/// centre square).
pub fn assemble_with_boxes(
    boxes: &HashMap<usize, FaceBox>,
    decoded: &[(usize, usize, usize, Vec<u8>)],
    side: usize,
    quality_threshold: f64,
    face_scale: f64,
) -> Result<(ClipFrames, usize), String> {
    // An empty frame is a wanted index the decoder never produced (a gap in a
    // variable-frame-rate stream, a corrupt packet): replaced like a rejected one.
    let good: Vec<bool> = decoded
        .iter()
        .map(|(_, w, h, rgb)| {
            !rgb.is_empty() && quality::judge(&quality::measure(rgb, *w, *h), quality_threshold).is_none()
        })
        .collect();
    let use_frame = quality::replacements(&good).ok_or_else(|| {
        format!("all {} sampled frames fail the quality filter (threshold {quality_threshold})", good.len())
    })?;
    let mut data = Vec::with_capacity(decoded.len() * side * side * 3);
    for &k in &use_frame {
        let (index, w, h, rgb) = &decoded[k];
        let crop = faces::crop_for(boxes, *index, face_scale, *w, *h);
        data.extend(crop_resize(rgb, *w, *h, crop, side));
    }
    let rejected = good.iter().filter(|g| !**g).count();
    Ok((ClipFrames { frames: decoded.len(), side, data }, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_a_flat_crop_keeps_its_colour_and_crops_pick_their_region() {
        let (w, h) = (10, 6);
        let mut rgb = vec![0u8; w * h * 3];
        for y in 2..6 {
            for x in 4..8 {
                rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[200, 100, 50]);
            }
        }
        let out = crop_resize(&rgb, w, h, Crop { x0: 4, y0: 2, side: 4 }, 7);
        assert_eq!(out.len(), 7 * 7 * 3);
        assert!(out.chunks(3).all(|p| p == [200, 100, 50]));
        let identity = crop_resize(&rgb, w, h, Crop { x0: 0, y0: 0, side: 6 }, 6);
        assert_eq!(&identity[..6 * 3], &rgb[..6 * 3], "same size: the first row is copied");
    }
}
