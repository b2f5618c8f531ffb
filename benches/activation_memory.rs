//! Activation memory of a training step, measured: the pool peak of one forward and
//! backward of ResNet-18 and ResNet-50 at 224² on the CPU backend (whose pool holds FP32
//! or FP16 tensors exactly as the CUDA backend's does), per frame at the margin —
//! (peak at 2n frames − peak at n frames) / n, so that weights and other per-step
//! constants cancel — in FP32 and with mixed precision, beside the planner's margin for
//! the same pool (`Schedule` on `PlanDevice::Cpu`) and the yardstick: the bytes PyTorch
//! AMP's autograd saves for the same model and frame size (torchvision ResNet,
//! `torch.autocast` FP16, channels_last, counted with saved_tensors_hooks: 12.7 MiB a
//! frame for ResNet-18, 44.6 for ResNet-50; issue 16).
//!
//! First, from the planner alone: the largest micro-batch of clips of 16 frames of 224²
//! that fits 12 GiB (`plan_step` in each mode, mixed precision, a GPU's pool: the step's
//! peak — weights, gradients, AdamW state, the activations kept, inputs and everything
//! else live at that moment, the kernels' scratch included), beside PyTorch AMP's by the
//! accounting of `benches/torch_saved_bytes.py` (saved tensors, FP32 weights and
//! gradients, AdamW state, an FP16 weight copy and the FP32 input, and nothing transient;
//! read from its committed output, `benches/torch_saved_bytes.json`). "kept" is what the
//! forward keeps per frame, the input included; "peak" the plan's peak per frame at the
//! margin; "no ws" the largest micro-batch if the workspace at the peak cost nothing —
//! PyTorch's side of the comparison counts none.
//!
//! `cargo bench --bench activation_memory` (DFENGINE_BENCH_FRAMES sets n, default 2;
//! DFENGINE_BENCH_PLAN_ONLY=1 prints the planner's table alone).

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::ops::Backend;
use dfengine::config::{Backbone, Config};
use dfengine::model::arch::ResNetSpec;
use dfengine::model::footprint::{
    ActivationMode, PlanDevice, largest_fitting, model_size, plan_step, plan_step_on,
};
use dfengine::model::resnet::ResNet;
use dfengine::tensor::{DType, Shape};

const MIB: f64 = (1 << 20) as f64;

/// What `benches/torch_saved_bytes.py` wrote: PyTorch AMP's figures for the same models.
const TORCH: &str = include_str!("torch_saved_bytes.json");

/// PyTorch AMP's (MiB a frame costs by its accounting: saved tensors and the FP32 input;
/// largest micro-batch in the script's budget) for `backbone`.
fn torch_figures(torch: &serde_json::Value, backbone: Backbone) -> (f64, u64) {
    let m = torch["models"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["arch"] == backbone.to_string().as_str()))
        .unwrap_or_else(|| panic!("{backbone} in benches/torch_saved_bytes.json"));
    let frames = torch["frames_per_clip"].as_f64().unwrap_or(f64::NAN);
    let per_frame = m["per_clip_bytes"].as_f64().unwrap_or(f64::NAN) / frames / MIB;
    (per_frame, m["largest_micro_batch"].as_u64().unwrap_or(0))
}

/// The largest micro-batch of clips in the budget by the planner, per mode, beside PyTorch
/// AMP's.
fn plan_table(torch: &serde_json::Value) {
    let side = torch["side"].as_u64().expect("side");
    let frames = torch["frames_per_clip"].as_u64().expect("frames_per_clip");
    let budget = torch["budget_bytes"].as_u64().expect("budget_bytes");
    println!(
        "largest micro-batch of {frames}-frame {side}² clips in {:.0} GiB, mixed precision, AdamW (planner) \
         vs PyTorch AMP ({}, torch {}, autocast {})",
        budget as f64 / (1u64 << 30) as f64,
        torch["source"].as_str().unwrap_or("?"),
        torch["torch"].as_str().unwrap_or("?"),
        torch["autocast_dtype"].as_str().unwrap_or("?")
    );
    println!(
        "{:<10} {:<6} {:>9} {:>9} {:>11} {:>7} {:>7} {:>10} {:>10} {:>7} {:>7}",
        "model",
        "mode",
        "kept MiB",
        "peak MiB",
        "AMP MiB/fr",
        "clips",
        "no ws",
        "AMP clips",
        "const MiB",
        "ratio",
        "no ws"
    );
    for backbone in [Backbone::Resnet18, Backbone::Resnet50] {
        let mut config = Config::default();
        config.model.backbone = backbone;
        config.model.input_size = side as u32;
        config.data.frame_size = side as u32;
        // An effective batch above every micro-batch searched: each step accumulates, so
        // a full set of gradients is live beside the second micro-batch's backward.
        config.dataloader.batch_size = 4096;
        let size = model_size(&config);
        let (amp_per_frame, amp_clips) = torch_figures(torch, backbone);
        for mode in [ActivationMode::Saved, ActivationMode::Lean] {
            let plan = |clips| plan_step(&config, clips, frames, true, mode);
            let clips = largest_fitting(4096, |c| plan(c).total() <= budget).unwrap_or(0);
            let no_ws = largest_fitting(4096, |c| plan(c).total() - plan(c).workspace <= budget).unwrap_or(0);
            let kept = 2.0 * (size.kept_per_frame(mode) + 3 * side * side) as f64 / MIB;
            let peak = (plan(clips).total() - plan(clips / 2).total()) as f64
                / ((clips - clips / 2) * frames) as f64
                / MIB;
            let constant = plan(0).total() as f64 / MIB;
            println!(
                "{:<10} {:<6} {kept:>9.2} {peak:>9.2} {amp_per_frame:>11.2} {clips:>7} {no_ws:>7} {amp_clips:>10} {constant:>10.1} {:>7.2} {:>7.2}",
                backbone.to_string(),
                mode.to_string(),
                clips as f64 / amp_clips as f64,
                no_ws as f64 / amp_clips as f64
            );
        }
    }
}

/// The pool's peak over one training forward and backward of `frames` frames (one clip),
/// less what the network's weights hold before it.
fn step_peak(backbone: Backbone, dtype: DType, mode: ActivationMode, frames: usize, side: usize) -> usize {
    let b = CpuBackend::with_budget(64 << 30).expect("a host pool");
    let mut net = ResNet::new(&b, ResNetSpec::of(backbone), frames, 1).expect("the network");
    net.activations = dtype;
    net.activation_mode = mode;
    net.prepare_step(&b).expect("weight copies");
    let base = b.pool_stats().allocated_bytes;
    let n = frames * side * side * 3;
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
    let x = b.tensor_as(Shape::from([frames, side, side, 3]), &x, dtype).expect("input");
    let (logits, cache) = net.forward_train(&b, &x).expect("forward");
    let d = b.tensor(Shape::from([1, 1]), &[1.0]).expect("gradient");
    let grads = net.backward(&b, &d, cache).expect("backward");
    drop((grads, logits, x));
    b.pool_stats().peak_allocated_bytes - base
}

fn main() {
    let n: usize = std::env::var("DFENGINE_BENCH_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let torch: serde_json::Value = serde_json::from_str(TORCH).expect("benches/torch_saved_bytes.json");
    plan_table(&torch);
    if std::env::var("DFENGINE_BENCH_PLAN_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    println!();
    let side = 224;
    println!(
        "activation memory per {side}² frame: marginal pool peak of a training step (CPU backend, {n} → {} frames), beside the plan",
        2 * n
    );
    println!(
        "{:<10} {:<6} {:>9} {:>10} {:>10} {:>16}",
        "model", "mode", "fp32 MiB", "mixed MiB", "plan MiB", "PyTorch AMP MiB"
    );
    for backbone in [Backbone::Resnet18, Backbone::Resnet50] {
        // The yardstick: all PyTorch AMP saves for one 16-frame clip, per frame.
        let yardstick = torch["models"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["arch"] == backbone.to_string().as_str()))
            .and_then(|m| m["saved_one_clip_per_frame_mib"].as_f64())
            .unwrap_or(f64::NAN);
        let mut config = Config::default();
        config.model.backbone = backbone;
        config.model.input_size = side as u32;
        config.data.frame_size = side as u32;
        config.data.max_frames = 1;
        config.dataloader.batch_size = 1;
        config.train.accumulation_steps = 1;
        for mode in [ActivationMode::Saved, ActivationMode::Lean] {
            let per_frame = |dtype| {
                let one = step_peak(backbone, dtype, mode, n, side);
                let two = step_peak(backbone, dtype, mode, 2 * n, side);
                (two - one) as f64 / n as f64 / MIB
            };
            let (f32_mib, mixed_mib) = (per_frame(DType::F32), per_frame(DType::F16));
            // The planner's margin for the CPU backend's pool, FP16: clips of one frame.
            let planned = |clips| plan_step_on(PlanDevice::Cpu, &config, clips, 1, true, mode).total();
            let plan = (planned(2 * n as u64) - planned(n as u64)) as f64 / n as f64 / MIB;
            println!(
                "{:<10} {:<6} {f32_mib:>9.2} {mixed_mib:>10.2} {plan:>10.2} {yardstick:>16.1}   (mixed / PyTorch AMP = {:.2})",
                backbone.to_string(),
                mode.to_string(),
                mixed_mib / yardstick
            );
        }
    }
}
