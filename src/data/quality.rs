//! The frame quality filter: frames too blurred (low variance of the Laplacian) or too
//! dark or bright (mean luma outside a band) are rejected and replaced by the nearest good
//! frame of the same clip.

use super::image::RgbImage;

/// Mean luma bounds (0..255) outside which a frame counts as unusable.
pub const DARK: f64 = 16.0;
pub const BRIGHT: f64 = 240.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameQuality {
    pub sharpness: f64,
    pub mean_luma: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Blurred,
    Dark,
    Bright,
}

/// Sharpness (variance of the 4-neighbour Laplacian of the luma) and mean luma of a frame.
pub fn measure(img: RgbImage) -> FrameQuality {
    let (w, h) = (img.width, img.height);
    let luma: Vec<f64> = (0..h)
        .flat_map(|y| img.row(y).chunks_exact(3))
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    let mean_luma = luma.iter().sum::<f64>() / luma.len().max(1) as f64;
    if w < 3 || h < 3 {
        return FrameQuality { sharpness: 0.0, mean_luma };
    }
    let (mut sum, mut sum_sq, mut n) = (0.0, 0.0, 0.0);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let at = |yy: usize, xx: usize| luma[yy * w + xx];
            let lap = at(y - 1, x) + at(y + 1, x) + at(y, x - 1) + at(y, x + 1) - 4.0 * at(y, x);
            sum += lap;
            sum_sq += lap * lap;
            n += 1.0;
        }
    }
    let mean = sum / n;
    FrameQuality { sharpness: sum_sq / n - mean * mean, mean_luma }
}

/// Why a frame is rejected at `threshold` (0 keeps every frame), if it is.
pub fn judge(q: &FrameQuality, threshold: f64) -> Option<Rejection> {
    if threshold <= 0.0 {
        None
    } else if q.mean_luma < DARK {
        Some(Rejection::Dark)
    } else if q.mean_luma > BRIGHT {
        Some(Rejection::Bright)
    } else if q.sharpness < threshold {
        Some(Rejection::Blurred)
    } else {
        None
    }
}

/// For each frame, the index of the frame to use instead: itself when good, else the
/// nearest good one (earlier wins a tie). `None` when no frame is good.
pub fn replacements(good: &[bool]) -> Option<Vec<usize>> {
    let good_at: Vec<usize> = good.iter().enumerate().filter(|&(_, &g)| g).map(|(i, _)| i).collect();
    if good_at.is_empty() {
        return None;
    }
    Some(
        (0..good.len())
            .map(|i| *good_at.iter().min_by_key(|&&g| (g.abs_diff(i), g)).expect("at least one good frame"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(rgb: &[u8], w: usize, h: usize) -> FrameQuality {
        super::measure(RgbImage::packed(rgb, w, h))
    }

    fn frame(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                out.extend([f(x, y); 3]);
            }
        }
        out
    }

    #[test]
    fn sharp_detail_scores_above_a_flat_frame() {
        let checker = frame(16, 16, |x, y| if (x + y) % 2 == 0 { 200 } else { 50 });
        let flat = frame(16, 16, |_, _| 128);
        let q = measure(&checker, 16, 16);
        // Each interior Laplacian is ±4·150 = ±600, so the variance is 600².
        assert!((q.sharpness - 360_000.0).abs() < 1e-6, "{q:?}");
        assert_eq!(measure(&flat, 16, 16).sharpness, 0.0);
        assert_eq!(judge(&measure(&flat, 16, 16), 10.0), Some(Rejection::Blurred));
        assert_eq!(judge(&q, 10.0), None);
        assert_eq!(judge(&measure(&flat, 16, 16), 0.0), None, "threshold 0 keeps everything");
    }

    #[test]
    fn dark_and_bright_frames_are_rejected() {
        let dark = frame(8, 8, |x, _| (x * 2) as u8);
        let bright = frame(8, 8, |x, _| 250 - x as u8);
        assert_eq!(judge(&measure(&dark, 8, 8), 1.0), Some(Rejection::Dark));
        assert_eq!(judge(&measure(&bright, 8, 8), 1.0), Some(Rejection::Bright));
    }

    #[test]
    fn rejected_frames_take_the_nearest_good_one() {
        assert_eq!(replacements(&[false, true, false, false, true, false]), Some(vec![1, 1, 1, 4, 4, 4]));
        assert_eq!(replacements(&[true, true]), Some(vec![0, 1]));
        assert_eq!(replacements(&[false, false]), None);
    }
}
