//! Data: the dataset index (`manifest`) and the splits a run trains on (`splits`),
//! decoding and frame sampling, the quality filter, face detection (MTCNN) and face
//! crops (`draw` shows what the detector found), the frame cache, the clip sources and
//! the loader threads that turn clips into batches, the preprocessing those batches go
//! through (the CPU twin of `kernels/preprocess.cu`), and synthetic face videos for the
//! demo and the tests.

pub mod cache;
pub mod clip;
#[cfg(feature = "video")]
pub mod decode;
pub mod detect;
pub mod draw;
pub mod face_boxes;
pub mod face_report;
pub mod faces;
pub mod image;
pub mod loader;
pub mod manifest;
pub mod preprocess;
pub mod quality;
pub mod resize;
pub mod sampling;
pub mod sources;
pub mod splits;
pub mod synth;
#[cfg(feature = "video")]
pub mod synth_video;
pub mod tracks;
