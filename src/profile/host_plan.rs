//! The host memory a training run plans besides the process itself: the batches the
//! loader makes ahead, the page-locked staging ring of `pin_memory`, and the frame cache's
//! in-memory part. What each holds follows from where the run preprocesses
//! (`train::run::preprocess_on`): batches for the GPU's kernels hold the stored u8 frames,
//! batches the loader threads preprocess hold the model's FP32 input.

use crate::config::Config;
use crate::data::cache::MEMORY_BUDGET;
use crate::model::arch::{ResNetSpec, conv_layers};
use crate::train::run::preprocess_on;
use crate::train::step::PreprocessOn;

/// Slots of the staging ring (backend/cuda/staging.rs).
const STAGING_SLOTS: u64 = 2;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostPlan {
    /// Micro-batches the loader holds ahead: `num_workers × prefetch_factor`.
    pub prefetched_batches: u64,
    /// Bytes of one of them.
    pub batch_bytes: u64,
    /// Whether they hold the stored u8 frames (for the GPU's preprocessing) rather than
    /// the FP32 input the loader threads make.
    pub stored_frames: bool,
    /// Page-locked staging (`pin_memory = true` on a GPU): each slot the size of the
    /// largest upload, a micro-batch or the largest weight tensor at load.
    pub pinned: u64,
    /// The frame cache's in-memory LRU, at most (`enable_cache`).
    pub frame_cache: u64,
}

impl HostPlan {
    /// The plan of `config` on a machine with (`gpu`) or without a GPU.
    pub fn of(config: &Config, gpu: bool) -> Self {
        let (d, l) = (&config.data, &config.dataloader);
        let frames = l.batch_size as u64 * d.max_frames as u64;
        let side = config.model.input_size as u64;
        let on = preprocess_on(config, gpu).0;
        let batch_bytes = match on {
            PreprocessOn::Device => frames * 3 * (d.frame_size as u64).pow(2),
            PreprocessOn::Host => frames * 3 * side * side * 4,
        };
        // What crosses to the device per micro-batch: the stored frames, or the input in
        // the activations' dtype (rounded on the host).
        let upload = match on {
            PreprocessOn::Device => batch_bytes,
            PreprocessOn::Host => frames * 3 * side * side * if config.train.mixed_precision { 2 } else { 4 },
        };
        let spec = ResNetSpec::of(config.model.backbone);
        let largest_weight =
            conv_layers(&spec, side as usize).iter().map(|c| c.params() as u64 * 4).max().unwrap_or(0);
        HostPlan {
            prefetched_batches: l.num_workers.max(1) as u64 * l.prefetch_factor as u64,
            batch_bytes,
            stored_frames: on == PreprocessOn::Device,
            pinned: if l.pin_memory && gpu { STAGING_SLOTS * upload.max(largest_weight) } else { 0 },
            frame_cache: if d.enable_cache { MEMORY_BUDGET as u64 } else { 0 },
        }
    }

    /// Bytes of the batches made ahead.
    pub fn prefetched(&self) -> u64 {
        self.prefetched_batches * self.batch_bytes
    }

    pub fn total(&self) -> u64 {
        self.prefetched() + self.pinned + self.frame_cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_setting_costs() {
        let mut c = Config::default();
        // A micro-batch's frames (48 MiB) larger than the largest weight tensor (ResNet-18's
        // 9 MiB), which a small batch's slots would be sized by instead.
        c.dataloader.batch_size = 16;
        c.dataloader.num_workers = 3;
        c.dataloader.prefetch_factor = 2;
        c.data.max_frames = 16;
        c.data.frame_size = 256;
        c.model.input_size = 224;
        c.data.enable_cache = false;
        c.dataloader.pin_memory = true;
        c.gpu.preprocess = crate::config::PreprocessDevice::Gpu;
        let on_gpu = HostPlan::of(&c, true);
        let frames = 16 * 16 * 3 * 256 * 256;
        assert_eq!((on_gpu.prefetched_batches, on_gpu.batch_bytes), (6, frames));
        assert_eq!(on_gpu.pinned, 2 * frames, "two slots of a micro-batch's frames");
        assert_eq!(on_gpu.frame_cache, 0);
        // No GPU: preprocessing falls back to the loader threads (FP32 input), nothing pinned.
        let on_cpu = HostPlan::of(&c, false);
        assert_eq!((on_cpu.batch_bytes, on_cpu.pinned), (16 * 16 * 3 * 224 * 224 * 4, 0));
        c.dataloader.pin_memory = false;
        c.data.enable_cache = true;
        let plan = HostPlan::of(&c, true);
        assert_eq!((plan.pinned, plan.frame_cache), (0, MEMORY_BUDGET as u64));
        assert_eq!(plan.total(), 6 * frames + MEMORY_BUDGET as u64);
    }
}
