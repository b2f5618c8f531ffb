//! softgpu: a software GPU for testing dfengine without one.
//!
//! Three layers, each in its folder:
//! - `ptx`: a parser for the PTX that nvcc emits for `kernels/*.cu`, decoded once into a
//!   compact IR (`ptx::Module`, `ptx::Kernel`); anything it does not know is an error
//!   naming the construct and its line.
//! - `exec`: a warp-wide interpreter of that IR (32-lane registers, active masks,
//!   reconvergence at the immediate post-dominator, blocks of a grid in parallel), with
//!   bounds- and alignment-checked global and shared memory and strict `cp.async`, and
//!   checks a real GPU does not make (`exec::Checks`): a read of shared memory the block
//!   never wrote, two warps racing on shared bytes with no `bar.sync` between them, and a
//!   watchdog that fails a launch past `SOFTGPU_MAX_LANE_INSTRUCTIONS` (an endless loop).
//! - `driver` / `nvml`: the `extern "C"` symbols cudarc and nvml-wrapper resolve with
//!   `dlsym`, on a device whose memory (plain and virtual-memory API) is host memory.
//!
//! It proves correctness, not speed: nothing it measures says anything about a real card.

pub mod driver;
pub mod exec;
pub mod nvml;
pub mod ptx;
