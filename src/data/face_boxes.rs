//! The face boxes a clip is cropped around, by `[data] faces`: none (centre squares),
//! the video's sidecar (`boxes`), or detected (`detect`): MTCNN on every sampled frame,
//! the detections linked into tracks, the main track's smoothed, gap-filled box in every
//! frame. Detected boxes are stored in the cache folder as sidecars (the same
//! `{"<frame>": [x, y, w, h]}` form a user writes), keyed by the video and the settings
//! that decide them but not by `frame_size`, so that a second `prepare`, or a new
//! frame size, does not detect again. A video where no sampled frame has a face is an
//! error naming the video, which `prepare` counts against `max_bad_fraction`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::detect::{DetectSettings, Face, FaceDetector, Image};
use super::faces::{self, FaceBox};
use super::tracks::{self, TrackSettings};
use crate::config::{DataConfig, FaceSource};

/// Frames wider or taller than this are detected at 1/2, 1/3, ... of their size (as the
/// DFDC-winning solution detected 1080p frames at half resolution): the boxes come back
/// in full-size pixels.
pub const MAX_DETECT_SIDE: usize = 1280;

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
            track: TrackSettings::default(),
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
                for v in [d.min_face, d.factor, self.track.link_iou as f64, self.track.smooth as f64]
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

/// The detector `[data]` asks for: loaded when `faces = "detect"`, else None. The error
/// says how to get missing weights.
pub fn detector_for(d: &DataConfig) -> Result<Option<Arc<FaceDetector>>, String> {
    if d.faces != FaceSource::Detect {
        return Ok(None);
    }
    let settings = FaceSettings::from_config(d).detect;
    FaceDetector::load(Path::new(&d.face_detector), settings)
        .map(|det| Some(Arc::new(det)))
        .map_err(|e| format!("[data] faces = \"detect\": {e}"))
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
    let mut small = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..f {
                    for dx in 0..f {
                        sum += rgb[((y * f + dy) * width + x * f + dx) * 3 + c] as u32;
                    }
                }
                small[(y * w + x) * 3 + c] = ((sum + (f * f / 2) as u32) / (f * f) as u32) as u8;
            }
        }
    }
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

/// What detection found in one clip.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClipFaces {
    /// The main track's box at each sampled frame index; empty when no frame has a face.
    pub boxes: HashMap<usize, FaceBox>,
    pub frames: usize,
    /// Detections over all frames (every face, not only the main track's).
    pub faces_found: usize,
    pub tracks: usize,
}

/// Detects the faces of the decoded frames `(index, width, height, rgb)` (an empty frame,
/// one the decoder never produced, has none) and keeps the main track.
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
    let boxes = tracks::main_track_boxes(&per_frame, track)
        .map(|b| decoded.iter().map(|d| d.0).zip(b).collect())
        .unwrap_or_default();
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
    fn keys_tell_the_modes_and_settings_apart() {
        let detect = FaceSettings { source: FaceSource::Detect, ..FaceSettings::default() };
        assert_eq!(FaceSettings::default().key(), 0);
        assert_ne!(detect.key(), FaceSettings { source: FaceSource::None, ..detect }.key());
        let stricter = DetectSettings { thresholds: DetectSettings::DFDC_THRESHOLDS, ..detect.detect };
        assert_ne!(detect.key(), FaceSettings { detect: stricter, ..detect }.key());
    }
}
