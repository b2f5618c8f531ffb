//! Decoding the sampled frames of a video with FFmpeg (ffmpeg-next): open, find the video
//! stream, decode forward with FFmpeg's own threads, and convert to RGB only the frames
//! that were asked for. Rotation metadata is applied; odd sizes are kept as they are.
//!
//! Bad input never panics: a missing, empty, truncated, audio-only or undecodable file is
//! a `DecodeError` naming the file and the reason, for the loader to count and skip.

use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

#[derive(Debug, thiserror::Error)]
#[error("video {}: {reason}", path.display())]
pub struct DecodeError {
    pub path: PathBuf,
    pub reason: String,
}

/// A decoded frame: `height × width × 3` bytes of RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbFrame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// What a video holds, read from its container without decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    pub width: usize,
    pub height: usize,
    /// Frames, from the container's count or duration × rate (an estimate for some files).
    pub frames: usize,
    pub fps: f64,
    /// Clockwise rotation to apply for display, in degrees (0, 90, 180, 270).
    pub rotation: i32,
}

/// Initialises FFmpeg once, quiet but for errors (its encoders and decoders otherwise
/// print statistics for every file).
pub fn init_ffmpeg() -> Result<(), ffmpeg::Error> {
    ffmpeg::init()?;
    ffmpeg::log::set_level(ffmpeg::log::Level::Error);
    Ok(())
}

fn init(path: &Path) -> Result<(), DecodeError> {
    init_ffmpeg().map_err(|e| DecodeError {
        path: path.to_path_buf(),
        reason: format!("FFmpeg failed to initialise: {e}"),
    })
}

fn open(path: &Path) -> Result<(ffmpeg::format::context::Input, usize, VideoInfo), DecodeError> {
    init(path)?;
    let bad = |reason: String| DecodeError { path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if meta.len() == 0 {
        return Err(bad("empty file".into()));
    }
    let ictx = ffmpeg::format::input(path).map_err(|e| bad(format!("not a readable container: {e}")))?;
    let stream =
        ictx.streams().best(ffmpeg::media::Type::Video).ok_or_else(|| bad("no video stream".into()))?;
    let index = stream.index();
    let params = stream.parameters();
    let ctx = ffmpeg::codec::context::Context::from_parameters(params)
        .map_err(|e| bad(format!("bad codec parameters: {e}")))?;
    let video = ctx.decoder().video().map_err(|e| bad(format!("no decoder: {e}")))?;
    let rate = stream.avg_frame_rate();
    let fps = if rate.denominator() != 0 { rate.numerator() as f64 / rate.denominator() as f64 } else { 0.0 };
    let frames = match stream.frames() {
        n if n > 0 => n as usize,
        _ => {
            let tb = stream.time_base();
            let secs = stream.duration() as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64;
            (secs * fps).round().max(0.0) as usize
        }
    };
    let rotation =
        stream.metadata().get("rotate").and_then(|r| r.parse::<i32>().ok()).unwrap_or(0).rem_euclid(360);
    let info =
        VideoInfo { width: video.width() as usize, height: video.height() as usize, frames, fps, rotation };
    Ok((ictx, index, info))
}

/// The video's size, frame count and rate, without decoding.
pub fn probe(path: &Path) -> Result<VideoInfo, DecodeError> {
    open(path).map(|(_, _, info)| info)
}

/// A decoded frame in I420: a `height × width` Y plane, then U and V planes of
/// ⌈height/2⌉ × ⌈width/2⌉ (what `preprocess_yuv420` and its kernel read).
#[derive(Debug, Clone, PartialEq)]
pub struct Yuv420Frame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes `path` and returns the frames at `indices` (ascending, repeats allowed), as
/// RGB, with the number of frames the decoder produced (skipped non-reference frames are
/// not counted). Indices past the end repeat the last frame; a wanted frame the decoder
/// never produced (a gap in a variable-frame-rate stream, a corrupt packet) is an empty
/// frame (width 0) for the caller to replace.
pub fn read_frames(
    path: &Path,
    indices: &[usize],
    threads: usize,
) -> Result<(Vec<RgbFrame>, usize), DecodeError> {
    let empty = RgbFrame { width: 0, height: 0, data: Vec::new() };
    decode_wanted(path, indices, threads, Pixel::RGB24, packed_rgb, empty)
}

/// As `read_frames`, in I420 (the decoder's own format for most H.264; others are
/// converted): the GPU preprocessing kernel converts to RGB itself.
pub fn read_frames_yuv420(
    path: &Path,
    indices: &[usize],
    threads: usize,
) -> Result<(Vec<Yuv420Frame>, usize), DecodeError> {
    let empty = Yuv420Frame { width: 0, height: 0, data: Vec::new() };
    decode_wanted(path, indices, threads, Pixel::YUV420P, packed_i420, empty)
}

/// Display indices from presentation timestamps: frames are numbered by their time from
/// the stream's first one, so that frames the decoder skips leave no gap in the count.
struct FrameClock {
    start: i64,
    /// Timestamp units per frame; 0 when the stream gives no frame rate.
    per_frame: f64,
}

impl FrameClock {
    fn index_of(&self, ts: i64) -> Option<usize> {
        (self.per_frame > 0.0)
            .then(|| (((ts - self.start) as f64 / self.per_frame).round().max(0.0)) as usize)
    }
}

/// Collects the wanted frames, in the order of `indices`, as the decoder gives frames out.
struct Wanted<'a, T> {
    indices: &'a [usize],
    /// Position in `indices` of the next frame to collect.
    next: usize,
    /// Frames seen, for streams without usable timestamps.
    shown: usize,
    out: Vec<T>,
    empty: T,
    target: Pixel,
    pack: fn(&ffmpeg::frame::Video, i32) -> T,
    rotation: i32,
    scaler: Option<scaling::Context>,
}

impl<T: Clone> Wanted<'_, T> {
    fn complete(&self) -> bool {
        self.next >= self.indices.len()
    }

    /// Takes `frame` if it is wanted (converted and packed, once however often it is
    /// wanted); returns its display index.
    fn take(&mut self, frame: &ffmpeg::frame::Video, clock: &FrameClock) -> Result<usize, String> {
        let n = frame.timestamp().and_then(|ts| clock.index_of(ts)).unwrap_or(self.shown);
        self.shown = n + 1;
        while !self.complete() && self.indices[self.next] < n {
            // A wanted frame never came out (a gap, a corrupt packet): an empty frame keeps
            // its place, and clip assembly puts the nearest decoded frame there.
            self.next += 1;
            self.out.push(self.empty.clone());
        }
        if self.complete() || self.indices[self.next] != n {
            return Ok(n);
        }
        let converted = self.convert(frame)?;
        while !self.complete() && self.indices[self.next] == n {
            self.out.push(converted.clone());
            self.next += 1;
        }
        Ok(n)
    }

    /// `frame` in the target pixel format, packed (the converter is kept while the input
    /// format and size stay the same).
    fn convert(&mut self, frame: &ffmpeg::frame::Video) -> Result<T, String> {
        let (w, h) = (frame.width(), frame.height());
        let sc = match &mut self.scaler {
            Some(s)
                if s.input().width == w && s.input().height == h && s.input().format == frame.format() =>
            {
                s
            }
            slot => slot.insert(
                scaling::Context::get(frame.format(), w, h, self.target, w, h, scaling::Flags::BILINEAR)
                    .map_err(|e| format!("no converter from {:?}: {e}", frame.format()))?,
            ),
        };
        let mut converted = ffmpeg::frame::Video::empty();
        sc.run(frame, &mut converted).map_err(|e| format!("colour conversion failed: {e}"))?;
        Ok((self.pack)(&converted, self.rotation))
    }

    /// The collected frames; indices past the real end (the container's count was an
    /// estimate) repeat the last frame that exists.
    fn finish(mut self, decoded: usize) -> Result<Vec<T>, String> {
        while self.out.len() < self.indices.len() {
            let last = self
                .out
                .last()
                .cloned()
                .ok_or_else(|| format!("none of the wanted frames exist ({decoded} decoded)"))?;
            self.out.push(last);
        }
        Ok(self.out)
    }
}

fn decode_wanted<T: Clone>(
    path: &Path,
    indices: &[usize],
    threads: usize,
    target: Pixel,
    pack: fn(&ffmpeg::frame::Video, i32) -> T,
    empty: T,
) -> Result<(Vec<T>, usize), DecodeError> {
    let (mut ictx, index, info) = open(path)?;
    let bad = |reason: String| DecodeError { path: path.to_path_buf(), reason };
    let stream = ictx.stream(index).expect("the stream open() found");
    let mut ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| bad(format!("bad codec parameters: {e}")))?;
    ctx.set_threading(ffmpeg::threading::Config {
        kind: ffmpeg::threading::Type::Frame,
        count: threads.max(1),
        ..Default::default()
    });
    let mut decoder = ctx.decoder().video().map_err(|e| bad(format!("no decoder: {e}")))?;
    let tb = stream.time_base();
    let clock = FrameClock {
        start: stream.start_time().max(0),
        per_frame: if info.fps > 0.0 {
            tb.denominator() as f64 / (tb.numerator().max(1) as f64 * info.fps)
        } else {
            0.0
        },
    };
    let last_wanted = indices.iter().copied().max().unwrap_or(0);
    let wanted_set: std::collections::HashSet<usize> = indices.iter().copied().collect();
    let mut wanted = Wanted {
        indices,
        next: 0,
        shown: 0,
        out: Vec::with_capacity(indices.len()),
        empty,
        target,
        pack,
        rotation: info.rotation,
        scaler: None,
    };
    let mut frame = ffmpeg::frame::Video::empty();
    let mut decoded = 0usize;
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        // Frames no other frame refers to need not be decoded unless they are wanted:
        // on B-frame video that is a large share of the work.
        let needed = packet.pts().and_then(|ts| clock.index_of(ts)).is_none_or(|i| wanted_set.contains(&i));
        decoder.skip_frame(if needed { ffmpeg::Discard::Default } else { ffmpeg::Discard::NonReference });
        // A damaged packet costs its frames, not the video: decoding goes on.
        if decoder.send_packet(&packet).is_err() {
            continue;
        }
        let mut last_shown = 0;
        while decoder.receive_frame(&mut frame).is_ok() {
            last_shown = wanted.take(&frame, &clock).map_err(bad)?;
            decoded += 1;
        }
        if wanted.complete() || last_shown > last_wanted {
            break;
        }
    }
    if !wanted.complete() {
        decoder.skip_frame(ffmpeg::Discard::Default);
        let _ = decoder.send_eof();
        while decoder.receive_frame(&mut frame).is_ok() {
            wanted.take(&frame, &clock).map_err(bad)?;
            decoded += 1;
        }
    }
    if decoded == 0 {
        return Err(bad("no frame could be decoded (truncated or corrupt)".into()));
    }
    Ok((wanted.finish(decoded).map_err(bad)?, decoded))
}

/// The rows of plane `p` (`row_bytes` wide, `rows` high) without FFmpeg's line padding.
fn plane_rows(f: &ffmpeg::frame::Video, p: usize, row_bytes: usize, rows: usize, out: &mut Vec<u8>) {
    let (stride, data) = (f.stride(p), f.data(p));
    for y in 0..rows {
        out.extend_from_slice(&data[y * stride..y * stride + row_bytes]);
    }
}

/// RGB24 rows without the line padding FFmpeg adds, rotated for display.
fn packed_rgb(rgb: &ffmpeg::frame::Video, rotation: i32) -> RgbFrame {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut data = Vec::with_capacity(w * h * 3);
    plane_rows(rgb, 0, w * 3, h, &mut data);
    rotate(RgbFrame { width: w, height: h, data }, rotation)
}

/// The three planes of a YUV420P frame back to back, each rotated for display.
fn packed_i420(f: &ffmpeg::frame::Video, rotation: i32) -> Yuv420Frame {
    let (w, h) = (f.width() as usize, f.height() as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut data = Vec::with_capacity(w * h + 2 * cw * ch);
    for (p, pw, ph) in [(0, w, h), (1, cw, ch), (2, cw, ch)] {
        let mut plane = Vec::with_capacity(pw * ph);
        plane_rows(f, p, pw, ph, &mut plane);
        if matches!(rotation, 90 | 180 | 270) {
            plane = rotate_plane(&plane, pw, ph, 1, rotation).0;
        }
        data.extend(plane);
    }
    let (width, height) = if rotation == 90 || rotation == 270 { (h, w) } else { (w, h) };
    Yuv420Frame { width, height, data }
}

/// Rotates clockwise by 90, 180 or 270 degrees.
pub fn rotate(f: RgbFrame, degrees: i32) -> RgbFrame {
    if !matches!(degrees, 90 | 180 | 270) {
        return f;
    }
    let (data, width, height) = rotate_plane(&f.data, f.width, f.height, 3, degrees);
    RgbFrame { width, height, data }
}

/// A `w × h` image of `channels` bytes per pixel rotated clockwise by `degrees` (90, 180,
/// 270; anything else copies); returns it with its new width and height.
fn rotate_plane(data: &[u8], w: usize, h: usize, channels: usize, degrees: i32) -> (Vec<u8>, usize, usize) {
    let px = |x: usize, y: usize| &data[(y * w + x) * channels..(y * w + x + 1) * channels];
    let mut out = Vec::with_capacity(data.len());
    match degrees {
        90 | 270 => {
            for y in 0..w {
                for x in 0..h {
                    out.extend_from_slice(if degrees == 90 { px(y, h - 1 - x) } else { px(w - 1 - y, x) });
                }
            }
            (out, h, w)
        }
        180 => {
            for y in (0..h).rev() {
                for x in (0..w).rev() {
                    out.extend_from_slice(px(x, y));
                }
            }
            (out, w, h)
        }
        _ => (data.to_vec(), w, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×2 frame whose pixels hold their own (x, y).
    fn labelled() -> RgbFrame {
        let data = (0..2).flat_map(|y| (0..3).flat_map(move |x| [x as u8, y as u8, 0])).collect();
        RgbFrame { width: 3, height: 2, data }
    }

    fn at(f: &RgbFrame, x: usize, y: usize) -> (u8, u8) {
        let i = (y * f.width + x) * 3;
        (f.data[i], f.data[i + 1])
    }

    #[test]
    fn rotations_move_corners_where_display_expects() {
        let r = rotate(labelled(), 90);
        assert_eq!((r.width, r.height), (2, 3));
        // Clockwise: the bottom-left source pixel becomes the top-left.
        assert_eq!(at(&r, 0, 0), (0, 1));
        assert_eq!(at(&r, 1, 2), (2, 0));
        let r = rotate(labelled(), 180);
        assert_eq!(at(&r, 0, 0), (2, 1));
        let r = rotate(labelled(), 270);
        assert_eq!((r.width, r.height, at(&r, 0, 0)), (2, 3, (2, 0)));
        assert_eq!(rotate(labelled(), 0), labelled());
    }
}
