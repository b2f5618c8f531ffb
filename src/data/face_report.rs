//! What `dfengine faces` reports for one video or still image: the detector's faces in
//! each frame `prepare` would sample (`[data] max_frames` segment centres; a still image
//! is one frame), boxes as (x, y, w, h) like the sidecars, or the reason the file could
//! not be read. With a folder to draw into, each frame is written there with its faces
//! drawn (`draw`).

use std::fmt;

use serde::Serialize;

use super::detect::Face;

/// One file's faces, or why there are none to show.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum FileFaces {
    Found { path: String, frames: Vec<FrameFaces> },
    Failed { path: String, error: String },
}

/// The faces of one sampled frame (by its index in the video), most confident first.
#[derive(Debug, Clone, Serialize)]
pub struct FrameFaces {
    pub index: usize,
    pub faces: Vec<ShownFace>,
}

/// A face as reported: box (left, top, width, height) in pixels, O-Net's probability,
/// landmarks (x, y): left eye, right eye, nose, left and right mouth corners.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ShownFace {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl From<&Face> for ShownFace {
    fn from(f: &Face) -> Self {
        let [x1, y1, x2, y2] = f.bbox;
        ShownFace { bbox: [x1, y1, x2 - x1, y2 - y1], score: f.score, landmarks: f.landmarks }
    }
}

impl FileFaces {
    pub fn is_failure(&self) -> bool {
        matches!(self, FileFaces::Failed { .. })
    }
}

impl fmt::Display for FileFaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, frames) = match self {
            FileFaces::Failed { path, error } => return write!(f, "{path}: error: {error}"),
            FileFaces::Found { path, frames } => (path, frames),
        };
        let faces: usize = frames.iter().map(|fr| fr.faces.len()).sum();
        let with_face = frames.iter().filter(|fr| !fr.faces.is_empty()).count();
        write!(f, "{path}: {faces} face(s) in {with_face} of {} sampled frame(s)", frames.len())?;
        for fr in frames {
            if fr.faces.is_empty() {
                write!(f, "\n  frame {}: no face", fr.index)?;
            }
            for face in &fr.faces {
                let [x, y, w, h] = face.bbox;
                let [le, re, nose, lm, rm] = face.landmarks.map(|[px, py]| format!("({px:.0}, {py:.0})"));
                write!(
                    f,
                    "\n  frame {}: box ({x:.0}, {y:.0}) {w:.0}×{h:.0}, score {:.4}; eyes {le} {re}, nose {nose}, mouth {lm} {rm}",
                    fr.index, face.score
                )?;
            }
        }
        Ok(())
    }
}

/// Detects the faces in `path`'s sampled frames; with `draw = Some(prefix)` each frame is
/// written to `<prefix>_frame<index>.png` with its faces drawn.
#[cfg(feature = "video")]
pub fn faces_in_file(
    det: &super::detect::FaceDetector,
    path: &std::path::Path,
    max_frames: usize,
    draw: Option<&std::path::Path>,
) -> FileFaces {
    let shown = path.display().to_string();
    match sampled_faces(det, path, max_frames, draw) {
        Ok(frames) => FileFaces::Found { path: shown, frames },
        Err(error) => FileFaces::Failed { path: shown, error },
    }
}

#[cfg(feature = "video")]
fn sampled_faces(
    det: &super::detect::FaceDetector,
    path: &std::path::Path,
    max_frames: usize,
    draw: Option<&std::path::Path>,
) -> Result<Vec<FrameFaces>, String> {
    use super::decode::{RgbFrame, sample_frames};
    use super::sampling::{Sampling, sample_indices};

    // A video shorter than max_frames repeats frames in `prepare`; shown once here.
    let pick = |info: &super::decode::VideoInfo| {
        let mut wanted = sample_indices(info.frames.max(1), max_frames, Sampling::Eval);
        wanted.dedup();
        wanted
    };
    let sampled = sample_frames(path, pick, 1, |_, img| RgbFrame::from(img)).map_err(|e| e.reason)?;
    let (wanted, frames) = (sampled.indices, sampled.frames);
    let mut shown = Vec::with_capacity(wanted.len());
    for (&index, frame) in wanted.iter().zip(frames) {
        // A frame the decoder never produced has no face and nothing to draw.
        let Some(mut frame) = frame else {
            shown.push(FrameFaces { index, faces: Vec::new() });
            continue;
        };
        let faces = super::face_boxes::detect_frame(det, &frame.data, frame.width, frame.height)
            .map_err(|e| format!("frame {index}: {e}"))?;
        if let Some(prefix) = draw {
            super::draw::draw_faces(&mut frame.data, frame.width, frame.height, &faces);
            let mut name = prefix.as_os_str().to_owned();
            name.push(format!("_frame{index}.png"));
            super::draw::write_png(std::path::Path::new(&name), &frame.data, frame.width, frame.height)?;
        }
        shown.push(FrameFaces { index, faces: faces.iter().map(ShownFace::from).collect() });
    }
    Ok(shown)
}
