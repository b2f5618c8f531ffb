//! One optimizer step over an effective batch, split into micro-batches as the governor
//! says, and one evaluation pass. An allocation failure inside a step frees the step's
//! memory (every tensor of it is dropped on the way out), restores the batch-norm
//! running statistics the failed attempt had touched, shrinks the micro-batch (doubling
//! the accumulation) and redoes the step on the same clips: the effective batch, and so
//! the update, stay what they were.

use super::optimizer::Optimizer;
use super::scaler::LossScaler;
use crate::backend::OpError;
use crate::backend::ops::Backend;
use crate::backend::params::BceParams;
use crate::backend::params::{FrameBatch, Normalize};
use crate::config::TrainConfig;
use crate::data::loader::{Batch, Pixels};
use crate::data::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use crate::memory::governor::BatchPlan;
use crate::model::resnet::ResNet;
use crate::model::weights::{HostTensor, assign};
use crate::tensor::{DType, Shape, Tensor};

type T<B> = Tensor<<B as Backend>::Storage>;

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Mean loss over the effective batch.
    pub loss: f64,
    /// The mean loss of each micro-batch, in order.
    pub micro_losses: Vec<f64>,
    /// Global gradient norm before clipping (unscaled).
    pub grad_norm: f64,
    /// Non-finite gradients: the update was skipped and the loss scale backed off.
    pub skipped: bool,
    pub plan: BatchPlan,
    /// Bytes of network input handed to the backend (what crossed to a GPU): the stored
    /// frames when the device preprocessed them, else the FP16/FP32 input.
    pub input_bytes: usize,
}

/// Where a step preprocesses a batch that arrives as stored frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreprocessOn {
    /// On the backend's device: the u8 (or I420) frames cross to it and the preprocessing
    /// kernels write the model's input there (the CPU twin on the CPU backend).
    Device,
    /// The CPU twin on the host, then the input (FP16 or FP32) crosses to the device.
    Host,
}

/// The network input of clips `range` of `batch`, NHWC in `dtype`, and the bytes handed
/// to the backend for it (what crosses to a GPU). A batch the loader preprocessed is
/// uploaded as it is (rounded to `dtype` on the host: no FP32 copy on the device).
pub fn batch_input<B: Backend>(
    b: &B,
    batch: &Batch,
    range: std::ops::Range<usize>,
    dtype: DType,
    on: PreprocessOn,
) -> Result<(T<B>, usize), OpError> {
    let frames = range.len() * batch.frames_per_clip;
    let shape = Shape::from([frames, batch.side, batch.side, 3]);
    let upload =
        |pixels: &[f32]| Ok((b.tensor_as(shape.clone(), pixels, dtype)?, pixels.len() * dtype.size()));
    match &batch.pixels {
        Pixels::Prepared(pixels) => {
            let per_clip = batch.frames_per_clip * batch.side * batch.side * 3;
            upload(&pixels[range.start * per_clip..range.end * per_clip])
        }
        Pixels::Stored(stored) if on == PreprocessOn::Host => {
            upload(&stored.preprocess_cpu(range, batch.frames_per_clip, batch.side))
        }
        Pixels::Stored(stored) => {
            let (data, ops) = stored.clips(range, batch.frames_per_clip);
            let f = FrameBatch {
                format: stored.format,
                h: stored.h,
                w: stored.w,
                data,
                ops: &ops,
                side: batch.side,
                norm: Normalize { mean: IMAGENET_MEAN, std: IMAGENET_STD },
            };
            Ok((b.preprocess(&f, dtype)?, data.len()))
        }
    }
}

/// The running statistics, to put back after a failed attempt.
fn snapshot<B: Backend>(b: &B, net: &ResNet<B>) -> Result<Vec<HostTensor>, OpError> {
    net.buffers()
        .into_iter()
        .map(|t| Ok(HostTensor { dims: t.dims().to_vec(), data: b.to_vec(t)? }))
        .collect()
}

fn restore<B: Backend>(b: &B, net: &mut ResNet<B>, saved: &[HostTensor]) -> Result<(), OpError> {
    let buffers = net
        .named_mut()
        .into_iter()
        .filter(|(_, _, k)| *k == crate::model::resnet::ParamKind::Buffer)
        .map(|(_, t, _)| t);
    for (t, v) in buffers.zip(saved) {
        assign(b, t, v)?;
    }
    Ok(())
}

/// The optimizer-side settings of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    pub lr: f32,
    pub grad_clip: f64,
    pub bce: BceParams,
    /// Where stored frames are preprocessed.
    pub preprocess: PreprocessOn,
}

impl StepSettings {
    /// A step of a run with `t` at learning rate `lr` (the schedule's): `[train] grad_clip`,
    /// and BCE without pos_weight or label smoothing (no config key sets them); stored
    /// frames preprocessed on the host (the trainer says otherwise when the run
    /// preprocesses on the GPU).
    pub fn of(t: &TrainConfig, lr: f64) -> Self {
        StepSettings {
            lr: lr as f32,
            grad_clip: t.grad_clip,
            bce: BceParams::default(),
            preprocess: PreprocessOn::Host,
        }
    }
}

/// The summed gradients of a step, one per trainable tensor, each micro-batch's mean
/// loss with its share of the clips, and the bytes of input handed to the backend.
type Accumulated<B> = (Vec<T<B>>, Vec<(f64, f64)>, usize);

/// Forward and backward over the micro-batches of `plan`; the summed gradients (scaled
/// by the loss scale) and each micro-batch's mean loss with its share of the clips.
fn accumulate<B: Backend>(
    b: &B,
    net: &mut ResNet<B>,
    batch: &Batch,
    plan: BatchPlan,
    scale: f32,
    s: &StepSettings,
) -> Result<Accumulated<B>, OpError> {
    let clips = batch.targets.len();
    let micro = plan.micro_batch.max(1) as usize;
    let mut acc: Option<Vec<T<B>>> = None;
    let mut losses = Vec::new();
    let mut input_bytes = 0;
    let bce = &s.bce;
    for start in (0..clips).step_by(micro) {
        let range = start..(start + micro).min(clips);
        let weight = range.len() as f32 / clips as f32;
        let (x, bytes) = batch_input(b, batch, range.clone(), net.activations, s.preprocess)?;
        input_bytes += bytes;
        let y = b.tensor(Shape::from([range.len(), 1]), &batch.targets[range])?;
        let (logits, cache) = net.forward_train(b, &x)?;
        losses.push((b.bce_with_logits_fwd(&logits.clips, &y, bce)? as f64, weight as f64));
        // Each micro-batch's mean loss weighs by its share of the clips, so that the sum
        // of the micro-batch gradients is the gradient of the effective batch's mean.
        let dlogits = b.bce_with_logits_bwd(&logits.clips, &y, bce, scale * weight)?;
        let grads = net.backward(b, &dlogits, cache)?;
        match &mut acc {
            None => acc = Some(grads),
            Some(acc) => {
                for (a, g) in acc.iter_mut().zip(&grads) {
                    b.add_assign(a, g)?;
                }
            }
        }
    }
    Ok((acc.unwrap_or_default(), losses, input_bytes))
}

/// One optimizer step on `batch`. On an allocation failure `on_oom` is asked for a smaller
/// plan (it returns `None` when there is none, and the error goes up); the step is then
/// redone from the start.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: Backend>(
    b: &B,
    net: &mut ResNet<B>,
    opt: &mut Optimizer<B>,
    scaler: &mut LossScaler,
    batch: &Batch,
    mut plan: BatchPlan,
    s: &StepSettings,
    mut on_oom: impl FnMut(&OpError) -> Option<BatchPlan>,
) -> Result<StepReport, OpError> {
    let saved = snapshot(b, net)?;
    net.prepare_step(b)?;
    let (mut grads, losses, input_bytes) = loop {
        match accumulate(b, net, batch, plan, scaler.scale, s) {
            Ok(r) => break r,
            Err(e @ OpError::OutOfMemory(_)) => {
                restore(b, net, &saved)?;
                plan = on_oom(&e).ok_or(e)?;
            }
            Err(e) => return Err(e),
        }
    };
    let mut finite = true;
    if scaler.scale != 1.0 {
        for g in &mut grads {
            finite &= !b.unscale_check(g, 1.0 / scaler.scale)?;
        }
    }
    let grad_norm = if s.grad_clip > 0.0 && finite {
        b.clip_grad_norm(&mut grads, s.grad_clip)?
    } else {
        b.grad_norm(&grads.iter().collect::<Vec<_>>())?
    };
    finite &= grad_norm.is_finite();
    let apply = scaler.update(finite);
    net.release_step_weights();
    if apply {
        opt.step(b, net.trainable_mut(), &grads, s.lr)?;
    }
    Ok(StepReport {
        loss: losses.iter().map(|(l, w)| l * w).sum(),
        micro_losses: losses.into_iter().map(|(l, _)| l).collect(),
        grad_norm,
        skipped: !apply,
        plan,
        input_bytes,
    })
}

/// Clip and frame logits of a batch in inference mode, `micro` clips at a time; an
/// allocation failure halves `micro` (kept for the next batches) and retries.
pub fn infer<B: Backend>(
    b: &B,
    net: &ResNet<B>,
    batch: &Batch,
    micro: &mut usize,
    on: PreprocessOn,
) -> Result<(Vec<f32>, Vec<f32>), OpError> {
    let clips = batch.targets.len();
    let (mut clip_logits, mut frame_logits) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < clips {
        let range = start..(start + (*micro).max(1)).min(clips);
        let attempt = batch_input(b, batch, range.clone(), net.activations, on)
            .and_then(|(x, _)| net.forward_eval(b, &x));
        match attempt {
            Ok(l) => {
                clip_logits.extend(b.to_vec(&l.clips)?);
                frame_logits.extend(b.to_vec(&l.frames)?);
                start = range.end;
            }
            Err(OpError::OutOfMemory(_)) if *micro > 1 => *micro /= 2,
            Err(e) => return Err(e),
        }
    }
    Ok((clip_logits, frame_logits))
}
