//! Checkpoints: the model's state dict in PyTorch's layout (loadable by PyTorch), the
//! optimizer's slots as `optimizer.<slot>.<param>`, and as metadata the counters, the
//! loss scaler, the best validation result and the config. Written atomically.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::optimizer::Optimizer;
use super::scaler::LossScaler;
use crate::backend::ops::Backend;
use crate::config::Config;
use crate::model::resnet::{ParamKind, ResNet};
use crate::model::weights::{
    TensorFile, WeightsError, assign, load_exact, state_dict, to_torch_layout, write_safetensors,
};

pub const FORMAT: &str = "dfengine-checkpoint-1";

/// Where a run stands: enough to continue it exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The epoch in progress (0-based).
    pub epoch: u32,
    /// Batches of that epoch already trained on.
    pub batch: usize,
    /// Optimizer steps taken (skipped ones included: the schedule counts them).
    pub step: u64,
    pub best_epoch: Option<u32>,
    pub best_val_auc: Option<f64>,
    /// Breaks ties in AUC (a separable val split gives AUC 1 at every later epoch).
    #[serde(default)]
    pub best_val_log_loss: Option<f64>,
}

impl Progress {
    /// Whether `m` beats the best validation so far: higher clip AUC, or the same AUC
    /// with a lower log loss.
    pub fn improves_on_best(&self, m: &crate::train::metrics::Metrics) -> bool {
        match (self.best_val_auc, self.best_val_log_loss) {
            (None, _) => true,
            (Some(auc), loss) => {
                m.clip_auc > auc || (m.clip_auc == auc && loss.is_none_or(|l| m.log_loss < l))
            }
        }
    }
}

pub fn save<B: Backend>(
    path: &Path,
    b: &B,
    net: &ResNet<B>,
    opt: &Optimizer<B>,
    scaler: &LossScaler,
    progress: &Progress,
    config: &Config,
) -> Result<(), WeightsError> {
    let mut tensors = state_dict(b, net)?;
    let (first, second) = opt.slot_names();
    let names: Vec<String> =
        net.named().into_iter().filter(|(_, _, k)| *k == ParamKind::Trainable).map(|(n, _, _)| n).collect();
    for (name, (m, v)) in names.iter().zip(&opt.slots) {
        tensors.insert(format!("optimizer.{first}.{name}"), to_torch_layout(m.dims(), &b.to_vec(m)?));
        if let Some(v) = v {
            tensors.insert(format!("optimizer.{second}.{name}"), to_torch_layout(v.dims(), &b.to_vec(v)?));
        }
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("progress".to_string(), json(progress)),
        ("scaler".to_string(), json(scaler)),
        ("optimizer_steps".to_string(), opt.steps.to_string()),
        ("config".to_string(), toml::to_string(config).unwrap_or_default()),
    ]);
    write_safetensors(path, &tensors, meta)
}

/// The model part of a checkpoint into `net` (for eval, predict and resume).
pub fn load_model<B: Backend>(b: &B, net: &mut ResNet<B>, file: &TensorFile) -> Result<(), WeightsError> {
    if file.meta("format")? != FORMAT {
        return Err(WeightsError::File {
            path: file.path.clone(),
            detail: format!("format {:?}, expected {FORMAT:?}", file.meta("format")?),
        });
    }
    load_exact(b, net, file)
}

/// The config a checkpoint was trained with.
pub fn config_of(file: &TensorFile) -> Result<Config, WeightsError> {
    toml::from_str(file.meta("config")?).map_err(|e| WeightsError::File {
        path: file.path.clone(),
        detail: format!("its config does not parse: {e}"),
    })
}

/// Everything for `--resume`: model, optimizer slots, scaler, progress.
pub fn load_all<B: Backend>(
    b: &B,
    net: &mut ResNet<B>,
    opt: &mut Optimizer<B>,
    file: &TensorFile,
) -> Result<(LossScaler, Progress), WeightsError> {
    load_model(b, net, file)?;
    let (first, second) = opt.slot_names();
    let names: Vec<String> =
        net.named().into_iter().filter(|(_, _, k)| *k == ParamKind::Trainable).map(|(n, _, _)| n).collect();
    for (name, (m, v)) in names.iter().zip(&mut opt.slots) {
        let value = file.get(&format!("optimizer.{first}.{name}"), m.dims())?;
        assign(b, m, &value)?;
        if let Some(v) = v {
            let value = file.get(&format!("optimizer.{second}.{name}"), v.dims())?;
            assign(b, v, &value)?;
        }
    }
    let parse = |key: &str| -> Result<serde_json::Value, WeightsError> {
        serde_json::from_str(file.meta(key)?).map_err(|e| WeightsError::File {
            path: file.path.clone(),
            detail: format!("metadata `{key}`: {e}"),
        })
    };
    let bad = |key: &str, e: serde_json::Error| WeightsError::File {
        path: file.path.clone(),
        detail: format!("metadata `{key}`: {e}"),
    };
    let scaler: LossScaler = serde_json::from_value(parse("scaler")?).map_err(|e| bad("scaler", e))?;
    let progress: Progress = serde_json::from_value(parse("progress")?).map_err(|e| bad("progress", e))?;
    opt.steps = file.meta("optimizer_steps")?.parse().map_err(|e| WeightsError::File {
        path: file.path.clone(),
        detail: format!("metadata `optimizer_steps`: {e}"),
    })?;
    Ok((scaler, progress))
}

fn json<T: Serialize>(v: &T) -> String {
    // Plain data: serialising cannot fail.
    serde_json::to_string(v).expect("plain data serialises")
}
