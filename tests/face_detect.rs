//! Face detection: the detector against an independent NumPy implementation of
//! facenet-pytorch's MTCNN (tests/fixtures/make_mtcnn_reference.py → mtcnn_astronaut.json)
//! on scikit-image's astronaut photograph, decoded through FFmpeg's PNG decoder; the same
//! faces on the CUDA backend as on the CPU; then a clip made from it (pan, zoom, black
//! frames) through tracks and the frame cache, and a clip with no face. The ops MTCNN
//! adds (bias with PReLU, softmax, ceil-mode max pool) are tested in tests/activation.rs
//! and tests/pooling.rs.
//!
//! The detector's tests need `models/mtcnn.safetensors` and `models/astronaut.png`
//! (scripts/get-face-detector.sh --test-image); without them they print why they skip.

mod common;

use std::path::{Path, PathBuf};

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::ops::Backend;
use dfengine::data::detect::{DetectSettings, FaceDetector, Image};
use dfengine::model::mtcnn::MtcnnError;

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
}

/// The detector with `settings` on the CPU, or None (after saying why) when the weights
/// are missing.
fn detector(settings: DetectSettings) -> Option<FaceDetector> {
    detector_on(CpuBackend::default(), settings)
}

/// The detector with `settings` on `backend`, or None as `detector`.
fn detector_on<B: Backend + Send + 'static>(backend: B, settings: DetectSettings) -> Option<FaceDetector> {
    match FaceDetector::load_on(backend, &asset("mtcnn.safetensors"), settings) {
        Ok(d) => Some(d),
        Err(MtcnnError::Missing(path)) => {
            println!("skipped: {} missing (run scripts/get-face-detector.sh --test-image)", path.display());
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn missing_weights_say_how_to_get_them() {
    let err = FaceDetector::load(Path::new("/nowhere/mtcnn.safetensors"), DetectSettings::default())
        .err()
        .expect("no file, no detector")
        .to_string();
    assert!(
        err.contains("/nowhere/mtcnn.safetensors") && err.contains("scripts/get-face-detector.sh"),
        "{err}"
    );
}

#[test]
fn blank_tiny_and_malformed_images_give_no_faces_or_a_clear_error() {
    let Some(d) = detector(DetectSettings::default()) else { return };
    for (w, h, v) in [(64, 48, 0u8), (64, 48, 255), (200, 120, 128), (11, 11, 90), (1, 1, 0)] {
        let rgb = vec![v; w * h * 3];
        let faces = d.detect(Image { rgb: &rgb, width: w, height: h }).unwrap();
        assert!(faces.is_empty(), "a flat {w}×{h} image of {v} has no face: {faces:?}");
    }
    let err = d.detect(Image { rgb: &[0; 10], width: 4, height: 4 }).unwrap_err();
    assert!(err.contains("4×4 needs 48 RGB bytes, got 10"), "{err}");
    let bad = DetectSettings { factor: 1.0, ..DetectSettings::default() };
    let err = FaceDetector::load(&asset("mtcnn.safetensors"), bad)
        .unwrap()
        .detect(Image { rgb: &[0; 48], width: 4, height: 4 })
        .unwrap_err();
    assert!(err.contains("factor 1 must lie strictly between 0 and 1"), "{err}");
}

#[cfg(feature = "video")]
mod astronaut {
    use super::*;
    use dfengine::data::decode::read_frames;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        crop: [usize; 4],
        min_face: f64,
        thresholds: [f32; 3],
        faces: Vec<RefFace>,
    }

    #[derive(Deserialize)]
    struct RefFace {
        #[serde(rename = "box")]
        bbox: [f32; 4],
        score: f32,
        landmarks: [[f32; 2]; 5],
    }

    /// The photograph through FFmpeg's PNG decoder, or None (after saying why).
    fn photograph() -> Option<(Vec<u8>, usize, usize)> {
        let path = asset("astronaut.png");
        if !path.exists() {
            println!("skipped: {} missing (run scripts/get-face-detector.sh --test-image)", path.display());
            return None;
        }
        let (frames, _) = read_frames(&path, &[0], 1).unwrap();
        let f = frames.into_iter().next().unwrap();
        Some((f.data, f.width, f.height))
    }

    fn crop(rgb: &[u8], width: usize, [x0, y0, w, h]: [usize; 4]) -> Vec<u8> {
        (y0..y0 + h)
            .flat_map(|y| rgb[(y * width + x0) * 3..(y * width + x0 + w) * 3].iter().copied())
            .collect()
    }

    fn fixture() -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mtcnn_astronaut.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    impl Case {
        fn settings(&self) -> DetectSettings {
            DetectSettings {
                min_face: self.min_face,
                thresholds: self.thresholds,
                ..DetectSettings::default()
            }
        }
    }

    #[test]
    fn mtcnn_matches_the_numpy_reference_on_the_astronaut() {
        let Some((rgb, width, height)) = photograph() else { return };
        assert_eq!((width, height), (512, 512), "the astronaut is 512×512");
        let (mut box_err, mut score_err, mut mark_err) = (0f32, 0f32, 0f32);
        for case in &fixture().cases {
            let Some(d) = detector(case.settings()) else { return };
            let pixels = crop(&rgb, width, case.crop);
            let image = Image { rgb: &pixels, width: case.crop[2], height: case.crop[3] };
            d.detect(image).unwrap(); // warm-up: page in the weights, start rayon
            let start = std::time::Instant::now();
            let faces = d.detect(image).unwrap();
            let took = start.elapsed();
            println!(
                "{}: {}×{}, min face {}: {} face(s) in {:.1} ms",
                case.name,
                case.crop[2],
                case.crop[3],
                case.min_face,
                faces.len(),
                took.as_secs_f64() * 1e3
            );
            assert_eq!(faces.len(), case.faces.len(), "{}: number of faces", case.name);
            for (got, want) in faces.iter().zip(&case.faces) {
                println!(
                    "  got {:?} score {:.6}\n  ref {:?} score {:.6}",
                    got.bbox, got.score, want.bbox, want.score
                );
                for k in 0..4 {
                    box_err = box_err.max((got.bbox[k] - want.bbox[k]).abs());
                }
                score_err = score_err.max((got.score - want.score).abs());
                for (g, w) in got.landmarks.iter().zip(&want.landmarks) {
                    mark_err = mark_err.max((g[0] - w[0]).abs().max((g[1] - w[1]).abs()));
                }
            }
        }
        println!(
            "largest difference from the reference: box {box_err:.2e} px, score {score_err:.2e}, landmark {mark_err:.2e} px"
        );
        assert!(box_err <= 1.0, "boxes differ by {box_err} px");
        assert!(score_err <= 1e-3, "scores differ by {score_err}");
        assert!(mark_err <= 1.0, "landmarks differ by {mark_err} px");
    }

    /// The detector on the CUDA backend finds the faces it finds on the CPU: its
    /// convolutions run on FP16 tensor cores (inputs rounded to FP16, FP32 sums), which
    /// moves boxes and landmarks by hundredths of a pixel (3·10⁻² px measured on the
    /// fixture's cases) and scores near 1 by a few millionths. The 200² square around the
    /// face at 96² (the face about 45 px), then the NumPy fixture's cases: all of them on
    /// a card, those up to 360×300 on the software GPU, whose interpreter takes seconds
    /// over a 512² pyramid (10 s for all four cases, 1.7 s for these).
    #[cfg(feature = "cuda")]
    #[test]
    fn mtcnn_finds_the_cpus_faces_on_the_gpu_cuda() {
        use dfengine::data::faces::Crop;
        use dfengine::data::image::RgbImage;
        use dfengine::data::resize::crop_resize;

        let Some((rgb, width, _)) = photograph() else { return };
        let Some((gpu, dut)) = common::cuda_backend() else { return };
        let head = crop_resize(RgbImage::packed(&rgb, 512, 512), Crop { x0: 124, y0: 17, side: 200 }, 96);
        let mut cases = vec![("head at 96²".to_string(), head, [96, 96], DetectSettings::default())];
        for c in fixture().cases {
            let [_, _, w, h] = c.crop;
            if !dut.software_gpu || w * h <= 360 * 300 {
                cases.push((c.name.clone(), crop(&rgb, width, c.crop), [w, h], c.settings()));
            }
        }
        let (mut box_err, mut score_err, mut mark_err, mut faces) = (0f32, 0f32, 0f32, 0);
        for (name, pixels, [w, h], settings) in &cases {
            let (Some(cpu), Some(cuda)) = (detector(*settings), detector_on(gpu.clone(), *settings)) else {
                return;
            };
            assert!(cuda.backend_name().starts_with("cuda:"), "{}", cuda.backend_name());
            let image = Image { rgb: pixels, width: *w, height: *h };
            let want = cpu.detect(image).unwrap();
            let start = std::time::Instant::now();
            let got = cuda.detect(image).unwrap();
            println!(
                "{name}: {w}×{h}, {} face(s) on the CPU, {} on {} in {:.2} s",
                want.len(),
                got.len(),
                cuda.backend_name(),
                start.elapsed().as_secs_f64()
            );
            assert_eq!(got.len(), want.len(), "{name}: number of faces");
            for (g, c) in got.iter().zip(&want) {
                println!(
                    "  cuda {:?} score {:.6}\n  cpu  {:?} score {:.6}",
                    g.bbox, g.score, c.bbox, c.score
                );
                for k in 0..4 {
                    box_err = box_err.max((g.bbox[k] - c.bbox[k]).abs());
                }
                score_err = score_err.max((g.score - c.score).abs());
                for (a, b) in g.landmarks.iter().zip(&c.landmarks) {
                    mark_err = mark_err.max((a[0] - b[0]).abs().max((a[1] - b[1]).abs()));
                }
            }
            faces += want.len();
        }
        println!(
            "largest difference from the CPU: box {box_err:.2e} px, score {score_err:.2e}, landmark {mark_err:.2e} px"
        );
        assert!(faces > 0, "the cases have faces to compare");
        assert!(box_err <= 0.5, "boxes differ by {box_err} px");
        assert!(score_err <= 1e-4, "scores differ by {score_err}");
        assert!(mark_err <= 0.5, "landmarks differ by {mark_err} px");
    }

    /// A 256² clip of `frames` frames from the photograph: the view pans right and zooms
    /// in; frames 10–13 are black.
    fn panning_clip(rgb: &[u8], frames: usize) -> Vec<Vec<u8>> {
        use dfengine::data::faces::Crop;
        use dfengine::data::image::RgbImage;
        use dfengine::data::resize::crop_resize;
        (0..frames)
            .map(|t| {
                if (10..=13).contains(&t) {
                    return vec![0; 256 * 256 * 3];
                }
                let a = t as f64 / (frames - 1) as f64;
                let side = (400.0 - 100.0 * a) as usize;
                crop_resize(
                    RgbImage::packed(rgb, 512, 512),
                    Crop { x0: (100.0 * a) as usize, y0: 0, side },
                    256,
                )
            })
            .collect()
    }

    #[test]
    fn a_panning_zooming_astronaut_gives_one_track_over_every_frame_and_detects_once() {
        use std::sync::Arc;

        use dfengine::config::FaceSource;
        use dfengine::data::cache::{ClipSettings, FrameCache};
        use dfengine::data::face_boxes::{FaceSettings, detect_clip};
        use dfengine::data::manifest::{Label, Split, VideoEntry};
        use dfengine::data::sampling::{Sampling, sample_indices};
        use dfengine::data::sources::{ClipSource, VideoSource};
        use dfengine::data::synth_video::write_clip;

        let Some((rgb, _, _)) = photograph() else { return };
        let Some(det) = detector(DetectSettings::default()) else { return };
        let dir = tempfile::tempdir().unwrap();
        let (n, sampled) = (40, 16);
        let clip = panning_clip(&rgb, n);
        let video = dir.path().join("astronaut.mp4");
        write_clip(&video, 256, clip.clone().into_iter()).unwrap();
        let flat = dir.path().join("wall.mp4");
        write_clip(&flat, 256, (0..n).map(|t| vec![(90 + t) as u8; 256 * 256 * 3])).unwrap();

        // The track, from the decoded sampled frames.
        let wanted = sample_indices(n, sampled, Sampling::Eval);
        assert!(wanted.iter().any(|i| (10..=13).contains(i)), "a black frame is sampled: {wanted:?}");
        let (frames, _) = read_frames(&video, &wanted, 1).unwrap();
        let decoded: Vec<_> =
            wanted.iter().zip(frames).map(|(&i, f)| (i, f.width, f.height, f.data)).collect();
        let start = std::time::Instant::now();
        let found = detect_clip(&det, &decoded, &Default::default()).unwrap();
        println!(
            "{} sampled 256² frames: {} faces, {} track(s), {:.1} ms per frame",
            decoded.len(),
            found.faces_found,
            found.tracks,
            start.elapsed().as_secs_f64() * 1e3 / decoded.len() as f64
        );
        assert_eq!(found.tracks, 1, "one face, one track");
        assert_eq!(found.boxes.len(), wanted.len(), "a box in every sampled frame, black ones included");
        for &i in &wanted {
            // Where the face of the photograph (x 181–268, y 62–172) lands in frame i.
            let (a, b) = (i as f64 / (n - 1) as f64, &found.boxes[&i]);
            let k = 256.0 / (400.0 - 100.0 * a).floor();
            let x0 = (100.0 * a).floor();
            let (cx, cy) = ((224.0 - x0) * k, 117.0 * k);
            let (bx, by) = (b.x + b.w / 2.0, b.y + b.h / 2.0);
            assert!(
                (bx - cx).abs() < 12.0 && (by - cy).abs() < 12.0,
                "frame {i}: box {b:?}, face near ({cx:.0}, {cy:.0})"
            );
        }

        // Through the cache: detection once, its boxes reused at another frame size; the
        // video without a face is an error that the caller reports with the video's name.
        let cache = Arc::new(FrameCache::new(Some(&dir.path().join("cache")), 0).unwrap());
        let faces = FaceSettings { source: FaceSource::Detect, ..FaceSettings::default() };
        let entries: Vec<VideoEntry> = [&video, &flat]
            .iter()
            .map(|p| VideoEntry {
                path: p.to_path_buf(),
                label: Label::Real,
                split: Split::Train,
                group: "a".into(),
            })
            .collect();
        let settings =
            ClipSettings { max_frames: sampled, frame_size: 64, quality_threshold: 0.0, face_scale: 1.3 };
        let det = Arc::new(det);
        let first = VideoSource::new(entries.clone(), cache.clone(), settings, 1)
            .with_faces(faces, Some(det.clone()));
        let frames = first.load(0).unwrap();
        assert_eq!((frames.frames, frames.side), (sampled, 64));
        let err = first.load(1).unwrap_err();
        assert!(err.contains("no face in any of its 16 sampled frames"), "{err}");
        let stats = first.face_stats();
        assert_eq!((stats.videos, stats.tracks, stats.without_face), (2, 1, 1));
        let resized = ClipSettings { frame_size: 32, ..settings };
        let second = VideoSource::new(entries, cache, resized, 1).with_faces(faces, Some(det));
        assert_eq!(second.load(0).unwrap().side, 32);
        assert!(second.load(1).is_err(), "still no face");
        assert_eq!(second.face_stats().videos, 0, "the boxes came from the cached sidecars");
    }
}
