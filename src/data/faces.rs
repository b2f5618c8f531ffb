//! Face crops: a sidecar `<video>.faces.json` gives face boxes per frame; the crop is
//! the square around the box, scaled (1.3 by default), kept inside the frame. Frames
//! without a box (or videos without a sidecar) get the centre square.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A face box in pixels: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// A crop in whole pixels, inside the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub x0: usize,
    pub y0: usize,
    pub side: usize,
}

/// The square crop around `face` (its longer side × `scale`), shifted to lie inside a
/// `width × height` frame and no larger than the frame's shorter side.
pub fn face_crop(face: &FaceBox, scale: f64, width: usize, height: usize) -> Crop {
    let limit = width.min(height);
    let side = ((face.w.max(face.h) * scale).round() as usize).clamp(1, limit);
    let (cx, cy) = (face.x + face.w / 2.0, face.y + face.h / 2.0);
    let place = |centre: f64, extent: usize| -> usize {
        let start = (centre - side as f64 / 2.0).round().max(0.0) as usize;
        start.min(extent - side)
    };
    Crop { x0: place(cx, width), y0: place(cy, height), side }
}

/// The centre square of a `width × height` frame.
pub fn centre_crop(width: usize, height: usize) -> Crop {
    let side = width.min(height).max(1);
    Crop { x0: (width - side.min(width)) / 2, y0: (height - side.min(height)) / 2, side }
}

/// Face boxes by frame index, from the sidecar of `video` if it has one:
/// `{"0": [x, y, w, h], "5": [...]}` or `{"0": {"x":..,"y":..,"w":..,"h":..}}`.
pub fn sidecar(video: &Path) -> Result<HashMap<usize, FaceBox>, String> {
    let path = sidecar_path(video);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(HashMap::new()) };
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Entry {
        List([f64; 4]),
        Named(FaceBox),
    }
    let raw: HashMap<String, Entry> = serde_json::from_str(&text)
        .map_err(|e| format!("{}: expected {{\"<frame>\": [x, y, w, h]}}: {e}", path.display()))?;
    raw.into_iter()
        .map(|(k, v)| {
            let frame = k
                .parse::<usize>()
                .map_err(|_| format!("{}: frame key {k:?} is not a number", path.display()))?;
            let b = match v {
                Entry::List([x, y, w, h]) => FaceBox { x, y, w, h },
                Entry::Named(b) => b,
            };
            Ok((frame, b))
        })
        .collect()
}

pub fn sidecar_path(video: &Path) -> PathBuf {
    let mut name = video.as_os_str().to_owned();
    name.push(".faces.json");
    PathBuf::from(name)
}

/// The crop for `frame`: around its face box when there is one, else the centre.
pub fn crop_for(
    boxes: &HashMap<usize, FaceBox>,
    frame: usize,
    scale: f64,
    width: usize,
    height: usize,
) -> Crop {
    boxes.get(&frame).map_or_else(|| centre_crop(width, height), |b| face_crop(b, scale, width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_is_a_scaled_square_around_the_face_inside_the_frame() {
        let face = FaceBox { x: 100.0, y: 50.0, w: 80.0, h: 100.0 };
        assert_eq!(face_crop(&face, 1.3, 640, 360), Crop { x0: 75, y0: 35, side: 130 });
        // Near the edge the square slides in rather than leaving the frame.
        let edge = FaceBox { x: 600.0, y: 0.0, w: 60.0, h: 60.0 };
        let c = face_crop(&edge, 1.3, 640, 360);
        assert_eq!((c.x0 + c.side, c.y0), (640, 0));
        // A box larger than the frame is clamped to its shorter side.
        assert_eq!(face_crop(&FaceBox { x: 0.0, y: 0.0, w: 900.0, h: 900.0 }, 1.3, 640, 360).side, 360);
    }

    #[test]
    fn frames_without_boxes_get_the_centre() {
        assert_eq!(centre_crop(640, 360), Crop { x0: 140, y0: 0, side: 360 });
        let boxes = HashMap::from([(3, FaceBox { x: 10.0, y: 10.0, w: 20.0, h: 20.0 })]);
        assert_eq!(crop_for(&boxes, 4, 1.3, 64, 48), centre_crop(64, 48));
        assert_eq!(crop_for(&boxes, 3, 1.0, 64, 48), Crop { x0: 10, y0: 10, side: 20 });
    }

    #[test]
    fn sidecars_in_both_forms_and_bad_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("a.mp4");
        assert!(sidecar(&video).unwrap().is_empty(), "no sidecar, no boxes");
        std::fs::write(sidecar_path(&video), r#"{"0": [1, 2, 3, 4], "7": {"x": 5, "y": 6, "w": 7, "h": 8}}"#)
            .unwrap();
        let boxes = sidecar(&video).unwrap();
        assert_eq!(boxes[&0], FaceBox { x: 1.0, y: 2.0, w: 3.0, h: 4.0 });
        assert_eq!(boxes[&7].w, 7.0);
        std::fs::write(sidecar_path(&video), r#"{"first": [1, 2, 3, 4]}"#).unwrap();
        let err = sidecar(&video).unwrap_err();
        assert!(err.contains("a.mp4.faces.json") && err.contains("\"first\" is not a number"), "{err}");
    }
}
