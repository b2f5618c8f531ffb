//! What `dfengine faces --draw` writes: a frame with the detector's findings drawn on it
//! (each box's outline in green, each landmark a red dot, both thick enough to see on a
//! 1080p frame), saved as PNG through FFmpeg's PNG encoder.

use super::detect::Face;

const BOX_COLOUR: [u8; 3] = [0, 255, 0];
const LANDMARK_COLOUR: [u8; 3] = [255, 0, 0];

/// Draws `faces` onto the RGB24 frame `rgb` of `width × height`; whatever falls outside
/// the frame is clipped.
pub fn draw_faces(rgb: &mut [u8], width: usize, height: usize, faces: &[Face]) {
    let mut canvas = Canvas { rgb, width: width as i64, height: height as i64 };
    // One pixel per 400 of the longer side, at least two: visible after a viewer scales
    // the picture down.
    let t = (width.max(height) as i64 / 400).max(2);
    for face in faces {
        let [x1, y1, x2, y2] = face.bbox.map(|v| v.round() as i64);
        canvas.fill(x1 - t, y1 - t, x2 + t, y1, BOX_COLOUR);
        canvas.fill(x1 - t, y2, x2 + t, y2 + t, BOX_COLOUR);
        canvas.fill(x1 - t, y1, x1, y2, BOX_COLOUR);
        canvas.fill(x2, y1, x2 + t, y2, BOX_COLOUR);
        for [x, y] in face.landmarks.map(|p| p.map(|v| v.round() as i64)) {
            canvas.fill(x - t, y - t, x + t + 1, y + t + 1, LANDMARK_COLOUR);
        }
    }
}

struct Canvas<'a> {
    rgb: &'a mut [u8],
    width: i64,
    height: i64,
}

impl Canvas<'_> {
    /// Paints the pixels x in [x0, x1), y in [y0, y1) that lie in the frame.
    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: [u8; 3]) {
        let (xa, xb) = (x0.clamp(0, self.width) as usize, x1.clamp(0, self.width) as usize);
        let (ya, yb) = (y0.clamp(0, self.height) as usize, y1.clamp(0, self.height) as usize);
        let w = self.width as usize;
        for y in ya..yb {
            for px in self.rgb[(y * w + xa) * 3..(y * w + xb.max(xa)) * 3].chunks_exact_mut(3) {
                px.copy_from_slice(&colour);
            }
        }
    }
}

/// Writes the RGB24 frame `rgb` of `width × height` to `path` as a PNG file.
#[cfg(feature = "video")]
pub fn write_png(path: &std::path::Path, rgb: &[u8], width: usize, height: usize) -> Result<(), String> {
    use ffmpeg::format::Pixel;
    use ffmpeg_next as ffmpeg;

    let bad = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", path.display());
    super::decode::init_ffmpeg().map_err(|e| bad("FFmpeg failed to initialise", &e))?;
    let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::PNG)
        .ok_or_else(|| format!("{}: this FFmpeg has no PNG encoder", path.display()))?;
    let mut enc = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| bad("no PNG encoder", &e))?;
    let (w, h) = (width as u32, height as u32);
    enc.set_width(w);
    enc.set_height(h);
    enc.set_format(Pixel::RGB24);
    enc.set_time_base((1, 1));
    let mut encoder = enc.open().map_err(|e| bad("cannot open the PNG encoder", &e))?;
    let mut frame = ffmpeg::frame::Video::new(Pixel::RGB24, w, h);
    let stride = frame.stride(0);
    for (y, row) in rgb.chunks_exact(width * 3).enumerate() {
        frame.data_mut(0)[y * stride..y * stride + width * 3].copy_from_slice(row);
    }
    frame.set_pts(Some(0));
    encoder.send_frame(&frame).map_err(|e| bad("PNG encoding failed", &e))?;
    encoder.send_eof().map_err(|e| bad("PNG encoding failed", &e))?;
    let mut png = Vec::new();
    let mut packet = ffmpeg::Packet::empty();
    while encoder.receive_packet(&mut packet).is_ok() {
        png.extend_from_slice(packet.data().unwrap_or_default());
    }
    if png.is_empty() {
        return Err(format!("{}: the PNG encoder produced nothing", path.display()));
    }
    std::fs::write(path, png).map_err(|e| bad("cannot write", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_and_landmarks_are_drawn_and_clipped_at_the_edges() {
        let (w, h) = (40, 30);
        let mut rgb = vec![0u8; w * h * 3];
        let face = Face { bbox: [10.0, 8.0, 30.0, 26.0], score: 1.0, landmarks: [[20.0, 15.0]; 5] };
        let off = Face { bbox: [-50.0, -50.0, 100.0, 100.0], score: 1.0, landmarks: [[-9.0, 99.0]; 5] };
        draw_faces(&mut rgb, w, h, &[face, off]);
        let px =
            |x: usize, y: usize| [rgb[(y * w + x) * 3], rgb[(y * w + x) * 3 + 1], rgb[(y * w + x) * 3 + 2]];
        assert_eq!(px(10, 7), BOX_COLOUR, "top edge");
        assert_eq!(px(30, 20), BOX_COLOUR, "right edge");
        assert_eq!(px(20, 15), LANDMARK_COLOUR, "landmark");
        assert_eq!(px(15, 12), [0, 0, 0], "inside the box");
        assert_eq!(px(2, 2), [0, 0, 0], "outside every drawn line");
    }
}
