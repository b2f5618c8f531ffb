//! Evaluation: every clip of a split through the network in inference mode, scored as
//! clips and as frames; and the network a checkpoint holds.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::checkpoint;
use super::error::TrainError;
use super::metrics::{Metrics, sigmoid};
use super::step::{PreprocessOn, infer};
use crate::backend::ops::Backend;
use crate::config::Config;
use crate::data::loader::EpochLoader;
use crate::data::sources::ClipSource;
use crate::model::arch::ResNetSpec;
use crate::model::resnet::ResNet;
use crate::model::weights::TensorFile;

/// The evaluation of one split: metrics and per-clip scores.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub metrics: Metrics,
    /// (clip name, label, probability of fake)
    pub scores: Vec<(String, f32, f64)>,
}

/// Every clip `loader` gives (an evaluation pass over `source`) through `net` in
/// inference mode, stored frames preprocessed `on` the device or the host.
pub fn evaluate<B: Backend>(
    b: &B,
    net: &ResNet<B>,
    source: &Arc<dyn ClipSource>,
    loader: EpochLoader,
    micro: &mut usize,
    on: PreprocessOn,
) -> Result<Evaluation, TrainError> {
    let (mut clip_p, mut clip_l, mut frame_p, mut frame_l) = (vec![], vec![], vec![], vec![]);
    let mut scores = Vec::new();
    for batch in loader {
        let batch = batch?;
        let (clips, frames) = infer(b, net, &batch, micro, on)?;
        for (i, (&c, &label)) in batch.clips.iter().zip(&batch.targets).enumerate() {
            let p = sigmoid(clips[i] as f64);
            clip_p.push(p);
            clip_l.push(label as f64);
            scores.push((source.name(c), label, p));
            for f in &frames[i * batch.frames_per_clip..(i + 1) * batch.frames_per_clip] {
                frame_p.push(sigmoid(*f as f64));
                frame_l.push(label as f64);
            }
        }
    }
    Ok(Evaluation { metrics: Metrics::compute(&clip_p, &clip_l, &frame_p, &frame_l), scores })
}

/// The network a checkpoint holds, built from the config stored in it.
pub fn load_checkpoint_model<B: Backend>(b: &B, path: &Path) -> Result<(Config, ResNet<B>), TrainError> {
    let file = TensorFile::read(path)?;
    let config = checkpoint::config_of(&file)?;
    let spec = ResNetSpec::of(config.model.backbone);
    let mut net = ResNet::new(b, spec, config.data.max_frames as usize, 0)?;
    net.activations = crate::tensor::DType::activations(config.train.mixed_precision);
    checkpoint::load_model(b, &mut net, &file)?;
    Ok((config, net))
}
