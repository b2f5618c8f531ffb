//! Decode + sample throughput on generated 720×720 H.264 clips (300 frames, B-frames),
//! beside the `ffmpeg` command-line tool decoding the same files with the same threads
//! in the same run, each against its match: dfengine's I420 decode (no conversion)
//! against `ffmpeg -threads N -i x.mp4 -f null -`, and dfengine's RGB decode against the
//! same with `-pix_fmt rgb24` (every frame converted). Also: decoding all frames versus
//! taking the 16 sampled ones.
//!
//! Then the CPU-seconds of sampling (issue 20): `dfengine prepare` taking 32 of the 300
//! frames of a 1280×720 clip made by the `ffmpeg` CLI (testsrc2 with moving noise, x264
//! veryfast CRF 20, GOP 60, 3 B-frames), beside single-threaded `ffmpeg` decoding every
//! frame (the target: prepare ≤ 0.8× of it) and decoding only reference frames
//! (`-skip_frame noref`, the floor for a sampler that must also decode the wanted frames),
//! and the DFDC-winning solution's sampling: OpenCV's `grab()` on every frame, `retrieve()`
//! on the same 32 (benches/opencv_sample.py, under the Python `DFENGINE_TORCH_PYTHON`
//! names, with `opencv-python-headless`; skipped with the reason without it).
//!
//! `cargo bench --bench decode` (the clips are generated once into target/bench-videos).

#[path = "common/yardstick.rs"]
mod yardstick;

#[path = "common/timing.rs"]
mod timing;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dfengine::data::decode::{probe, read_frames, read_frames_yuv420};
use dfengine::data::sampling::{Sampling, sample_indices};
use dfengine::data::synth::{ClipSpec, SynthParams, render};
use dfengine::data::synth_video::write_clip;
use timing::median;

const SIDE: usize = 720;
const FRAMES: usize = 300;
const CLIPS: u32 = 3;

fn bench_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-videos");
    std::fs::create_dir_all(&dir).expect("create target/bench-videos");
    dir
}

fn clips() -> Vec<PathBuf> {
    let dir = bench_dir();
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
    sampling_cpu_seconds();
}

/// The `ffmpeg` arguments that make issue 20's clip: 10 s of 1280×720 at 30 fps, with noise
/// that changes every frame so that the encoder has motion to spend B-frames on.
const SAMPLING_CLIP: &[&str] = &[
    "-f",
    "lavfi",
    "-i",
    "testsrc2=size=1280x720:rate=30,noise=alls=8:allf=t+u",
    "-t",
    "10",
    "-c:v",
    "libx264",
    "-preset",
    "veryfast",
    "-crf",
    "20",
    "-g",
    "60",
    "-bf",
    "3",
    "-pix_fmt",
    "yuv420p",
];
const SAMPLED: usize = 32;
const RUNS: usize = 5;

/// CPU-seconds (user + system) of this process's children that have finished.
fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live rusage for getrusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Runs `cmd` to the end: its CPU-seconds and wall seconds.
fn cpu_and_wall(cmd: &mut Command) -> (f64, f64) {
    let (cpu, start) = (children_cpu(), Instant::now());
    let out = cmd.output().expect("run a yardstick");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    (children_cpu() - cpu, start.elapsed().as_secs_f64())
}

/// `dfengine prepare` on one video (cache on, 32 frames of 256²) against single-threaded
/// `ffmpeg` decoding every frame and only the reference frames, interleaved run by run.
fn sampling_cpu_seconds() {
    let dir = bench_dir();
    let clip = dir.join("testsrc2_1280x720_300.mp4");
    if !clip.exists() {
        eprintln!("generating {} with the ffmpeg CLI", clip.display());
        let status =
            Command::new("ffmpeg").args(["-v", "error", "-y"]).args(SAMPLING_CLIP).arg(&clip).status();
        assert!(status.is_ok_and(|s| s.success()), "ffmpeg could not make {}", clip.display());
    }
    let data = dir.join("sampling");
    std::fs::create_dir_all(&data).expect("create the one-video dataset");
    std::fs::write(data.join("manifest.csv"), format!("path,label\n{},real\n", clip.display()))
        .expect("write manifest.csv");
    let cache = data.join("cache");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml");
    let set = |kv: String| ["--set".to_string(), kv];
    let prepare_args: Vec<String> = [
        set(format!("data.root={}", data.display())),
        set(format!("data.cache_dir={}", cache.display())),
        set(format!("data.max_frames={SAMPLED}")),
        set("data.frame_size=256".into()),
    ]
    .concat();
    let ffmpeg = |extra: &[&str]| {
        let mut c = Command::new("ffmpeg");
        c.args(["-v", "error", "-threads", "1"]).args(extra).arg("-i").arg(&clip).args(["-f", "null", "-"]);
        c
    };
    let (mut prepare, mut all, mut noref) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let _ = std::fs::remove_dir_all(&cache);
        prepare.push(cpu_and_wall(
            Command::new(env!("CARGO_BIN_EXE_dfengine")).arg("prepare").arg(&config).args(&prepare_args),
        ));
        all.push(cpu_and_wall(&mut ffmpeg(&[])));
        noref.push(cpu_and_wall(&mut ffmpeg(&["-skip_frame", "noref"])));
    }
    let cpu = |v: &[(f64, f64)]| median(v.iter().map(|r| r.0).collect());
    let wall = |v: &[(f64, f64)]| median(v.iter().map(|r| r.1).collect());
    let info = probe(&clip).expect("probe the sampling clip");
    let wanted = sample_indices(info.frames, SAMPLED, Sampling::Eval);
    let (_, decoded) = read_frames(&clip, &wanted, 1).expect("decode the sampling clip");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "sampling {SAMPLED} of {} frames of 1280×720 H.264 (testsrc2 + noise, x264 veryfast CRF 20, GOP 60, 3 B-frames), median of {RUNS}, {cores} cores",
        info.frames
    );
    println!(
        "  dfengine prepare, 1 video, cache on, 256²: {:.3} CPU-s {:.3} s wall ({decoded} frames decoded)",
        cpu(&prepare),
        wall(&prepare)
    );
    println!(
        "  ffmpeg -threads 1, every frame:            {:.3} CPU-s {:.3} s wall  prepare at {:.2}× (target ≤ 0.8)",
        cpu(&all),
        wall(&all),
        cpu(&prepare) / cpu(&all)
    );
    println!(
        "  ffmpeg -threads 1 -skip_frame noref:       {:.3} CPU-s {:.3} s wall  prepare at {:.2}×",
        cpu(&noref),
        wall(&noref),
        cpu(&prepare) / cpu(&noref)
    );
    match opencv_sampling(&clip, &wanted, cores) {
        Ok((opencv_cpu, opencv_wall, frames)) => println!(
            "  OpenCV grab/retrieve ({frames} frames):        {opencv_cpu:.3} CPU-s {opencv_wall:.3} s wall  prepare at {:.2}× CPU-s (target ≤ 0.5), {:.2}× wall (target ≤ 1)",
            cpu(&prepare) / opencv_cpu,
            wall(&prepare) / opencv_wall
        ),
        Err(why) => println!("  OpenCV grab/retrieve: skipped: {why}"),
    }
}

/// The median (CPU-seconds, wall seconds) of OpenCV reading `clip` with `grab()` on every
/// frame and `retrieve()` on `wanted`, and the frames it retrieved.
fn opencv_sampling(clip: &Path, wanted: &[usize], threads: usize) -> Result<(f64, f64, usize), String> {
    let list = wanted.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let args = [clip.display().to_string(), "--frames".into(), list];
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let json = yardstick::run("opencv_sample.py", &args, threads)?;
        let get =
            |k: &str| json[k].as_f64().ok_or_else(|| format!("no {k} in the yardstick's output {json}"));
        runs.push((get("cpu_s")?, get("wall_s")?, get("frames")? as usize));
    }
    let frames = runs[0].2;
    Ok((median(runs.iter().map(|r| r.0).collect()), median(runs.iter().map(|r| r.1).collect()), frames))
}
