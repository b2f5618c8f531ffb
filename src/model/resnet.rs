//! The ResNet clip classifier, generic over the backend: all B×T frames of a batch go
//! through the backbone, a global average pool and the linear head give one logit per
//! frame, and the mean over each clip's T frames is the clip's logit (the head is linear,
//! so this equals the head applied to the mean feature, and the frame logits come free).
//!
//! The layers are instantiated from the same `arch::ResNetSpec` the memory planner sizes,
//! and every tensor carries torchvision's name (`conv1.weight`, `layer1.0.bn2.running_var`,
//! `layer2.0.downsample.0.weight`, `fc.bias`), in torchvision's state-dict order, so that
//! checkpoints and pretrained torchvision weights map one to one.
//!
//! Precision: the weights are FP32 masters; activations and their gradients flow in the
//! network's `activations` dtype (FP16 under mixed precision) from the input to the
//! global average pool, whose [N, C] features the FP32 head takes. For FP16 activations
//! `prepare_step` makes the FP16 copy of every convolution weight once per optimizer step
//! (forward and backward of every micro-batch read it); `release_step_weights` drops it
//! when the masters change.
//!
//! Activation memory (`ActivationMode`): "saved" keeps what PyTorch AMP's autograd keeps
//! (every convolution's output, every fused batch-norm + ReLU output — the next
//! convolution's input —, every block's output); "lean" keeps the convolution outputs but
//! the stem's, and the image (and, in a basic-block network, the first stage's input),
//! and backward recomputes the rest with the same ops the forward ran (batch norm from
//! its saved statistics, the residual add, the ReLU, the stem's max pool, and the stem's
//! convolution from the image: `StemKept`), so the gradients are the same bit for bit:
//! each block's input when its backward needs it, from the block outputs before it
//! (`Chains`). `backward` consumes the forward's cache, and frees each layer's share of it
//! as soon as that layer is done.

use super::arch::{BlockKind, ResNetSpec};
use super::footprint::ActivationMode;
use crate::backend::OpError;
use crate::backend::ops::{Backend, BnSaved, LinearGrads};
use crate::backend::params::BatchNormParams;
use crate::rng::Rng;
use crate::tensor::{DType, Shape, Tensor};

type T<B> = Tensor<<B as Backend>::Storage>;

/// Whether the optimizer updates a tensor or it is a running statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Trainable,
    Buffer,
}

/// conv (no bias) → batch norm → optional ReLU, fused where the backend fuses them.
pub struct ConvBn<B: Backend> {
    pub w: T<B>,
    /// The weight in the activations' dtype when that is not FP32, made once per step.
    w_compute: Option<T<B>>,
    pub gamma: T<B>,
    pub beta: T<B>,
    pub running_mean: T<B>,
    pub running_var: T<B>,
    pub stride: usize,
    pub pad: usize,
    pub relu: bool,
}

/// What a training-mode `ConvBn` forward keeps for its backward (its input is the
/// caller's: the previous layer's output).
pub struct ConvBnCache<B: Backend> {
    /// The convolution's output, batch norm's input.
    z: T<B>,
    /// The output, kept only when the ReLU is fused and activations are "saved" (it is
    /// the next convolution's input and masks the gradient). Without ReLU the caller may
    /// update the output in place (the residual add).
    relu_y: Option<T<B>>,
    saved: BnSaved<T<B>>,
}

impl<B: Backend> ConvBn<B> {
    /// torchvision's initialisation: Kaiming normal (fan out, ReLU gain) weights, γ = 1,
    /// β = 0, running statistics (0, 1).
    pub fn new(
        b: &B,
        rng: &mut Rng,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        relu: bool,
    ) -> Result<Self, OpError> {
        let std = (2.0 / (cout * k * k) as f32).sqrt();
        let w: Vec<f32> = (0..cout * k * k * cin).map(|_| std * rng.normal()).collect();
        Ok(ConvBn {
            w: b.tensor(Shape::from([cout, k, k, cin]), &w)?,
            w_compute: None,
            gamma: b.tensor(Shape::from([cout]), &vec![1.0; cout])?,
            beta: b.zeros(Shape::from([cout]))?,
            running_mean: b.zeros(Shape::from([cout]))?,
            running_var: b.tensor(Shape::from([cout]), &vec![1.0; cout])?,
            stride,
            pad: k / 2,
            relu,
        })
    }

    fn bn_params(&self) -> BatchNormParams {
        BatchNormParams { relu: self.relu, ..BatchNormParams::default() }
    }

    /// Makes the weight's copy in `dtype` for this step's products (none for FP32).
    fn prepare(&mut self, b: &B, dtype: DType) -> Result<(), OpError> {
        self.w_compute = if dtype == DType::F32 { None } else { Some(b.cast(&self.w, dtype)?) };
        Ok(())
    }

    /// The weight in `dtype`: the master, the step's copy, or (outside a prepared step,
    /// e.g. evaluation) a copy made for this call.
    fn weight(&self, b: &B, dtype: DType) -> Result<T<B>, OpError> {
        match &self.w_compute {
            Some(w) if w.dtype() == dtype => Ok(w.clone()),
            _ => b.cast(&self.w, dtype),
        }
    }

    pub fn forward_train(
        &mut self,
        b: &B,
        x: &T<B>,
        mode: ActivationMode,
    ) -> Result<(T<B>, ConvBnCache<B>), OpError> {
        let z = b.conv2d_fwd(x, &self.weight(b, x.dtype())?, [self.stride; 2], [self.pad; 2])?;
        let p = self.bn_params();
        let out = b.batch_norm_fwd_train(
            &z,
            &self.gamma,
            &self.beta,
            &mut self.running_mean,
            &mut self.running_var,
            &p,
        )?;
        let relu_y = (self.relu && mode == ActivationMode::Saved).then(|| out.y.clone());
        Ok((out.y, ConvBnCache { z, relu_y, saved: out.saved }))
    }

    /// The training forward's output: kept, or recomputed from the convolution's output
    /// and the saved statistics (the same bits).
    pub fn output(&self, b: &B, c: &ConvBnCache<B>) -> Result<T<B>, OpError> {
        match &c.relu_y {
            Some(y) => Ok(y.clone()),
            None => b.batch_norm_normalize(&c.z, &self.gamma, &self.beta, &c.saved, self.relu),
        }
    }

    /// The training forward's cache rebuilt from its input `x` and the statistics it
    /// saved: the convolution run again (the same bits), its batch norm's output not kept.
    fn recompute_cache(&self, b: &B, x: &T<B>, saved: &BnSaved<T<B>>) -> Result<ConvBnCache<B>, OpError> {
        let z = b.conv2d_fwd(x, &self.weight(b, x.dtype())?, [self.stride; 2], [self.pad; 2])?;
        Ok(ConvBnCache { z, relu_y: None, saved: saved.clone() })
    }

    pub fn forward_eval(&self, b: &B, x: &T<B>) -> Result<T<B>, OpError> {
        let z = b.conv2d_fwd(x, &self.weight(b, x.dtype())?, [self.stride; 2], [self.pad; 2])?;
        b.batch_norm_fwd_eval(
            &z,
            &self.gamma,
            &self.beta,
            &self.running_mean,
            &self.running_var,
            &self.bn_params(),
        )
    }

    /// The input gradient and [dw, dγ, dβ], given the forward's input `x`. Takes the
    /// output gradient `dy` so that it is freed as soon as batch norm's backward has read it.
    pub fn backward(
        &self,
        b: &B,
        dy: T<B>,
        c: ConvBnCache<B>,
        x: &T<B>,
    ) -> Result<(T<B>, [T<B>; 3]), OpError> {
        let (dz, [dgamma, dbeta]) = self.bn_backward(b, dy, c)?;
        let dw = self.weight_grad(b, x, &dz)?;
        Ok((self.input_grad(b, &dz, x)?, [dw, dgamma, dbeta]))
    }

    /// Batch norm's backward: the gradient at the convolution's output and [dγ, dβ]. The
    /// output gradient and the cache are freed as soon as it has read them, before the
    /// convolution's backward needs its input.
    fn bn_backward(&self, b: &B, dy: T<B>, c: ConvBnCache<B>) -> Result<(T<B>, [T<B>; 2]), OpError> {
        let bn = match (&c.relu_y, self.relu) {
            (None, true) => b.batch_norm_relu_bwd(&dy, &c.z, &self.gamma, &self.beta, &c.saved)?,
            (relu_y, _) => b.batch_norm_bwd(&dy, &c.z, &self.gamma, &c.saved, relu_y.as_ref())?,
        };
        drop((dy, c));
        Ok((bn.dx, [bn.dgamma, bn.dbeta]))
    }

    /// The weight gradient from the forward's input `x` and the gradient `dz` at the
    /// convolution's output.
    fn weight_grad(&self, b: &B, x: &T<B>, dz: &T<B>) -> Result<T<B>, OpError> {
        let w_dims: [usize; 4] = self.w.shape().as_array().expect("KRSC weight");
        b.conv2d_wgrad(x, dz, w_dims, [self.stride; 2], [self.pad; 2])
    }

    /// The gradient at the input `x` from the gradient `dz` at the convolution's output.
    fn input_grad(&self, b: &B, dz: &T<B>, x: &T<B>) -> Result<T<B>, OpError> {
        let x_dims: [usize; 4] = x.shape().as_array().expect("NHWC input");
        b.conv2d_dgrad(dz, &self.weight(b, dz.dtype())?, x_dims, [self.stride; 2], [self.pad; 2])
    }

    /// Visits the conv weight under `conv` and the batch norm under `bn`, in
    /// torchvision's order.
    fn visit<'a>(&'a self, conv: &str, bn: &str, f: &mut dyn FnMut(String, &'a T<B>, ParamKind)) {
        f(format!("{conv}.weight"), &self.w, ParamKind::Trainable);
        f(format!("{bn}.weight"), &self.gamma, ParamKind::Trainable);
        f(format!("{bn}.bias"), &self.beta, ParamKind::Trainable);
        f(format!("{bn}.running_mean"), &self.running_mean, ParamKind::Buffer);
        f(format!("{bn}.running_var"), &self.running_var, ParamKind::Buffer);
    }

    fn visit_mut<'a>(&'a mut self, conv: &str, bn: &str, f: &mut dyn FnMut(String, &'a mut T<B>, ParamKind)) {
        f(format!("{conv}.weight"), &mut self.w, ParamKind::Trainable);
        f(format!("{bn}.weight"), &mut self.gamma, ParamKind::Trainable);
        f(format!("{bn}.bias"), &mut self.beta, ParamKind::Trainable);
        f(format!("{bn}.running_mean"), &mut self.running_mean, ParamKind::Buffer);
        f(format!("{bn}.running_var"), &mut self.running_var, ParamKind::Buffer);
    }
}

/// A residual block: a chain of ConvBn (ReLU after each but the last; two 3×3 for the
/// basic block, 1×1 → 3×3 → 1×1 for the bottleneck), plus the shortcut (identity, or a
/// strided 1×1 conv + bn when the shape changes), then ReLU.
pub struct Block<B: Backend> {
    pub convs: Vec<ConvBn<B>>,
    pub down: Option<ConvBn<B>>,
}

pub struct BlockCache<B: Backend> {
    convs: Vec<ConvBnCache<B>>,
    down: Option<ConvBnCache<B>>,
    /// The block's output, when activations are "saved".
    out: Option<T<B>>,
}

impl<B: Backend> Block<B> {
    pub fn new(
        b: &B,
        rng: &mut Rng,
        kind: BlockKind,
        cin: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self, OpError> {
        let (shape, cout): (Vec<(usize, usize, usize, usize)>, usize) = match kind {
            BlockKind::Basic => (vec![(cin, width, 3, stride), (width, width, 3, 1)], width),
            BlockKind::Bottleneck => {
                (vec![(cin, width, 1, 1), (width, width, 3, stride), (width, 4 * width, 1, 1)], 4 * width)
            }
        };
        let last = shape.len() - 1;
        let convs = shape
            .iter()
            .enumerate()
            .map(|(i, &(ci, co, k, s))| ConvBn::new(b, rng, ci, co, k, s, i != last))
            .collect::<Result<Vec<_>, _>>()?;
        let down = if stride != 1 || cin != cout {
            Some(ConvBn::new(b, rng, cin, cout, 1, stride, false)?)
        } else {
            None
        };
        Ok(Block { convs, down })
    }

    fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn<B>> {
        self.convs.iter_mut().chain(self.down.as_mut())
    }

    /// Whether "lean" keeps the input of a stage that this block starts: when the
    /// shortcut is the identity, every output of the stage depends on it. (Only the
    /// first stage of a basic-block network has such a first block; its input, the
    /// stem's max-pool output, would be recomputed by running the stem again, which holds
    /// the network's largest tensors in the middle of backward.)
    fn keeps_input(&self) -> bool {
        self.down.is_none()
    }

    /// The block's output: relu(sum + shortcut). The shortcut is dropped once added, so
    /// that a recomputed one is freed before the ReLU's output is allocated.
    fn shortcut_sum(b: &B, mut sum: T<B>, shortcut: T<B>) -> Result<T<B>, OpError> {
        b.add_assign(&mut sum, &shortcut)?;
        drop(shortcut);
        b.relu_fwd(&sum)
    }

    pub fn forward_train(
        &mut self,
        b: &B,
        x: &T<B>,
        mode: ActivationMode,
    ) -> Result<(T<B>, BlockCache<B>), OpError> {
        let mut caches = Vec::with_capacity(self.convs.len());
        let mut h = x.clone();
        for conv in &mut self.convs {
            let (y, c) = conv.forward_train(b, &h, mode)?;
            caches.push(c);
            h = y;
        }
        let (shortcut, down_cache) = match &mut self.down {
            Some(d) => {
                let (s, c) = d.forward_train(b, x, mode)?;
                (s, Some(c))
            }
            None => (x.clone(), None),
        };
        let out = Self::shortcut_sum(b, h, shortcut)?;
        let kept = (mode == ActivationMode::Saved).then(|| out.clone());
        Ok((out, BlockCache { convs: caches, down: down_cache, out: kept }))
    }

    /// The training forward's output recomputed from the convolution outputs with the
    /// forward's own ops (the same bits). The block's input `x` is read only when the
    /// shortcut is the identity, and is consumed: a recomputed one is freed once added.
    pub fn output(&self, b: &B, x: Option<T<B>>, c: &BlockCache<B>) -> Result<T<B>, OpError> {
        let last = self.convs.len() - 1;
        let sum = self.convs[last].output(b, &c.convs[last])?;
        let shortcut = match (&self.down, &c.down) {
            (Some(d), Some(dc)) => d.output(b, dc)?,
            _ => x.expect("the input of a block whose shortcut is the identity"),
        };
        Self::shortcut_sum(b, sum, shortcut)
    }

    pub fn forward_eval(&self, b: &B, x: &T<B>) -> Result<T<B>, OpError> {
        let mut h = x.clone();
        for conv in &self.convs {
            h = conv.forward_eval(b, &h)?;
        }
        let shortcut = match &self.down {
            Some(d) => d.forward_eval(b, x)?,
            None => x.clone(),
        };
        Self::shortcut_sum(b, h, shortcut)
    }

    /// The input gradient, given the forward's output `out` (kept or `output`) and
    /// `input`, which gives the forward's input when the first convolution's backward
    /// needs it: after that convolution's batch-norm backward has freed its cache, so
    /// that a recomputed input lives no longer than it must. The block's parameter
    /// gradients are appended to `grads` in visiting order. The output gradient `dy`, the
    /// output and the cache are consumed: each is freed as soon as backward is past it.
    pub fn backward(
        &self,
        b: &B,
        dy: T<B>,
        c: BlockCache<B>,
        out: T<B>,
        input: impl FnOnce() -> Result<T<B>, OpError>,
        grads: &mut Vec<T<B>>,
    ) -> Result<T<B>, OpError> {
        let dsum = b.relu_bwd(&dy, &out)?;
        let BlockCache { convs: mut caches, down: down_cache, out: kept } = c;
        drop((dy, out, kept));
        let mut per_conv = Vec::with_capacity(self.convs.len());
        let mut dh = dsum.clone();
        for j in (1..self.convs.len()).rev() {
            let cache = caches.pop().expect("a cache per convolution");
            let input = self.convs[j - 1].output(b, &caches[j - 1])?;
            let (dx, g) = self.convs[j].backward(b, dh, cache, &input)?;
            per_conv.push(g);
            dh = dx;
        }
        let first = &self.convs[0];
        let (dz, [dgamma, dbeta]) = first.bn_backward(b, dh, caches.pop().expect("the first's cache"))?;
        let x = input()?;
        let dw = first.weight_grad(b, &x, &dz)?;
        let mut dx = first.input_grad(b, &dz, &x)?;
        drop(dz);
        per_conv.push([dw, dgamma, dbeta]);
        let down = match (&self.down, down_cache) {
            (Some(d), Some(cache)) => {
                let (dxs, g) = d.backward(b, dsum, cache, &x)?;
                b.add_assign(&mut dx, &dxs)?;
                Some(g)
            }
            _ => {
                b.add_assign(&mut dx, &dsum)?;
                None
            }
        };
        grads.extend(per_conv.into_iter().rev().flatten());
        grads.extend(down.into_iter().flatten());
        Ok(dx)
    }

    /// Visits every tensor of the block under `prefix` (e.g. `layer1.0.`), in
    /// torchvision's order.
    pub fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a T<B>, ParamKind)) {
        for (i, conv) in self.convs.iter().enumerate() {
            conv.visit(&format!("{prefix}conv{}", i + 1), &format!("{prefix}bn{}", i + 1), f);
        }
        if let Some(d) = &self.down {
            d.visit(&format!("{prefix}downsample.0"), &format!("{prefix}downsample.1"), f);
        }
    }

    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(String, &'a mut T<B>, ParamKind)) {
        for (i, conv) in self.convs.iter_mut().enumerate() {
            conv.visit_mut(&format!("{prefix}conv{}", i + 1), &format!("{prefix}bn{}", i + 1), f);
        }
        if let Some(d) = &mut self.down {
            d.visit_mut(&format!("{prefix}downsample.0"), &format!("{prefix}downsample.1"), f);
        }
    }
}

/// Clip and frame logits of a batch.
#[derive(Debug, Clone)]
pub struct Logits<S> {
    /// [B, 1]
    pub clips: Tensor<S>,
    /// [B·T, 1], the T frames of each clip consecutive.
    pub frames: Tensor<S>,
}

/// What a training forward keeps of a stage (`layer1` …) for the backward.
struct StageCache<B: Backend> {
    /// The first block's input: kept when activations are "saved", and in "lean" where
    /// the first block's shortcut is the identity (`Block::keeps_input`); otherwise
    /// backward recomputes it (`Chains`).
    input: Option<T<B>>,
    blocks: Vec<BlockCache<B>>,
}

/// Backward's block inputs. Per stage the chain x₀ … xₙ: x₀ the stage's input, xᵢ₊₁
/// block i's output and block i + 1's input. "saved" keeps them all; "lean" keeps x₀
/// alone, and only where the first block's shortcut is the identity. Block i's output is
/// relu(bn(its last convolution's output) + shortcut), the shortcut being xᵢ or a
/// convolution of the block's own (the first block of every stage but a basic-block
/// network's first): so a stage's chain is recomputed from its convolution outputs, in
/// order from its first block, and its last output is the next stage's input. Backward
/// runs the blocks in reverse and asks for xᵢ when block i's first convolution needs it;
/// a missing one is recomputed from the highest one held below it (or from the first
/// block), and of those computed on the way, the ones needed soonest are held as long as
/// they weigh no more than the convolution outputs backward has already freed
/// (`released`), so that holding them does not raise the step's peak. The others are
/// recomputed again when asked for.
struct Chains<'a, B: Backend> {
    image: &'a T<B>,
    stem: &'a StemKept<B>,
    /// Per stage, the caches of the blocks whose backward has not run yet.
    caches: Vec<Vec<BlockCache<B>>>,
    /// Per stage, x₀ … xₙ where kept or held.
    x: Vec<Vec<Option<T<B>>>>,
    /// Elements of the convolution outputs of the blocks whose backward is done.
    released: usize,
}

impl<B: Backend> BlockCache<B> {
    /// Elements of the convolution outputs kept, the shortcut's included.
    fn conv_elems(&self) -> usize {
        self.convs.iter().chain(&self.down).map(|c| c.z.numel()).sum()
    }

    /// Elements of the block's output (its last convolution's).
    fn out_elems(&self) -> usize {
        self.convs[self.convs.len() - 1].z.numel()
    }
}

/// What a training forward keeps of the stem: its cache in "saved"; in "lean" its batch
/// statistics alone, the convolution's output being run again from the image when
/// backward needs it. That output is the network's largest tensor (64 channels at half the
/// input's side: 1.53 MiB a 224² frame in FP16, more than a quarter of what ResNet-18's
/// lean kept with it), and its convolution 2.2% of a ResNet-18 step's multiply-adds (a
/// ResNet-50 runs it twice, for layer1's input and for the stem's backward: 1.9%).
enum StemKept<B: Backend> {
    Cache(ConvBnCache<B>),
    Stats(BnSaved<T<B>>),
}

impl<B: Backend> StemKept<B> {
    /// What `mode` keeps of the stem's cache; the rest is freed here.
    fn of(mode: ActivationMode, cache: ConvBnCache<B>) -> Self {
        match mode {
            ActivationMode::Saved => StemKept::Cache(cache),
            ActivationMode::Lean => StemKept::Stats(cache.saved),
        }
    }
}

/// What a training forward keeps for the backward.
pub struct ForwardCache<B: Backend> {
    /// The input in the activations' dtype (the stem's weight gradient reads it).
    image: T<B>,
    stem: StemKept<B>,
    stages: Vec<StageCache<B>>,
    last_dims: [usize; 4],
    pooled: T<B>,
}

pub struct ResNet<B: Backend> {
    pub spec: ResNetSpec,
    stem: ConvBn<B>,
    /// `layer1` … `layer4`.
    stages: [Vec<Block<B>>; 4],
    fc_w: T<B>,
    fc_b: T<B>,
    /// Frames per clip.
    pub frames: usize,
    /// The dtype of activations and their gradients (FP16 under mixed precision).
    pub activations: DType,
    /// What a training forward keeps for backward.
    pub activation_mode: ActivationMode,
}

impl<B: Backend> ResNet<B> {
    /// A freshly initialised network (torchvision's scheme; the head uniform in
    /// ±1/√features as `nn.Linear`), deterministic for `seed`.
    pub fn new(b: &B, spec: ResNetSpec, frames: usize, seed: u64) -> Result<Self, OpError> {
        let mut rng = Rng::new(seed);
        let stem = ConvBn::new(b, &mut rng, 3, spec.stem, 7, 2, true)?;
        let expansion = if spec.kind == BlockKind::Bottleneck { 4 } else { 1 };
        let mut cin = spec.stem;
        let mut stages: [Vec<Block<B>>; 4] = Default::default();
        for (s, stage) in stages.iter_mut().enumerate() {
            for i in 0..spec.blocks[s] {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                stage.push(Block::new(b, &mut rng, spec.kind, cin, spec.widths[s], stride)?);
                cin = spec.widths[s] * expansion;
            }
        }
        let features = spec.feature_channels();
        let bound = 1.0 / (features as f32).sqrt();
        let fc_w = b.tensor(Shape::from([1, features]), &rng.vec(features, -bound, bound))?;
        let fc_b = b.tensor(Shape::from([1]), &rng.vec(1, -bound, bound))?;
        Ok(ResNet {
            spec,
            stem,
            stages,
            fc_w,
            fc_b,
            frames,
            activations: DType::F32,
            activation_mode: ActivationMode::Saved,
        })
    }

    /// Every convolution of the backbone.
    fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn<B>> {
        std::iter::once(&mut self.stem).chain(self.stages.iter_mut().flatten().flat_map(Block::convs_mut))
    }

    /// Makes this step's weight copies in the activations' dtype (once per optimizer
    /// step: every micro-batch's forward and backward reads them).
    pub fn prepare_step(&mut self, b: &B) -> Result<(), OpError> {
        let dtype = self.activations;
        self.convs_mut().try_for_each(|c| c.prepare(b, dtype))
    }

    /// Drops the step's weight copies (the masters are about to change, or a step is over).
    pub fn release_step_weights(&mut self) {
        self.convs_mut().for_each(|c| c.w_compute = None);
    }

    /// The logits from the pooled features (cast to the FP32 head).
    fn head(&self, b: &B, pooled: &T<B>) -> Result<Logits<B::Storage>, OpError> {
        let frames = b.linear_fwd(pooled, &self.fc_w, &self.fc_b)?;
        let clips = b.temporal_mean_fwd(&frames, self.frames)?;
        Ok(Logits { clips, frames })
    }

    /// Training mode (batch statistics, running statistics updated) on frames
    /// `x` [B·T, H, W, 3].
    pub fn forward_train(
        &mut self,
        b: &B,
        x: &T<B>,
    ) -> Result<(Logits<B::Storage>, ForwardCache<B>), OpError> {
        let mode = self.activation_mode;
        let image = b.cast(x, self.activations)?;
        let (h0, stem) = self.stem.forward_train(b, &image, mode)?;
        let mut h = b.max_pool2d_fwd(&h0, 3, 2, 1)?;
        drop(h0);
        let stem = StemKept::of(mode, stem);
        let mut stages = Vec::with_capacity(self.stages.len());
        for stage in self.stages.iter_mut() {
            let input = (mode == ActivationMode::Saved || stage[0].keeps_input()).then(|| h.clone());
            let mut blocks = Vec::with_capacity(stage.len());
            for block in stage.iter_mut() {
                let (y, c) = block.forward_train(b, &h, mode)?;
                blocks.push(c);
                h = y;
            }
            stages.push(StageCache { input, blocks });
        }
        let last_dims: [usize; 4] = h.shape().as_array().expect("NHWC");
        let pooled = b.cast(&b.global_avg_pool_fwd(&h)?, DType::F32)?;
        let logits = self.head(b, &pooled)?;
        Ok((logits, ForwardCache { image, stem, stages, last_dims, pooled }))
    }

    /// Inference mode (running statistics).
    pub fn forward_eval(&self, b: &B, x: &T<B>) -> Result<Logits<B::Storage>, OpError> {
        let x = b.cast(x, self.activations)?;
        let mut h = b.max_pool2d_fwd(&self.stem.forward_eval(b, &x)?, 3, 2, 1)?;
        for block in self.stages.iter().flatten() {
            h = block.forward_eval(b, &h)?;
        }
        self.head(b, &b.cast(&b.global_avg_pool_fwd(&h)?, DType::F32)?)
    }

    /// The gradient of every trainable tensor, in `trainable_mut()` order, from the
    /// gradient of the loss w.r.t. the clip logits [B, 1]. Consumes the forward's cache,
    /// freeing each layer's share of it once that layer's backward is done.
    pub fn backward(&self, b: &B, dclips: &T<B>, c: ForwardCache<B>) -> Result<Vec<T<B>>, OpError> {
        let ForwardCache { image, stem, stages, last_dims, pooled } = c;
        let mut chains =
            Chains { image: &image, stem: &stem, caches: Vec::new(), x: Vec::new(), released: 0 };
        for StageCache { input, mut blocks } in stages {
            chains.x.push(std::iter::once(input).chain(blocks.iter_mut().map(|c| c.out.take())).collect());
            chains.caches.push(blocks);
        }
        // The last block's output, which masks the first gradient: recomputed before
        // anything else of backward is live.
        let last = self.stages.len() - 1;
        drop(self.block_input(b, &mut chains, last, self.stages[last].len())?);
        let dframes = b.temporal_mean_bwd(dclips, self.frames)?;
        let LinearGrads { dx: dfeatures, dw: dfc_w, db: dfc_b } =
            b.linear_bwd(&dframes, &pooled, &self.fc_w)?;
        drop((pooled, dframes));
        let mut dh = b.global_avg_pool_bwd(&b.cast(&dfeatures, self.activations)?, last_dims)?;
        drop(dfeatures);
        // Blocks run backwards; their gradients are collected per block and put back in
        // forward order at the end.
        let mut per_block = Vec::new();
        for (s, stage) in self.stages.iter().enumerate().rev() {
            for (i, block) in stage.iter().enumerate().rev() {
                let cache = chains.caches[s].pop().expect("a cache per block");
                let conv_elems = cache.conv_elems();
                let out = chains.x[s][i + 1].take().expect("kept, or held when the block above asked");
                let mut g = Vec::new();
                dh = block.backward(b, dh, cache, out, || self.block_input(b, &mut chains, s, i), &mut g)?;
                chains.released += conv_elems;
                per_block.push(g);
            }
        }
        drop(chains);
        let stem = match stem {
            StemKept::Cache(c) => c,
            StemKept::Stats(saved) => self.stem.recompute_cache(b, &image, &saved)?,
        };
        let stem_out = self.stem.output(b, &stem)?;
        let dstem = b.max_pool2d_bwd(&stem_out, &dh, 3, 2, 1)?;
        drop((stem_out, dh));
        // The image needs no gradient, and the stem computes none: with 3 input channels,
        // each a reduction over 64·7·7 taps on a tile 64 channels wide, it would cost more
        // tensor-core work than the whole forward pass (softgpu's counters: 1% of the
        // issued MACs useful).
        let (dz, [dgamma, dbeta]) = self.stem.bn_backward(b, dstem, stem)?;
        let dw = self.stem.weight_grad(b, &image, &dz)?;
        drop((dz, image));
        let mut grads = vec![dw, dgamma, dbeta];
        grads.extend(per_block.into_iter().rev().flatten());
        grads.push(dfc_w);
        grads.push(dfc_b);
        Ok(grads)
    }

    /// xᵢ of stage `s` (block i's input; i = n: the stage's output), held afterwards when
    /// i > 0: block i − 1's backward reads it next, as its output.
    fn block_input(&self, b: &B, chains: &mut Chains<B>, s: usize, i: usize) -> Result<T<B>, OpError> {
        if i == 0 {
            return self.stage_input(b, chains, s);
        }
        if let Some(x) = &chains.x[s][i] {
            return Ok(x.clone());
        }
        let x = self.recompute(b, chains, s, i)?;
        chains.x[s][i] = Some(x.clone());
        Ok(x)
    }

    /// The stem's output, normalized from its convolution's output, kept or run again
    /// from the image (and then freed before the output is returned).
    fn stem_output(&self, b: &B, image: &T<B>, kept: &StemKept<B>) -> Result<T<B>, OpError> {
        match kept {
            StemKept::Cache(c) => self.stem.output(b, c),
            StemKept::Stats(saved) => self.stem.output(b, &self.stem.recompute_cache(b, image, saved)?),
        }
    }

    /// Stage `s`'s input: kept, or the stem's max-pool output, or the previous stage's
    /// output, recomputed.
    fn stage_input(&self, b: &B, chains: &mut Chains<B>, s: usize) -> Result<T<B>, OpError> {
        match (chains.x[s][0].take(), s.checked_sub(1)) {
            (Some(x), _) => Ok(x),
            (None, None) => b.max_pool2d_fwd(&self.stem_output(b, chains.image, chains.stem)?, 3, 2, 1),
            (None, Some(prev)) => self.block_input(b, chains, prev, self.stages[prev].len()),
        }
    }

    /// xᵢ (i ≥ 1) of stage `s` recomputed from the highest one held below it, or from the
    /// stage's start, holding the ones computed on the way that `Chains` says to.
    fn recompute(&self, b: &B, chains: &mut Chains<B>, s: usize, i: usize) -> Result<T<B>, OpError> {
        let blocks = &self.stages[s];
        // What a walk computes are block outputs, all of the first's size.
        let elems = chains.caches[s][0].out_elems();
        let held: usize = chains.x[s][1..].iter().flatten().map(|x| x.numel()).sum();
        let lowest_held = i.saturating_sub(chains.released.saturating_sub(held) / elems);
        // With nothing held, the first block's output needs no input: the forward kept
        // the stage's input where it would (`keeps_input`).
        let (start, mut x) = match (0..i).rev().find(|&j| chains.x[s][j].is_some()) {
            Some(j) => (j, chains.x[s][j].clone()),
            None => (0, None),
        };
        for (k, block) in blocks.iter().enumerate().take(i).skip(start) {
            let next = block.output(b, x.take(), &chains.caches[s][k])?;
            if k + 1 < i && k + 1 >= lowest_held {
                chains.x[s][k + 1] = Some(next.clone());
            }
            x = Some(next);
        }
        Ok(x.expect("a block walked"))
    }

    /// Every tensor with its torchvision name, in state-dict order.
    pub fn visit<'a>(&'a self, f: &mut dyn FnMut(String, &'a T<B>, ParamKind)) {
        self.stem.visit("conv1", "bn1", f);
        for (s, stage) in self.stages.iter().enumerate() {
            for (i, block) in stage.iter().enumerate() {
                block.visit(&format!("layer{}.{i}.", s + 1), f);
            }
        }
        f("fc.weight".into(), &self.fc_w, ParamKind::Trainable);
        f("fc.bias".into(), &self.fc_b, ParamKind::Trainable);
    }

    pub fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(String, &'a mut T<B>, ParamKind)) {
        self.stem.visit_mut("conv1", "bn1", f);
        for (s, stage) in self.stages.iter_mut().enumerate() {
            for (i, block) in stage.iter_mut().enumerate() {
                block.visit_mut(&format!("layer{}.{i}.", s + 1), f);
            }
        }
        f("fc.weight".into(), &mut self.fc_w, ParamKind::Trainable);
        f("fc.bias".into(), &mut self.fc_b, ParamKind::Trainable);
    }

    /// (name, tensor, kind) of every tensor, in state-dict order.
    pub fn named(&self) -> Vec<(String, &T<B>, ParamKind)> {
        let mut out = Vec::new();
        self.visit(&mut |n, t, k| out.push((n, t, k)));
        out
    }

    pub fn named_mut(&mut self) -> Vec<(String, &mut T<B>, ParamKind)> {
        let mut out = Vec::new();
        self.visit_mut(&mut |n, t, k| out.push((n, t, k)));
        out
    }

    /// The trainable tensors, in the order `backward` returns their gradients.
    pub fn trainable_mut(&mut self) -> Vec<&mut T<B>> {
        self.named_mut()
            .into_iter()
            .filter(|(_, _, k)| *k == ParamKind::Trainable)
            .map(|(_, t, _)| t)
            .collect()
    }

    /// The running statistics, in state-dict order.
    pub fn buffers(&self) -> Vec<&T<B>> {
        self.named().into_iter().filter(|(_, _, k)| *k == ParamKind::Buffer).map(|(_, t, _)| t).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.named().iter().filter(|(_, _, k)| *k == ParamKind::Trainable).map(|(_, t, _)| t.numel()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::config::Backbone;

    #[test]
    fn names_and_counts_follow_torchvision() {
        let b = CpuBackend::default();
        let net = ResNet::new(&b, ResNetSpec::of(Backbone::Resnet18), 2, 0).unwrap();
        // torchvision resnet18 has 11,689,512 parameters with a 1000-way head; ours has a
        // 1-way head: 11,689,512 − 512·999 − 999.
        assert_eq!(net.parameter_count(), 11_689_512 - 512 * 999 - 999);
        let names: Vec<String> = net.named().into_iter().map(|(n, _, _)| n).collect();
        for n in ["conv1.weight", "bn1.running_var", "layer1.1.bn2.bias", "layer2.0.downsample.0.weight"] {
            assert!(names.contains(&n.to_string()), "{n} missing");
        }
        assert_eq!(names.last().map(String::as_str), Some("fc.bias"));
        let net50 = ResNet::new(&b, ResNetSpec::of(Backbone::Resnet50), 1, 0).unwrap();
        assert_eq!(net50.parameter_count(), 25_557_032 - 2048 * 999 - 999);
        assert!(net50.named().iter().any(|(n, _, _)| n == "layer4.2.conv3.weight"));
    }

    #[test]
    fn train_and_eval_agree_on_the_head_and_grads_cover_every_trainable() {
        let b = CpuBackend::default();
        let mut net = ResNet::new(&b, ResNetSpec::of(Backbone::ResnetTiny), 2, 1).unwrap();
        let mut rng = Rng::new(2);
        let x = b.tensor(Shape::from([4, 32, 32, 3]), &rng.vec(4 * 32 * 32 * 3, -1.0, 1.0)).unwrap();
        let (logits, cache) = net.forward_train(&b, &x).unwrap();
        let clips = b.to_vec(&logits.clips).unwrap();
        let frames = b.to_vec(&logits.frames).unwrap();
        assert_eq!((clips.len(), frames.len()), (2, 4));
        for c in 0..2 {
            let mean = (frames[2 * c] + frames[2 * c + 1]) / 2.0;
            assert!((clips[c] - mean).abs() < 1e-5, "clip logit is the mean of its frames");
        }
        let grads = net.backward(&b, &b.tensor(Shape::from([2, 1]), &[1.0, -1.0]).unwrap(), cache).unwrap();
        let shapes: Vec<Shape> = net.trainable_mut().iter().map(|t| t.shape().clone()).collect();
        assert_eq!(grads.iter().map(|g| g.shape().clone()).collect::<Vec<_>>(), shapes);
    }
}
