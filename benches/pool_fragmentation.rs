//! Pool fragmentation and latency under a training loop whose micro-batch varies (the
//! governor shrinking it, a short last batch of an epoch): every step allocates and frees
//! the planned tensors of ResNet-18 at 224×224 with 16 frames per clip.
//!
//! Figures: (peak reserved − peak allocated) / peak reserved — the memory the pool holds
//! beyond what was ever live at once; target ≤ 5% — and host-side alloc and free latency
//! p50/p99 in steady state (the last half of the steps); target p99 < 5 µs.
//!
//! `cargo bench --bench pool_fragmentation`

use std::time::Instant;

use dfengine::config::Config;
use dfengine::memory::{Allocation, HostBacking, Pool};
use dfengine::model::footprint::{ActivationMode, PlanDevice, Schedule, StepEvent};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let config = Config::default();
    let frames = config.data.max_frames as u64;
    // Micro-batches as a run sees them: steady 6, the governor's shrink to 3 and back,
    // short last batches.
    let batches = [6u64, 6, 6, 3, 3, 6, 6, 5, 6, 6, 2, 6, 6, 6, 4, 6];
    let budget = 12usize << 30;
    let mut pool =
        Pool::new(HostBacking::reserve(budget, 2 << 20).expect("reserve 12 GiB of address space"), budget);
    let weights = pool.alloc(192 << 20, 0).expect("weights and optimizer state");
    let (mut alloc_ns, mut free_ns) = (Vec::new(), Vec::new());
    let rounds = 8;
    for round in 0..rounds {
        for &clips in &batches {
            let events =
                Schedule::of(PlanDevice::ANY_GPU, &config, clips, frames, true, ActivationMode::Saved).step;
            let mut live: Vec<Option<Allocation>> = Vec::with_capacity(events.len());
            for e in &events {
                match *e {
                    StepEvent::Alloc(bytes) => {
                        let t = Instant::now();
                        let a = pool.alloc(bytes, 0).expect("a planned step fits 12 GiB");
                        let ns = t.elapsed().as_nanos() as f64;
                        if round >= rounds / 2 {
                            alloc_ns.push(ns);
                        }
                        live.push(Some(a));
                    }
                    StepEvent::Free(i) => {
                        live.push(None);
                        let a = live[i].take().expect("each allocation is freed once");
                        let t = Instant::now();
                        pool.free(a).expect("free a live block");
                        if round >= rounds / 2 {
                            free_ns.push(t.elapsed().as_nanos() as f64);
                        }
                    }
                }
            }
        }
    }
    pool.free(weights).expect("free the weights");
    let s = pool.stats();
    let waste = (s.peak_reserved_bytes - s.peak_allocated_bytes) as f64 / s.peak_reserved_bytes as f64;
    alloc_ns.sort_by(f64::total_cmp);
    free_ns.sort_by(f64::total_cmp);
    println!(
        "pool under a varying micro-batch ({} steps, ResNet-18, 16 frames, fp16)",
        rounds * batches.len()
    );
    println!(
        "  peak reserved {:.1} MiB, peak allocated {:.1} MiB: (reserved − allocated) / reserved = {:.2}% (target ≤ 5%)",
        s.peak_reserved_bytes as f64 / (1 << 20) as f64,
        s.peak_allocated_bytes as f64 / (1 << 20) as f64,
        100.0 * waste
    );
    println!(
        "  driver calls: {} maps, {} unmaps; {} allocations, {} retries, {} out-of-memory",
        s.num_device_alloc, s.num_device_free, s.num_allocs, s.num_alloc_retries, s.num_ooms
    );
    println!(
        "  steady state: alloc p50 {:.2} µs p99 {:.2} µs, free p50 {:.2} µs p99 {:.2} µs (target p99 < 5 µs)",
        percentile(&alloc_ns, 0.5) / 1e3,
        percentile(&alloc_ns, 0.99) / 1e3,
        percentile(&free_ns, 0.5) / 1e3,
        percentile(&free_ns, 0.99) / 1e3
    );
}
