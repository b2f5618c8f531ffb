//! The face boxes a clip is cropped around, by `[data] faces`: none (centre squares),
//! the video's sidecar (`boxes`), or detected (`detect`): MTCNN on every sampled frame,
//! the detections linked into tracks, the main track's smoothed, gap-filled box in every
//! frame. With `faces_per_clip` = k > 1 and more people in the video, the sampled frames
//! take turns between the kept tracks (frame i around track i mod k): the clip shows
//! each of them and keeps the video's label, which is right for the clip even when only
//! one of the faces was swapped (one clip per face would label a real face fake). Detected boxes are stored in the cache folder as sidecars (the same
//! `{"<frame>": [x, y, w, h]}` form a user writes), keyed by the video and the settings
//! that decide them but not by `frame_size`, so that a second `prepare`, or a new
//! frame size, does not detect again. A video where no sampled frame has a face is an
//! error naming the video, which `prepare` counts against `max_bad_fraction`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::detect::{DetectSettings, Face, FaceDetector, Image};
use super::faces::{self, FaceBox};
use super::tracks::{self, TrackSettings};
use crate::backend::cpu::CpuBackend;
use crate::backend::ops::Backend;
use crate::config::{DataConfig, FaceSource};
use crate::model::mtcnn::MtcnnError;

/// Frames wider or taller than this are detected at 1/2, 1/3, ... of their size: 1080p
/// at 960×540 as the DFDC-winning solution did, 720p at 640×360. The boxes come back in
/// full-size pixels. P-Net's pyramid costs in proportion to the pixels searched, and at
/// 1280×720 it alone is about 4× the budget of 1 CPU-second for 32 frames
/// (docs/BENCHMARKS.md); the smallest face found in a 720p frame is then 2 × min_face.
pub const MAX_DETECT_SIDE: usize = 960;

/// How a clip's faces are found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceSettings {
    pub source: FaceSource,
    pub detect: DetectSettings,
    pub track: TrackSettings,
}

impl Default for FaceSettings {
    fn default() -> Self {
        FaceSettings {
            source: FaceSource::Boxes,
            detect: DetectSettings::default(),
            track: TrackSettings::default(),
        }
    }
}

impl FaceSettings {
    pub fn from_config(d: &DataConfig) -> Self {
        FaceSettings {
            source: d.faces,
            detect: DetectSettings {
                min_face: d.face_min_size,
                thresholds: d.face_thresholds.map(|t| t as f32),
                ..DetectSettings::default()
            },
            track: TrackSettings { faces: d.faces_per_clip as usize, ..TrackSettings::default() },
        }
    }

    /// A hash of what decides the boxes besides the video (0 for sidecar boxes, which
    /// keeps the frame cache's keys as they were before detection existed).
    pub fn key(&self) -> u64 {
        let d = &self.detect;
        match self.source {
            FaceSource::Boxes => 0,
            FaceSource::None => 1,
            FaceSource::Detect => {
                let mut h = 2u64;
                let t = &self.track;
                for v in [d.min_face, d.factor, t.link_iou as f64, t.smooth as f64, t.faces as f64]
                    .into_iter()
                    .chain(d.thresholds.map(f64::from))
                {
                    h = crate::rng::mix(h, v.to_bits());
                }
                crate::rng::mix(h, MAX_DETECT_SIDE as u64)
            }
        }
    }
}

/// Why `[data] face_detector` could not be loaded, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("[data] face_detector: {0}")]
pub struct DetectorError(#[from] pub MtcnnError);

/// MTCNN from `[data] face_detector` with `[data]`'s detection settings, on the CPU.
pub fn load_detector(d: &DataConfig) -> Result<FaceDetector, DetectorError> {
    load_detector_on(CpuBackend::default(), d)
}

/// The same on `backend` (`prepare` detects on the GPU when it has one).
pub fn load_detector_on<B: Backend + Send + 'static>(
    backend: B,
    d: &DataConfig,
) -> Result<FaceDetector, DetectorError> {
    Ok(FaceDetector::load_on(backend, Path::new(&d.face_detector), FaceSettings::from_config(d).detect)?)
}

/// The detector `[data]` asks for, on the CPU: loaded when `faces = "detect"`, else None.
/// The error says how to get missing weights.
pub fn detector_for(d: &DataConfig) -> Result<Option<Arc<FaceDetector>>, String> {
    if d.faces != FaceSource::Detect {
        return Ok(None);
    }
    load_detector(d).map(|det| Some(Arc::new(det))).map_err(|e| e.to_string())
}

/// The faces in one frame; frames larger than `MAX_DETECT_SIDE` are detected reduced
/// by an integer factor (each pixel the mean of a block), boxes scaled back.
pub fn detect_frame(
    det: &FaceDetector,
    rgb: &[u8],
    width: usize,
    height: usize,
) -> Result<Vec<Face>, String> {
    let f = width.max(height).div_ceil(MAX_DETECT_SIDE).max(1);
    if f == 1 {
        return det.detect(Image { rgb, width, height });
    }
    let (w, h) = (width / f, height / f);
    let small = reduce(rgb, width, f);
    let s = f as f32;
    Ok(det
        .detect(Image { rgb: &small, width: w, height: h })?
        .into_iter()
        .map(|face| Face {
            bbox: face.bbox.map(|v| v * s),
            landmarks: face.landmarks.map(|p| p.map(|v| v * s)),
            ..face
        })
        .collect())
}

/// `rgb` (`width` pixels a row) reduced by `f`: each pixel the rounded mean of an f×f
/// block; rows and columns past the last whole block are dropped.
fn reduce(rgb: &[u8], width: usize, f: usize) -> Vec<u8> {
    let (w, h) = (width / f, rgb.len() / (width * 3) / f);
    let (area, half) = ((f * f) as u32, (f * f / 2) as u32);
    let mut small = vec![0u8; w * h * 3];
    small.par_chunks_mut(w * 3).zip(rgb.par_chunks(f * width * 3)).for_each(|(out, rows)| {
        // Each output row sums its f input rows column by column, then f columns at a time.
        let mut column = vec![0u32; w * f * 3];
        for row in rows.chunks_exact(width * 3) {
            column.iter_mut().zip(row).for_each(|(s, &v)| *s += v as u32);
        }
        for (px, block) in out.chunks_exact_mut(3).zip(column.chunks_exact(f * 3)) {
            for (c, o) in px.iter_mut().enumerate() {
                let sum: u32 = block.iter().skip(c).step_by(3).sum();
                *o = ((sum + half) / area) as u8;
            }
        }
    });
    small
}

/// What detection found in one clip.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClipFaces {
    /// The box at each sampled frame index (the kept tracks' in turn); empty when no
    /// frame has a face.
    pub boxes: HashMap<usize, FaceBox>,
    pub frames: usize,
    /// Detections over all frames (every face, not only the main track's).
    pub faces_found: usize,
    pub tracks: usize,
}

/// Detects the faces of the decoded frames `(index, width, height, rgb)` (an empty frame,
/// one the decoder never produced, has none) and keeps the main track, or the
/// `track.faces` heaviest in turn.
pub fn detect_clip(
    det: &FaceDetector,
    decoded: &[(usize, usize, usize, Vec<u8>)],
    track: &TrackSettings,
) -> Result<ClipFaces, String> {
    let per_frame: Vec<Vec<Face>> = decoded
        .iter()
        .map(|(_, w, h, rgb)| if rgb.is_empty() { Ok(Vec::new()) } else { detect_frame(det, rgb, *w, *h) })
        .collect::<Result<_, _>>()?;
    let faces_found = per_frame.iter().map(Vec::len).sum();
    let tracks = tracks::link(&per_frame, track).len();
    let kept = tracks::clip_tracks(&per_frame, track);
    // Turns go by distinct frame index: a video shorter than `max_frames` repeats indices,
    // and a repeated frame is one crop.
    let mut boxes = HashMap::new();
    for (t, &(index, ..)) in decoded.iter().enumerate() {
        if !kept.is_empty() && !boxes.contains_key(&index) {
            boxes.insert(index, kept[boxes.len() % kept.len()][t]);
        }
    }
    Ok(ClipFaces { boxes, frames: decoded.len(), faces_found, tracks })
}

/// Where the detected boxes under `key` are cached in `dir`.
pub fn cached_path(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("{key:016x}.faces.json"))
}

/// The cached boxes, if detection ran before (an empty map: no face was found).
pub fn read_cached(dir: &Path, key: u64) -> Result<Option<HashMap<usize, FaceBox>>, String> {
    let path = cached_path(dir, key);
    if !path.exists() {
        return Ok(None);
    }
    // `faces::sidecar` reads `<video>.faces.json`: the cached file is the sidecar of a
    // "video" named by the key.
    faces::sidecar(&dir.join(format!("{key:016x}"))).map(Some)
}

/// Stores the boxes (written to a temporary name, then renamed).
pub fn write_cached(dir: &Path, key: u64, boxes: &HashMap<usize, FaceBox>) -> std::io::Result<()> {
    let mut sorted: Vec<(&usize, &FaceBox)> = boxes.iter().collect();
    sorted.sort_by_key(|(k, _)| **k);
    let body: Vec<String> = sorted
        .iter()
        .map(|(k, b)| format!("\"{k}\": [{:.2}, {:.2}, {:.2}, {:.2}]", b.x, b.y, b.w, b.h))
        .collect();
    let path = cached_path(dir, key);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{{{}}}\n", body.join(", ")))?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_boxes_round_trip_and_no_face_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cached(dir.path(), 7).unwrap(), None);
        let boxes = HashMap::from([(3, FaceBox { x: 1.5, y: 2.0, w: 30.25, h: 40.0 })]);
        write_cached(dir.path(), 7, &boxes).unwrap();
        assert_eq!(read_cached(dir.path(), 7).unwrap(), Some(boxes));
        write_cached(dir.path(), 8, &HashMap::new()).unwrap();
        assert_eq!(read_cached(dir.path(), 8).unwrap(), Some(HashMap::new()));
    }

    #[test]
    fn reduction_takes_the_rounded_mean_of_each_block() {
        let (width, height, f) = (7, 8, 3);
        let rgb: Vec<u8> = (0..width * height * 3).map(|i| (i * 89 % 256) as u8).collect();
        let small = reduce(&rgb, width, f);
        let (w, h) = (width / f, height / f);
        assert_eq!(small.len(), w * h * 3);
        for (i, &got) in small.iter().enumerate() {
            let (y, x, c) = (i / 3 / w, i / 3 % w, i % 3);
            let sum: u32 =
                (0..f * f).map(|k| rgb[((y * f + k / f) * width + x * f + k % f) * 3 + c] as u32).sum();
            assert_eq!(got as u32, (sum + 4) / 9, "pixel ({x}, {y}) channel {c}");
        }
    }

    #[test]
    fn keys_tell_the_modes_and_settings_apart() {
        let detect = FaceSettings { source: FaceSource::Detect, ..FaceSettings::default() };
        assert_eq!(FaceSettings::default().key(), 0);
        assert_ne!(detect.key(), FaceSettings { source: FaceSource::None, ..detect }.key());
        let stricter = DetectSettings { thresholds: DetectSettings::DFDC_THRESHOLDS, ..detect.detect };
        assert_ne!(detect.key(), FaceSettings { detect: stricter, ..detect }.key());
    }
}
