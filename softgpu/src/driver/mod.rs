//! The CUDA driver API subset that dfengine and cudarc call, as `extern "C"` symbols of
//! `libsoftgpu.so` (loaded as `libcuda.so`), on one software device.
//!
//! Exactly the entry points dfengine's paths reach are here (cudarc resolves each by
//! name on first use; one that is missing would panic there, so a new call shows up at
//! once). Types and values are the CUDA 13.0 ABI as cudarc 0.19's bindings have it.
//! Every call checks its arguments and returns the driver's code for what it cannot
//! honour. Everything runs synchronously: streams and events are bookkeeping.
//!
//! State is process-wide (`state`): cudarc and NVML (`crate::nvml`) share it, and so
//! do a test binary's threads.

pub mod context;
pub mod counters;
pub mod device;
pub mod diagnostic;
pub mod error;
pub mod event;
mod ffi;
mod handle;
pub mod launch;
pub mod memory;
pub mod module;
pub mod state;
pub mod stream;

pub use device::DeviceConfig;
pub use diagnostic::last_diagnostic;
pub use error::CuResult;
pub use state::configure;
