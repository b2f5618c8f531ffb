//! CPU training throughput beside PyTorch's (issue 20): ResNet-18, FP32, AdamW, on a
//! fixed synthetic batch, 2 threads each, at 112² (batch 32) and 224² (batch 16). dfengine
//! runs `train_step` on the CPU backend (one micro-batch: the batch's images as clips of 16
//! frames, so 2 clips at 112² and 1 at 224²); PyTorch runs benches/torch_cpu_train.py
//! (torchvision resnet18, channels_last, BCE, AdamW, clip 1.0) as a subprocess. No loader:
//! both sides time the step alone.
//!
//! The sides take turns, a few rounds of a few steps each, so that a change in the load of
//! a shared machine falls on both; each prints img/s of its fastest step (the least
//! disturbed) and of its median step, and the ratios of both.
//!
//! `cargo bench --bench cpu_train_vs_torch`. `DFENGINE_TORCH_PYTHON` names the Python with
//! torch (default `python3`); without torch the PyTorch side prints `skipped: ...`.
//! `DFENGINE_BENCH_ROUNDS` (default 3) and `DFENGINE_BENCH_STEPS` (timed steps per round
//! and side, default 3, after one warm-up step) set the work, `DFENGINE_BENCH_THREADS` the
//! threads of both sides (default 2).
//!
//! `DFENGINE_BENCH_MODES=1` times dfengine alone instead, in each precision and
//! `[train] activation_memory` mode (FP32 and mixed precision — FP16 activations stored,
//! FP32 arithmetic —, "saved" and "lean"), the four taking turns, and prints what "lean"
//! costs against "saved" (issue 16: ≤ 1.10×), by wall time and by the process's
//! CPU-seconds per step (which another process on the same cores moves less).

// This bench reads the step times itself; the module's `number` serves other benches.
#[path = "common/yardstick.rs"]
mod yardstick;

#[path = "common/cpu_time.rs"]
mod cpu_time;

#[path = "common/timing.rs"]
mod timing;

use std::time::Instant;

use dfengine::backend::cpu::CpuBackend;
use dfengine::config::{Backbone, TrainConfig};
use dfengine::data::loader::{Batch, Pixels};
use dfengine::memory::governor::BatchPlan;
use dfengine::model::arch::ResNetSpec;
use dfengine::model::footprint::ActivationMode;
use dfengine::model::resnet::ResNet;
use dfengine::tensor::DType;
use dfengine::train::optimizer::Optimizer;
use dfengine::train::scaler::LossScaler;
use dfengine::train::step::{StepSettings, train_step};
use timing::median;

const FRAMES: usize = 16;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// dfengine's side: a ResNet-18 and its optimizer, training on one fixed batch.
struct Ours {
    b: CpuBackend,
    net: ResNet<CpuBackend>,
    opt: Optimizer<CpuBackend>,
    scaler: LossScaler,
    settings: StepSettings,
    plan: BatchPlan,
    batch: Batch,
}

impl Ours {
    fn new(side: usize, images: usize, mixed: bool, mode: ActivationMode) -> Self {
        let b = CpuBackend::default();
        let t = TrainConfig { mixed_precision: mixed, ..TrainConfig::default() };
        let clips = images / FRAMES;
        let mut net = ResNet::new(&b, ResNetSpec::of(Backbone::Resnet18), FRAMES, t.seed).unwrap();
        net.activations = DType::activations(mixed);
        net.activation_mode = mode;
        let opt = Optimizer::new(&b, t.optimizer, t.weight_decay as f32, &net.trainable_mut()).unwrap();
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
        let mut ours = Ours {
            b,
            net,
            opt,
            scaler: LossScaler::of(&t),
            settings: StepSettings::of(&t, t.lr),
            plan: BatchPlan { micro_batch: clips as u32, accumulation: 1 },
            batch,
        };
        ours.step();
        ours
    }

    /// Seconds of one optimizer step.
    fn step(&mut self) -> f64 {
        self.timed_step()[0]
    }

    /// Wall seconds and CPU-seconds (the process's, all threads) of one optimizer step.
    fn timed_step(&mut self) -> [f64; 2] {
        let (start, cpu) = (Instant::now(), cpu_time::process_cpu());
        let (net, opt, scaler) = (&mut self.net, &mut self.opt, &mut self.scaler);
        let r =
            train_step(&self.b, net, opt, scaler, &self.batch, self.plan, &self.settings, |_| None).unwrap();
        assert!(!r.skipped && r.loss.is_finite(), "loss {}", r.loss);
        [start.elapsed().as_secs_f64(), cpu_time::process_cpu() - cpu]
    }
}

/// Seconds of `steps` PyTorch steps (after a warm-up) from benches/torch_cpu_train.py, or
/// why there are none.
fn torch_steps(side: usize, images: usize, steps: usize, threads: usize) -> Result<Vec<f64>, String> {
    let args = [("--side", side), ("--batch", images), ("--steps", steps), ("--threads", threads)];
    let args: Vec<String> = args.iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect();
    let json = yardstick::run("torch_cpu_train.py", &args, threads)?;
    let times = json["step_s"].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect::<Vec<_>>());
    times.filter(|t| !t.is_empty()).ok_or_else(|| format!("no step_s in the yardstick's output {json}"))
}

/// img/s of the fastest and of the median step.
fn best_and_median(images: usize, times: Vec<f64>) -> (f64, f64) {
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    (images as f64 / best, images as f64 / median(times))
}

fn main() {
    let rounds = env_usize("DFENGINE_BENCH_ROUNDS", 3).max(1);
    let steps = env_usize("DFENGINE_BENCH_STEPS", 3).max(1);
    let threads = env_usize("DFENGINE_BENCH_THREADS", 2).max(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    if std::env::var_os("DFENGINE_BENCH_MODES").is_some() {
        return modes(rounds, steps, threads);
    }
    println!(
        "ResNet-18 FP32 AdamW training on the CPU, {threads} threads, {rounds} rounds × {steps} steps per side \
         in turns — img/s of the fastest step (median step)"
    );
    println!("{:<16} {:>15} {:>15} {:>15}", "input", "dfengine", "pytorch", "ratio");
    for (side, images) in [(112, 32), (224, 16)] {
        let mut ours = Ours::new(side, images, false, ActivationMode::Saved);
        let (mut our_times, mut their_times) = (Vec::new(), Ok(Vec::new()));
        for _ in 0..rounds {
            our_times.extend((0..steps).map(|_| ours.step()));
            if let Ok(theirs) = &mut their_times {
                match torch_steps(side, images, steps, threads) {
                    Ok(t) => theirs.extend(t),
                    Err(why) => their_times = Err(why),
                }
            }
        }
        let (best, med) = best_and_median(images, our_times);
        let label = format!("{side}², batch {images}");
        let ours = format!("{best:.1} ({med:.1})");
        match their_times {
            Ok(t) => {
                let (t_best, t_med) = best_and_median(images, t);
                let ratio = format!("{:.2}× ({:.2}×)", best / t_best, med / t_med);
                println!("{label:<16} {ours:>15} {:>15} {ratio:>15}", format!("{t_best:.1} ({t_med:.1})"));
            }
            Err(why) => {
                println!("{label:<16} {ours:>15} {:>15} {:>15}", "-", "-");
                println!("  pytorch skipped: {why}");
            }
        }
    }
}

/// dfengine alone in each precision and activation mode, the four taking turns: img/s of
/// the fastest step of each, and lean's cost (saved's img/s over lean's); the same by
/// CPU-seconds (images per CPU-second of the fastest step), which other work on a shared
/// machine moves less.
fn modes(rounds: usize, steps: usize, threads: usize) {
    println!(
        "ResNet-18 AdamW training on the CPU, {threads} threads, {rounds} rounds × {steps} steps per variant \
         in turns — img/s of the fastest step, then images per CPU-second"
    );
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>10} {:>10} {:>22}",
        "input", "", "FP32 saved", "FP32 lean", "FP16 saved", "FP16 lean", "lean's cost FP32/FP16"
    );
    for (side, images) in [(112, 32), (224, 16)] {
        let variants = [
            (false, ActivationMode::Saved),
            (false, ActivationMode::Lean),
            (true, ActivationMode::Saved),
            (true, ActivationMode::Lean),
        ];
        let mut nets: Vec<Ours> =
            variants.iter().map(|&(mixed, mode)| Ours::new(side, images, mixed, mode)).collect();
        let mut best = [[f64::INFINITY; 2]; 4];
        for _ in 0..rounds {
            for (net, best) in nets.iter_mut().zip(&mut best) {
                for _ in 0..steps {
                    let t = net.timed_step();
                    *best = [best[0].min(t[0]), best[1].min(t[1])];
                }
            }
        }
        for (k, unit) in ["img/s", "img/cs"].iter().enumerate() {
            let ips = best.map(|t| images as f64 / t[k]);
            let cost = format!("{:.2}× / {:.2}×", ips[0] / ips[1], ips[2] / ips[3]);
            let input = if k == 0 { format!("{side}², batch {images}") } else { String::new() };
            println!(
                "{input:<16} {unit:>6} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {cost:>22}",
                ips[0], ips[1], ips[2], ips[3]
            );
        }
    }
}
