//! Data: the dataset index, frame sampling, the quality filter and face crops (more to
//! come: decoding, cache, loader).

pub mod cache;
pub mod clip;
#[cfg(feature = "video")]
pub mod decode;
pub mod faces;
pub mod loader;
pub mod manifest;
pub mod quality;
pub mod sampling;
pub mod sources;
pub mod synth;
#[cfg(feature = "video")]
pub mod synth_video;
