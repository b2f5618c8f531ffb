//! `dfengine synth`: the synthetic clips of `synth.rs`, encoded as H.264 MP4 files in the
//! FaceForensics++ layout with official-style split files, so that every part of the data
//! path (index, decode, sample, cache) runs on them exactly as on the real dataset.

use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use super::synth::{ClipSpec, SynthParams, clip_set, render};

/// The FaceForensics++ method folder the fakes go in.
pub const METHOD: &str = "Synthetic";
pub const FPS: i32 = 25;

#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct SynthError {
    pub path: PathBuf,
    pub reason: String,
}

/// Encodes `frames` RGB24 frames of `size × size` as H.264 (libx264, yuv420p) into `path`,
/// at 25 frames per second.
pub fn write_clip(path: &Path, size: usize, frames: impl Iterator<Item = Vec<u8>>) -> Result<(), SynthError> {
    write_clip_timed(path, size, frames.enumerate().map(|(t, f)| (t as i64, f)))
}

/// As `write_clip`, each frame with its presentation time in 1/25 s ticks (ascending;
/// gaps make a variable-frame-rate file, as phone recordings are).
pub fn write_clip_timed(
    path: &Path,
    size: usize,
    frames: impl Iterator<Item = (i64, Vec<u8>)>,
) -> Result<(), SynthError> {
    write_clip_with(path, size, Encoding::default(), frames)
}

/// How a clip is encoded: x264's veryfast preset at CRF 20, with keyframes and B-frames
/// as given. The default is what `write_clip` has always written: a keyframe at least
/// every 250 frames (more at scene cuts), up to 3 B-frames in a row, the middle one of
/// three a reference (a B-pyramid) and the others not, and open groups of pictures (only
/// the first keyframe is an IDR picture; the others are recovery points, and B-frames
/// after them may refer back across them). The `ffmpeg` command line's libx264 closes
/// its groups (every keyframe an IDR picture).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Most frames from one keyframe to the next.
    pub keyint: u32,
    /// Most consecutive B-frames (0: none).
    pub b_frames: u32,
    /// Every keyframe an IDR picture: nothing after it refers to anything before it.
    pub closed_gop: bool,
}

impl Default for Encoding {
    fn default() -> Self {
        Encoding { keyint: 250, b_frames: 3, closed_gop: false }
    }
}

/// As `write_clip_timed`, encoded as `encoding` says.
pub fn write_clip_with(
    path: &Path,
    size: usize,
    encoding: Encoding,
    frames: impl Iterator<Item = (i64, Vec<u8>)>,
) -> Result<(), SynthError> {
    let bad = |reason: String| SynthError { path: path.to_path_buf(), reason };
    super::decode::init_ffmpeg().map_err(|e| bad(format!("FFmpeg failed to initialise: {e}")))?;
    let codec = ffmpeg::encoder::find_by_name("libx264")
        .or_else(|| ffmpeg::encoder::find(ffmpeg::codec::Id::H264))
        .ok_or_else(|| bad("this FFmpeg has no H.264 encoder".into()))?;
    let mut octx = ffmpeg::format::output(path).map_err(|e| bad(format!("cannot create: {e}")))?;
    let global_header = octx.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
    let mut enc = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| bad(format!("no video encoder: {e}")))?;
    let side = size as u32;
    enc.set_width(side);
    enc.set_height(side);
    enc.set_format(Pixel::YUV420P);
    enc.set_time_base((1, FPS));
    enc.set_frame_rate(Some((FPS, 1)));
    enc.set_gop(encoding.keyint);
    enc.set_max_b_frames(encoding.b_frames as usize);
    let mut flags = ffmpeg::codec::Flags::empty();
    flags.set(ffmpeg::codec::Flags::GLOBAL_HEADER, global_header);
    flags.set(ffmpeg::codec::Flags::CLOSED_GOP, encoding.closed_gop);
    enc.set_flags(flags);
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("preset", "veryfast");
    opts.set("crf", "20");
    let mut encoder = enc.open_with(opts).map_err(|e| bad(format!("cannot open the encoder: {e}")))?;
    let stream_index = {
        let mut ost = octx.add_stream(codec).map_err(|e| bad(format!("cannot add a stream: {e}")))?;
        ost.set_parameters(&encoder);
        ost.set_time_base((1, FPS));
        ost.index()
    };
    octx.write_header().map_err(|e| bad(format!("cannot write the header: {e}")))?;
    let stream_tb = octx.stream(stream_index).expect("the stream just added").time_base();
    let mut to_yuv =
        scaling::Context::get(Pixel::RGB24, side, side, Pixel::YUV420P, side, side, scaling::Flags::BILINEAR)
            .map_err(|e| bad(format!("no RGB→YUV converter: {e}")))?;
    let drain = |encoder: &mut ffmpeg::encoder::Video,
                 octx: &mut ffmpeg::format::context::Output|
     -> Result<(), SynthError> {
        let mut packet = ffmpeg::Packet::empty();
        while encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(stream_index);
            // Without a duration the MP4 muxer's edit list cuts the last frame.
            packet.set_duration(1);
            packet.rescale_ts((1, FPS), stream_tb);
            packet.write_interleaved(octx).map_err(|e| bad(format!("cannot write a packet: {e}")))?;
        }
        Ok(())
    };
    for (pts, rgb) in frames {
        let mut src = ffmpeg::frame::Video::new(Pixel::RGB24, side, side);
        let stride = src.stride(0);
        for (y, row) in rgb.chunks_exact(size * 3).enumerate() {
            src.data_mut(0)[y * stride..y * stride + size * 3].copy_from_slice(row);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        to_yuv.run(&src, &mut yuv).map_err(|e| bad(format!("colour conversion failed: {e}")))?;
        yuv.set_pts(Some(pts));
        encoder.send_frame(&yuv).map_err(|e| bad(format!("encoding failed: {e}")))?;
        drain(&mut encoder, &mut octx)?;
    }
    encoder.send_eof().map_err(|e| bad(format!("encoding failed: {e}")))?;
    drain(&mut encoder, &mut octx)?;
    octx.write_trailer().map_err(|e| bad(format!("cannot finish the file: {e}")))
}

/// Where a clip goes in the FaceForensics++ layout.
pub fn clip_path(out: &Path, clip: ClipSpec) -> PathBuf {
    match clip.swapped_from {
        None => out.join(format!("original_sequences/youtube/c23/videos/{:03}.mp4", clip.source)),
        Some(donor) => {
            out.join(format!("manipulated_sequences/{METHOD}/c23/videos/{:03}_{:03}.mp4", clip.source, donor))
        }
    }
}

/// Writes `videos` clips (half real, half fake) under `out`, plus `splits/{train,val,test}.json`
/// with pairs placed 80/10/10 (at least one pair in val and in test when there are three
/// or more pairs). `progress` is told each file written.
pub fn write_dataset(
    out: &Path,
    p: &SynthParams,
    videos: u32,
    mut progress: impl FnMut(usize, usize, &Path),
) -> Result<usize, SynthError> {
    let clips = clip_set(videos);
    for (i, clip) in clips.iter().enumerate() {
        let path = clip_path(out, *clip);
        let dir = path.parent().expect("clip paths have a folder");
        std::fs::create_dir_all(dir)
            .map_err(|e| SynthError { path: dir.to_path_buf(), reason: e.to_string() })?;
        write_clip(&path, p.size, (0..p.frames).map(|t| render(p, *clip, t)))?;
        progress(i + 1, clips.len(), &path);
    }
    let pairs = clips.iter().filter(|c| c.swapped_from.is_none() && c.source % 2 == 0).count();
    let (val, test) = if pairs >= 3 { ((pairs / 10).max(1), (pairs / 10).max(1)) } else { (0, 0) };
    let mut splits: [Vec<[String; 2]>; 3] = Default::default();
    for k in 0..pairs {
        let pair = [format!("{:03}", 2 * k), format!("{:03}", 2 * k + 1)];
        let which = if k < pairs - val - test {
            0
        } else if k < pairs - test {
            1
        } else {
            2
        };
        splits[which].push(pair);
    }
    let dir = out.join("splits");
    std::fs::create_dir_all(&dir).map_err(|e| SynthError { path: dir.clone(), reason: e.to_string() })?;
    for (name, list) in ["train", "val", "test"].iter().zip(&splits) {
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string(list).expect("pairs of strings serialise");
        std::fs::write(&path, text).map_err(|e| SynthError { path, reason: e.to_string() })?;
    }
    Ok(clips.len())
}
