//! A launch: checks the configuration, then runs the grid's blocks on worker threads
//! (one per available core), each worker taking the next block index until none is left
//! or a block fails.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::block::BlockRunner;
use super::checks::Checks;
use super::counters::{Counters, Tally};
use super::error::LaunchError;
use super::warp::{LaunchCtx, Placement};
use super::{GlobalMemory, LaunchConfig};
use crate::ptx::Kernel;

/// Threads per block the device accepts (compute capability 8.0).
const MAX_THREADS_PER_BLOCK: u32 = 1024;

/// What a successful launch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchStats {
    /// Σ over executed instructions of the lanes that executed them.
    pub lane_instructions: u64,
}

fn config_error(kernel: &Kernel, message: String) -> LaunchError {
    LaunchError { kernel: kernel.name().to_string(), block: None, thread: None, site: None, message }
}

fn check_config(kernel: &Kernel, cfg: &LaunchConfig, params: &[u8]) -> Result<(), LaunchError> {
    let [bx, by, bz] = cfg.block;
    let threads = bx as u64 * by as u64 * bz as u64;
    if cfg.grid.contains(&0) || cfg.block.contains(&0) {
        return Err(config_error(
            kernel,
            format!("empty launch: grid {:?}, block {:?}", cfg.grid, cfg.block),
        ));
    }
    if threads > MAX_THREADS_PER_BLOCK as u64 {
        return Err(config_error(
            kernel,
            format!("block of {threads} threads exceeds {MAX_THREADS_PER_BLOCK}"),
        ));
    }
    let body = &kernel.body;
    if let Some(max) = body.maxntid
        && threads > max.iter().map(|&v| v as u64).product()
    {
        return Err(config_error(
            kernel,
            format!("block {:?} exceeds the kernel's .maxntid {max:?}", cfg.block),
        ));
    }
    if let Some(req) = body.reqntid
        && req != cfg.block
    {
        return Err(config_error(
            kernel,
            format!("block {:?} differs from the kernel's .reqntid {req:?}", cfg.block),
        ));
    }
    if params.len() < kernel.param_bytes() {
        return Err(config_error(
            kernel,
            format!("parameter buffer of {} bytes, the kernel reads {}", params.len(), kernel.param_bytes()),
        ));
    }
    Ok(())
}

/// Runs the launch as `launch` does, with the checks the environment sets
/// (`Checks::from_env`), and says how much it executed.
pub fn launch_with_stats(
    kernel: &Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &dyn GlobalMemory,
) -> Result<LaunchStats, LaunchError> {
    let checks = Checks::from_env().map_err(|m| config_error(kernel, m))?;
    launch_with_checks(kernel, cfg, params, mem, &checks)
}

/// Runs the launch with the given checks instead of the environment's.
pub fn launch_with_checks(
    kernel: &Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &dyn GlobalMemory,
    checks: &Checks,
) -> Result<LaunchStats, LaunchError> {
    run_grid::<false>(kernel, cfg, params, mem, checks).map(|(stats, _)| stats)
}

/// Runs the launch as `launch` does and counts what it did (exact counts, not timings;
/// see `counters`). The occupancy is unknown until `Counters::with_registers`.
pub fn launch_with_counters(
    kernel: &Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &dyn GlobalMemory,
) -> Result<Counters, LaunchError> {
    let checks = Checks::from_env().map_err(|m| config_error(kernel, m))?;
    let (stats, tally) = run_grid::<true>(kernel, cfg, params, mem, &checks)?;
    Ok(tally.finish(kernel, cfg, stats.lane_instructions))
}

/// The grid on worker threads; with `COUNT`, also the workers' merged tallies.
fn run_grid<const COUNT: bool>(
    kernel: &Kernel,
    cfg: &LaunchConfig,
    params: &[u8],
    mem: &dyn GlobalMemory,
    checks: &Checks,
) -> Result<(LaunchStats, Tally), LaunchError> {
    check_config(kernel, cfg, params)?;
    let [gx, gy, gz] = cfg.grid;
    let blocks = gx as u64 * gy as u64 * gz as u64;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(blocks as usize).max(1);
    let ctx = LaunchCtx { body: &kernel.body, params, mem, checks: *checks };
    let max = checks.max_lane_instructions;
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Lane-instructions of the finished blocks, which the watchdog's budget counts.
    let total = AtomicU64::new(0);
    // The failure of the lowest-numbered block wins, so a failing launch reports the same
    // block whatever the scheduling.
    let first_error: Mutex<Option<(u64, LaunchError)>> = Mutex::new(None);
    let tally = Mutex::new(Tally::default());
    let work = || {
        let mut runner = BlockRunner::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= blocks {
                break;
            }
            let at = Placement {
                block: cfg.block,
                block_idx: [
                    (i % gx as u64) as u32,
                    ((i / gx as u64) % gy as u64) as u32,
                    (i / (gx as u64 * gy as u64)) as u32,
                ],
                grid: cfg.grid,
            };
            // Blocks running at the same time each may use what is left when they start:
            // the watchdog is a bound against endless loops, not an exact limit.
            let budget = max.saturating_sub(total.load(Ordering::Relaxed));
            let outcome = runner.run::<COUNT>(kernel, &ctx, &at, cfg.dynamic_shared, budget).and_then(|n| {
                let sum = total.fetch_add(n, Ordering::Relaxed) + n;
                if sum <= max {
                    return Ok(());
                }
                // A launch of many short blocks: no backward branch went past the budget.
                Err(LaunchError {
                    kernel: kernel.name().to_string(),
                    block: Some(at.block_idx),
                    thread: None,
                    site: None,
                    message: format!(
                        "watchdog: the launch ran past SOFTGPU_MAX_LANE_INSTRUCTIONS = {max} lane-instructions \
                         ({sum} when this block finished)"
                    ),
                })
            });
            if let Err(e) = outcome {
                failed.store(true, Ordering::Relaxed);
                let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                    *slot = Some((i, e));
                }
            }
        }
        if COUNT {
            tally.lock().unwrap_or_else(|p| p.into_inner()).merge(&runner.tally);
        }
    };
    if workers == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok((
            LaunchStats { lane_instructions: total.into_inner() },
            tally.into_inner().unwrap_or_else(|p| p.into_inner()),
        )),
    }
}
