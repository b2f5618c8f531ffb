//! Face tracks: per-frame detections linked across a clip's sampled frames, so that the
//! crop follows one person instead of jumping between per-frame guesses.
//!
//! Linking is greedy by IoU between a track's last box and each new detection (pairs in
//! descending IoU, each at least `link_iou`); a detection no track takes starts a track.
//! The main track is the one with the largest Σ score·side over the clip (present in
//! many frames, large, confident). A clip keeps the main track and, when `faces` asks for
//! more, the next heaviest ones that were detected in at least half as many frames as
//! the main track (a second person; not a stray hit of the detector in one frame). Each
//! kept track's boxes are smoothed (centre and side averaged over the detected frames
//! within `smooth` sampled frames either side), and frames where it was not detected (a
//! blink of the detector, a black frame) take the box of the nearest frame where it was,
//! the earlier one on a tie.

use super::detect::Face;
use super::faces::FaceBox;

/// How detections become tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackSettings {
    /// Smallest IoU between a track's last box and a detection that continues it.
    pub link_iou: f32,
    /// Frames either side averaged into each box.
    pub smooth: usize,
    /// Most tracks a clip keeps (`[data] faces_per_clip`).
    pub faces: usize,
}

impl Default for TrackSettings {
    fn default() -> Self {
        // Sampled frames are far apart (32 of a 300-frame clip): a head turning or the
        // camera panning moves the box a lot between them, so linking is lenient.
        TrackSettings { link_iou: 0.2, smooth: 2, faces: 1 }
    }
}

/// One face followed through the clip: its detection in each sampled frame, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub faces: Vec<Option<Face>>,
}

impl Track {
    /// Σ score·side over the frames where the face was detected.
    pub fn weight(&self) -> f32 {
        self.faces.iter().flatten().map(|f| f.score * side(&f.bbox)).sum()
    }

    pub fn detected_frames(&self) -> usize {
        self.faces.iter().flatten().count()
    }

    fn last_box(&self) -> Option<[f32; 4]> {
        self.faces.iter().rev().flatten().next().map(|f| f.bbox)
    }
}

fn side(b: &[f32; 4]) -> f32 {
    ((b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)).sqrt()
}

/// IoU of two boxes (x1, y1, x2, y2).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Links the detections of each sampled frame (in order) into tracks, heaviest first.
pub fn link(frames: &[Vec<Face>], settings: &TrackSettings) -> Vec<Track> {
    let n = frames.len();
    let mut tracks: Vec<Track> = Vec::new();
    for (t, faces) in frames.iter().enumerate() {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (k, track) in tracks.iter().enumerate() {
            if let Some(last) = track.last_box() {
                for (d, f) in faces.iter().enumerate() {
                    let o = iou(&last, &f.bbox);
                    if o >= settings.link_iou {
                        pairs.push((o, k, d));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut taken_track = vec![false; tracks.len()];
        let mut taken_face = vec![false; faces.len()];
        for (_, k, d) in pairs {
            if !taken_track[k] && !taken_face[d] {
                taken_track[k] = true;
                taken_face[d] = true;
                tracks[k].faces[t] = Some(faces[d]);
            }
        }
        for (d, f) in faces.iter().enumerate() {
            if !taken_face[d] {
                let mut faces = vec![None; n];
                faces[t] = Some(*f);
                tracks.push(Track { faces });
            }
        }
    }
    tracks.sort_by(|a, b| b.weight().total_cmp(&a.weight()));
    tracks
}

/// The kept tracks (main first, at most `settings.faces`), each as its box in every
/// sampled frame, smoothed and with gaps filled; empty when no frame has a face.
pub fn clip_tracks(frames: &[Vec<Face>], settings: &TrackSettings) -> Vec<Vec<FaceBox>> {
    let tracks = link(frames, settings);
    let Some(main) = tracks.first() else { return Vec::new() };
    let enough = main.detected_frames().div_ceil(2);
    let kept: Vec<&Track> = std::iter::once(main)
        .chain(tracks[1..].iter().filter(|t| t.detected_frames() >= enough))
        .take(settings.faces.max(1))
        .collect();
    kept.into_iter().map(|t| smooth_and_fill(t, settings.smooth)).collect()
}

/// Each frame's box: centre and side averaged over the detected frames within `radius`
/// frames; frames without a detection take the nearest detected frame's box.
pub fn smooth_and_fill(track: &Track, radius: usize) -> Vec<FaceBox> {
    let n = track.faces.len();
    let detected: Vec<usize> = (0..n).filter(|&t| track.faces[t].is_some()).collect();
    let smoothed = |t: usize| -> FaceBox {
        let near: Vec<[f32; 4]> = detected
            .iter()
            .filter(|&&u| u.abs_diff(t) <= radius)
            .filter_map(|&u| track.faces[u].map(|f| f.bbox))
            .collect();
        let k = near.len() as f64;
        let mean = |f: &dyn Fn(&[f32; 4]) -> f32| near.iter().map(|b| f(b) as f64).sum::<f64>() / k;
        let (cx, cy) = (mean(&|b| (b[0] + b[2]) / 2.0), mean(&|b| (b[1] + b[3]) / 2.0));
        let (w, h) = (mean(&|b| b[2] - b[0]), mean(&|b| b[3] - b[1]));
        FaceBox { x: cx - w / 2.0, y: cy - h / 2.0, w, h }
    };
    (0..n)
        .map(|t| {
            let nearest = *detected
                .iter()
                .min_by_key(|&&u| (u.abs_diff(t), u))
                .expect("a track has at least one detection");
            smoothed(nearest)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, s: f32, score: f32) -> Face {
        Face { bbox: [x, y, x + s, y + s], score, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn detections_link_by_overlap_and_the_main_track_is_the_heaviest() {
        let frames = vec![
            vec![face(100.0, 100.0, 50.0, 0.99), face(10.0, 10.0, 20.0, 0.9)],
            vec![face(10.0, 11.0, 20.0, 0.95), face(105.0, 102.0, 50.0, 0.98)],
            vec![],
            vec![face(110.0, 104.0, 52.0, 0.99)],
        ];
        let tracks = link(&frames, &TrackSettings::default());
        assert_eq!(tracks.len(), 2);
        assert_eq!(tracks[0].detected_frames(), 3, "the large face, frames 0, 1 and 3");
        assert_eq!(tracks[0].faces[1].unwrap().bbox[0], 105.0);
        assert!(tracks[0].faces[2].is_none());
        assert_eq!(tracks[1].detected_frames(), 2);
        let kept = clip_tracks(&frames, &TrackSettings { smooth: 0, ..TrackSettings::default() });
        assert_eq!(kept.len(), 1, "one face per clip by default");
        let boxes = &kept[0];
        assert_eq!(boxes.len(), 4);
        assert_eq!(boxes[0], FaceBox { x: 100.0, y: 100.0, w: 50.0, h: 50.0 });
        // Frame 2 has no detection: it takes frame 1's box (nearest, earlier on a tie).
        assert_eq!(boxes[2], boxes[1]);
    }

    #[test]
    fn smoothing_averages_neighbours_and_empty_clips_have_no_track() {
        let frames = vec![
            vec![face(100.0, 100.0, 40.0, 1.0)],
            vec![face(106.0, 100.0, 40.0, 1.0)],
            vec![face(100.0, 100.0, 40.0, 1.0)],
        ];
        let boxes = &clip_tracks(&frames, &TrackSettings { smooth: 1, ..TrackSettings::default() })[0];
        assert!((boxes[1].x - 102.0).abs() < 1e-9, "{:?}", boxes[1]);
        assert!((boxes[0].x - 103.0).abs() < 1e-9, "{:?}", boxes[0]);
        assert!(clip_tracks(&[vec![], vec![]], &TrackSettings::default()).is_empty());
        assert!(clip_tracks(&[], &TrackSettings::default()).is_empty());
    }

    #[test]
    fn a_jump_too_far_starts_a_new_track() {
        let frames = vec![vec![face(0.0, 0.0, 10.0, 1.0)], vec![face(200.0, 0.0, 10.0, 1.0)]];
        assert_eq!(link(&frames, &TrackSettings::default()).len(), 2);
    }

    #[test]
    fn faces_per_clip_keeps_further_people_but_not_stray_hits() {
        // A large face in every frame, a smaller one in three of four, a stray hit in one.
        let frames = vec![
            vec![face(100.0, 100.0, 60.0, 0.99), face(300.0, 100.0, 40.0, 0.95)],
            vec![face(101.0, 100.0, 60.0, 0.99), face(300.0, 101.0, 40.0, 0.95), face(0.0, 0.0, 80.0, 0.9)],
            vec![face(102.0, 100.0, 60.0, 0.99)],
            vec![face(103.0, 100.0, 60.0, 0.99), face(301.0, 100.0, 40.0, 0.95)],
        ];
        let settings = |faces| TrackSettings { smooth: 0, faces, ..TrackSettings::default() };
        let one = clip_tracks(&frames, &settings(1));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0][0].x, 100.0, "the main track is the large face");
        let three = clip_tracks(&frames, &settings(3));
        assert_eq!(three.len(), 2, "the stray hit (1 of 4 frames) is no second person");
        assert_eq!(three[0], one[0]);
        assert_eq!(three[1][0].x, 300.0);
        // Frame 2 missed the second face: it takes frame 1's box.
        assert_eq!(three[1][2], three[1][1]);
    }
}
