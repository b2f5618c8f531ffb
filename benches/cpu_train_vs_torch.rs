//! CPU training throughput beside PyTorch's (issue 20): ResNet-18, FP32, AdamW, on a
//! fixed synthetic batch, 2 threads each, at 112² (batch 32) and 224² (batch 16). dfengine
//! runs `train_step` on the CPU backend (one micro-batch: the batch's images as clips of 16
//! frames, so 2 clips at 112² and 1 at 224²); PyTorch runs benches/torch_cpu_train.py
//! (torchvision resnet18, channels_last, BCE, AdamW, clip 1.0) as a subprocess. No loader:
//! both sides time the step alone. Prints img/s (median step) for each and the ratio.
//!
//! `cargo bench --bench cpu_train_vs_torch`. `DFENGINE_TORCH_PYTHON` names the Python with
//! torch (default `python3`); without torch the PyTorch side prints `skipped: ...`.
//! `DFENGINE_BENCH_STEPS` sets the timed steps (default 3, after one warm-up step),
//! `DFENGINE_BENCH_THREADS` the threads of both sides (default 2).

use std::process::Command;
use std::time::Instant;

use dfengine::backend::cpu::CpuBackend;
use dfengine::config::{Backbone, TrainConfig};
use dfengine::data::loader::{Batch, Pixels};
use dfengine::memory::governor::BatchPlan;
use dfengine::model::arch::ResNetSpec;
use dfengine::model::resnet::ResNet;
use dfengine::train::optimizer::Optimizer;
use dfengine::train::scaler::LossScaler;
use dfengine::train::step::{StepSettings, train_step};

const FRAMES: usize = 16;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// dfengine's img/s: median seconds of `steps` optimizer steps after one warm-up.
fn dfengine_img_s(side: usize, images: usize, steps: usize) -> f64 {
    let b = CpuBackend::default();
    let t = TrainConfig { mixed_precision: false, ..TrainConfig::default() };
    let clips = images / FRAMES;
    let mut net = ResNet::new(&b, ResNetSpec::of(Backbone::Resnet18), FRAMES, t.seed).unwrap();
    let mut opt = Optimizer::new(&b, t.optimizer, t.weight_decay as f32, &net.trainable_mut()).unwrap();
    let mut scaler = LossScaler::of(&t);
    let plan = BatchPlan { micro_batch: clips as u32, accumulation: 1 };
    let settings = StepSettings::of(&t, t.lr);
    // A fixed input in roughly the normalized range, the same every step.
    let n = clips * FRAMES * side * side * 3;
    let pixels = (0..n).map(|i| ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0) - 1.0).collect();
    let batch = Batch {
        index: 0,
        clips: (0..clips).collect(),
        frames_per_clip: FRAMES,
        side,
        pixels: Pixels::Prepared(pixels),
        targets: (0..clips).map(|i| (i % 2) as f32).collect(),
    };
    let mut times = Vec::new();
    for i in 0..=steps {
        let start = Instant::now();
        let r = train_step(&b, &mut net, &mut opt, &mut scaler, &batch, plan, &settings, |_| None).unwrap();
        assert!(!r.skipped && r.loss.is_finite(), "step {i}: loss {}", r.loss);
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    (clips * FRAMES) as f64 / median(times)
}

/// PyTorch's img/s from benches/torch_cpu_train.py, or why there is none.
fn torch_img_s(side: usize, images: usize, steps: usize, threads: usize) -> Result<f64, String> {
    let python = std::env::var("DFENGINE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_cpu_train.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--side", &side.to_string(), "--batch", &images.to_string()])
        .args(["--steps", &steps.to_string(), "--threads", &threads.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string())
        // OpenMP's spinning barriers collapse when the cores are shared (a 2-core VM under
        // load: 3.4 img/s spinning against 15 passive at 224²); rayon's workers sleep too.
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{python}: {}", err.trim().lines().last().unwrap_or("failed")));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{python}: unreadable output ({e})"))?;
    json["img_per_s"].as_f64().ok_or_else(|| format!("{python}: no img_per_s in {json}"))
}

fn main() {
    let steps = env_usize("DFENGINE_BENCH_STEPS", 3).max(1);
    let threads = env_usize("DFENGINE_BENCH_THREADS", 2).max(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    println!("ResNet-18 FP32 AdamW training on the CPU, {threads} threads, median of {steps} steps — img/s");
    println!("{:<16} {:>10} {:>10} {:>8}", "input", "dfengine", "pytorch", "ratio");
    for (side, images) in [(112, 32), (224, 16)] {
        let ours = dfengine_img_s(side, images, steps);
        let label = format!("{side}², batch {images}");
        match torch_img_s(side, images, steps, threads) {
            Ok(theirs) => println!("{label:<16} {ours:>10.1} {theirs:>10.1} {:>7.2}×", ours / theirs),
            Err(why) => {
                println!("{label:<16} {ours:>10.1} {:>10} {:>8}", "-", "-");
                println!("  pytorch skipped: {why}");
            }
        }
    }
}
