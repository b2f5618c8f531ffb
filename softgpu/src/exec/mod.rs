//! The interpreter: runs one kernel launch over a grid, warp by warp.

mod alu;
mod block;
mod checks;
pub mod collective;
pub mod counters;
mod error;
mod grid;
mod hazards;
mod lanes;
mod memory;
pub mod numeric;
pub mod occupancy;
mod traffic;
mod warp;

pub use checks::Checks;
pub use counters::Counters;
pub use error::{ErrorSite, LaunchError};
pub use grid::{LaunchStats, launch_with_checks, launch_with_counters, launch_with_stats};
pub use occupancy::{Occupancy, RegisterTable};

use std::fmt;

/// Grid and block shape of one launch, as `cuLaunchKernel` receives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory (`.extern .shared` arrays).
    pub dynamic_shared: u32,
}

/// A global-memory access the device cannot honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemFault {
    pub addr: u64,
    pub len: usize,
    /// Why, with the nearest mapping, e.g. "unmapped (nearest: 0x7f00_0000..0x7f10_0000)".
    pub reason: String,
}

impl fmt::Display for MemFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes at {:#x}: {}", self.len, self.addr, self.reason)
    }
}

impl std::error::Error for MemFault {}

/// Device global memory as the interpreter sees it; the driver implements it.
pub trait GlobalMemory: Sync {
    /// Host address of `len` bytes at device address `addr`, after checking that the
    /// whole range lies inside one mapped, access-enabled allocation. The pointer stays
    /// valid for the rest of the launch (nothing is unmapped while a launch runs on it).
    fn resolve(&self, addr: u64, len: usize) -> Result<*mut u8, MemFault>;
}

/// Runs `kernel` over the grid of `cfg` with the packed parameter buffer `params`
/// (`kernel.params()[i]` at its offset) against device memory `mem`; returns when every
/// block has finished, or with the first failure. The checks beyond bounds and alignment
/// are those the environment sets (`Checks::from_env`: shared-memory hazards, watchdog).
///
/// With `SOFTGPU_TRACE=1` in the environment each launch prints one line to stderr —
/// `softgpu trace: <kernel> grid [x, y, z] block [x, y, z] <µs> us <n> lane-instructions`
/// — so a slow run can be broken down per kernel (`scripts/softgpu-trace.sh` sums them).
pub fn launch(
    kernel: &crate::ptx::Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &dyn GlobalMemory,
) -> Result<(), LaunchError> {
    if !tracing() {
        return launch_with_stats(kernel, cfg, params, mem).map(|_| ());
    }
    let start = std::time::Instant::now();
    let stats = launch_with_stats(kernel, cfg, params, mem)?;
    eprintln!(
        "softgpu trace: {} grid {:?} block {:?} {} us {} lane-instructions",
        kernel.name(),
        cfg.grid,
        cfg.block,
        start.elapsed().as_micros(),
        stats.lane_instructions
    );
    Ok(())
}

/// Whether `SOFTGPU_TRACE` is set to something other than empty or `0` (read once).
fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE
        .get_or_init(|| std::env::var("SOFTGPU_TRACE").is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0"))
}
