//! The planned memory footprint of a training step, before anything runs: weights,
//! gradients, optimizer state, the activations backward needs, inputs and the largest
//! transient workspace, summed from the model's layer list.
//!
//! Counted per frame (every frame of every clip goes through the backbone), per
//! `ActivationMode`: "saved" keeps each convolution's output, each fused batch-norm +
//! ReLU output, each residual block's output and the stem's max-pool output; "lean" keeps
//! each convolution's output and each stage's input. The input itself is an input.

use super::arch::{ResNetSpec, conv_layers};
use crate::config::{ActivationMemory, Config, OptimizerKind, format_bytes};
use crate::memory::{Allocation, Backing, Pool, PoolError};

/// What a training forward keeps for backward, resolved from `[train] activation_memory`
/// (`ActivationMemory`, whose "auto" the planner turns into one of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationMode {
    /// What PyTorch AMP's autograd keeps.
    Saved,
    /// The convolution outputs, each stage's input and the image; the rest recomputed.
    Lean,
}

impl std::fmt::Display for ActivationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActivationMode::Saved => "saved",
            ActivationMode::Lean => "lean",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    /// fp32 master weights (+ an f16 compute copy under mixed precision), BN buffers.
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub inputs: u64,
    pub workspace: u64,
}

impl Footprint {
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations + self.inputs + self.workspace
    }

    /// "weights 46.8 MiB + gradients ... = total".
    pub fn describe(&self) -> String {
        format!(
            "weights {} + gradients {} + optimizer {} + activations {} + inputs {} + workspace {} = {}",
            format_bytes(self.weights),
            format_bytes(self.gradients),
            format_bytes(self.optimizer),
            format_bytes(self.activations),
            format_bytes(self.inputs),
            format_bytes(self.workspace),
            format_bytes(self.total())
        )
    }
}

/// Sizes of the model behind `config`, independent of the batch.
#[derive(Debug, Clone, Copy)]
pub struct ModelSize {
    pub params: u64,
    /// Activation elements a "saved" training forward keeps for backward, per frame.
    pub saved_per_frame: u64,
    /// Activation elements a "lean" training forward keeps for backward, per frame.
    pub lean_per_frame: u64,
    /// The largest tensor of one frame anywhere in the network.
    pub largest_per_frame: u64,
}

pub fn model_size(config: &Config) -> ModelSize {
    let spec = ResNetSpec::of(config.model.backbone);
    let side = config.model.input_size as usize;
    let layers = conv_layers(&spec, side);
    let mut params = (spec.feature_channels() + 1) as u64;
    let (mut saved, mut lean) = (0u64, 0u64);
    let mut largest = (3 * side * side) as u64;
    for l in &layers {
        params += (l.params() + 2 * l.cout) as u64;
        let out = l.out_elems() as u64;
        // The convolution's output; "saved" also keeps the fused ReLU's output (the
        // layers that do not end a block, but the shortcuts) and each block's output.
        let relu = l.name != "downsample" && !l.block_end;
        saved += out + if relu || l.block_end { out } else { 0 };
        lean += out + if l.stage_start { (l.cin * l.h_in * l.w_in) as u64 } else { 0 };
        largest = largest.max(out).max((l.cin * l.h_in * l.w_in) as u64);
    }
    let stem = layers[0];
    let pooled = |x: usize| (x + 2 - 3) / 2 + 1;
    saved += (stem.cout * pooled(stem.h_out()) * pooled(stem.w_out())) as u64;
    ModelSize { params, saved_per_frame: saved, lean_per_frame: lean, largest_per_frame: largest }
}

impl ModelSize {
    /// Activation elements kept for backward per frame in `mode`.
    pub fn kept_per_frame(&self, mode: ActivationMode) -> u64 {
        match mode {
            ActivationMode::Saved => self.saved_per_frame,
            ActivationMode::Lean => self.lean_per_frame,
        }
    }
}

/// `[train] activation_memory` for a micro-batch of `clips` clips of `frames` frames in
/// `budget` bytes: "saved" and "lean" as they are; "auto" the cheaper in time that fits,
/// "saved" (no recomputation) when its plan fits, else "lean".
pub fn resolve_mode(config: &Config, clips: u64, frames: u64, mixed: bool, budget: u64) -> ActivationMode {
    match config.train.activation_memory {
        ActivationMemory::Saved => ActivationMode::Saved,
        ActivationMemory::Lean => ActivationMode::Lean,
        ActivationMemory::Auto => {
            if plan_step(config, clips, frames, mixed, ActivationMode::Saved).total() <= budget {
                ActivationMode::Saved
            } else {
                ActivationMode::Lean
            }
        }
    }
}

/// The footprint of one micro-batch of `clips` clips of `frames` frames keeping `mode`'s
/// activations. `mixed` counts f16 activations and an f16 weight copy (what both
/// backends store under `mixed_precision`); otherwise everything is f32.
pub fn plan_step(config: &Config, clips: u64, frames: u64, mixed: bool, mode: ActivationMode) -> Footprint {
    let m = model_size(config);
    let act = if mixed { 2 } else { 4 };
    let n = clips * frames;
    let side = config.model.input_size as u64;
    let raw_frame = 3 * (config.data.frame_size as u64).pow(2);
    let state_per_param = match config.train.optimizer {
        OptimizerKind::Adamw => 8,
        OptimizerKind::Sgd => 4,
    };
    Footprint {
        weights: m.params * if mixed { 6 } else { 4 },
        gradients: m.params * 4,
        optimizer: m.params * state_per_param,
        activations: n * m.kept_per_frame(mode) * act,
        // The normalised input tensor and the u8 frames it was made from.
        inputs: n * (3 * side * side * act + raw_frame),
        // Backward holds a layer's output gradient and input gradient at once.
        workspace: 2 * n * m.largest_per_frame * act,
    }
}

/// One allocation event of a training step, in the order the step makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEvent {
    Alloc(usize),
    /// Frees the n-th allocation of the step.
    Free(usize),
}

/// The allocations a step of `frames` frames makes, in order: the input, then per
/// convolution its output and batch-norm output (kept for backward); backward walks the
/// layers in reverse with an output-gradient and input-gradient pair live at each, freeing
/// the layer's saved tensors as it goes.
pub fn step_events(config: &Config, frames: u64, mixed: bool) -> Vec<StepEvent> {
    let act = if mixed { 2 } else { 4 };
    let side = config.model.input_size as u64;
    let raw = 3 * (config.data.frame_size as u64).pow(2);
    let layers = conv_layers(&ResNetSpec::of(config.model.backbone), side as usize);
    let mut events = vec![StepEvent::Alloc((frames * (3 * side * side * act + raw)) as usize)];
    let mut saved = Vec::new();
    for l in &layers {
        let out = (l.out_elems() as u64 * frames * act) as usize;
        for _ in 0..2 {
            saved.push(events.len());
            events.push(StepEvent::Alloc(out));
        }
    }
    for l in layers.iter().rev() {
        let grad = events.len();
        events.push(StepEvent::Alloc((l.out_elems() as u64 * frames * act) as usize));
        let dx = events.len();
        events.push(StepEvent::Alloc(((l.cin * l.h_in * l.w_in) as u64 * frames * act) as usize));
        events.extend([StepEvent::Free(grad), StepEvent::Free(dx)]);
        for _ in 0..2 {
            events.extend(saved.pop().map(StepEvent::Free));
        }
    }
    events.push(StepEvent::Free(0));
    events
}

/// Runs `events` against `pool` on stream 0. On failure everything the step allocated is
/// freed again (as the trainer does before retrying with a smaller micro-batch).
pub fn replay<B: Backing>(pool: &mut Pool<B>, events: &[StepEvent]) -> Result<(), PoolError> {
    let mut live: Vec<Option<Allocation>> = Vec::with_capacity(events.len());
    let mut result = Ok(());
    for e in events {
        match *e {
            StepEvent::Alloc(bytes) => match pool.alloc(bytes, 0) {
                Ok(a) => live.push(Some(a)),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            },
            StepEvent::Free(i) => {
                live.push(None);
                if let Some(a) = live[i].take() {
                    pool.free(a)?;
                }
            }
        }
    }
    for a in live.into_iter().flatten() {
        pool.free(a)?;
    }
    result
}

/// The largest value in `1..=limit` for which `fits` holds, assuming it is monotone.
pub fn largest_fitting(limit: u64, fits: impl Fn(u64) -> bool) -> Option<u64> {
    if !fits(1) {
        return None;
    }
    let (mut lo, mut hi) = (1, limit.max(1));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backbone;

    #[test]
    fn resnet18_weights_and_optimizer_match_its_parameter_count() {
        let mut c = Config::default();
        c.model.backbone = Backbone::Resnet18;
        let m = model_size(&c);
        // torchvision's 11,689,512 with a 1000-way head; here the head has one output.
        assert_eq!(m.params, 11_689_512 - 512 * 999 - 999);
        let f = plan_step(&c, 1, 1, true, ActivationMode::Saved);
        assert_eq!((f.weights, f.gradients, f.optimizer), (m.params * 6, m.params * 4, m.params * 8));
    }

    #[test]
    fn activations_scale_with_clips_and_frames() {
        let c = Config::default();
        for mode in [ActivationMode::Saved, ActivationMode::Lean] {
            let one = plan_step(&c, 1, 1, true, mode);
            let many = plan_step(&c, 6, 16, true, mode);
            assert_eq!(many.activations, 96 * one.activations);
            assert_eq!(many.weights, one.weights);
            assert_eq!(plan_step(&c, 1, 1, false, mode).activations, 2 * one.activations);
        }
    }

    #[test]
    fn lean_keeps_less_and_auto_picks_saved_only_when_it_fits() {
        let mut c = Config::default();
        c.model.backbone = Backbone::Resnet18;
        c.model.input_size = 224;
        let m = model_size(&c);
        // FP16 bytes a frame, the 224² input included: lean 6.08 MiB, saved 9.81 (PyTorch
        // AMP's autograd saves 12.7, issue 16).
        let mib = |elems: u64| (2 * (elems + 3 * 224 * 224)) as f64 / (1u64 << 20) as f64;
        assert!((mib(m.lean_per_frame) - 6.08).abs() < 0.01, "lean {:.3}", mib(m.lean_per_frame));
        assert!((mib(m.saved_per_frame) - 9.81).abs() < 0.01, "saved {:.3}", mib(m.saved_per_frame));
        let saved = plan_step(&c, 4, 16, true, ActivationMode::Saved).total();
        assert!(plan_step(&c, 4, 16, true, ActivationMode::Lean).total() < saved);
        c.train.activation_memory = ActivationMemory::Auto;
        assert_eq!(resolve_mode(&c, 4, 16, true, saved), ActivationMode::Saved);
        assert_eq!(resolve_mode(&c, 4, 16, true, saved - 1), ActivationMode::Lean);
        c.train.activation_memory = ActivationMemory::Lean;
        assert_eq!(resolve_mode(&c, 4, 16, true, u64::MAX), ActivationMode::Lean);
    }

    #[test]
    fn largest_fitting_finds_the_boundary() {
        assert_eq!(largest_fitting(100, |x| x * x <= 50), Some(7));
        assert_eq!(largest_fitting(100, |_| false), None);
        assert_eq!(largest_fitting(5, |_| true), Some(5));
    }
}
