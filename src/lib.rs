//! dfengine: a training engine for deepfake video detection on hand-written CUDA
//! kernels, inside a fixed VRAM budget.

pub mod backend;
pub mod config;
pub mod data;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod profile;
pub mod rng;
pub mod tensor;
pub mod train;
