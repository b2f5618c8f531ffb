//! The CUDA backend. For now: finding out, without crashing, whether a usable GPU and a
//! kernel set are present.

mod probe;

pub use probe::{GpuInfo, GpuProbe, probe};
