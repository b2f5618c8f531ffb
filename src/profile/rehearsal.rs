//! A planned training step replayed through a pool on host memory, twice: the second
//! step must need no driver map call (the pool is in steady state after the first).

use serde::Serialize;

use crate::config::Config;
use crate::memory::{HostBacking, Pool, PoolError, PoolStats};
use crate::model::footprint::{Footprint, replay, step_events};

#[derive(Debug, Serialize)]
pub struct Rehearsal {
    /// Stats after two identical planned steps.
    pub stats: PoolStats,
    /// Driver map calls during the second step: 0 means steady state.
    pub maps_in_second_step: u64,
    /// Set when the planned step did not fit the budget.
    pub failure: Option<String>,
}

/// Allocates the weights, gradients and optimizer state once, then a planned step's
/// tensors twice through a pool, as a training loop would, on host memory (nothing is
/// touched, so nothing is committed).
pub fn rehearse(config: &Config, footprint: &Footprint, budget: u64, frames: u64, mixed: bool) -> Rehearsal {
    let granule = 2 << 20;
    let failed =
        |e: String| Rehearsal { stats: PoolStats::default(), maps_in_second_step: 0, failure: Some(e) };
    let mut pool = match HostBacking::reserve(budget as usize, granule) {
        Ok(b) => Pool::new(b, budget as usize),
        Err(e) => return failed(e.to_string()),
    };
    let events = step_events(config, frames, mixed);
    // The weights, gradients and optimizer state stay allocated for the whole run.
    let mut result: Result<(), PoolError> = [footprint.weights, footprint.gradients, footprint.optimizer]
        .into_iter()
        .try_for_each(|bytes| pool.alloc(bytes as usize, 0).map(drop));
    let mut maps_in_second_step = 0;
    if result.is_ok() {
        result = replay(&mut pool, &events);
        let maps_before = pool.stats().num_device_alloc;
        result = result.and_then(|_| replay(&mut pool, &events));
        maps_in_second_step = pool.stats().num_device_alloc - maps_before;
    }
    Rehearsal { maps_in_second_step, stats: pool.stats(), failure: result.err().map(|e| e.to_string()) }
}
