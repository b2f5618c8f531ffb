//! The planned memory of a training step, before anything runs: the pool's peak over the
//! step and what it holds at that moment (weights, gradients, optimizer state, the
//! activations kept for backward, inputs, and the workspace: everything else live then —
//! activation gradients, recomputed outputs, kernels' scratch).
//!
//! The plan is a schedule: every allocation and free of one step in the engine's order
//! (`Schedule`), from the model's layer list, each block at the size the pool gives it, so
//! the peak is that of the step as it runs rather than a sum of worst cases. What the
//! forward keeps depends on the `ActivationMode`: "saved" keeps each convolution's output,
//! each fused batch-norm + ReLU output, each residual block's output and the stem's
//! max-pool output; "lean" keeps each convolution's output but the stem's (its convolution
//! runs again from the image in backward), and a stage's input only where its first
//! block's shortcut is the identity (the first stage of a basic-block network).
//! Backward frees each layer's share as it passes it, and holds an activation gradient,
//! the layer's recomputed input and its batch-norm gradient at once; "lean" backward
//! recomputes each block's input when the block needs it, from the block outputs before
//! it, holding those it will need next as far as the convolution outputs already freed
//! make room (resnet.rs `Chains`). On CUDA the kernels' scratch comes from the same pool
//! (`PlanDevice`). tests/mixed_precision.rs holds the plan to the pool's measured peak,
//! and `the_schedule_allocates_as_the_engine_does` the schedule to the CPU backend's
//! allocations one by one.

use super::arch::{ConvLayer, ResNetSpec, conv_layers};
use crate::backend::params::STATS_CHUNK_ROWS;
use crate::config::{ActivationMemory, Config, OptimizerKind, format_bytes};
use crate::memory::{Allocation, Backing, Pool, PoolError, rounded_size};

/// What a training forward keeps for backward, resolved from `[train] activation_memory`
/// (`ActivationMemory`, whose "auto" the planner turns into one of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationMode {
    /// What PyTorch AMP's autograd keeps.
    Saved,
    /// The convolution outputs but the stem's, and the image (and a stage's input where
    /// its first block's shortcut is the identity); the rest recomputed.
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
        // The convolution's output; "saved" also keeps the fused ReLU's output (the layers
        // that do not end a block, but the shortcuts) and each block's output (the next
        // stage's input, for a stage's last).
        let relu = l.name != "downsample" && !l.block_end;
        saved += out + if relu || l.block_end { out } else { 0 };
        lean += out;
        largest = largest.max(out).max(in_elems(l));
    }
    let stem = layers[0];
    let pooled = |x: usize| (x + 2 - 3) / 2 + 1;
    saved += (stem.cout * pooled(stem.h_out()) * pooled(stem.w_out())) as u64;
    // "lean" runs the stem's convolution again rather than keep its output, and keeps a
    // stage's input where its first block's shortcut is the identity.
    lean -= stem.out_elems() as u64;
    let identity_starts = Net::of(&spec, side).stages.into_iter().filter(|s| s[0].down.is_none());
    lean += identity_starts.map(|s| in_elems(&s[0].convs[0])).sum::<u64>();
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

/// Whose pool a plan is for. The CPU backend's pool holds tensors only (its ops' scratch,
/// im2col rows and widened copies, is heap memory); the CUDA backend's pool also holds
/// what its kernels need beside their outputs: FP16 copies of FP32 operands for the
/// tensor cores, the stem's channels padded to 8, the transposed filter of an input
/// gradient, the weight gradient's split-K partial sums and batch norm's chunk sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanDevice {
    Cpu,
    /// `sm_count` multiprocessors: the weight gradient splits its reduction to fill them.
    Cuda {
        sm_count: usize,
    },
}

impl PlanDevice {
    /// What a plan made before the device is open assumes: a GPU with as many
    /// multiprocessors as the largest current ones (an H100/H200 has 132), so that the
    /// split-K workspace is not under-planned on any card.
    pub const ANY_GPU: PlanDevice = PlanDevice::Cuda { sm_count: 132 };

    /// The pool of the open backend `b`.
    pub fn of<B: crate::backend::ops::Backend>(b: &B) -> PlanDevice {
        b.multiprocessors().map_or(PlanDevice::Cpu, |sm_count| PlanDevice::Cuda { sm_count })
    }
}

/// The footprint of one micro-batch of `clips` clips of `frames` frames keeping `mode`'s
/// activations, on a GPU (`PlanDevice::ANY_GPU`): the pool's peak over a training step
/// and what is live at that moment. `mixed` counts FP16 activations and an FP16 weight
/// copy (what both backends store under `mixed_precision`); otherwise everything is FP32.
pub fn plan_step(config: &Config, clips: u64, frames: u64, mixed: bool, mode: ActivationMode) -> Footprint {
    plan_step_on(PlanDevice::ANY_GPU, config, clips, frames, mixed, mode)
}

/// `plan_step` for the pool of `device`.
pub fn plan_step_on(
    device: PlanDevice,
    config: &Config,
    clips: u64,
    frames: u64,
    mixed: bool,
    mode: ActivationMode,
) -> Footprint {
    Schedule::of(device, config, clips, frames, mixed, mode).peak
}

/// One allocation event of a training step, in the order the step makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEvent {
    Alloc(usize),
    /// Frees the n-th event's allocation.
    Free(usize),
}

/// What a block of the pool holds: a `Footprint` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Weights,
    Gradients,
    Optimizer,
    Activations,
    Inputs,
    Workspace,
}

const PARTS: usize = 6;

impl Footprint {
    fn of_parts(bytes: [u64; PARTS]) -> Self {
        let [weights, gradients, optimizer, activations, inputs, workspace] = bytes;
        Footprint { weights, gradients, optimizer, activations, inputs, workspace }
    }
}

/// Every allocation and free of a training step, in the engine's order (model/resnet.rs,
/// train/step.rs, each op's outputs and, on CUDA, its scratch), each block at the size
/// the pool gives it (`rounded_size`).
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Made before the first step and kept for the run: the FP32 masters and running
    /// statistics, then the optimizer's state.
    pub resident: Vec<usize>,
    /// One optimizer step: the step's FP16 weight copies, the micro-batch's input,
    /// forward, loss, backward (a second micro-batch too when the step accumulates: its
    /// backward adds into the first one's gradients), then the gradients freed after the
    /// update. `Free(i)` frees `step[i]`'s block.
    pub step: Vec<StepEvent>,
    /// The pool's peak over the step (resident blocks included) and what it holds then.
    pub peak: Footprint,
}

/// A tensor of the simulated step: its `Alloc` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id(usize);

/// Bookkeeping while the schedule is built: live blocks with their references (the
/// engine's tensors share storage through `Arc`), the bytes live per part, the peak.
struct Sim {
    device: PlanDevice,
    /// Bytes of an activation element.
    act: u64,
    mode: ActivationMode,
    /// Frames in the micro-batch.
    n: u64,
    step: Vec<StepEvent>,
    /// Per step event: (bytes, part, references); frees hold zeros.
    blocks: Vec<(u64, Part, u32)>,
    live: [u64; PARTS],
    peak: [u64; PARTS],
}

impl Sim {
    fn total(parts: &[u64; PARTS]) -> u64 {
        parts.iter().sum()
    }

    fn note_peak(&mut self) {
        if Self::total(&self.live) > Self::total(&self.peak) {
            self.peak = self.live;
        }
    }

    fn resident(&mut self, resident: &mut Vec<usize>, bytes: u64, part: Part) {
        let size = rounded_size(bytes as usize);
        resident.push(size);
        self.live[part as usize] += size as u64;
        self.note_peak();
    }

    fn alloc(&mut self, bytes: u64, part: Part) -> Id {
        let size = rounded_size(bytes as usize);
        self.step.push(StepEvent::Alloc(size));
        self.blocks.push((size as u64, part, 1));
        self.live[part as usize] += size as u64;
        self.note_peak();
        Id(self.step.len() - 1)
    }

    /// An activation-dtype tensor of `elems` elements.
    fn act(&mut self, elems: u64, part: Part) -> Id {
        self.alloc(elems * self.act, part)
    }

    /// Another reference to `id` (a tensor's `clone`).
    fn retain(&mut self, id: Id) -> Id {
        self.blocks[id.0].2 += 1;
        id
    }

    /// A reference dropped; the block is freed with the last.
    fn release(&mut self, id: Id) {
        let (size, part, refs) = &mut self.blocks[id.0];
        *refs -= 1;
        if *refs == 0 {
            self.live[*part as usize] -= *size;
            self.step.push(StepEvent::Free(id.0));
            self.blocks.push((0, Part::Workspace, 0));
        }
    }

    /// `id` kept for backward: another reference, counted with the activations.
    fn keep(&mut self, id: Id) -> Id {
        let (size, part, _) = self.blocks[id.0];
        self.live[part as usize] -= size;
        self.live[Part::Activations as usize] += size;
        self.blocks[id.0].1 = Part::Activations;
        self.retain(id)
    }

    /// An op's scratch on CUDA: live beside its inputs and outputs, freed when it returns.
    fn scratch(&mut self, bytes: &[u64]) {
        if self.device == PlanDevice::Cpu {
            return;
        }
        let ids: Vec<Id> = bytes.iter().map(|&b| self.alloc(b, Part::Workspace)).collect();
        ids.into_iter().for_each(|id| self.release(id));
    }

    fn fp32_operands(&self) -> bool {
        self.act == 4
    }

    // ---- the ops, as the backends allocate for them (backend/cpu, backend/cuda) ----

    /// conv2d_fwd: the output, counted in `part` (a forward's output is kept, a
    /// recomputed one is workspace).
    fn conv_fwd(&mut self, l: &ConvLayer, part: Part) -> Id {
        let z = self.act(self.n * l.out_elems() as u64, part);
        let mut s = self.half_copies(&[self.n * in_elems(l), l.params() as u64]);
        if !l.cin.is_multiple_of(CONV_VECTOR) {
            s.push(2 * self.n * (l.h_in * l.w_in * CONV_VECTOR) as u64);
            s.push(2 * (l.cout * l.kernel * l.kernel * CONV_VECTOR) as u64);
        }
        self.scratch(&s);
        z
    }

    /// conv2d_dgrad: the input gradient (CUDA: the filter transposed in scratch).
    fn conv_dgrad(&mut self, l: &ConvLayer) -> Id {
        let dx = self.act(self.n * in_elems(l), Part::Workspace);
        let mut s = self.half_copies(&[self.n * l.out_elems() as u64, l.params() as u64]);
        s.push(2 * l.params() as u64);
        self.scratch(&s);
        dx
    }

    /// conv2d_wgrad: the FP32 weight gradient (CUDA: padded input, split-K partials).
    fn conv_wgrad(&mut self, l: &ConvLayer) -> Id {
        let dw = self.alloc(4 * l.params() as u64, Part::Gradients);
        let mut s = self.half_copies(&[self.n * in_elems(l), self.n * l.out_elems() as u64]);
        if !l.cin.is_multiple_of(CONV_VECTOR) {
            s.push(2 * self.n * (l.h_in * l.w_in * CONV_VECTOR) as u64);
        }
        if let PlanDevice::Cuda { sm_count } = self.device {
            s.extend(wgrad_workspace(l, self.n, sm_count));
        }
        self.scratch(&s);
        dw
    }

    /// FP16 copies the CUDA backend makes of FP32 tensor-core operands of `elems` each.
    fn half_copies(&self, elems: &[u64]) -> Vec<u64> {
        if self.fp32_operands() { elems.iter().map(|e| 2 * e).collect() } else { Vec::new() }
    }

    /// Batch norm's chunk partials over `elems` elements of `c` channels (f64, CUDA).
    fn bn_partials(elems: u64, c: u64) -> u64 {
        8 * (elems / c).div_ceil(STATS_CHUNK_ROWS as u64) * c
    }

    /// batch_norm_fwd_train: the output (`part`) and the saved statistics (kept).
    fn bn_fwd(&mut self, c: usize, elems: u64, part: Part) -> (Id, [Id; 2]) {
        let c = c as u64;
        let y = self.act(elems, part);
        let stats = [self.alloc(4 * c, Part::Activations), self.alloc(4 * c, Part::Activations)];
        self.scratch(&[Self::bn_partials(elems, c), 8 * c, 8 * c, 8 * c]);
        (y, stats)
    }

    /// batch_norm_bwd / batch_norm_relu_bwd: dx, and dγ, dβ.
    fn bn_bwd(&mut self, c: usize, elems: u64) -> (Id, [Id; 2]) {
        let c = c as u64;
        let dx = self.act(elems, Part::Workspace);
        let grads = [self.alloc(4 * c, Part::Gradients), self.alloc(4 * c, Part::Gradients)];
        // Σg and Σg·x̂ in one pass: two sums' partials and results at once.
        self.scratch(&[2 * Self::bn_partials(elems, c), 16 * c, 4 * c, 4 * c]);
        (dx, grads)
    }
}

/// Channels the CUDA convolutions load at a time: the stem's 3 are padded to it
/// (backend/cuda/conv.rs).
const CONV_VECTOR: usize = 8;

/// Input elements of one image of `l`.
fn in_elems(l: &ConvLayer) -> u64 {
    (l.cin * l.h_in * l.w_in) as u64
}

/// The weight gradient's split-K partial sums on a device of `sm_count` multiprocessors
/// (none when it writes the gradient directly), as backend/cuda/conv.rs plans them.
#[cfg(feature = "cuda")]
fn wgrad_workspace(l: &ConvLayer, n: u64, sm_count: usize) -> Option<u64> {
    use crate::backend::cuda::conv::WGRAD_WORKSPACE;
    use crate::backend::cuda::tiles::plan_wgrad;
    let c = l.cin.next_multiple_of(CONV_VECTOR);
    let cols = l.kernel * l.kernel * c;
    let pixels = n as usize * l.h_out() * l.w_out();
    let plan = plan_wgrad(l.cout, cols, pixels, sm_count, WGRAD_WORKSPACE);
    let direct = plan.splits == 1 && c == l.cin;
    (!direct).then(|| (4 * plan.splits * l.cout * cols) as u64)
}

/// Without the CUDA backend there is no CUDA pool to plan for.
#[cfg(not(feature = "cuda"))]
fn wgrad_workspace(_: &ConvLayer, _: u64, _: usize) -> Option<u64> {
    None
}

/// The network as the step walks it: the stem, then each stage's blocks (their
/// convolutions in order and the shortcut's), from `conv_layers`.
struct Net {
    stem: ConvLayer,
    stages: Vec<Vec<BlockLayers>>,
    /// Elements of one image after the stem's max pool.
    pooled: u64,
    /// Channels and elements of one image out of the last stage.
    features: u64,
    last: u64,
}

struct BlockLayers {
    convs: Vec<ConvLayer>,
    down: Option<ConvLayer>,
}

impl Net {
    fn of(spec: &ResNetSpec, side: usize) -> Self {
        let layers = conv_layers(spec, side);
        let stem = layers[0];
        let mut stages: Vec<Vec<BlockLayers>> = Vec::new();
        let mut rest = layers[1..].iter().peekable();
        while let Some(&first) = rest.next() {
            if first.stage_start {
                stages.push(Vec::new());
            }
            let mut convs = vec![first];
            while !convs.last().is_some_and(|l| l.block_end) {
                convs.extend(rest.next().copied());
            }
            let down = rest.next_if(|l| l.name == "downsample").copied();
            stages.last_mut().expect("a stage starts with its first block").push(BlockLayers { convs, down });
        }
        let last = *layers.iter().rfind(|l| l.name != "downsample").expect("a last convolution");
        let pooled = |x: usize| (x + 2 - 3) / 2 + 1;
        Net {
            stem,
            stages,
            pooled: (stem.cout * pooled(stem.h_out()) * pooled(stem.w_out())) as u64,
            features: last.cout as u64,
            last: last.out_elems() as u64,
        }
    }

    fn convs(&self) -> impl Iterator<Item = &ConvLayer> {
        std::iter::once(&self.stem)
            .chain(self.stages.iter().flatten().flat_map(|b| b.convs.iter().chain(b.down.as_ref())))
    }
}

/// What a convolution + batch norm keeps for backward (resnet.rs `ConvBnCache`).
struct ConvBnKept {
    z: Id,
    relu_y: Option<Id>,
    stats: [Id; 2],
}

struct BlockKept {
    convs: Vec<ConvBnKept>,
    down: Option<ConvBnKept>,
    out: Option<Id>,
}

/// resnet.rs `StemKept`: the stem's cache, or its batch statistics alone.
enum StemKept {
    Cache(ConvBnKept),
    Stats([Id; 2]),
}

struct ForwardKept {
    image: Id,
    stem: StemKept,
    stages: Vec<(Option<Id>, Vec<BlockKept>)>,
    pooled: Id,
}

/// Backward's block inputs (resnet.rs `Chains`): per stage x₀ … xₙ where kept or held,
/// the caches of the blocks whose backward has not run, and the elements of the
/// convolution outputs of those whose backward has.
struct Chains {
    stem: StemKept,
    caches: Vec<Vec<BlockKept>>,
    x: Vec<Vec<Option<Id>>>,
    released: u64,
}

impl BlockLayers {
    /// Elements of one image's convolution outputs, the shortcut's included.
    fn conv_elems(&self) -> u64 {
        self.convs.iter().chain(&self.down).map(|l| l.out_elems() as u64).sum()
    }

    /// Elements of one image's output.
    fn out_elems(&self) -> u64 {
        self.convs[self.convs.len() - 1].out_elems() as u64
    }
}

/// The model's forward and backward (model/resnet.rs), tensor for tensor.
impl Sim {
    fn conv_bn_fwd(&mut self, l: &ConvLayer, relu: bool) -> (Id, ConvBnKept) {
        let z = self.conv_fwd(l, Part::Activations);
        let kept = relu && self.mode == ActivationMode::Saved;
        let part = if kept { Part::Activations } else { Part::Workspace };
        let (y, stats) = self.bn_fwd(l.cout, self.n * l.out_elems() as u64, part);
        let relu_y = kept.then(|| self.retain(y));
        (y, ConvBnKept { z, relu_y, stats })
    }

    /// `ConvBn::output`: kept, or recomputed by `batch_norm_normalize`.
    fn conv_bn_output(&mut self, l: &ConvLayer, c: &ConvBnKept) -> Id {
        match c.relu_y {
            Some(y) => self.retain(y),
            None => self.act(self.n * l.out_elems() as u64, Part::Workspace),
        }
    }

    /// `ConvBn::bn_backward`, consuming `dy` and the cache: (dz, [dγ, dβ]).
    fn conv_bn_bn_bwd(&mut self, l: &ConvLayer, dy: Id, c: ConvBnKept) -> (Id, [Id; 2]) {
        let (dz, grads) = self.bn_bwd(l.cout, self.n * l.out_elems() as u64);
        self.release(dy);
        let ConvBnKept { z, relu_y, stats } = c;
        [z].into_iter().chain(relu_y).chain(stats).for_each(|id| self.release(id));
        (dz, grads)
    }

    /// `ConvBn::backward`: (dx, [dw, dγ, dβ]).
    fn conv_bn_bwd(&mut self, l: &ConvLayer, dy: Id, c: ConvBnKept) -> (Id, [Id; 3]) {
        let (dz, [dgamma, dbeta]) = self.conv_bn_bn_bwd(l, dy, c);
        let dw = self.conv_wgrad(l);
        let dx = self.conv_dgrad(l);
        self.release(dz);
        (dx, [dw, dgamma, dbeta])
    }

    /// `Block::shortcut_sum`: the shortcut added in place and dropped, then the ReLU's
    /// output; the sum goes when it returns.
    fn shortcut_sum(&mut self, b: &BlockLayers, sum: Id, shortcut: Id) -> Id {
        self.release(shortcut);
        let out = self.act(self.n * b.out_elems(), Part::Workspace);
        self.release(sum);
        out
    }

    fn block_fwd(&mut self, b: &BlockLayers, x: Id) -> (Id, BlockKept) {
        let last = b.convs.len() - 1;
        let mut convs = Vec::with_capacity(b.convs.len());
        let mut h = self.retain(x);
        for (i, l) in b.convs.iter().enumerate() {
            let (y, c) = self.conv_bn_fwd(l, i != last);
            convs.push(c);
            self.release(h);
            h = y;
        }
        let (shortcut, down) = match b.down {
            Some(l) => {
                let (s, c) = self.conv_bn_fwd(&l, false);
                (s, Some(c))
            }
            None => (self.retain(x), None),
        };
        let out = self.shortcut_sum(b, h, shortcut);
        let kept = (self.mode == ActivationMode::Saved).then(|| self.keep(out));
        (out, BlockKept { convs, down, out: kept })
    }

    /// `Block::output`: recomputed from the convolution outputs; `x` consumed.
    fn block_output(&mut self, b: &BlockLayers, mut x: Option<Id>, c: &BlockKept) -> Id {
        let last = b.convs.len() - 1;
        let sum = self.conv_bn_output(&b.convs[last], &c.convs[last]);
        let shortcut = match (&b.down, &c.down) {
            (Some(l), Some(dc)) => self.conv_bn_output(l, dc),
            _ => x.take().expect("the input of a block whose shortcut is the identity"),
        };
        let out = self.shortcut_sum(b, sum, shortcut);
        x.into_iter().for_each(|id| self.release(id));
        out
    }

    /// `Block::backward`, consuming `dy`, the cache and the output; `input` gives the
    /// block's input when the first convolution's weight gradient needs it.
    fn block_bwd(
        &mut self,
        b: &BlockLayers,
        dy: Id,
        c: BlockKept,
        out: Id,
        input: &mut dyn FnMut(&mut Sim) -> Id,
        grads: &mut Vec<Id>,
    ) -> Id {
        let dsum = self.act(self.n * b.out_elems(), Part::Workspace);
        let BlockKept { convs: mut caches, down, out: kept } = c;
        self.release(dy);
        self.release(out);
        kept.into_iter().for_each(|k| self.release(k));
        let mut per_conv = Vec::with_capacity(b.convs.len());
        let mut dh = self.retain(dsum);
        for j in (1..b.convs.len()).rev() {
            let cache = caches.pop().expect("a cache per convolution");
            let input = self.conv_bn_output(&b.convs[j - 1], &caches[j - 1]);
            let (dx, g) = self.conv_bn_bwd(&b.convs[j], dh, cache);
            self.release(input);
            per_conv.push(g);
            dh = dx;
        }
        let first = &b.convs[0];
        let (dz, [dgamma, dbeta]) = self.conv_bn_bn_bwd(first, dh, caches.pop().expect("the first's cache"));
        let x = input(self);
        let dw = self.conv_wgrad(first);
        let dx = self.conv_dgrad(first);
        self.release(dz);
        per_conv.push([dw, dgamma, dbeta]);
        let down = match (&b.down, down) {
            (Some(l), Some(cache)) => {
                let (dxs, g) = self.conv_bn_bwd(l, dsum, cache);
                self.release(dxs);
                Some(g)
            }
            _ => {
                self.release(dsum);
                None
            }
        };
        self.release(x);
        grads.extend(per_conv.into_iter().rev().flatten());
        grads.extend(down.into_iter().flatten());
        dx
    }

    /// `ResNet::forward_train` on the input `x` of the micro-batch: the logits (frame and
    /// clip) and what backward needs.
    fn forward(&mut self, net: &Net, x: Id, clips: u64) -> ([Id; 2], ForwardKept) {
        let image = self.retain(x);
        let (h0, stem) = self.conv_bn_fwd(&net.stem, true);
        let mut h = self.act(self.n * net.pooled, Part::Workspace);
        self.release(h0);
        let stem = match self.mode {
            ActivationMode::Saved => StemKept::Cache(stem),
            ActivationMode::Lean => {
                self.release(stem.z);
                StemKept::Stats(stem.stats)
            }
        };
        let mut stages = Vec::with_capacity(net.stages.len());
        for stage in &net.stages {
            let input = (self.mode == ActivationMode::Saved || stage[0].down.is_none()).then(|| self.keep(h));
            let mut blocks = Vec::with_capacity(stage.len());
            for b in stage {
                let (y, c) = self.block_fwd(b, h);
                blocks.push(c);
                self.release(h);
                h = y;
            }
            stages.push((input, blocks));
        }
        let gap = self.act(self.n * net.features, Part::Workspace);
        let pooled = if self.act == 4 {
            self.keep(gap)
        } else {
            self.alloc(4 * self.n * net.features, Part::Activations)
        };
        self.release(gap);
        // The FP32 head (its operands copied to FP16 on CUDA), then the mean over frames.
        let frames = self.alloc(4 * self.n, Part::Workspace);
        self.scratch(&[2 * self.n * net.features, 2 * net.features]);
        let clip_logits = self.alloc(4 * clips, Part::Workspace);
        self.release(h);
        ([frames, clip_logits], ForwardKept { image, stem, stages, pooled })
    }

    /// `ResNet::backward`: the parameter gradients.
    fn backward(&mut self, net: &Net, c: ForwardKept) -> Vec<Id> {
        let ForwardKept { image, stem, stages, pooled } = c;
        let mut chains = Chains { stem, caches: Vec::new(), x: Vec::new(), released: 0 };
        for (input, mut blocks) in stages {
            chains.x.push(std::iter::once(input).chain(blocks.iter_mut().map(|c| c.out.take())).collect());
            chains.caches.push(blocks);
        }
        let last = net.stages.len() - 1;
        let top = self.block_input(net, &mut chains, last, net.stages[last].len());
        self.release(top);
        let f = net.features;
        let dframes = self.alloc(4 * self.n, Part::Workspace);
        let fc_dx = self.alloc(4 * self.n * f, Part::Workspace);
        let fc = [self.alloc(4 * f, Part::Gradients), self.alloc(4, Part::Gradients)];
        self.scratch(&[2 * self.n, 2 * self.n * f, 2 * f]);
        self.release(pooled);
        self.release(dframes);
        let cast = (self.act != 4).then(|| self.act(self.n * f, Part::Workspace));
        let mut dh = self.act(self.n * net.last, Part::Workspace);
        cast.into_iter().for_each(|id| self.release(id));
        self.release(fc_dx);
        let mut per_block = Vec::new();
        for (s, stage) in net.stages.iter().enumerate().rev() {
            for (i, b) in stage.iter().enumerate().rev() {
                let cache = chains.caches[s].pop().expect("a cache per block");
                let out = chains.x[s][i + 1].take().expect("kept, or held when the block above asked");
                let mut g = Vec::new();
                dh = self.block_bwd(
                    b,
                    dh,
                    cache,
                    out,
                    &mut |sim| sim.block_input(net, &mut chains, s, i),
                    &mut g,
                );
                chains.released += self.n * b.conv_elems();
                per_block.push(g);
            }
        }
        let stem = match chains.stem {
            StemKept::Cache(c) => c,
            StemKept::Stats(stats) => self.stem_recompute(net, stats),
        };
        let stem_out = self.conv_bn_output(&net.stem, &stem);
        let dstem = self.act(self.n * net.stem.out_elems() as u64, Part::Workspace);
        self.release(stem_out);
        self.release(dh);
        let (dz, [dgamma, dbeta]) = self.conv_bn_bn_bwd(&net.stem, dstem, stem);
        let dw = self.conv_wgrad(&net.stem);
        self.release(dz);
        self.release(image);
        [dw, dgamma, dbeta].into_iter().chain(per_block.into_iter().rev().flatten()).chain(fc).collect()
    }

    /// `ResNet::block_input`: xᵢ of stage `s`, held afterwards when i > 0.
    fn block_input(&mut self, net: &Net, chains: &mut Chains, s: usize, i: usize) -> Id {
        if i == 0 {
            return self.stage_input(net, chains, s);
        }
        if let Some(x) = chains.x[s][i] {
            return self.retain(x);
        }
        let x = self.recompute(net, chains, s, i);
        chains.x[s][i] = Some(self.retain(x));
        x
    }

    /// `ConvBn::recompute_cache` of the stem, taking its statistics `stats`.
    fn stem_recompute(&mut self, net: &Net, stats: [Id; 2]) -> ConvBnKept {
        ConvBnKept { z: self.conv_fwd(&net.stem, Part::Workspace), relu_y: None, stats }
    }

    /// `ResNet::stem_output`: normalized from the kept or rerun convolution output.
    fn stem_output(&mut self, net: &Net, kept: &StemKept) -> Id {
        match kept {
            StemKept::Cache(c) => self.conv_bn_output(&net.stem, c),
            StemKept::Stats(stats) => {
                let stats = stats.map(|id| self.retain(id));
                let c = self.stem_recompute(net, stats);
                let out = self.conv_bn_output(&net.stem, &c);
                let ConvBnKept { z, relu_y, stats } = c;
                [z].into_iter().chain(relu_y).chain(stats).for_each(|id| self.release(id));
                out
            }
        }
    }

    /// `ResNet::stage_input`: kept, the stem's max-pool output, or the previous stage's
    /// output.
    fn stage_input(&mut self, net: &Net, chains: &mut Chains, s: usize) -> Id {
        match (chains.x[s][0].take(), s.checked_sub(1)) {
            (Some(x), _) => x,
            (None, None) => {
                let stem_out = self.stem_output(net, &chains.stem);
                let pooled = self.act(self.n * net.pooled, Part::Workspace);
                self.release(stem_out);
                pooled
            }
            (None, Some(prev)) => self.block_input(net, chains, prev, net.stages[prev].len()),
        }
    }

    /// `ResNet::recompute`: xᵢ (i ≥ 1) of stage `s` from the highest held one below it,
    /// or from the stage's start, holding those needed soonest that the released
    /// elements cover.
    fn recompute(&mut self, net: &Net, chains: &mut Chains, s: usize, i: usize) -> Id {
        let blocks = &net.stages[s];
        // At least 1: a plan of no frames (the step's constant part) walks empty tensors.
        let elems = (self.n * blocks[0].out_elems()).max(1);
        let held = chains.x[s][1..].iter().flatten().count() as u64 * elems;
        let lowest_held = i.saturating_sub((chains.released.saturating_sub(held) / elems) as usize);
        let (start, mut x) = match (0..i).rev().find(|&j| chains.x[s][j].is_some()) {
            Some(j) => (j, chains.x[s][j].map(|x| self.retain(x))),
            None => (0, None),
        };
        for (k, block) in blocks.iter().enumerate().take(i).skip(start) {
            let next = self.block_output(block, x.take(), &chains.caches[s][k]);
            if k + 1 < i && k + 1 >= lowest_held {
                chains.x[s][k + 1] = Some(self.retain(next));
            }
            x = Some(next);
        }
        x.expect("a block walked")
    }
}

impl Schedule {
    /// The schedule of a step of micro-batches of `clips` clips of `frames` frames on
    /// `device`'s pool: the run's resident tensors, then one optimizer step. The step
    /// accumulates (`[train] accumulation_steps`, or a micro-batch smaller than the
    /// effective batch) when `clips` is below the config's effective batch; its peak is
    /// then that of a second micro-batch, whose gradients join the first one's.
    pub fn of(
        device: PlanDevice,
        config: &Config,
        clips: u64,
        frames: u64,
        mixed: bool,
        mode: ActivationMode,
    ) -> Self {
        let side = config.model.input_size as u64;
        let spec = ResNetSpec::of(config.model.backbone);
        let net = Net::of(&spec, side as usize);
        let mut sim = Sim {
            device,
            act: if mixed { 2 } else { 4 },
            mode,
            n: clips * frames,
            step: Vec::new(),
            blocks: Vec::new(),
            live: [0; PARTS],
            peak: [0; PARTS],
        };
        let mut resident = Vec::new();
        // The network's tensors (FP32 masters, batch norm's γ, β and running statistics,
        // the head), then the optimizer's slots for every trainable one.
        let slots = match config.train.optimizer {
            OptimizerKind::Adamw => 2,
            OptimizerKind::Sgd => 1,
        };
        let f = net.features;
        let mut trainable: Vec<u64> = Vec::new();
        for l in net.convs() {
            let c = 4 * l.cout as u64;
            trainable.extend([4 * l.params() as u64, c, c]);
            for bytes in [4 * l.params() as u64, c, c, c, c] {
                sim.resident(&mut resident, bytes, Part::Weights);
            }
        }
        trainable.extend([4 * f, 4]);
        for bytes in [4 * f, 4] {
            sim.resident(&mut resident, bytes, Part::Weights);
        }
        for &bytes in &trainable {
            for _ in 0..slots {
                sim.resident(&mut resident, bytes, Part::Optimizer);
            }
        }
        // `ResNet::prepare_step`: the step's FP16 weight copies.
        let copies: Vec<Id> = if mixed {
            let sizes: Vec<u64> = net.convs().map(|l| 2 * l.params() as u64).collect();
            sizes.into_iter().map(|bytes| sim.alloc(bytes, Part::Weights)).collect()
        } else {
            Vec::new()
        };
        let n = clips * frames;
        let accumulating = clips < config.effective_batch() as u64;
        let mut acc: Option<Vec<Id>> = None;
        for _ in 0..if accumulating { 2 } else { 1 } {
            // The input (on CUDA preprocessed there from the frames as stored, uploaded
            // for the kernel), the targets, forward, the loss's gradient, backward.
            let x = sim.act(n * 3 * side * side, Part::Inputs);
            let stored = n * 3 * (config.data.frame_size as u64).pow(2);
            sim.scratch(&[stored]);
            let targets = sim.alloc(4 * clips, Part::Inputs);
            let (logits, cache) = sim.forward(&net, x, clips);
            sim.scratch(&[4]);
            let dlogits = sim.alloc(4 * clips, Part::Workspace);
            let grads = sim.backward(&net, cache);
            match &acc {
                None => acc = Some(grads),
                Some(_) => grads.into_iter().for_each(|g| sim.release(g)),
            }
            sim.release(dlogits);
            logits.into_iter().for_each(|id| sim.release(id));
            sim.release(targets);
            sim.release(x);
        }
        // `release_step_weights`, the update (in place), the gradients dropped.
        copies.into_iter().for_each(|id| sim.release(id));
        acc.into_iter().flatten().for_each(|g| sim.release(g));
        Schedule { resident, step: sim.step, peak: Footprint::of_parts(sim.peak) }
    }
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
    use crate::backend::cpu::CpuBackend;
    use crate::backend::ops::Backend;
    use crate::config::Backbone;
    use crate::memory::PoolEventKind;
    use crate::model::resnet::ResNet;
    use crate::tensor::{DType, Shape};

    fn resnet18() -> Config {
        let mut c = Config::default();
        c.model.backbone = Backbone::Resnet18;
        c.model.input_size = 224;
        c.data.frame_size = 224;
        c
    }

    #[test]
    fn resnet18_resident_tensors_match_its_parameter_count() {
        let c = resnet18();
        let m = model_size(&c);
        // torchvision's 11,689,512 with a 1000-way head; here the head has one output.
        assert_eq!(m.params, 11_689_512 - 512 * 999 - 999);
        let s = Schedule::of(PlanDevice::Cpu, &c, 1, 1, true, ActivationMode::Saved);
        // FP32 masters, AdamW's two slots, and batch norm's running statistics (4,800
        // channels: 9,600 of the parameters are its γ and β), each tensor rounded up to
        // the pool's 512-byte blocks.
        let (bn, head) = (9_600, 513);
        let exact = m.params * 12 + 4 * bn;
        let resident: u64 = s.resident.iter().map(|&b| b as u64).sum();
        assert!((exact..exact + 512 * s.resident.len() as u64).contains(&resident), "{resident} vs {exact}");
        // The step's FP16 copies of the convolution weights are live at the peak.
        let fp16_copies = 2 * (m.params - bn - head);
        assert!((m.params * 4 + 4 * bn + fp16_copies..resident).contains(&s.peak.weights), "{:?}", s.peak);
    }

    #[test]
    fn the_schedule_replayed_through_a_pool_peaks_where_the_plan_says() {
        let mut c = resnet18();
        c.model.input_size = 112;
        for mode in [ActivationMode::Saved, ActivationMode::Lean] {
            for (clips, mixed) in [(2, true), (12, false)] {
                let s = Schedule::of(PlanDevice::ANY_GPU, &c, clips, 4, mixed, mode);
                let mut pool =
                    Pool::new(crate::memory::HostBacking::reserve(8 << 30, 2 << 20).unwrap(), 8 << 30);
                let resident: Vec<Allocation> =
                    s.resident.iter().map(|&b| pool.alloc(b, 0).unwrap()).collect();
                replay(&mut pool, &s.step).unwrap();
                assert_eq!(pool.stats().peak_allocated_bytes as u64, s.peak.total(), "{mode}, {clips} clips");
                resident.into_iter().for_each(|a| pool.free(a).unwrap());
                assert_eq!(pool.stats().allocated_bytes, 0, "every block of the step is freed");
            }
        }
    }

    #[test]
    fn activations_at_the_peak_grow_with_the_frames_and_halve_in_fp16() {
        let c = resnet18();
        for mode in [ActivationMode::Saved, ActivationMode::Lean] {
            // At the margin of batches large enough that the peak sits early in backward.
            let per_frame = |mixed| {
                let plan = |clips| plan_step(&c, clips, 16, mixed, mode).total();
                (plan(64) - plan(32)) as f64 / (32.0 * 16.0)
            };
            let (fp16, fp32) = (per_frame(true), per_frame(false));
            // FP32 doubles every tensor, and adds the FP16 copies of the tensor cores' operands.
            let ratio = fp32 / fp16;
            assert!((1.99..2.1).contains(&ratio), "{mode}: FP32 {fp32} vs FP16 {fp16} bytes a frame");
            let m = model_size(&c);
            let kept = (2 * (m.kept_per_frame(mode) + 3 * 224 * 224)) as f64;
            // What backward holds beside the kept activations at the peak: at most two of
            // the largest layer's tensors, not a multiple of the network. (Lean's peak is
            // the stem's backward, where the stem's convolution output, its batch norm's
            // output and their gradient are live at once, and little else.)
            let largest = (2 * m.largest_per_frame) as f64;
            assert!(
                (0.0..2.0 * largest).contains(&(fp16 - kept)),
                "{mode}: peak {fp16} vs kept {kept} bytes a frame, the largest tensor {largest}"
            );
        }
    }

    #[test]
    fn lean_keeps_less_and_auto_picks_saved_only_when_it_fits() {
        let mut c = resnet18();
        let m = model_size(&c);
        // FP16 bytes a frame, the 224² input included: lean 3.88 MiB, saved 9.81 (PyTorch
        // AMP's autograd saves 12.7, issue 16).
        let mib = |elems: u64| (2 * (elems + 3 * 224 * 224)) as f64 / (1u64 << 20) as f64;
        assert!((mib(m.lean_per_frame) - 3.88).abs() < 0.01, "lean {:.3}", mib(m.lean_per_frame));
        assert!((mib(m.saved_per_frame) - 9.81).abs() < 0.01, "saved {:.3}", mib(m.saved_per_frame));
        let saved = plan_step(&c, 4, 16, true, ActivationMode::Saved).total();
        assert!(plan_step(&c, 4, 16, true, ActivationMode::Lean).total() < saved);
        c.train.activation_memory = ActivationMemory::Auto;
        assert_eq!(resolve_mode(&c, 4, 16, true, saved), ActivationMode::Saved);
        assert_eq!(resolve_mode(&c, 4, 16, true, saved - 1), ActivationMode::Lean);
        c.train.activation_memory = ActivationMemory::Lean;
        assert_eq!(resolve_mode(&c, 4, 16, true, u64::MAX), ActivationMode::Lean);
    }

    /// (size, bytes live after it) of each allocation of one training forward and
    /// backward of `backbone` on the CPU backend's pool: the input, the forward, the
    /// loss's gradient, the backward.
    fn engine_allocations(
        backbone: Backbone,
        side: usize,
        frames: usize,
        dtype: DType,
        mode: ActivationMode,
    ) -> Vec<(usize, usize)> {
        let b = CpuBackend::with_budget(1 << 30).unwrap();
        let mut net = ResNet::new(&b, ResNetSpec::of(backbone), frames, 3).unwrap();
        net.activations = dtype;
        net.activation_mode = mode;
        net.prepare_step(&b).unwrap();
        let (base, first) = {
            let pool = b.pool().lock().unwrap();
            (pool.stats().allocated_bytes, pool.timeline().last().map_or(0, |e| e.seq) + 1)
        };
        let n = frames * side * side * 3;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
        let x = b.tensor_as(Shape::from([frames, side, side, 3]), &x, dtype).unwrap();
        let (logits, cache) = net.forward_train(&b, &x).unwrap();
        let d = b.tensor(Shape::from([1, 1]), &[1.0]).unwrap();
        let grads = net.backward(&b, &d, cache).unwrap();
        drop((grads, logits, d, x));
        let pool = b.pool().lock().unwrap();
        let events = pool.timeline().filter(|e| e.seq >= first && e.kind == PoolEventKind::Alloc);
        events.map(|e| (e.bytes, e.allocated_after - base)).collect()
    }

    /// The same as the planner has it: `Sim::forward` and `Sim::backward` on one clip.
    fn planned_allocations(
        backbone: Backbone,
        side: usize,
        frames: usize,
        dtype: DType,
        mode: ActivationMode,
    ) -> Vec<(usize, usize)> {
        let net = Net::of(&ResNetSpec::of(backbone), side);
        let mut sim = Sim {
            device: PlanDevice::Cpu,
            act: dtype.size() as u64,
            mode,
            n: frames as u64,
            step: Vec::new(),
            blocks: Vec::new(),
            live: [0; PARTS],
            peak: [0; PARTS],
        };
        let x = sim.act(sim.n * 3 * (side * side) as u64, Part::Inputs);
        let (_, kept) = sim.forward(&net, x, 1);
        sim.alloc(4, Part::Workspace);
        sim.backward(&net, kept);
        let mut live = 0;
        let mut out = Vec::new();
        for e in &sim.step {
            match *e {
                StepEvent::Alloc(size) => {
                    live += size;
                    out.push((size, live));
                }
                StepEvent::Free(i) => {
                    live -= match sim.step[i] {
                        StepEvent::Alloc(size) => size,
                        StepEvent::Free(_) => unreachable!("a free frees an allocation"),
                    }
                }
            }
        }
        out
    }

    /// The schedule is the engine's step, allocation for allocation: every allocation's
    /// size and the bytes live when it is made, over one forward and backward on the CPU
    /// backend, with several blocks a stage (where "lean" backward recomputes block
    /// outputs, holds some and recomputes others again) and a first stage starting at a
    /// shortcut convolution (ResNet-50). The step peaks tests/mixed_precision.rs compares
    /// at such small sizes sit where the weight gradients outweigh the activations.
    #[test]
    fn the_schedule_allocates_as_the_engine_does() {
        for backbone in [Backbone::Resnet18, Backbone::Resnet50] {
            for dtype in [DType::F16, DType::F32] {
                for mode in [ActivationMode::Saved, ActivationMode::Lean] {
                    let engine = engine_allocations(backbone, 32, 2, dtype, mode);
                    let planned = planned_allocations(backbone, 32, 2, dtype, mode);
                    let first_difference = engine.iter().zip(&planned).position(|(e, p)| e != p);
                    assert_eq!(
                        (engine.len(), first_difference),
                        (planned.len(), None),
                        "{backbone}, {dtype}, {mode}: (size, live after) of each allocation"
                    );
                }
            }
        }
    }

    #[test]
    fn largest_fitting_finds_the_boundary() {
        assert_eq!(largest_fitting(100, |x| x * x <= 50), Some(7));
        assert_eq!(largest_fitting(100, |_| false), None);
        assert_eq!(largest_fitting(5, |_| true), Some(5));
    }
}
