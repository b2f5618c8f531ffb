//! Activation memory of a training step, measured: the pool peak of one forward and
//! backward of ResNet-18 and ResNet-50 at 224² on the CPU backend (whose pool holds FP32
//! or FP16 tensors exactly as the CUDA backend's does), per frame at the margin —
//! (peak at 2n frames − peak at n frames) / n, so that weights and other per-step
//! constants cancel — in FP32 and with mixed precision, beside the yardstick: the bytes
//! PyTorch AMP's autograd saves for the same model and frame size (torchvision ResNet,
//! `torch.autocast` FP16, channels_last, counted with saved_tensors_hooks: 12.7 MiB a
//! frame for ResNet-18, 44.6 for ResNet-50; issue 16).
//!
//! Each `[train] activation_memory` mode ("saved", "lean") beside the planner's figure
//! for it (kept activations and the input, `model::footprint`).
//!
//! `cargo bench --bench activation_memory` (DFENGINE_BENCH_FRAMES sets n, default 2).

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::ops::Backend;
use dfengine::config::{Backbone, Config};
use dfengine::model::arch::ResNetSpec;
use dfengine::model::footprint::{ActivationMode, model_size};
use dfengine::model::resnet::ResNet;
use dfengine::tensor::{DType, Shape};

const MIB: f64 = (1 << 20) as f64;

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
    let side = 224;
    println!(
        "activation memory per {side}² frame: marginal pool peak of a training step (CPU backend, {n} → {} frames), beside the plan",
        2 * n
    );
    println!(
        "{:<10} {:<6} {:>9} {:>10} {:>10} {:>16}",
        "model", "mode", "fp32 MiB", "mixed MiB", "plan MiB", "PyTorch AMP MiB"
    );
    for (backbone, yardstick) in [(Backbone::Resnet18, 12.7), (Backbone::Resnet50, 44.6)] {
        let mut config = Config::default();
        config.model.backbone = backbone;
        config.model.input_size = side as u32;
        let size = model_size(&config);
        for mode in [ActivationMode::Saved, ActivationMode::Lean] {
            let per_frame = |dtype| {
                let one = step_peak(backbone, dtype, mode, n, side);
                let two = step_peak(backbone, dtype, mode, 2 * n, side);
                (two - one) as f64 / n as f64 / MIB
            };
            let (f32_mib, mixed_mib) = (per_frame(DType::F32), per_frame(DType::F16));
            let plan = 2.0 * (size.kept_per_frame(mode) + 3 * (side * side) as u64) as f64 / MIB;
            println!(
                "{:<10} {:<6} {f32_mib:>9.2} {mixed_mib:>10.2} {plan:>10.2} {yardstick:>16.1}   (mixed / PyTorch AMP = {:.2})",
                backbone.to_string(),
                mode.to_string(),
                mixed_mib / yardstick
            );
        }
    }
}
