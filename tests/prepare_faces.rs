//! `dfengine prepare` with `[data] faces = "detect"` on a FaceForensics++ tree of short
//! H.264 clips made from the astronaut photograph: an original where the view pans across
//! the face, an original with no face (a plain wall), and a manipulated clip with two
//! people side by side. The cache gets face crops and one detected-box sidecar per video;
//! the faceless video is skipped by name; a second `prepare` detects nothing again; the
//! cached crops load without a detector and without decoding, and `train` runs on them;
//! and `faces_per_clip = 2` makes the two-person clip's frames take turns between the
//! faces. Detection runs where `prepare` says it does: on the GPU when it has one (a short
//! run of it with `--device cuda`), else on the CPU.
//!
//! Needs `models/mtcnn.safetensors` and `models/astronaut.png`
//! (scripts/get-face-detector.sh --test-image); without them the test prints why it skips.

#![cfg(feature = "video")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dfengine::backend::cuda::GpuProbe;
use dfengine::data::decode::read_frames;
use dfengine::data::faces::Crop;
use dfengine::data::image::RgbImage;
use dfengine::data::resize::crop_resize;
use dfengine::data::synth_video::write_clip;

const SIDE: usize = 256;
const FRAMES: usize = 12;
const SAMPLED: usize = 6;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The photograph's 200² square around the face (x 181–268, y 62–172 in the 512² image),
/// as `side`².
fn head(photo: &[u8], side: usize) -> Vec<u8> {
    crop_resize(RgbImage::packed(photo, 512, 512), Crop { x0: 124, y0: 17, side: 200 }, side)
}

/// Writes the three videos; returns (face, wall, pair) paths.
fn faceforensics(root: &Path, photo: &[u8]) -> (PathBuf, PathBuf, PathBuf) {
    let face = panning_original(root, photo);
    let originals = root.join("original_sequences/youtube/c23/videos");
    let fakes = root.join("manipulated_sequences/Deepfakes/c23/videos");
    std::fs::create_dir_all(&fakes).unwrap();
    let (wall, pair) = (originals.join("001.mp4"), fakes.join("000_001.mp4"));
    write_clip(&wall, SIDE, (0..FRAMES).map(|t| vec![(100 + t) as u8; SIDE * SIDE * 3])).unwrap();
    // Two heads of 128² at (0, 64) and (128, 64) on grey.
    let tile = head(photo, 128);
    let mut two = vec![120u8; SIDE * SIDE * 3];
    for y in 0..128 {
        for x0 in [0, 128] {
            let at = ((64 + y) * SIDE + x0) * 3;
            two[at..at + 128 * 3].copy_from_slice(&tile[y * 128 * 3..(y + 1) * 128 * 3]);
        }
    }
    write_clip(&pair, SIDE, (0..FRAMES).map(|_| two.clone())).unwrap();
    (face, wall, pair)
}

fn prepare(config: &Path, extra: &[&str]) -> (bool, String) {
    prepare_with(config, &[], extra)
}

/// `prepare` with command-line `flags` and `--set` overrides `sets`.
fn prepare_with(config: &Path, flags: &[&str], sets: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dfengine"))
        .arg("prepare")
        .arg(config)
        .args(flags)
        .args(sets.iter().flat_map(|kv| ["--set", kv]))
        .output()
        .expect("run dfengine prepare");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every detected-box sidecar in `cache`: frame index → box centre (x, y).
fn sidecars(cache: &Path) -> Vec<BTreeMap<usize, (f64, f64)>> {
    let mut found: Vec<BTreeMap<usize, (f64, f64)>> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".faces.json"))
        .map(|p| {
            let raw: BTreeMap<String, [f64; 4]> =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            raw.into_iter()
                .map(|(k, [x, y, w, h])| (k.parse().unwrap(), (x + w / 2.0, y + h / 2.0)))
                .collect()
        })
        .collect();
    found.sort_by_key(BTreeMap::len);
    found
}

/// The panning clip (the view pans right by 4 px of the photograph per frame) as the
/// FaceForensics++ original 000; returns its path.
fn panning_original(root: &Path, photo: &[u8]) -> PathBuf {
    let originals = root.join("original_sequences/youtube/c23/videos");
    std::fs::create_dir_all(&originals).unwrap();
    let face = originals.join("000.mp4");
    write_clip(
        &face,
        SIDE,
        (0..FRAMES).map(|t| {
            crop_resize(RgbImage::packed(photo, 512, 512), Crop { x0: 4 * t, y0: 0, side: 400 }, SIDE)
        }),
    )
    .unwrap();
    face
}

/// The config `prepare` reads: detection into `cache`, `frames` sampled per video.
fn detect_config(dir: &Path, root: &Path, cache: &Path, weights: &Path, frames: usize) -> PathBuf {
    let config = dir.join("detect.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\nroot = {:?}\ncache_dir = {:?}\nenable_cache = true\nmax_frames = {frames}\n\
             frame_size = 64\nmax_bad_fraction = 0.5\nfaces = \"detect\"\nface_detector = {:?}\n\
             [model]\ninput_size = 32\n[dataloader]\nnum_workers = 1\n",
            root.display().to_string(),
            cache.display().to_string(),
            weights.display().to_string()
        ),
    )
    .unwrap();
    config
}

/// Where the face of the photograph (centre (224, 117) in the 512² image) lands in
/// frame `i` of the panning clip: the 400² view moved 4 px a frame, seen at 256².
fn panned_face_centre(i: usize) -> (f64, f64) {
    ((224.0 - 4.0 * i as f64) * 0.64, 117.0 * 0.64)
}

/// `prepare --device cuda` detects on the GPU: two sampled frames of the panning clip
/// (the software GPU takes about a second a frame), boxes around the face.
#[cfg(feature = "cuda")]
/// The MTCNN weights and the test photograph, or None (said) when the fetch script has
/// not run.
fn detector_fixtures() -> Option<(PathBuf, PathBuf)> {
    let (weights, photo) = (repo("models/mtcnn.safetensors"), repo("models/astronaut.png"));
    if let Some(p) = [&weights, &photo].into_iter().find(|p| !p.exists()) {
        println!("skipped: {} missing (run scripts/get-face-detector.sh --test-image)", p.display());
        return None;
    }
    Some((weights, photo))
}

#[test]
fn prepare_detects_faces_on_the_gpu_cuda() {
    if common::gpu_info().is_none() {
        return;
    }
    let Some((weights, photo)) = detector_fixtures() else { return };
    let (frames, _) = read_frames(&photo, &[0], 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ff");
    panning_original(&root, &frames[0].data);
    let cache = dir.path().join("cache");
    let config = detect_config(dir.path(), &root, &cache, &weights, 2);
    let start = std::time::Instant::now();
    let (ok, text) = prepare_with(&config, &["--device", "cuda"], &[]);
    println!("{text}prepare took {:.1} s", start.elapsed().as_secs_f64());
    assert!(ok, "{text}");
    assert!(text.contains("one face per clip) on cuda:0"), "detection on the GPU: {text}");
    assert!(text.contains("face detection: 2 faces in 2 frames of 1 videos (1 tracks)"), "{text}");
    let boxes = sidecars(&cache);
    assert_eq!(boxes.len(), 1, "{boxes:?}");
    for (&i, &(cx, cy)) in &boxes[0] {
        let (ex, ey) = panned_face_centre(i);
        assert!(
            (cx - ex).abs() < 10.0 && (cy - ey).abs() < 10.0,
            "frame {i}: box centre ({cx}, {cy}), face near ({ex}, {ey})"
        );
    }
}

#[test]
fn prepare_detects_faces_in_a_faceforensics_tree_caches_crops_and_skips_the_faceless() {
    let Some((weights, photo)) = detector_fixtures() else { return };
    let (frames, _) = read_frames(&photo, &[0], 1).unwrap();
    let photo = &frames[0].data;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ff");
    let (_, wall, _) = faceforensics(&root, photo);
    let cache = dir.path().join("cache");
    let config = detect_config(dir.path(), &root, &cache, &weights, SAMPLED);

    let (ok, text) = prepare(&config, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("faces: detect (MTCNN") && text.contains("one face per clip"), "{text}");
    // Where detection ran: the GPU when this build has CUDA and the probe finds one.
    let gpu = cfg!(feature = "cuda") && matches!(dfengine::backend::cuda::probe(), GpuProbe::Ready(_));
    let on = if gpu { "one face per clip) on cuda:" } else { "one face per clip) on cpu (" };
    assert!(text.contains(on), "detection on the {}: {text}", if gpu { "GPU" } else { "CPU" });
    assert!(text.contains("2 decoded, 0 already cached, 1 failed"), "{text}");
    assert!(
        text.contains(&format!("skipped {}: no face in any of its {SAMPLED} sampled frames", wall.display())),
        "the faceless video is named: {text}"
    );
    // 000 and 000_001 have faces in every frame: one track, two tracks; 001 none.
    let stats = text.lines().find(|l| l.starts_with("face detection:")).expect("a face detection line");
    assert!(
        stats.contains(&format!(
            "{0} faces in {0} frames of 3 videos (3 tracks), 1 without a face",
            3 * SAMPLED
        )),
        "{stats}"
    );

    // One sidecar per video: none for the wall, the panning face followed frame by frame,
    // and the pair cropped around one face (faces_per_clip = 1).
    let boxes = sidecars(&cache);
    assert_eq!(boxes.len(), 3, "{boxes:?}");
    assert!(boxes[0].is_empty(), "no face in the wall: {boxes:?}");
    // The panning face is centred near y = 75, the pair near y = 128.
    let is_pair = |b: &BTreeMap<usize, (f64, f64)>| b.values().all(|&(_, cy)| cy > 100.0);
    let (pan, pair) = if is_pair(&boxes[2]) { (&boxes[1], &boxes[2]) } else { (&boxes[2], &boxes[1]) };
    assert!(is_pair(pair) && !is_pair(pan), "{boxes:?}");
    assert_eq!(pan.len(), SAMPLED);
    for (&i, &(cx, cy)) in pan {
        let (ex, ey) = panned_face_centre(i);
        assert!(
            (cx - ex).abs() < 10.0 && (cy - ey).abs() < 10.0,
            "frame {i}: box centre ({cx}, {cy}), face near ({ex}, {ey})"
        );
    }
    let sides: Vec<bool> = pair.values().map(|&(cx, _)| cx < 128.0).collect();
    assert!(sides.iter().all(|&s| s == sides[0]), "one face per clip: every frame on one side: {pair:?}");

    // A second prepare finds the crops cached and detects nothing again; the faceless
    // video is still skipped by name.
    let (ok, again) = prepare(&config, &[]);
    assert!(ok, "{again}");
    assert!(again.contains("0 decoded, 2 already cached, 1 failed"), "{again}");
    assert!(!again.contains("face detection:"), "detected again: {again}");
    assert!(again.contains(&format!("skipped {}", wall.display())), "{again}");

    // Training's view: the same config's sources read the face crops from the cache with
    // no detector loaded and nothing decoded.
    let resolved = dfengine::config::load(Some(&config), &[]).unwrap();
    let d = &resolved.config.data;
    let m = dfengine::data::manifest::load(d).unwrap();
    let frame_cache = std::sync::Arc::new(dfengine::data::cache::FrameCache::new(Some(&cache), 0).unwrap());
    let source = dfengine::data::sources::VideoSource::new(
        m.entries.iter().filter(|e| e.path != wall).cloned().collect(),
        frame_cache,
        dfengine::data::cache::ClipSettings::from_config(d),
        1,
    )
    .with_faces(dfengine::data::face_boxes::FaceSettings::from_config(d), None);
    for clip in 0..2 {
        use dfengine::data::sources::ClipSource;
        let frames = source.load(clip).unwrap();
        assert_eq!((frames.frames, frames.side), (SAMPLED, 64));
    }
    assert_eq!(source.decodes(), 0, "the crops came from the cache");
    // And training itself runs on them.
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_dfengine"))
        .arg("train")
        .arg(&config)
        .args(["--device", "cpu", "--quiet", "--max-steps", "2", "--set"])
        .arg(format!("train.out_dir={:?}", run.display().to_string()))
        .output()
        .expect("run dfengine train");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "train on the detected crops: {said}");
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"event\":\"step\"")), "no training step: {log}\n{said}");

    // Two faces per clip: the pair's sampled frames take turns between the two people.
    let two_cache = dir.path().join("cache2");
    let two_cache_set = format!("data.cache_dir={}", two_cache.display());
    let (ok, text) = prepare(&config, &[two_cache_set.as_str(), "data.faces_per_clip=2"]);
    assert!(ok && text.contains("2 faces per clip"), "{text}");
    let boxes = sidecars(&two_cache);
    let pair = boxes.iter().find(|b| !b.is_empty() && is_pair(b)).expect("the pair's sidecar");
    let sides: Vec<bool> = pair.values().map(|&(cx, _)| cx < 128.0).collect();
    assert_eq!(sides.len(), SAMPLED);
    assert!(sides.windows(2).all(|w| w[0] != w[1]), "frames alternate between the two faces: {pair:?}");
}
