//! The typed shape of a dfengine config file: one struct per TOML table.
//!
//! Every field has a default, so a config file names only what it changes. Unknown keys
//! are rejected (`deny_unknown_fields`); ranges are checked in `validate.rs`.

use serde::{Deserialize, Serialize};

use super::bytesize::VramBudget;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub dataloader: DataloaderConfig,
    pub train: TrainConfig,
    pub gpu: GpuConfig,
}

impl Config {
    /// Clips per optimizer step: `batch_size` clips per micro-batch times
    /// `accumulation_steps` micro-batches. The governor may split it differently; it
    /// never changes it.
    pub fn effective_batch(&self) -> u32 {
        self.dataloader.batch_size * self.train.accumulation_steps
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    ResnetTiny,
    Resnet18,
    Resnet34,
    Resnet50,
}

/// The name a config file uses, e.g. `resnet_tiny`.
impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backbone::ResnetTiny => "resnet_tiny",
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet34 => "resnet34",
            Backbone::Resnet50 => "resnet50",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub backbone: Backbone,
    /// Side of the square crop the backbone sees, in pixels.
    pub input_size: u32,
    /// A torchvision-named safetensors file to start from; empty: random initialisation.
    pub pretrained: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { backbone: Backbone::Resnet18, input_size: 224, pretrained: String::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetLayout {
    /// Detect the layout from the files under `root`.
    Auto,
    /// FaceForensics++ (`original_sequences/`, `manipulated_sequences/`).
    Faceforensics,
    /// Celeb-DF v2 (`Celeb-real/`, `YouTube-real/`, `Celeb-synthesis/`).
    CelebDf,
    /// DFDC (`dfdc_train_part_*/metadata.json`).
    Dfdc,
    /// A CSV manifest `path,label[,split][,group]`.
    Csv,
    /// One folder of extracted frame images per video.
    Frames,
    /// Synthetic clips generated in memory: no files needed (the quick demo).
    Synthetic,
}

/// Where the face crops of `prepare` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaceSource {
    /// No face crops: the centre square of every frame.
    None,
    /// Sidecar boxes `<video>.faces.json` where a video has them, else the centre.
    Boxes,
    /// MTCNN on the sampled frames, linked into a track; the boxes are cached as sidecars.
    Detect,
}

/// The name a config file uses, e.g. `detect`.
impl std::fmt::Display for FaceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaceSource::None => "none",
            FaceSource::Boxes => "boxes",
            FaceSource::Detect => "detect",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub root: String,
    pub layout: DatasetLayout,
    /// Frames sampled per clip (the T of B×T).
    pub max_frames: u32,
    /// Side of the square frames kept after cropping (and stored in the cache), in pixels.
    pub frame_size: u32,
    /// Minimum variance of the Laplacian for a frame to count as sharp; 0 keeps every frame.
    pub quality_threshold: f64,
    pub enable_cache: bool,
    pub cache_dir: String,
    /// FaceForensics++ compression level: "raw", "c0", "c23" or "c40".
    pub compression: String,
    /// FaceForensics++ manipulation methods to use (folder names under
    /// `manipulated_sequences/`); empty: every method present.
    pub methods: Vec<String>,
    /// Fractions of groups (a source video and its fakes) sent to val and test where the
    /// dataset has no official split.
    pub val_fraction: f64,
    pub test_fraction: f64,
    /// Fraction of clips that may fail to load (corrupt, truncated, not a video) before
    /// an epoch stops with the list; below it they are skipped with a warning.
    pub max_bad_fraction: f64,
    /// Clips of the in-memory set when `layout = "synthetic"` (half real, half fake).
    pub synthetic_videos: u32,
    /// Artefact strength of the synthetic fakes: 0 blatant, 1 subtle.
    pub synthetic_difficulty: f64,
    /// Face crops: "detect" (MTCNN), "boxes" (sidecar files) or "none" (centre square).
    pub faces: FaceSource,
    /// Side of the square crop as a multiple of the face box's longer side.
    pub face_margin: f64,
    /// The MTCNN weights (`scripts/get-face-detector.sh` writes the default); a relative
    /// path in a config file is read from that file's folder.
    pub face_detector: String,
    /// Smallest face searched for, in pixels of the frame as detected (frames wider or
    /// taller than 960 px are detected at 1/2, 1/3, ... of their size).
    pub face_min_size: f64,
    /// Face probability needed at MTCNN's three stages (P-, R-, O-Net).
    pub face_thresholds: [f64; 3],
    /// Faces (tracks) a clip is cropped around when detecting: 1 keeps the main face; k
    /// lets the sampled frames take turns between the k heaviest tracks.
    pub faces_per_clip: u32,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: "data".into(),
            layout: DatasetLayout::Auto,
            max_frames: 16,
            frame_size: 256,
            quality_threshold: 0.0,
            enable_cache: false,
            cache_dir: "cache/frames".into(),
            compression: "c23".into(),
            methods: Vec::new(),
            val_fraction: 0.1,
            test_fraction: 0.1,
            max_bad_fraction: 0.05,
            synthetic_videos: 200,
            synthetic_difficulty: 0.3,
            faces: FaceSource::Boxes,
            face_margin: 1.3,
            face_detector: crate::model::mtcnn::DEFAULT_WEIGHTS.into(),
            face_min_size: 20.0,
            face_thresholds: [0.6, 0.7, 0.7],
            faces_per_clip: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataloaderConfig {
    /// Clips per micro-batch.
    pub batch_size: u32,
    pub num_workers: u32,
    /// Batches each worker prepares ahead.
    pub prefetch_factor: u32,
    pub persistent_workers: bool,
    /// Stage batches in page-locked host memory for asynchronous upload.
    pub pin_memory: bool,
}

impl Default for DataloaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 12,
            num_workers: 4,
            prefetch_factor: 2,
            persistent_workers: true,
            pin_memory: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: u32,
    pub lr: f64,
    pub weight_decay: f64,
    pub optimizer: OptimizerKind,
    /// f16 compute with fp32 master weights and dynamic loss scaling (GPU only).
    pub mixed_precision: bool,
    /// What a training step keeps of its activations for backward: "saved", "lean" or
    /// "auto" (the cheapest that fits the budget at the configured micro-batch).
    pub activation_memory: ActivationMemory,
    /// Micro-batches whose gradients are summed before one optimizer step.
    pub accumulation_steps: u32,
    /// Fraction of the optimizer steps spent warming the learning rate up from 0; the rest
    /// decays it along a cosine to 1% of `lr`.
    pub warmup_fraction: f64,
    /// Largest global gradient norm (L2 over all parameters); 0 turns clipping off.
    pub grad_clip: f64,
    pub seed: u64,
    pub out_dir: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            lr: 1e-4,
            weight_decay: 1e-4,
            optimizer: OptimizerKind::Adamw,
            mixed_precision: true,
            activation_memory: ActivationMemory::Auto,
            accumulation_steps: 1,
            warmup_fraction: 0.05,
            grad_clip: 1.0,
            seed: 42,
            out_dir: "runs/default".into(),
        }
    }
}

/// `[train] activation_memory`: what the forward of a training step keeps for backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationMemory {
    /// What PyTorch AMP's autograd keeps: each convolution's input and output, each batch
    /// norm's output, each residual block's output.
    Saved,
    /// Only what cannot be recomputed cheaply: the convolution outputs but the stem's, and
    /// the image (and the first stage's input of a basic-block network); batch-norm and
    /// ReLU outputs, residual sums, block outputs and max-pool outputs are recomputed from
    /// them in backward (element-wise work), and the stem's convolution is run again.
    Lean,
    /// The cheaper of the two that fits the memory budget at the configured micro-batch
    /// ("saved" when both fit: it does no recomputation).
    Auto,
}

impl std::fmt::Display for ActivationMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActivationMemory::Saved => "saved",
            ActivationMemory::Lean => "lean",
            ActivationMemory::Auto => "auto",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreprocessDevice {
    /// The preprocessing kernels, on the u8 (or I420) frames uploaded as stored; the CPU
    /// twin, with a warning, when the run has no GPU.
    Gpu,
    /// The CPU twin on the loader threads; the FP16/FP32 input is uploaded.
    Cpu,
    /// The GPU when the run is on one and the planned step, frames included, fits
    /// `vram_budget`; else the CPU. Under GPU memory pressure the governor moves it to
    /// the CPU, and back when the pressure is gone.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// CUDA device ordinal.
    pub device: u32,
    pub preprocess: PreprocessDevice,
    /// Hard cap on the device memory the pool may hold: "auto" (the card's total times
    /// gpu_threshold) or a size such as "12GiB", "11.5GB", "9000MiB".
    pub vram_budget: VramBudget,
    pub memory_management: MemoryManagementConfig,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            device: 0,
            preprocess: PreprocessDevice::Auto,
            vram_budget: VramBudget::Auto,
            memory_management: MemoryManagementConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryManagementConfig {
    /// Fraction of the card's memory (all processes) above which the governor acts.
    pub gpu_threshold: f64,
    /// Fraction of host memory above which the governor acts.
    pub cpu_threshold: f64,
    /// Seconds between memory checks by the monitor thread.
    pub auto_cleanup_interval: f64,
    pub enable_monitoring: bool,
    /// Steps between forced cleanups; 0 never forces one.
    pub force_cleanup_every: u32,
    /// Calm step boundaries (use below threshold − 5%) before the governor steps back
    /// one level.
    pub calm_steps: u32,
}

impl Default for MemoryManagementConfig {
    fn default() -> Self {
        Self {
            gpu_threshold: 0.85,
            cpu_threshold: 0.80,
            auto_cleanup_interval: 30.0,
            enable_monitoring: true,
            force_cleanup_every: 0,
            calm_steps: 50,
        }
    }
}
