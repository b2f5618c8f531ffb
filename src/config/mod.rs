//! Configs: the TOML schema, loading with provenance and overrides, validation.

mod bytesize;
mod error;
mod load;
mod schema;
mod validate;

pub use bytesize::{VramBudget, format_bytes, parse_bytes};
pub use error::ConfigError;
pub use load::{Override, ResolvedConfig, Source, load};
pub use schema::{
    ActivationMemory, Backbone, Config, DataConfig, DataloaderConfig, DatasetLayout, FaceSource, GpuConfig,
    MemoryManagementConfig, ModelConfig, OptimizerKind, PreprocessDevice, TrainConfig,
};
