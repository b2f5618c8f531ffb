//! The PyTorch AMP yardstick `profile` shows beside the planned activations: what
//! `benches/torch_saved_bytes.py` measured (the bytes autograd saves for backward per frame
//! of a torchvision ResNet under `torch.autocast`, and the largest micro-batch of clips in
//! its budget), read from its committed output, `benches/torch_saved_bytes.json`, at build
//! time. Rerun the script to refresh it.

use serde::{Deserialize, Serialize};

use crate::config::Backbone;

/// The script's output, as committed.
const MEASURED: &str = include_str!("../../benches/torch_saved_bytes.json");

/// Where the figures come from, as `profile` names it.
pub const SOURCE: &str = "benches/torch_saved_bytes.py";

#[derive(Deserialize)]
struct Measured {
    date: String,
    torch: String,
    autocast_dtype: String,
    side: u32,
    frames_per_clip: u64,
    budget_bytes: u64,
    models: Vec<MeasuredModel>,
}

#[derive(Deserialize)]
struct MeasuredModel {
    arch: String,
    saved_per_frame_bytes: f64,
    largest_micro_batch: u64,
}

/// PyTorch AMP's figures for one backbone and frame size.
#[derive(Debug, Clone, Serialize)]
pub struct Yardstick {
    pub source: &'static str,
    pub date: String,
    pub torch: String,
    pub autocast_dtype: String,
    pub side: u32,
    /// Bytes autograd saves per frame, at the margin (weight copies excluded).
    pub saved_per_frame: u64,
    /// The largest micro-batch of `frames_per_clip`-frame clips in `budget` bytes.
    pub largest_micro_batch: u64,
    pub frames_per_clip: u64,
    pub budget: u64,
}

/// The yardstick for `backbone` at `side`², if the script measured it.
pub fn pytorch_amp(backbone: Backbone, side: u32) -> Option<Yardstick> {
    let m: Measured = serde_json::from_str(MEASURED).ok()?;
    if m.side != side {
        return None;
    }
    let model = m.models.iter().find(|x| x.arch == backbone.to_string())?;
    Some(Yardstick {
        source: SOURCE,
        date: m.date,
        torch: m.torch,
        autocast_dtype: m.autocast_dtype,
        side,
        saved_per_frame: model.saved_per_frame_bytes.round() as u64,
        largest_micro_batch: model.largest_micro_batch,
        frames_per_clip: m.frames_per_clip,
        budget: m.budget_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_figures_parse_for_the_benched_backbones_only() {
        for b in [Backbone::Resnet18, Backbone::Resnet50] {
            let y = pytorch_amp(b, 224).expect("a yardstick");
            assert!(y.saved_per_frame > 1 << 20 && y.largest_micro_batch > 0, "{y:?}");
        }
        assert!(pytorch_amp(Backbone::Resnet18, 160).is_none());
        assert!(pytorch_amp(Backbone::ResnetTiny, 224).is_none());
    }
}
