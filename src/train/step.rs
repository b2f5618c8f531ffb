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
use crate::config::TrainConfig;
use crate::data::loader::Batch;
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
}

/// The frames of clips `range` of `batch` as an NHWC tensor of `dtype` (rounded on the
/// host: no FP32 copy of the input on the device), and their targets [n, 1].
pub fn batch_tensors<B: Backend>(
    b: &B,
    batch: &Batch,
    range: std::ops::Range<usize>,
    dtype: DType,
) -> Result<(T<B>, T<B>), OpError> {
    let per_clip = batch.frames_per_clip * batch.side * batch.side * 3;
    let n = range.len();
    let x = b.tensor_as(
        Shape::from([n * batch.frames_per_clip, batch.side, batch.side, 3]),
        &batch.pixels[range.start * per_clip..range.end * per_clip],
        dtype,
    )?;
    let y = b.tensor(Shape::from([n, 1]), &batch.targets[range])?;
    Ok((x, y))
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
}

impl StepSettings {
    /// A step of a run with `t` at learning rate `lr` (the schedule's): `[train] grad_clip`,
    /// and BCE without pos_weight or label smoothing (no config key sets them).
    pub fn of(t: &TrainConfig, lr: f64) -> Self {
        StepSettings { lr: lr as f32, grad_clip: t.grad_clip, bce: BceParams::default() }
    }
}

/// The summed gradients of a step, one per trainable tensor, and each micro-batch's mean
/// loss with its share of the clips.
type Accumulated<B> = (Vec<T<B>>, Vec<(f64, f64)>);

/// Forward and backward over the micro-batches of `plan`; the summed gradients (scaled
/// by the loss scale) and each micro-batch's mean loss with its share of the clips.
fn accumulate<B: Backend>(
    b: &B,
    net: &mut ResNet<B>,
    batch: &Batch,
    plan: BatchPlan,
    scale: f32,
    bce: &BceParams,
) -> Result<Accumulated<B>, OpError> {
    let clips = batch.targets.len();
    let micro = plan.micro_batch.max(1) as usize;
    let mut acc: Option<Vec<T<B>>> = None;
    let mut losses = Vec::new();
    for start in (0..clips).step_by(micro) {
        let range = start..(start + micro).min(clips);
        let weight = range.len() as f32 / clips as f32;
        let (x, y) = batch_tensors(b, batch, range, net.activations)?;
        let (logits, cache) = net.forward_train(b, &x)?;
        losses.push((b.bce_with_logits_fwd(&logits.clips, &y, bce)? as f64, weight as f64));
        // Each micro-batch's mean loss weighs by its share of the clips, so that the sum
        // of the micro-batch gradients is the gradient of the effective batch's mean.
        let dlogits = b.bce_with_logits_bwd(&logits.clips, &y, bce, scale * weight)?;
        let grads = net.backward(b, &dlogits, &cache)?;
        match &mut acc {
            None => acc = Some(grads),
            Some(acc) => {
                for (a, g) in acc.iter_mut().zip(&grads) {
                    b.add_assign(a, g)?;
                }
            }
        }
    }
    Ok((acc.unwrap_or_default(), losses))
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
    let (mut grads, losses) = loop {
        match accumulate(b, net, batch, plan, scaler.scale, &s.bce) {
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
    })
}

/// Clip and frame logits of a batch in inference mode, `micro` clips at a time; an
/// allocation failure halves `micro` (kept for the next batches) and retries.
pub fn infer<B: Backend>(
    b: &B,
    net: &ResNet<B>,
    batch: &Batch,
    micro: &mut usize,
) -> Result<(Vec<f32>, Vec<f32>), OpError> {
    let clips = batch.targets.len();
    let (mut clip_logits, mut frame_logits) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < clips {
        let range = start..(start + (*micro).max(1)).min(clips);
        let attempt = batch_tensors(b, batch, range.clone(), net.activations)
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
