//! Face detection's CPU cost in `prepare` (issue 18's target: ≤ 1 CPU-second for the 32
//! sampled frames of a 720p clip), beside facenet-pytorch's MTCNN on the same frames.
//!
//! 32 frames of 1280×720 from the astronaut photograph (scaled to 1400², the window
//! panning 3 px a frame). dfengine runs `face_boxes::detect_clip` (what `prepare` runs per
//! video: the frame reduced as `detect_frame` does, the pyramid, R- and O-Net, tracks) with
//! 1 and with 2 rayon threads, and prints CPU-seconds (user + system of the process) and
//! wall seconds, median of `DFENGINE_BENCH_RUNS` runs (default 3) after a warm-up; then
//! once at full size (no reduction) on one thread, to show what the reduction saves.
//! benches/face_detect_torch.py runs facenet-pytorch 2.6.0's `MTCNN.detect` (read from the
//! wheel the fetch script keeps, with the same thresholds and minimum face) on the same
//! frames reduced the same way, as one batch, with the same thread counts. With a GPU,
//! the reduced frames once more with the networks on the CUDA backend (what `prepare`
//! does there), beside the CPU rows; not on the software GPU, whose interpreter measures
//! no card's speed.
//!
//! `cargo bench --bench face_detect`. Needs models/mtcnn.safetensors and
//! models/astronaut.png (scripts/get-face-detector.sh --test-image). `DFENGINE_TORCH_PYTHON`
//! names a Python with torch and torchvision (default `python3`); without them the
//! PyTorch side prints `skipped: ...`.

#[path = "common/yardstick.rs"]
mod yardstick;

#[path = "common/cpu_time.rs"]
mod cpu_time;

#[path = "common/timing.rs"]
mod timing;

use std::path::{Path, PathBuf};
use std::time::Instant;

use cpu_time::process_cpu;

use dfengine::data::decode::read_frames;
use dfengine::data::detect::{DetectSettings, FaceDetector, Image};
use dfengine::data::face_boxes::{MAX_DETECT_SIDE, detect_clip};
use dfengine::data::faces::Crop;
use dfengine::data::image::RgbImage;
use dfengine::data::resize::crop_resize;
use timing::median;

const WIDTH: usize = 1280;
const HEIGHT: usize = 720;
const FRAMES: usize = 32;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The bench's frames: the photograph scaled to 1400² (the face about 240×300 px, as a
/// presenter's in a 720p broadcast), seen through a 1280×720 window that pans 3 px a frame.
fn frames(photo: &[u8]) -> Vec<Vec<u8>> {
    let big = crop_resize(RgbImage::packed(photo, 512, 512), Crop { x0: 0, y0: 0, side: 512 }, 1400);
    (0..FRAMES)
        .map(|t| {
            let x0 = 20 + 3 * t;
            (150..150 + HEIGHT)
                .flat_map(|y| big[(y * 1400 + x0) * 3..(y * 1400 + x0 + WIDTH) * 3].iter().copied())
                .collect()
        })
        .collect()
}

/// (CPU-seconds, wall seconds, faces found) of `detect` (returning the faces it found)
/// on `threads` rayon threads: medians of `runs` after a warm-up.
fn dfengine_seconds(
    detect: impl Fn() -> usize + Send + Sync,
    threads: usize,
    runs: usize,
) -> (f64, f64, usize) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool");
    let (mut cpu, mut wall, mut faces) = (Vec::new(), Vec::new(), 0);
    for run in 0..=runs {
        let (c0, w0) = (process_cpu(), Instant::now());
        faces = pool.install(&detect);
        if run > 0 {
            cpu.push(process_cpu() - c0);
            wall.push(w0.elapsed().as_secs_f64());
        }
    }
    (median(cpu), median(wall), faces)
}

/// facenet-pytorch's (CPU-seconds, wall seconds, faces) from benches/face_detect_torch.py.
fn torch_seconds(
    raw: &Path,
    factor: usize,
    threads: usize,
    runs: usize,
) -> Result<(f64, f64, usize), String> {
    let mut args = vec![raw.display().to_string()];
    for (flag, v) in [("--width", WIDTH), ("--height", HEIGHT), ("--frames", FRAMES), ("--factor", factor)]
        .into_iter()
        .chain([("--threads", threads), ("--runs", runs)])
    {
        args.extend([flag.to_string(), v.to_string()]);
    }
    let json = yardstick::run("face_detect_torch.py", &args, threads)?;
    let get = |k: &str| json[k].as_f64().ok_or_else(|| format!("no {k} in the yardstick's output {json}"));
    Ok((get("cpu_s")?, get("wall_s")?, get("faces")? as usize))
}

fn main() {
    let (weights, photo) = (repo("models/mtcnn.safetensors"), repo("models/astronaut.png"));
    if !weights.exists() || !photo.exists() {
        println!(
            "skipped: models/mtcnn.safetensors or models/astronaut.png missing (scripts/get-face-detector.sh --test-image)"
        );
        return;
    }
    let runs =
        std::env::var("DFENGINE_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3usize).max(1);
    let (decoded_photo, _) = read_frames(&photo, &[0], 1).expect("decode the photograph");
    let frames = frames(&decoded_photo[0].data);
    let det = FaceDetector::load(&weights, DetectSettings::default()).expect("load MTCNN");
    let decoded: Vec<(usize, usize, usize, Vec<u8>)> =
        frames.iter().enumerate().map(|(i, f)| (i, WIDTH, HEIGHT, f.clone())).collect();

    let dir = repo("target/bench-faces");
    std::fs::create_dir_all(&dir).expect("create target/bench-faces");
    let raw = dir.join(format!("frames_{WIDTH}x{HEIGHT}x{FRAMES}.rgb"));
    std::fs::write(&raw, frames.concat()).expect("write the frames for the yardstick");

    let factor = WIDTH.max(HEIGHT).div_ceil(MAX_DETECT_SIDE).max(1);
    let in_prepare = || detect_clip(&det, &decoded, &Default::default()).expect("detect").faces_found;
    let full_size = || {
        frames
            .iter()
            .map(|f| det.detect(Image { rgb: f, width: WIDTH, height: HEIGHT }).expect("detect").len())
            .sum()
    };
    println!(
        "MTCNN on {FRAMES} frames of {WIDTH}×{HEIGHT} (min face 20, thresholds 0.6/0.7/0.7), median of {runs}; CPU-s (wall s) and faces found"
    );
    println!("{:<34} {:>20} {:>20} {:>7}", "detected at, threads", "dfengine", "facenet-pytorch", "ratio");
    let row = |label: String, ours: (f64, f64, usize), factor: usize, threads: usize, runs: usize| {
        let (cpu, wall, faces) = ours;
        let shown = format!("{cpu:.3} ({wall:.3}) {faces}f");
        match torch_seconds(&raw, factor, threads, runs) {
            Ok((tc, tw, tf)) => {
                println!(
                    "{label:<34} {shown:>20} {:>20} {:>6.2}×",
                    format!("{tc:.3} ({tw:.3}) {tf}f"),
                    cpu / tc
                )
            }
            Err(why) => println!("{label:<34} {shown:>20}   pytorch skipped: {why}"),
        }
    };
    for threads in [1, 2] {
        let label = format!("{}×{} (prepare), {threads}", WIDTH / factor, HEIGHT / factor);
        row(label, dfengine_seconds(in_prepare, threads, runs), factor, threads, runs);
    }
    // Full size costs about 4× as much: once, on one thread.
    row(format!("{WIDTH}×{HEIGHT} (not reduced), 1"), dfengine_seconds(full_size, 1, 1), 1, 1, 1);
    #[cfg(feature = "cuda")]
    cuda_row(format!("{}×{} (prepare), 2, cuda", WIDTH / factor, HEIGHT / factor), &weights, &decoded, runs);
}

/// `prepare`'s detection with the networks on the CUDA backend of device 0 (the pyramid,
/// crops, NMS and tracks on 2 host threads), to set against the CPU rows above.
#[cfg(feature = "cuda")]
fn cuda_row(label: String, weights: &Path, decoded: &[(usize, usize, usize, Vec<u8>)], runs: usize) {
    use dfengine::backend::cuda::backend::CudaBackend;
    use dfengine::backend::ops::Backend;

    let backend = match CudaBackend::open(0, None, false) {
        Ok(b) => b,
        Err(e) => return println!("{label:<34} skipped: {e}"),
    };
    let name = backend.name();
    if name.contains("softgpu") {
        return println!("{label:<34} skipped: {name} is the software GPU, which measures no card's speed");
    }
    let det =
        FaceDetector::load_on(backend, weights, DetectSettings::default()).expect("load MTCNN on the GPU");
    let on_gpu = || detect_clip(&det, decoded, &Default::default()).expect("detect").faces_found;
    let (cpu, wall, faces) = dfengine_seconds(on_gpu, 2, runs);
    println!("{label:<34} {:>20}   on {name}", format!("{cpu:.3} ({wall:.3}) {faces}f"));
}
