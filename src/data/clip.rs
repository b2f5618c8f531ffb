//! One clip, ready for the cache and the loader: the sampled frames of a video, quality
//! filtered, cropped around the face (or the centre) and resized to `frame_size`, as u8.

use std::collections::HashMap;

use super::faces::{self, Crop, FaceBox};
use super::image::RgbImage;
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

/// Bilinear resize of the `crop` of a frame to `side × side` RGB (pixel centres aligned,
/// as in preprocessing). The taps of each output column are worked out once, not per
/// pixel: same bytes out for 0.43× the instructions (callgrind, 32 crops of 720p to 256²).
pub fn crop_resize(img: RgbImage, crop: Crop, side: usize) -> Vec<u8> {
    let (w, h) = (img.width, img.height);
    let mut out = vec![0u8; side * side * 3];
    let scale = crop.side as f32 / side as f32;
    let last = (crop.side - 1) as f32;
    // Output position `o` along an axis whose crop starts at `origin` in a frame `limit`
    // long: the two source positions it blends (clamped to the frame) and the second's weight.
    let taps = |o: usize, origin: usize, limit: usize| {
        let s = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, last);
        let (a, f) = (s as usize, s.fract());
        let b = (a + 1).min(crop.side - 1);
        ((origin + a).min(limit - 1), (origin + b).min(limit - 1), f)
    };
    let columns: Vec<(usize, usize, f32, f32)> = (0..side)
        .map(|ox| {
            let (x0, x1, fx) = taps(ox, crop.x0, w);
            (x0 * 3, x1 * 3, 1.0 - fx, fx)
        })
        .collect();
    for (oy, out_row) in out.chunks_exact_mut(side * 3).enumerate() {
        let (y0, y1, fy) = taps(oy, crop.y0, h);
        let (top_row, bottom_row) = (img.row(y0), img.row(y1));
        for (px, &(x0, x1, gx, fx)) in out_row.chunks_exact_mut(3).zip(&columns) {
            let (a, b) = (&top_row[x0..x0 + 3], &top_row[x1..x1 + 3]);
            let (c, d) = (&bottom_row[x0..x0 + 3], &bottom_row[x1..x1 + 3]);
            for k in 0..3 {
                let top = a[k] as f32 * gx + b[k] as f32 * fx;
                let bottom = c[k] as f32 * gx + d[k] as f32 * fx;
                px[k] = round_to_u8(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    out
}

/// `v.round() as u8` for 0 ≤ v < 256 without the `roundf` library call (x86-64's baseline
/// has no rounding instruction): `v − ⌊v⌋` is exact there, so halves round up as `round` does.
fn round_to_u8(v: f32) -> u8 {
    let whole = v as u32;
    let up = v - whole as f32 >= 0.5;
    (whole + u32::from(up)).min(255) as u8
}

/// What a clip keeps of each sampled frame: the crop around its face box (the centre
/// square without one), resized to `side`², unless the quality filter rejects the frame.
/// It runs on each frame as the decoder gives it out, so no full-size frame is kept.
#[derive(Debug, Clone, Copy)]
pub struct FrameCrops<'a> {
    /// Face boxes by frame index.
    pub boxes: &'a HashMap<usize, FaceBox>,
    pub side: usize,
    /// 0 keeps every frame (and measures nothing: on 720p that costs a fifth of `prepare`).
    pub quality_threshold: f64,
    pub face_scale: f64,
}

impl FrameCrops<'_> {
    /// Frame `index`'s crop, or `None` when the quality filter rejects it.
    pub fn crop(&self, index: usize, img: RgbImage) -> Option<Vec<u8>> {
        if self.quality_threshold > 0.0
            && quality::judge(&quality::measure(img), self.quality_threshold).is_some()
        {
            return None;
        }
        let crop = faces::crop_for(self.boxes, index, self.face_scale, img.width, img.height);
        Some(crop_resize(img, crop, self.side))
    }
}

/// The clip from its sampled frames' crops of `side`², in sampling order: a frame without
/// one (rejected by the quality filter, or a wanted frame the decoder never produced: a
/// gap in a variable-frame-rate stream, a corrupt packet) takes the nearest frame's crop.
/// Also returns how many frames were replaced.
pub fn assemble(crops: &[Option<Vec<u8>>], side: usize) -> Result<(ClipFrames, usize), String> {
    let good: Vec<bool> = crops.iter().map(Option::is_some).collect();
    let use_frame = quality::replacements(&good).ok_or_else(|| {
        format!("none of the {} sampled frames was decoded and passed the quality filter", crops.len())
    })?;
    let mut data = Vec::with_capacity(crops.len() * side * side * 3);
    for k in use_frame {
        data.extend_from_slice(crops[k].as_deref().expect("replacements name frames with a crop"));
    }
    let replaced = good.iter().filter(|g| !**g).count();
    Ok((ClipFrames { frames: crops.len(), side, data }, replaced))
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
        let out = crop_resize(RgbImage::packed(&rgb, w, h), Crop { x0: 4, y0: 2, side: 4 }, 7);
        assert_eq!(out.len(), 7 * 7 * 3);
        assert!(out.chunks(3).all(|p| p == [200, 100, 50]));
        let identity = crop_resize(RgbImage::packed(&rgb, w, h), Crop { x0: 0, y0: 0, side: 6 }, 6);
        assert_eq!(&identity[..6 * 3], &rgb[..6 * 3], "same size: the first row is copied");
    }

    /// Each output byte straight from the definition: both taps of a pixel worked out where
    /// it is, `f32::round`.
    fn crop_resize_by_pixel(rgb: &[u8], w: usize, h: usize, crop: Crop, side: usize) -> Vec<u8> {
        let scale = crop.side as f32 / side as f32;
        let last = (crop.side - 1) as f32;
        let at = |y: usize, x: usize, c: usize| {
            rgb[((crop.y0 + y).min(h - 1) * w + (crop.x0 + x).min(w - 1)) * 3 + c] as f32
        };
        let mut out = Vec::new();
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

    #[test]
    fn crop_resize_gives_the_bytes_of_its_definition() {
        let (w, h) = (37, 23);
        let mut rng = crate::rng::Rng::new(3);
        let rgb: Vec<u8> = (0..w * h * 3).map(|_| rng.next_u64() as u8).collect();
        // Down, up, same size, crops reaching past the right and bottom edges.
        for (crop, side) in [
            (Crop { x0: 0, y0: 0, side: 23 }, 8),
            (Crop { x0: 5, y0: 2, side: 17 }, 40),
            (Crop { x0: 3, y0: 1, side: 20 }, 20),
            (Crop { x0: 30, y0: 15, side: 12 }, 9),
        ] {
            assert_eq!(
                crop_resize(RgbImage::packed(&rgb, w, h), crop, side),
                crop_resize_by_pixel(&rgb, w, h, crop, side),
                "{crop:?} → {side}"
            );
        }
        for v in [0.0, 0.49999997, 0.5, 1.5, 2.4999998, 127.5, 254.5, 255.0, 255.00002] {
            assert_eq!(round_to_u8(v), v.round() as u8, "{v}");
        }
    }
}
