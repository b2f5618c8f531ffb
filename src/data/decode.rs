//! Decoding the sampled frames of a video with FFmpeg (ffmpeg-next): open, find the video
//! stream, decode forward with FFmpeg's own threads, and convert only the frames that were
//! asked for. Rotation metadata is applied; odd sizes are kept as they are.
//!
//! Only what the wanted frames need is decoded. Packets are read a group of pictures ahead
//! (keyframe to keyframe), so before a packet is sent it is known whether it holds a wanted
//! frame, and a frame depends only on frames decoded before it:
//! - an unwanted packet that no frame refers to is dropped: an H.264 one whose NAL headers
//!   say so is not sent at all, others are sent with "skip non-reference frames" and the
//!   decoder drops them (x264's B-pyramids: about 40% of all frames);
//! - when the next group starts at a clean restart (an H.264 or HEVC IDR picture: nothing
//!   after it refers to anything before it), the packets after the group's last wanted one
//!   feed no wanted frame and are not sent; the decoder is drained and flushed there, as
//!   after a seek, and a group without a wanted frame costs nothing. Open groups (recovery
//!   points, CRA pictures, whose B-frames refer back across them) are decoded through.
//!
//! With more than one thread, decoders run side by side from IDR pictures (see
//! `decode_wanted`). A wanted frame comes out bit-identical to a full decode
//! (`tests/video.rs` checks it on B-frame clips, with one thread and two).
//! docs/BENCHMARKS.md has the CPU-seconds.
//!
//! Bad input never panics: a missing, empty, truncated, audio-only or undecodable file is
//! a `DecodeError` naming the file and the reason, for the loader to count and skip.

use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use super::image::RgbImage;

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
    if ffmpeg::decoder::find(params.id()).is_none() {
        return Err(bad(format!("no decoder for {}", params.id().name())));
    }
    // SAFETY: `params` wraps the stream's AVCodecParameters, alive as long as `ictx`.
    let (width, height) = unsafe { ((*params.as_ptr()).width, (*params.as_ptr()).height) };
    let rate = stream.avg_frame_rate();
    let fps = if rate.denominator() != 0 { rate.numerator() as f64 / rate.denominator() as f64 } else { 0.0 };
    // Without a frame count, the stream's duration × rate; Matroska and WebM give neither,
    // and then the container's duration stands in (without it every sampled index was 0:
    // a clip of the first frame, 32 times).
    let secs = match (stream.duration(), ictx.duration()) {
        (d, _) if d > 0 => {
            let tb = stream.time_base();
            d as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64
        }
        (_, d) if d > 0 => d as f64 / ffmpeg::ffi::AV_TIME_BASE as f64,
        _ => 0.0,
    };
    let frames = match stream.frames() {
        n if n > 0 => n as usize,
        _ => (secs * fps).round() as usize,
    };
    let rotation =
        stream.metadata().get("rotate").and_then(|r| r.parse::<i32>().ok()).unwrap_or(0).rem_euclid(360);
    let info =
        VideoInfo { width: width.max(0) as usize, height: height.max(0) as usize, frames, fps, rotation };
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

/// Frames sampled from a video, and what it took.
#[derive(Debug)]
pub struct Sampled<T> {
    pub info: VideoInfo,
    /// The display indices picked, ascending (repeats allowed).
    pub indices: Vec<usize>,
    /// One per index: what was made of that frame, `None` where the decoder never produced
    /// it (a gap in a variable-frame-rate stream, a corrupt packet). Indices past the real
    /// end (the container's count was an estimate) repeat the last frame that came out.
    pub frames: Vec<Option<T>>,
    /// Frames the decoder produced (frames it was spared are not counted).
    pub decoded: usize,
}

/// Opens `path` once, lets `pick` choose the display indices from what the container says
/// (ascending, repeats allowed), decodes what those frames need and hands each wanted
/// frame to `take` in RGB as it comes out, where the decoder (or its converter) wrote it:
/// the caller keeps what it needs of the frame (`prepare`: the crop), not a copy of it.
/// With `threads` > 1 `take` runs on as many decoding threads at once (see
/// `decode_wanted`); it is called once per distinct index.
pub fn sample_frames<T, P, F>(
    path: &Path,
    pick: P,
    threads: usize,
    take: F,
) -> Result<Sampled<T>, DecodeError>
where
    T: Clone + Send,
    P: FnOnce(&VideoInfo) -> Vec<usize>,
    F: Fn(usize, RgbImage) -> T + Sync,
{
    decode_wanted(path, pick, threads, &MapRgb(take))
}

/// Decodes `path` and returns the frames at `indices` (ascending, repeats allowed), as
/// RGB, with the number of frames the decoder produced (frames it was spared are not
/// counted). Indices past the end repeat the last frame; a wanted frame the decoder never
/// produced (a gap in a variable-frame-rate stream, a corrupt packet) is an empty frame
/// (width 0) for the caller to replace. `threads` > 1 decodes with more than one decoder
/// (or FFmpeg's frame threads).
pub fn read_frames(
    path: &Path,
    indices: &[usize],
    threads: usize,
) -> Result<(Vec<RgbFrame>, usize), DecodeError> {
    let s = sample_frames(path, |_| indices.to_vec(), threads, |_, img| RgbFrame::from(img))?;
    Ok((s.frames.into_iter().map(|f| f.unwrap_or_else(RgbFrame::empty)).collect(), s.decoded))
}

/// As `read_frames`, in I420 (the decoder's own format for most H.264, copied as it is;
/// others are converted): the GPU preprocessing kernel converts to RGB itself.
pub fn read_frames_yuv420(
    path: &Path,
    indices: &[usize],
    threads: usize,
) -> Result<(Vec<Yuv420Frame>, usize), DecodeError> {
    let s = decode_wanted(path, |_| indices.to_vec(), threads, &PackYuv420)?;
    let empty = || Yuv420Frame { width: 0, height: 0, data: Vec::new() };
    Ok((s.frames.into_iter().map(|f| f.unwrap_or_else(empty)).collect(), s.decoded))
}

impl RgbFrame {
    /// The stand-in for a wanted frame the decoder never produced.
    fn empty() -> Self {
        RgbFrame { width: 0, height: 0, data: Vec::new() }
    }

    pub fn image(&self) -> RgbImage<'_> {
        RgbImage::packed(&self.data, self.width, self.height)
    }
}

impl From<RgbImage<'_>> for RgbFrame {
    fn from(img: RgbImage) -> Self {
        RgbFrame { width: img.width, height: img.height, data: img.to_packed() }
    }
}

/// What becomes of a wanted frame once it is in `FORMAT` (and before the decoder reuses
/// its buffer).
trait Take: Sync {
    type Out: Clone + Send;
    const FORMAT: Pixel;
    /// Frame `index`, to be rotated clockwise by `rotation` degrees for display.
    fn take(&self, index: usize, frame: &ffmpeg::frame::Video, rotation: i32) -> Self::Out;
}

/// Hands each wanted frame to a function, in RGB.
struct MapRgb<F>(F);

impl<T: Clone + Send, F: Fn(usize, RgbImage) -> T + Sync> Take for MapRgb<F> {
    type Out = T;
    const FORMAT: Pixel = Pixel::RGB24;
    fn take(&self, index: usize, rgb: &ffmpeg::frame::Video, rotation: i32) -> T {
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        let img = RgbImage { data: rgb.data(0), width, height, stride: rgb.stride(0) };
        if matches!(rotation, 90 | 180 | 270) {
            let upright = rotate(RgbFrame::from(img), rotation);
            return (self.0)(index, upright.image());
        }
        (self.0)(index, img)
    }
}

/// Packs each wanted frame into a `Yuv420Frame`: the three planes back to back, each
/// rotated.
struct PackYuv420;

impl Take for PackYuv420 {
    type Out = Yuv420Frame;
    const FORMAT: Pixel = Pixel::YUV420P;
    fn take(&self, _: usize, f: &ffmpeg::frame::Video, rotation: i32) -> Yuv420Frame {
        let (w, h) = (f.width() as usize, f.height() as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut data = Vec::with_capacity(w * h + 2 * cw * ch);
        for (p, pw, ph) in [(0, w, h), (1, cw, ch), (2, cw, ch)] {
            if matches!(rotation, 90 | 180 | 270) {
                let mut plane = Vec::with_capacity(pw * ph);
                plane_rows(f, p, pw, ph, &mut plane);
                data.extend(rotate_plane(&plane, pw, ph, 1, rotation).0);
            } else {
                plane_rows(f, p, pw, ph, &mut data);
            }
        }
        let (width, height) = if rotation == 90 || rotation == 270 { (h, w) } else { (w, h) };
        Yuv420Frame { width, height, data }
    }
}

/// Display indices from presentation timestamps: frames are numbered by their time from
/// the stream's first one, so that frames the decoder skips leave no gap in the count.
#[derive(Clone, Copy)]
struct FrameClock {
    /// The stream's timestamp unit.
    time_base: ffmpeg::Rational,
    start: i64,
    /// Timestamp units per frame; 0 when the stream gives no frame rate.
    per_frame: f64,
    /// Seconds per timestamp unit.
    unit: f64,
}

impl FrameClock {
    /// Where frame `index` is shown, in the microseconds that seeking takes.
    fn micros(&self, index: usize) -> i64 {
        ((self.start as f64 + index as f64 * self.per_frame) * self.unit * 1e6).round() as i64
    }

    fn index_of(&self, ts: i64) -> Option<usize> {
        (self.per_frame > 0.0)
            .then(|| (((ts - self.start) as f64 / self.per_frame).round().max(0.0)) as usize)
    }
}

/// Collects the wanted frames, in the order of `indices`, as the decoder gives frames out.
struct Wanted<'a, S: Take> {
    indices: &'a [usize],
    /// Position in `indices` of the next frame to collect.
    next: usize,
    /// Frames seen, for streams without usable timestamps.
    shown: usize,
    out: Vec<Option<S::Out>>,
    sink: &'a S,
    rotation: i32,
    /// The converter to `S::FORMAT` and its output frame, kept while the decoder's format
    /// and size stay the same.
    scaler: Option<(scaling::Context, ffmpeg::frame::Video)>,
}

impl<S: Take> Wanted<'_, S> {
    fn complete(&self) -> bool {
        self.next >= self.indices.len()
    }

    /// Takes `frame` if it is wanted (converted and handed to the sink once however often
    /// it is wanted); returns its display index.
    fn take(&mut self, frame: &ffmpeg::frame::Video, clock: &FrameClock) -> Result<usize, String> {
        let n = frame.timestamp().and_then(|ts| clock.index_of(ts)).unwrap_or(self.shown);
        self.shown = n + 1;
        while !self.complete() && self.indices[self.next] < n {
            // A wanted frame never came out (a gap, a corrupt packet): `None` keeps its
            // place, and clip assembly puts the nearest decoded frame there.
            self.next += 1;
            self.out.push(None);
        }
        if self.complete() || self.indices[self.next] != n {
            return Ok(n);
        }
        let converted = self.convert(n, frame)?;
        self.next += 1;
        while !self.complete() && self.indices[self.next] == n {
            self.out.push(Some(converted.clone()));
            self.next += 1;
        }
        self.out.push(Some(converted));
        Ok(n)
    }

    /// Frame `index` in `S::FORMAT`, through the sink.
    fn convert(&mut self, index: usize, frame: &ffmpeg::frame::Video) -> Result<S::Out, String> {
        if frame.format() == S::FORMAT {
            return Ok(self.sink.take(index, frame, self.rotation));
        }
        let (w, h) = (frame.width(), frame.height());
        let (sc, converted) = match &mut self.scaler {
            Some((s, out))
                if s.input().width == w && s.input().height == h && s.input().format == frame.format() =>
            {
                (s, out)
            }
            slot => {
                let s =
                    scaling::Context::get(frame.format(), w, h, S::FORMAT, w, h, scaling::Flags::BILINEAR)
                        .map_err(|e| format!("no converter from {}: {e}", pixel_name(frame.format())))?;
                let (s, out) = slot.insert((s, ffmpeg::frame::Video::empty()));
                (s, out)
            }
        };
        sc.run(frame, converted).map_err(|e| format!("colour conversion failed: {e}"))?;
        Ok(self.sink.take(index, converted, self.rotation))
    }

    /// Every frame the decoder still holds, after the packets sent so far (the decoder is
    /// then flushed, ready for packets from a keyframe on); returns how many came out.
    fn drain(
        &mut self,
        decoder: &mut ffmpeg::decoder::Video,
        frame: &mut ffmpeg::frame::Video,
        clock: &FrameClock,
    ) -> Result<usize, String> {
        decoder.skip_frame(ffmpeg::Discard::Default);
        let _ = decoder.send_eof();
        let mut n = 0;
        while decoder.receive_frame(frame).is_ok() {
            self.take(frame, clock)?;
            n += 1;
        }
        decoder.flush();
        Ok(n)
    }
}

/// `out`, the frames collected for `wanted` indices, with indices past the real end (the
/// container's count was an estimate) repeating the last frame that exists.
fn fill_past_end<T: Clone>(mut out: Vec<T>, wanted: usize, decoded: usize) -> Result<Vec<T>, String> {
    while out.len() < wanted {
        let last = out
            .last()
            .cloned()
            .ok_or_else(|| format!("none of the wanted frames exist ({decoded} decoded)"))?;
        out.push(last);
    }
    Ok(out)
}

/// A pixel format's FFmpeg name, for messages.
fn pixel_name(p: Pixel) -> &'static str {
    p.descriptor().map_or("an unnamed pixel format", |d| d.name())
}

/// The most packets, and bytes, read ahead of the decoder while looking for the next
/// keyframe; a longer group is decoded as it comes, without sparing its tail.
const LOOKAHEAD_PACKETS: usize = 1024;
const LOOKAHEAD_BYTES: usize = 64 << 20;

/// Consecutive packets of the video stream, from a keyframe up to the next one (or the
/// read-ahead limit).
struct Group {
    packets: Vec<ffmpeg::Packet>,
    /// Whether what follows refers to nothing in this group: the end of the stream, or a
    /// clean restart (`NalHeaders::clean_restart`).
    clean_end: bool,
}

/// What the NAL unit headers of an H.264 or HEVC packet tell before it is decoded.
struct NalHeaders {
    codec: ffmpeg::codec::Id,
    /// Bytes of each NAL's length prefix (MP4/MKV style); `None` for Annex B start codes.
    length_prefix: Option<usize>,
}

impl NalHeaders {
    fn new(params: &ffmpeg::codec::Parameters) -> Self {
        let codec = params.id();
        // SAFETY: `params` wraps the stream's AVCodecParameters, whose extradata holds
        // extradata_size bytes (or is null).
        let extra = unsafe {
            let p = &*params.as_ptr();
            if p.extradata.is_null() || p.extradata_size <= 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize)
            }
        };
        // avcC and hvcC records start with version 1 and give the length-prefix size;
        // Annex B extradata starts with a start code.
        let length_prefix = match codec {
            ffmpeg::codec::Id::H264 if extra.len() >= 7 && extra[0] == 1 => Some((extra[4] & 3) as usize + 1),
            ffmpeg::codec::Id::HEVC if extra.len() >= 23 && extra[0] == 1 => {
                Some((extra[21] & 3) as usize + 1)
            }
            _ => None,
        };
        NalHeaders { codec, length_prefix }
    }

    /// The first byte of each NAL unit in `packet`.
    fn first_bytes(&self, packet: &ffmpeg::Packet) -> Vec<u8> {
        let data = packet.data().unwrap_or(&[]);
        match self.length_prefix {
            Some(n) => {
                let (mut at, mut out) = (0, Vec::new());
                while at + n < data.len() {
                    out.push(data[at + n]);
                    at += n + data[at..at + n].iter().fold(0usize, |l, &b| l << 8 | b as usize);
                }
                out
            }
            None => data.windows(4).filter(|w| w[..3] == [0, 0, 1]).map(|w| w[3]).collect(),
        }
    }

    /// Whether the codec has pictures `clean_restart` recognises.
    fn restarts_cleanly(&self) -> bool {
        matches!(self.codec, ffmpeg::codec::Id::H264 | ffmpeg::codec::Id::HEVC)
    }

    /// A keyframe after which no frame refers to an earlier one: an H.264 IDR picture
    /// (NAL type 5) or an HEVC IDR picture (types 19 and 20). H.264 recovery points, HEVC
    /// CRA pictures (open groups of pictures) and other codecs' keyframes are not.
    fn clean_restart(&self, packet: &ffmpeg::Packet) -> bool {
        let is_idr: fn(u8) -> bool = match self.codec {
            ffmpeg::codec::Id::H264 => |header| header & 0x1f == 5,
            ffmpeg::codec::Id::HEVC => |header| matches!((header >> 1) & 0x3f, 19 | 20),
            _ => return false,
        };
        self.first_bytes(packet).into_iter().any(is_idr)
    }

    /// An H.264 picture no other refers to, in a packet of which the decoder would keep
    /// nothing at "skip non-reference frames": every NAL unit has nal_ref_idc 0 (parameter
    /// sets never do) and none is an SEI message (which that setting still reads).
    fn unreferenced(&self, packet: &ffmpeg::Packet) -> bool {
        if self.codec != ffmpeg::codec::Id::H264 {
            return false;
        }
        let headers = self.first_bytes(packet);
        headers.iter().any(|h| matches!(h & 0x1f, 1 | 5))
            && headers.iter().all(|h| h & 0x60 == 0 && h & 0x1f != 6)
    }
}

/// Reads `Group`s of stream `index`'s packets.
struct Groups<'a> {
    packets: ffmpeg::format::context::input::PacketIter<'a>,
    index: usize,
    /// The keyframe that starts the next group, read while finding this group's end.
    pending: Option<ffmpeg::Packet>,
    nal: NalHeaders,
}

impl Groups<'_> {
    fn next_group(&mut self) -> Option<Group> {
        let mut packets: Vec<ffmpeg::Packet> = self.pending.take().into_iter().collect();
        let mut bytes = packets.iter().map(|p| p.size()).sum::<usize>();
        for (stream, packet) in self.packets.by_ref() {
            if stream.index() != self.index {
                continue;
            }
            if packet.is_key() && !packets.is_empty() {
                let clean_end = self.nal.clean_restart(&packet);
                self.pending = Some(packet);
                return Some(Group { packets, clean_end });
            }
            bytes += packet.size();
            packets.push(packet);
            if packets.len() >= LOOKAHEAD_PACKETS || bytes >= LOOKAHEAD_BYTES {
                return Some(Group { packets, clean_end: false });
            }
        }
        (!packets.is_empty()).then_some(Group { packets, clean_end: true })
    }
}

/// The stream's clock: display index from a presentation timestamp.
fn clock_of(stream: &ffmpeg::format::stream::Stream, fps: f64) -> FrameClock {
    let tb = stream.time_base();
    FrameClock {
        time_base: tb,
        start: stream.start_time().max(0),
        per_frame: if fps > 0.0 {
            tb.denominator() as f64 / (tb.numerator().max(1) as f64 * fps)
        } else {
            0.0
        },
        unit: tb.numerator() as f64 / tb.denominator().max(1) as f64,
    }
}

/// What every decoder of a video shares, read once from the first open.
#[derive(Clone)]
struct VideoStream {
    index: usize,
    clock: FrameClock,
    rotation: i32,
    params: ffmpeg::codec::Parameters,
}

/// Decodes the frames `pick` chooses. With `threads` > 1 the wanted frames are shared
/// between up to `threads` decoders running side by side, each from a clean restart (an
/// IDR picture) on: decoding from an IDR picture gives the very frames a decode from the
/// start gives, and unlike FFmpeg's frame threads (3–6% more CPU-seconds than one thread
/// on issue 20's clip) the split costs only a seek and a light open per decoder
/// (`open_again`). Without such keyframes (open groups of pictures, other codecs) one
/// decoder runs with `threads` frame threads.
fn decode_wanted<S: Take>(
    path: &Path,
    pick: impl FnOnce(&VideoInfo) -> Vec<usize>,
    threads: usize,
    sink: &S,
) -> Result<Sampled<S::Out>, DecodeError> {
    let bad = |reason: String| DecodeError { path: path.to_path_buf(), reason };
    let (ictx, index, info) = open(path)?;
    let indices = pick(&info);
    let video = {
        let stream = ictx.stream(index).expect("the stream open() found");
        VideoStream {
            index,
            clock: clock_of(&stream, info.fps),
            rotation: info.rotation,
            params: stream.parameters().clone(),
        }
    };
    // The first decoder reads `ictx` from the start; the others seek, the last one on the
    // demuxer that found the clean restarts.
    let can_split = video.clock.per_frame > 0.0 && NalHeaders::new(&video.params).restarts_cleanly();
    let mut seeker = match threads > 1 && indices.len() > 1 && can_split {
        true => Some(open_again(path, &video)?),
        false => None,
    };
    let starts = match &mut seeker {
        Some(seeker) => clean_starts(seeker, &video, &indices, threads),
        None => vec![0],
    };
    let decoded = if starts.len() == 1 {
        vec![decode_span(ictx, video, 0, &indices, threads, sink).map_err(bad)?]
    } else {
        // Decoder k takes the wanted frames from its start up to the next decoder's start.
        let mut inputs = vec![ictx];
        for _ in 2..starts.len() {
            inputs.push(open_again(path, &video)?);
        }
        inputs.push(seeker.take().expect("clean_starts found a second start on it"));
        let frame_threads = (threads / starts.len()).max(1);
        let spans = starts.iter().enumerate().zip(inputs).map(|((k, &start), input)| {
            let end = starts.get(k + 1).map_or(indices.len(), |&next| indices.partition_point(|&i| i < next));
            (input, start, &indices[indices.partition_point(|&i| i < start)..end])
        });
        std::thread::scope(|s| {
            let running: Vec<_> = spans
                .map(|(input, start, wanted)| {
                    let video = video.clone();
                    s.spawn(move || decode_span(input, video, start, wanted, frame_threads, sink))
                })
                .collect();
            running
                .into_iter()
                .map(|r| r.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(bad)?
    };
    let count = decoded.iter().map(|(_, n)| n).sum::<usize>();
    if count == 0 {
        return Err(bad("no frame could be decoded (truncated or corrupt)".into()));
    }
    let frames = decoded.into_iter().flat_map(|(frames, _)| frames).collect();
    let frames = fill_past_end(frames, indices.len(), count).map_err(bad)?;
    Ok(Sampled { info, indices, frames, decoded: count })
}

/// Another demuxer on `path`, for a decoder that starts by seeking. The container's
/// header alone when it lists `video` with the same codec and time base (MP4, MKV): the
/// full open's probing decodes the first frames (8 ms for a 720p H.264 file, 1% of
/// `prepare`'s CPU-seconds for it), and the decoders take the codec parameters the first
/// open found. Otherwise a full open.
fn open_again(path: &Path, video: &VideoStream) -> Result<ffmpeg::format::context::Input, DecodeError> {
    use std::os::unix::ffi::OsStrExt;
    let header_only = std::ffi::CString::new(path.as_os_str().as_bytes()).ok().and_then(|name| {
        let mut ps = std::ptr::null_mut();
        // SAFETY: `ps` starts null for avformat_open_input to allocate; on success it
        // holds an open input that `Input::wrap` takes over (and closes on drop); on
        // failure FFmpeg has freed it.
        let ictx = unsafe {
            (ffmpeg::ffi::avformat_open_input(&mut ps, name.as_ptr(), std::ptr::null(), std::ptr::null_mut())
                == 0)
                .then(|| ffmpeg::format::context::Input::wrap(ps))
        }?;
        let same = ictx.stream(video.index).is_some_and(|s| {
            s.parameters().id() == video.params.id() && s.time_base() == video.clock.time_base
        });
        same.then_some(ictx)
    });
    match header_only {
        Some(ictx) => Ok(ictx),
        None => open(path).map(|(ictx, ..)| ictx),
    }
}

/// Display indices where decoders may start side by side: 0, then for each further
/// share of the wanted frames the keyframe at or before its first one, if that keyframe
/// is a clean restart (found by seeking `ictx` there and reading it). At most `ways`,
/// ascending.
fn clean_starts(
    ictx: &mut ffmpeg::format::context::Input,
    video: &VideoStream,
    indices: &[usize],
    ways: usize,
) -> Vec<usize> {
    let nal = NalHeaders::new(&video.params);
    let mut starts = vec![0];
    let ways = ways.min(indices.len());
    for k in 1..ways {
        let first = indices[k * indices.len() / ways];
        let at = video.clock.micros(first);
        if ictx.seek(at, ..at).is_err() {
            break;
        }
        let Some(key) = ictx.packets().find_map(|(s, p)| (s.index() == video.index).then_some(p)) else {
            break;
        };
        let start = key.pts().and_then(|ts| video.clock.index_of(ts));
        if let Some(start) = start.filter(|&i| key.is_key() && nal.clean_restart(&key) && i <= first)
            && start > *starts.last().expect("starts holds 0")
        {
            starts.push(start);
        }
    }
    starts
}

/// A decoder's wanted frames, in order (`None` where one never came out), and how many
/// frames it decoded.
type SpanFrames<T> = (Vec<Option<T>>, usize);

/// Decodes the wanted frames at `indices` (all at or after display index `start`, where a
/// clean restart is, or 0) from `ictx` with one decoder of `threads` frame threads;
/// returns them (not yet filled past the end) and the number of frames decoded.
fn decode_span<S: Take>(
    mut ictx: ffmpeg::format::context::Input,
    video: VideoStream,
    start: usize,
    indices: &[usize],
    threads: usize,
    sink: &S,
) -> Result<SpanFrames<S::Out>, String> {
    if indices.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let clock = &video.clock;
    if start > 0 {
        let at = clock.micros(start);
        ictx.seek(at, ..at).map_err(|e| format!("cannot seek to frame {start}: {e}"))?;
    }
    let nal = NalHeaders::new(&video.params);
    let mut ctx = ffmpeg::codec::context::Context::from_parameters(video.params)
        .map_err(|e| format!("bad codec parameters: {e}"))?;
    ctx.set_threading(ffmpeg::threading::Config {
        kind: ffmpeg::threading::Type::Frame,
        count: threads.max(1),
        ..Default::default()
    });
    let mut decoder = ctx.decoder().video().map_err(|e| format!("no decoder: {e}"))?;
    let last_wanted = indices.iter().copied().max().unwrap_or(0);
    let wanted_set: std::collections::HashSet<usize> = indices.iter().copied().collect();
    // A packet whose frame cannot be placed (no timestamp, no frame rate) is needed.
    let needed = |p: &ffmpeg::Packet| {
        p.pts().and_then(|ts| clock.index_of(ts)).is_none_or(|i| wanted_set.contains(&i))
    };
    let mut wanted: Wanted<S> = Wanted {
        indices,
        next: 0,
        shown: 0,
        out: Vec::with_capacity(indices.len()),
        sink,
        rotation: video.rotation,
        scaler: None,
    };
    let mut frame = ffmpeg::frame::Video::empty();
    let mut decoded = 0usize;
    // Nothing sent since the decoder was opened or last flushed.
    let mut flushed = true;
    let mut groups = Groups { packets: ictx.packets(), index: video.index, pending: None, nal };
    'groups: while let Some(group) = groups.next_group() {
        let need: Vec<bool> = group.packets.iter().map(needed).collect();
        // Before a clean restart, what comes after the last wanted packet feeds no wanted frame.
        let send = match group.clean_end {
            true => need.iter().rposition(|&n| n).map_or(0, |last| last + 1),
            false => need.len(),
        };
        for (packet, &needed) in group.packets[..send].iter().zip(&need) {
            // Not sent at all, it costs no hand-over to a decoder thread either.
            if !needed && groups.nal.unreferenced(packet) {
                continue;
            }
            decoder.skip_frame(if needed { ffmpeg::Discard::Default } else { ffmpeg::Discard::NonReference });
            flushed = false;
            // A damaged packet costs its frames, not the video: decoding goes on.
            if decoder.send_packet(packet).is_err() {
                continue;
            }
            let mut last_shown = 0;
            while decoder.receive_frame(&mut frame).is_ok() {
                last_shown = wanted.take(&frame, clock)?;
                decoded += 1;
            }
            if wanted.complete() || last_shown > last_wanted {
                break 'groups;
            }
        }
        if send < group.packets.len() && !flushed {
            decoded += wanted.drain(&mut decoder, &mut frame, clock)?;
            flushed = true;
            if wanted.complete() {
                break;
            }
        }
    }
    if !wanted.complete() && !flushed {
        decoded += wanted.drain(&mut decoder, &mut frame, clock)?;
    }
    Ok((wanted.out, decoded))
}

/// The rows of plane `p` (`row_bytes` wide, `rows` high) without FFmpeg's line padding.
fn plane_rows(f: &ffmpeg::frame::Video, p: usize, row_bytes: usize, rows: usize, out: &mut Vec<u8>) {
    let (stride, data) = (f.stride(p), f.data(p));
    for y in 0..rows {
        out.extend_from_slice(&data[y * stride..y * stride + row_bytes]);
    }
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
