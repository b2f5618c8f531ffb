//! Bilinear crop-and-resize of an RGB24 frame to the clip's `side`² (pixel centres
//! aligned, as in preprocessing): what `prepare` does to every sampled frame.
//!
//! An output row blends two source rows; each output value (pixel × channel) reads two
//! neighbouring source pixels of each. Where those sit along a row is worked out once per
//! column (`ColumnTaps`, expanded per channel), not per pixel. The reads are a gather —
//! a 720p crop shrinks 2.8× to 256², so consecutive values read bytes 3 apart, irregularly
//! — and the arithmetic is f32; with AVX-512 sixteen values go at once, their bytes
//! fetched by `vpgatherdd`: 4 bytes at the left pixel's offset hold the right pixel's
//! byte too, 3 bytes on, so one gather per source row serves both. Same bits on
//! every path: each lane does the scalar loop's multiplies and adds in its order (Rust
//! never contracts them into an FMA), and the rounding is the same truncate-and-compare.
//! 32 crops of 720p to 256² (issue 20's clip): 30 ms a video before (4% of `prepare`).

use super::faces::Crop;
use super::image::RgbImage;
use crate::backend::cpu::simd::{self, Isa};

/// For output value `j = 3·x + channel` of a row: the byte offset, within a source row, of
/// that channel in the left source pixel it blends; where the right one's is, as a shift
/// of the 4 bytes read there (24: the next pixel's, 3 bytes on; 0: the same pixel, at the
/// frame's right edge); and their weights. One read serves both pixels.
struct ColumnTaps {
    left: Vec<i32>,
    right_shift: Vec<u32>,
    left_weight: Vec<f32>,
    right_weight: Vec<f32>,
}

/// Bilinear resize of the `crop` of a frame to `side × side` RGB.
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
    let n = side * 3;
    let mut columns = ColumnTaps {
        left: Vec::with_capacity(n),
        right_shift: Vec::with_capacity(n),
        left_weight: Vec::with_capacity(n),
        right_weight: Vec::with_capacity(n),
    };
    for ox in 0..side {
        let (x0, x1, fx) = taps(ox, crop.x0, w);
        for k in 0..3 {
            columns.left.push((x0 * 3 + k) as i32);
            columns.right_shift.push(8 * 3 * (x1 - x0) as u32);
            columns.left_weight.push(1.0 - fx);
            columns.right_weight.push(fx);
        }
    }
    // A gather reads 4 bytes from its offset: rows with fewer bytes after their start (the
    // frame's last, without padding) take the scalar loop.
    let reach = columns.left.iter().max().map_or(0, |&m| m as usize + 4);
    let gathers = simd::widest() == Isa::Avx512;
    for (oy, out_row) in out.chunks_exact_mut(n).enumerate() {
        let (y0, y1, fy) = taps(oy, crop.y0, h);
        let (top, bottom) = (&img.data[y0 * img.stride..], &img.data[y1 * img.stride..]);
        if gathers && top.len() >= reach && bottom.len() >= reach {
            // SAFETY: the CPU has AVX-512 F (`simd::widest`), and every gather reads within
            // `top` and `bottom` (`reach`).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                blend_rows_avx512(top, bottom, &columns, fy, out_row)
            };
        } else {
            blend_rows(top, bottom, &columns, fy, out_row, 0);
        }
    }
    out
}

/// Output values `from..` of a row: `top` and `bottom` blended across by `columns`, then
/// down by `fy`, rounded.
fn blend_rows(top: &[u8], bottom: &[u8], columns: &ColumnTaps, fy: f32, out: &mut [u8], from: usize) {
    for (j, value) in out.iter_mut().enumerate().skip(from) {
        let l = columns.left[j] as usize;
        let r = l + columns.right_shift[j] as usize / 8;
        let (gx, fx) = (columns.left_weight[j], columns.right_weight[j]);
        let above = top[l] as f32 * gx + top[r] as f32 * fx;
        let below = bottom[l] as f32 * gx + bottom[r] as f32 * fx;
        *value = round_to_u8(above * (1.0 - fy) + below * fy);
    }
}

/// `blend_rows` sixteen values at a time; the row's last `len % 16` by `blend_rows`.
///
/// # Safety
/// The CPU has AVX-512 F, and `top` and `bottom` hold 4 bytes from every offset in
/// `columns`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn blend_rows_avx512(top: &[u8], bottom: &[u8], columns: &ColumnTaps, fy: f32, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let full = out.len() / 16 * 16;
    let (up_weight, down_weight) = (_mm512_set1_ps(1.0 - fy), _mm512_set1_ps(fy));
    let (low_byte, half, one, max) =
        (_mm512_set1_epi32(0xff), _mm512_set1_ps(0.5), _mm512_set1_epi32(1), _mm512_set1_epi32(255));
    for j in (0..full).step_by(16) {
        // SAFETY: `j + 16 <= full <= out.len()`, the length of every `columns` vector; the
        // gathers stay within `top` and `bottom` as the caller promised.
        unsafe {
            let at = _mm512_loadu_si512(columns.left.as_ptr().add(j).cast());
            let shift = _mm512_loadu_si512(columns.right_shift.as_ptr().add(j).cast());
            let gx = _mm512_loadu_ps(columns.left_weight.as_ptr().add(j));
            let fx = _mm512_loadu_ps(columns.right_weight.as_ptr().add(j));
            let blend = |row: &[u8]| {
                let word = _mm512_i32gather_epi32::<1>(at, row.as_ptr().cast());
                let left = _mm512_cvtepi32_ps(_mm512_and_si512(word, low_byte));
                let right = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(word, shift), low_byte));
                _mm512_add_ps(_mm512_mul_ps(left, gx), _mm512_mul_ps(right, fx))
            };
            let (above, below) = (blend(top), blend(bottom));
            let v = _mm512_add_ps(_mm512_mul_ps(above, up_weight), _mm512_mul_ps(below, down_weight));
            // round_to_u8, lane by lane.
            let whole = _mm512_cvttps_epi32(v);
            let round_up =
                _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_sub_ps(v, _mm512_cvtepi32_ps(whole)), half);
            let rounded = _mm512_min_epi32(_mm512_mask_add_epi32(whole, round_up, whole, one), max);
            _mm_storeu_si128(out.as_mut_ptr().add(j).cast(), _mm512_cvtepi32_epi8(rounded));
        }
    }
    blend_rows(top, bottom, columns, fy, out, full);
}

/// `v.round() as u8` for 0 ≤ v < 256 without the `roundf` library call (x86-64's baseline
/// has no rounding instruction): `v − ⌊v⌋` is exact there, so halves round up as `round` does.
fn round_to_u8(v: f32) -> u8 {
    let whole = v as u32;
    let up = v - whole as f32 >= 0.5;
    (whole + u32::from(up)).min(255) as u8
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
    fn crop_resize_gives_the_bytes_of_its_definition_on_every_path() {
        let (w, h) = (37, 23);
        let mut rng = crate::rng::Rng::new(3);
        let rgb: Vec<u8> = (0..w * h * 3).map(|_| rng.next_u64() as u8).collect();
        // The same picture with rows 5 bytes apart more, as a decoder pads them.
        let stride = w * 3 + 5;
        let padded: Vec<u8> = rgb.chunks(w * 3).flat_map(|row| row.iter().copied().chain([7; 5])).collect();
        // Down, up (sixteen values and a tail of 8), same size, crops reaching past the
        // right and bottom edges, where the frame's last row has no bytes after it.
        let cases = [
            (Crop { x0: 0, y0: 0, side: 23 }, 8),
            (Crop { x0: 5, y0: 2, side: 17 }, 40),
            (Crop { x0: 3, y0: 1, side: 20 }, 20),
            (Crop { x0: 30, y0: 15, side: 12 }, 9),
        ];
        for isa in Isa::ALL {
            simd::cap_vectors(isa);
            for (crop, side) in cases {
                let want = crop_resize_by_pixel(&rgb, w, h, crop, side);
                let case = format!("{crop:?} → {side}, {isa:?}");
                assert_eq!(crop_resize(RgbImage::packed(&rgb, w, h), crop, side), want, "{case}");
                let img = RgbImage { data: &padded, width: w, height: h, stride };
                assert_eq!(crop_resize(img, crop, side), want, "{case}, padded rows");
            }
        }
        simd::cap_vectors(Isa::Avx512);
        for v in [0.0, 0.49999997, 0.5, 1.5, 2.4999998, 127.5, 254.5, 255.0, 255.00002] {
            assert_eq!(round_to_u8(v), v.round() as u8, "{v}");
        }
    }
}
