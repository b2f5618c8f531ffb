//! The video path end to end on generated clips: `synth` writes H.264 in the
//! FaceForensics++ layout, the index finds it, the decoder returns the sampled frames
//! close to what was drawn, and bad files are errors that name the file and the reason.
#![cfg(feature = "video")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use dfengine::config::DataConfig;
use dfengine::data::clip::{FrameCrops, assemble};
use dfengine::data::decode::{VideoInfo, probe, read_frames, read_frames_yuv420, sample_frames};
use dfengine::data::faces::FaceBox;
use dfengine::data::image::RgbImage;
use dfengine::data::manifest::{self, FoundLayout, Label, Split};
use dfengine::data::preprocess::{
    FrameOp, IMAGENET_MEAN, IMAGENET_STD, Rect, preprocess, preprocess_yuv420, yuv420_len,
};
use dfengine::data::sampling::{Sampling, sample_indices};
use dfengine::data::synth::{ClipSpec, SynthParams, render};
use dfengine::data::synth_video::{Encoding, clip_path, write_clip_timed, write_clip_with, write_dataset};

fn params() -> SynthParams {
    SynthParams { seed: 11, size: 48, frames: 16, difficulty: 0.3 }
}

fn dataset(dir: &Path, videos: u32) {
    let mut seen = 0;
    write_dataset(dir, &params(), videos, |done, total, _| {
        seen = done;
        assert!(done <= total);
    })
    .unwrap();
    assert_eq!(seen as u32, videos);
}

#[test]
fn synthetic_dataset_indexes_as_faceforensics() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 12);
    let cfg = DataConfig { root: dir.path().display().to_string(), ..DataConfig::default() };
    let m = manifest::load(&cfg).unwrap();
    assert_eq!(m.layout, FoundLayout::Faceforensics);
    let counts = m.counts();
    let total: usize = counts.values().map(|c| c.real + c.fake).sum();
    assert_eq!(total, 12);
    // 3 pairs: the official-style split files put one pair each in val and test.
    assert_eq!((counts[&Split::Val].real, counts[&Split::Test].fake), (2, 2));
    assert!(
        m.entries
            .iter()
            .filter(|e| e.label == Label::Fake)
            .all(|e| e.path.to_string_lossy().contains("Synthetic"))
    );
}

#[test]
fn decoded_frames_match_what_was_drawn() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 4);
    let clip = ClipSpec { source: 1, swapped_from: Some(0) };
    let path = clip_path(dir.path(), clip);
    let info = probe(&path).unwrap();
    assert_eq!((info.width, info.height, info.frames), (48, 48, 16));
    assert!((info.fps - 25.0).abs() < 1e-6);

    let wanted = sample_indices(info.frames, 4, Sampling::Eval);
    let (frames, decoded) = read_frames(&path, &wanted, 2).unwrap();
    assert_eq!(frames.len(), 4);
    // 4 wanted of 16: unwanted B-frames (most of this clip) are never decoded.
    assert!(decoded < 16, "decoded {decoded} of 16 frames for 4 wanted");
    for (frame, &t) in frames.iter().zip(&wanted) {
        assert_eq!((frame.width, frame.height, frame.data.len()), (48, 48, 48 * 48 * 3));
        let drawn = render(&params(), clip, t);
        let mean_err = frame.data.iter().zip(&drawn).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>()
            / drawn.len() as f64;
        // H.264 at CRF 20 with 4:2:0 chroma: a few levels of error on average; a wrong
        // frame (off by one in time, or a wrong clip) is far more than that.
        assert!(mean_err < 8.0, "frame {t}: mean abs error {mean_err:.1} against what was drawn");
        let other = render(&params(), clip, (t + 5) % 16);
        let other_err = frame.data.iter().zip(&other).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>()
            / other.len() as f64;
        assert!(other_err > mean_err, "frame {t} matches a later frame better");
    }
}

#[test]
fn frames_are_cropped_where_the_decoder_wrote_them() {
    // `prepare` crops each sampled frame in the decoder's own buffer, whose 48-pixel rows
    // (144 bytes) FFmpeg pads: the crops must be those of the frames copied out, and the
    // file is opened once for what it holds and what is decoded.
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 4);
    let path = clip_path(dir.path(), ClipSpec { source: 0, swapped_from: Some(1) });
    let boxes = HashMap::from([(6, FaceBox { x: 10.0, y: 6.0, w: 20.0, h: 24.0 })]);
    let crops = FrameCrops { boxes: &boxes, side: 20, quality_threshold: 0.0, face_scale: 1.3 };
    for threads in [1, 2] {
        let padded = AtomicBool::new(false);
        let pick = |info: &VideoInfo| sample_indices(info.frames, 6, Sampling::Eval);
        let sampled = sample_frames(&path, pick, threads, |index, img| {
            padded.fetch_or(img.stride > img.width * 3, Ordering::Relaxed);
            crops.crop(index, img)
        })
        .unwrap();
        assert!(padded.into_inner(), "no frame had padded rows: the test shows nothing");
        assert_eq!(sampled.info, probe(&path).unwrap());
        assert_eq!(sampled.indices, sample_indices(16, 6, Sampling::Eval));
        assert!(sampled.indices.contains(&6), "frame 6 (the one with a face box) is sampled");
        let (frames, decoded) = read_frames(&path, &sampled.indices, threads).unwrap();
        assert_eq!(sampled.decoded, decoded);
        for ((&i, crop), frame) in sampled.indices.iter().zip(&sampled.frames).zip(&frames) {
            let whole = crops.crop(i, RgbImage::packed(&frame.data, frame.width, frame.height));
            assert_eq!(crop.as_ref().unwrap(), &whole, "frame {i}, {threads} threads");
        }
    }
}

#[test]
fn matroska_frames_are_counted_from_the_container() {
    // Matroska gives no per-stream frame count or duration; without the container's
    // duration the count was 0, and every sampled index the first frame's.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mkv");
    let clip = ClipSpec { source: 1, swapped_from: None };
    write_clip_with(&path, 48, Encoding::default(), (0..16).map(|t| (t as i64, render(&params(), clip, t))))
        .unwrap();
    let info = probe(&path).unwrap();
    assert_eq!((info.frames, info.fps), (16, 25.0), "{info:?}");
    let wanted = sample_indices(info.frames, 4, Sampling::Eval);
    let (frames, _) = read_frames(&path, &wanted, 2).unwrap();
    let (all, _) = read_frames(&path, &(0..16).collect::<Vec<_>>(), 1).unwrap();
    for (&i, frame) in wanted.iter().zip(&frames) {
        assert!(frame == &all[i], "frame {i} is not the full decode's");
    }
    assert_ne!(frames[0], frames[3], "the sampled frames are different pictures");
}

#[test]
fn asking_past_the_end_repeats_the_last_frame() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 4);
    let path = clip_path(dir.path(), ClipSpec { source: 0, swapped_from: None });
    let (frames, decoded) = read_frames(&path, &[14, 15, 40], 1).unwrap();
    assert!(decoded <= 16);
    assert_eq!(frames[2], frames[1]);
    let (all, decoded_all) = read_frames(&path, &(0..16).collect::<Vec<_>>(), 1).unwrap();
    assert_eq!(decoded_all, 16, "asking for every frame decodes every frame");
    assert_eq!(all[15], frames[1], "frame 15 is the same whichever way it was reached");
    for (i, full) in all.iter().enumerate() {
        let (one, _) = read_frames(&path, &[i], 1).unwrap();
        assert_eq!(&one[0], full, "frame {i} alone differs from frame {i} of a full decode");
    }
}

#[test]
fn sampled_frames_are_bit_identical_to_decoding_everything() {
    // 90 frames, a keyframe every 10, up to 3 B-frames in a row in x264's pyramid (on these
    // clips 33–38 of the 90 frames are references to nothing). Closed groups start at IDR
    // pictures, open ones at recovery points that B-frames refer back across. Sampling sends
    // unwanted non-reference frames to be dropped and, before an IDR picture, does not
    // send what follows a group's last wanted frame (nor groups with nothing wanted); with
    // 2 threads closed groups are shared between two decoders, the second starting at an
    // IDR picture, open ones decoded with frame threads. What comes back must be the very
    // bytes of a full decode.
    let dir = tempfile::tempdir().unwrap();
    let p = SynthParams { size: 64, frames: 90, ..params() };
    let clip = ClipSpec { source: 2, swapped_from: None };
    for closed_gop in [true, false] {
        let path = dir.path().join(format!("groups_closed_{closed_gop}.mp4"));
        let encoding = Encoding { keyint: 10, b_frames: 3, closed_gop };
        write_clip_with(&path, 64, encoding, (0..90).map(|t| (t as i64, render(&p, clip, t)))).unwrap();
        let n = probe(&path).unwrap().frames;
        assert_eq!(n, 90);
        let everything: Vec<usize> = (0..n).collect();
        let (all, decoded_all) = read_frames(&path, &everything, 1).unwrap();
        let (all_i420, _) = read_frames_yuv420(&path, &everything, 1).unwrap();
        assert_eq!(decoded_all, n, "asking for every frame decodes every frame");
        let samplings = [
            sample_indices(n, 8, Sampling::Eval),
            sample_indices(n, 16, Sampling::Train { seed: 1 }),
            sample_indices(n, 32, Sampling::Train { seed: 2 }),
            vec![0],
            vec![n - 1],
            vec![3, 3, 4, 47, 75],
        ];
        for threads in [1, 2] {
            for wanted in &samplings {
                let (frames, decoded) = read_frames(&path, wanted, threads).unwrap();
                let (frames_i420, _) = read_frames_yuv420(&path, wanted, threads).unwrap();
                let case = format!("frames {wanted:?}, {threads} threads, closed groups {closed_gop}");
                for ((&i, rgb), i420) in wanted.iter().zip(&frames).zip(&frames_i420) {
                    assert!(rgb == &all[i], "{case}: RGB frame {i} is not the full decode's");
                    assert!(i420 == &all_i420[i], "{case}: I420 frame {i} is not the full decode's");
                }
                assert!(decoded < n, "{case}: decoded all {n} frames");
            }
        }
        // Frames 3 and 75: with closed groups the seven groups between cost nothing.
        let (_, decoded) = read_frames(&path, &[3, 75], 1).unwrap();
        if closed_gop {
            assert!(decoded <= 12, "decoded {decoded} frames for frames 3 and 75");
        }
    }
}

#[test]
fn i420_frames_preprocess_like_ffmpegs_rgb_conversion() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 4);
    let path = clip_path(dir.path(), ClipSpec { source: 0, swapped_from: Some(1) });
    let wanted = [2, 9, 15];
    let (rgb, _) = read_frames(&path, &wanted, 2).unwrap();
    let (yuv, _) = read_frames_yuv420(&path, &wanted, 2).unwrap();
    let op =
        FrameOp { crop: Rect { y0: 4, x0: 6, h: 40, w: 38 }, flip: false, brightness: 0.0, contrast: 1.0 };
    for (r, y) in rgb.iter().zip(&yuv) {
        assert_eq!((y.width, y.height, y.data.len()), (48, 48, yuv420_len(48, 48)));
        let want = preprocess(&r.data, 48, 48, &[op], 32, IMAGENET_MEAN, IMAGENET_STD);
        let got = preprocess_yuv420(&y.data, 48, 48, &[op], 32, IMAGENET_MEAN, IMAGENET_STD);
        // FFmpeg's converter takes chroma from the nearest sample and rounds to 8 bits;
        // ours interpolates it: the two agree to about a level and a half on average
        // (0.024–0.026 normalised seen; a wrong colour matrix, range or plane order is
        // tens of levels off).
        let mean = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / want.len() as f32;
        assert!(mean < 0.05, "mean |I420 − RGB| = {mean} (normalised units)");
    }
}

#[test]
fn variable_frame_rate_video_decodes_by_timestamp() {
    // 12 frames with gaps in their timestamps (a phone dropping frames): frame k shows
    // the picture drawn for time pts[k].
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfr.mp4");
    let pts = [0i64, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15];
    let clip = ClipSpec { source: 3, swapped_from: None };
    let p = SynthParams { frames: 16, ..params() };
    write_clip_timed(&path, 48, pts.iter().map(|&t| (t, render(&p, clip, t as usize)))).unwrap();
    let info = probe(&path).unwrap();
    assert!(info.frames > 0 && info.fps > 0.0, "{info:?}");
    let wanted = sample_indices(info.frames, 4, Sampling::Eval);
    let (frames, decoded) = read_frames(&path, &wanted, 1).unwrap();
    assert_eq!(frames.len(), 4, "one frame per wanted index");
    assert!(decoded <= pts.len());
    // Every frame that came back is a real picture of this clip at some drawn time, and
    // the pictures follow the order of their indices.
    let mut last_time = None;
    for f in frames.iter().filter(|f| f.width > 0) {
        let err = |t: i64| {
            let drawn = render(&p, clip, t as usize);
            f.data.iter().zip(&drawn).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / drawn.len() as f64
        };
        let (best, best_err) = pts.iter().map(|&t| (t, err(t))).min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert!(best_err < 8.0, "a decoded frame matches no drawn picture (best {best_err:.1} at {best})");
        assert!(last_time.is_none_or(|l| best >= l), "frames out of order: {best} after {last_time:?}");
        last_time = Some(best);
    }
    assert!(last_time.is_some(), "no frame came back");
    // Indices that fall in a gap come back empty; the clip takes the nearest frame there.
    let boxes = HashMap::new();
    let crops = FrameCrops { boxes: &boxes, side: 32, quality_threshold: 0.0, face_scale: 1.3 };
    let cropped: Vec<_> = wanted
        .iter()
        .zip(&frames)
        .map(|(&i, f)| (f.width > 0).then(|| crops.crop(i, f.image())).flatten())
        .collect();
    let (clip, replaced) = assemble(&cropped, 32).unwrap();
    assert_eq!((clip.frames, clip.data.len()), (4, 4 * 32 * 32 * 3));
    assert_eq!(replaced, frames.iter().filter(|f| f.width == 0).count());
}

/// A valid file with only an audio stream: 0.1 s of 8 kHz 16-bit PCM in WAV.
fn audio_only_file(path: &Path) {
    let samples: Vec<u8> = (0..800i16).flat_map(|i| ((i % 50) * 400).to_le_bytes()).collect();
    let mut wav = Vec::new();
    wav.extend(b"RIFF");
    wav.extend((36 + samples.len() as u32).to_le_bytes());
    wav.extend(b"WAVEfmt ");
    wav.extend(16u32.to_le_bytes());
    wav.extend(1u16.to_le_bytes()); // PCM
    wav.extend(1u16.to_le_bytes()); // mono
    wav.extend(8000u32.to_le_bytes());
    wav.extend(16000u32.to_le_bytes()); // bytes per second
    wav.extend(2u16.to_le_bytes()); // block align
    wav.extend(16u16.to_le_bytes()); // bits per sample
    wav.extend(b"data");
    wav.extend((samples.len() as u32).to_le_bytes());
    wav.extend(samples);
    std::fs::write(path, wav).unwrap();
}

#[test]
fn bad_files_are_errors_naming_file_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let err = probe(&empty).unwrap_err().to_string();
    assert!(err.contains("empty.mp4") && err.contains("empty file"), "{err}");

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, b"this is not a video at all, just some words").unwrap();
    let err = read_frames(&text, &[0], 1).unwrap_err().to_string();
    assert!(err.contains("notes.mp4") && err.contains("not a readable container"), "{err}");

    // Audio only, in a container FFmpeg reads fine (a soundtrack saved as .mp4).
    let audio = dir.path().join("soundtrack.mp4");
    audio_only_file(&audio);
    let err = read_frames(&audio, &[0], 1).unwrap_err().to_string();
    assert!(err.contains("soundtrack.mp4") && err.contains("no video stream"), "{err}");

    let err = probe(&dir.path().join("missing.mp4")).unwrap_err().to_string();
    assert!(err.contains("missing.mp4: cannot read"), "{err}");

    // A file cut in half: either fewer frames come back (repeated to fill) or a clear
    // error; never a panic.
    dataset(&dir.path().join("set"), 4);
    let good = clip_path(&dir.path().join("set"), ClipSpec { source: 0, swapped_from: None });
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    match read_frames(&cut, &[0, 8, 15], 1) {
        Ok((frames, _)) => assert_eq!(frames.len(), 3),
        Err(e) => assert!(e.to_string().contains("cut.mp4"), "{e}"),
    }
}

#[test]
fn synth_command_writes_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dfengine"))
        .args(["synth", out.to_str().unwrap(), "--videos", "4", "--size", "32", "--frames", "8"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("wrote 4 videos (32×32, 8 frames"));
    assert!(out.join("splits/train.json").is_file());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_dfengine"))
        .args(["synth", out.to_str().unwrap(), "--size", "33"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn second_epoch_reads_the_cache_instead_of_decoding() {
    use std::sync::Arc;

    use dfengine::data::cache::{ClipSettings, FrameCache};
    use dfengine::data::loader::{EpochLoader, LoaderSettings};
    use dfengine::data::sources::ClipSource;
    use dfengine::data::sources::VideoSource;

    let dir = tempfile::tempdir().unwrap();
    dataset(&dir.path().join("set"), 8);
    let cfg = DataConfig { root: dir.path().join("set").display().to_string(), ..DataConfig::default() };
    let entries = manifest::load(&cfg).unwrap().entries;
    let cache = Arc::new(FrameCache::new(Some(&dir.path().join("cache")), 0).unwrap());
    let settings = ClipSettings { max_frames: 4, frame_size: 32, quality_threshold: 0.0, face_scale: 1.3 };
    let source = Arc::new(VideoSource::new(entries, cache.clone(), settings, 1));
    let loader = LoaderSettings {
        batch_size: 3,
        num_workers: 2,
        prefetch_factor: 2,
        input_size: 28,
        seed: 1,
        train: true,
        max_bad_fraction: 0.0,
    };
    let dyn_source: Arc<dyn ClipSource> = source.clone();
    let first: usize =
        EpochLoader::start(dyn_source.clone(), loader, 0).map(|b| b.unwrap().clips.len()).sum();
    assert_eq!((first, source.decodes()), (8, 8));
    let second: usize = EpochLoader::start(dyn_source, loader, 1).map(|b| b.unwrap().clips.len()).sum();
    assert_eq!(second, 8);
    assert_eq!(source.decodes(), 8, "the second epoch decoded again");
    assert_eq!(cache.stats().disk_hits, 8);
}

#[test]
fn prepare_fills_the_cache_once() {
    let dir = tempfile::tempdir().unwrap();
    dataset(&dir.path().join("set"), 4);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\nroot = {:?}\ncache_dir = {:?}\nmax_frames = 4\nframe_size = 40\n[model]\ninput_size = 32\n",
            dir.path().join("set").display().to_string(),
            dir.path().join("cache").display().to_string()
        ),
    )
    .unwrap();
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dfengine"))
            .args(["prepare", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(
        first.contains("caching 4 videos × 4 frames of 40²")
            && first.contains("4 decoded, 0 already cached, 0 failed"),
        "{first}"
    );
    assert!(run().contains("0 decoded, 4 already cached"), "the second prepare decoded again");
}

#[test]
fn prepare_skips_bad_videos_up_to_the_allowed_fraction() {
    let dir = tempfile::tempdir().unwrap();
    dataset(&dir.path().join("set"), 4);
    let broken = clip_path(&dir.path().join("set"), ClipSpec { source: 1, swapped_from: None });
    std::fs::write(&broken, b"").unwrap();
    let cfg = dir.path().join("c.toml");
    let body = |fraction: f64| {
        format!(
            "[data]\nroot = {:?}\ncache_dir = {:?}\nmax_frames = 2\nframe_size = 32\nmax_bad_fraction = {fraction}\n[model]\ninput_size = 32\n",
            dir.path().join("set").display().to_string(),
            dir.path().join("cache").display().to_string()
        )
    };
    let run = |fraction: f64| {
        std::fs::write(&cfg, body(fraction)).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_dfengine"))
            .args(["prepare", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = run(0.5);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(text.contains("1 failed") && text.contains("001.mp4: empty file"), "{text}");
    let refused = run(0.1);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("1 of 4 videos failed, more than [data] max_bad_fraction = 0.1")
    );
}
