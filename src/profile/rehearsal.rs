//! A planned training step replayed through a pool on host memory, twice: the second
//! step must need no driver map call (the pool is in steady state after the first).

use serde::Serialize;

use crate::config::Config;
use crate::memory::{HostBacking, Pool, PoolError, PoolStats};
use crate::model::footprint::{ActivationMode, PlanDevice, Schedule, replay};

#[derive(Debug, Serialize)]
pub struct Rehearsal {
    /// Stats after two identical planned steps.
    pub stats: PoolStats,
    /// Driver map calls during the second step: 0 means steady state.
    pub maps_in_second_step: u64,
    /// Set when the planned step did not fit the budget.
    pub failure: Option<String>,
}

/// Allocates the run's resident tensors (weights, optimizer state) once, then a planned
/// step's tensors twice through a pool, as a training loop would, on host memory (nothing
/// is touched, so nothing is committed).
pub fn rehearse(
    config: &Config,
    budget: u64,
    clips: u64,
    frames: u64,
    mixed: bool,
    mode: ActivationMode,
) -> Rehearsal {
    let granule = 2 << 20;
    let failed =
        |e: String| Rehearsal { stats: PoolStats::default(), maps_in_second_step: 0, failure: Some(e) };
    let mut pool = match HostBacking::reserve(budget as usize, granule) {
        Ok(b) => Pool::new(b, budget as usize),
        Err(e) => return failed(e.to_string()),
    };
    let schedule = Schedule::of(PlanDevice::ANY_GPU, config, clips, frames, mixed, mode);
    // The weights and optimizer state stay allocated for the whole run.
    let mut result: Result<(), PoolError> =
        schedule.resident.iter().try_for_each(|&bytes| pool.alloc(bytes, 0).map(drop));
    let mut maps_in_second_step = 0;
    if result.is_ok() {
        result = replay(&mut pool, &schedule.step);
        let maps_before = pool.stats().num_device_alloc;
        result = result.and_then(|_| replay(&mut pool, &schedule.step));
        maps_in_second_step = pool.stats().num_device_alloc - maps_before;
    }
    Rehearsal { maps_in_second_step, stats: pool.stats(), failure: result.err().map(|e| e.to_string()) }
}
