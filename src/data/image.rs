//! A borrowed RGB24 picture whose rows may lie further apart than their width: what
//! the decoder hands out (its frames carry line padding) and what the clip stage crops
//! and judges, so that a sampled frame is cropped where the decoder wrote it instead of
//! being copied out first (`prepare` keeps no full-size frame; docs/BENCHMARKS.md).

/// `height` rows of `width × 3` bytes, `stride` bytes apart, in `data`.
#[derive(Debug, Clone, Copy)]
pub struct RgbImage<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub stride: usize,
}

impl<'a> RgbImage<'a> {
    /// Rows back to back, no padding.
    pub fn packed(data: &'a [u8], width: usize, height: usize) -> Self {
        assert!(data.len() >= width * height * 3, "{width}×{height} RGB needs {} bytes", width * height * 3);
        RgbImage { data, width, height, stride: width * 3 }
    }

    /// Row `y`'s `width × 3` bytes.
    pub fn row(&self, y: usize) -> &'a [u8] {
        &self.data[y * self.stride..y * self.stride + self.width * 3]
    }

    /// The rows copied back to back.
    pub fn to_packed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.width * self.height * 3);
        for y in 0..self.height {
            out.extend_from_slice(self.row(y));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_skip_the_padding() {
        // 2×2 pixels, rows 8 bytes apart (2 bytes of padding each).
        let data = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let img = RgbImage { data: &data, width: 2, height: 2, stride: 8 };
        assert_eq!(img.row(1), &[7, 8, 9, 10, 11, 12]);
        assert_eq!(img.to_packed(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let packed = img.to_packed();
        assert_eq!(RgbImage::packed(&packed, 2, 2).row(1), img.row(1));
    }
}
