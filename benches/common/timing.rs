//! Timing helpers the CPU benches share.

use std::time::{Duration, Instant};

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` over enough runs to fill ~1 s (at least 3, at most 50), after
/// one warm-up.
#[allow(dead_code)] // each bench compiles this module on its own, and not every one times closures
pub fn median_seconds(mut f: impl FnMut()) -> f64 {
    f();
    let mut runs = Vec::new();
    let start = Instant::now();
    while runs.len() < 3 || (start.elapsed() < Duration::from_secs(1) && runs.len() < 50) {
        let t = Instant::now();
        f();
        runs.push(t.elapsed().as_secs_f64());
    }
    median(runs)
}
