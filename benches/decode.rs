//! Decode + sample throughput on generated 720×720 H.264 clips (300 frames, B-frames),
//! beside the `ffmpeg` command-line tool decoding the same files with the same threads
//! in the same run, each against its match: dfengine's I420 decode (no conversion)
//! against `ffmpeg -threads N -i x.mp4 -f null -`, and dfengine's RGB decode against the
//! same with `-pix_fmt rgb24` (every frame converted). Also: decoding all frames versus
//! taking the 16 sampled ones, which is what `prepare` does.
//!
//! `cargo bench --bench decode` (the clips are generated once into target/bench-videos).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dfengine::data::decode::{probe, read_frames, read_frames_yuv420};
use dfengine::data::sampling::{Sampling, sample_indices};
use dfengine::data::synth::{ClipSpec, SynthParams, render};
use dfengine::data::synth_video::write_clip;

const SIDE: usize = 720;
const FRAMES: usize = 300;
const CLIPS: u32 = 3;

fn clips() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-videos");
    std::fs::create_dir_all(&dir).expect("create target/bench-videos");
    let p = SynthParams { seed: 5, size: SIDE, frames: FRAMES, difficulty: 0.5 };
    (0..CLIPS)
        .map(|i| {
            let path = dir.join(format!("clip{i}_{SIDE}_{FRAMES}.mp4"));
            if !path.exists() {
                eprintln!("generating {}", path.display());
                let clip = ClipSpec { source: i, swapped_from: None };
                write_clip(&path, SIDE, (0..FRAMES).map(|t| render(&p, clip, t)))
                    .expect("encode a bench clip");
            }
            path
        })
        .collect()
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let paths = clips();
    let frames = probe(&paths[0]).expect("probe").frames;
    let all: Vec<usize> = (0..frames).collect();
    let sampled = sample_indices(frames, 16, Sampling::Eval);

    let time = |wanted: &[usize], rgb: bool| {
        let t = Instant::now();
        for p in &paths {
            if rgb {
                read_frames(p, wanted, threads).expect("decode");
            } else {
                read_frames_yuv420(p, wanted, threads).expect("decode");
            }
        }
        t.elapsed().as_secs_f64()
    };
    let decode_all = time(&all, true);
    let decode_all_i420 = time(&all, false);
    let sample16 = time(&sampled, true);
    let n = paths.len() as f64;
    let rate = |secs: f64| format!("{:>7.1} frames/s  {:>6.2} videos/s", n * frames as f64 / secs, n / secs);
    println!("decode {CLIPS} clips of {SIDE}×{SIDE}, {frames} frames (H.264, B-frames), {threads} threads");
    println!("  dfengine, all frames to RGB:      {}", rate(decode_all));
    println!("  dfengine, all frames as I420:     {}", rate(decode_all_i420));
    println!(
        "  dfengine, 16 sampled frames:      {:>7.1} videos/s ({:.2}× decode-all)",
        n / sample16,
        decode_all / sample16
    );

    if Command::new("ffmpeg").arg("-version").output().is_err() {
        println!("  ffmpeg CLI: not installed here, no yardstick (apt-get install ffmpeg)");
        return;
    }
    let cli = |extra: &[&str]| {
        let t = Instant::now();
        for p in &paths {
            let status = Command::new("ffmpeg")
                .args(["-v", "error", "-threads", &threads.to_string(), "-i"])
                .arg(p)
                .args(extra)
                .args(["-f", "null", "-"])
                .status()
                .expect("run ffmpeg");
            assert!(status.success());
        }
        t.elapsed().as_secs_f64()
    };
    let plain = cli(&[]);
    let rgb = cli(&["-pix_fmt", "rgb24"]);
    println!(
        "  ffmpeg -f null (no conversion):   {}  (dfengine I420 at {:.2}× of it)",
        rate(plain),
        plain / decode_all_i420
    );
    println!(
        "  ffmpeg -pix_fmt rgb24 -f null:    {}  (dfengine RGB at {:.2}× of it)",
        rate(rgb),
        rgb / decode_all
    );
}
