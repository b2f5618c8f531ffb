//! `dfengine profile`: what the machine has, what a training step of the config will
//! need, a rehearsal of that step through the pool, and what to change.

use std::time::Instant;

use serde::Serialize;

use super::backing::HostBacking;
use super::monitor::SystemSource;
use super::plan::{Footprint, largest_fitting, plan_step, replay, step_events};
use super::pool::{Pool, PoolError, PoolStats};
use super::sample::{HostMemory, usage};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{GpuInfo, GpuProbe, probe};
use crate::backend::ops::Backend;
use crate::config::{Config, VramBudget, format_bytes};
use crate::model::arch::{ResNetSpec, conv_layers};
use crate::tensor::Shape;

/// The search limit for the largest batch_size / max_frames that fit.
const SEARCH_LIMIT: u64 = 4096;

fn at_most_limit(v: u64) -> String {
    if v >= SEARCH_LIMIT { format!("{v} or more") } else { v.to_string() }
}

/// The reference card budgets are planned against when no GPU is present.
pub const REFERENCE_CARD_BYTES: u64 = 12 << 30;

#[derive(Debug, Serialize)]
pub struct DeviceReport {
    pub name: String,
    pub compute_capability: String,
    pub total: u64,
    pub used: Option<u64>,
    pub driver: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HostReport {
    pub memory: HostMemory,
    pub logical_cores: usize,
}

#[derive(Debug, Serialize)]
pub struct Rehearsal {
    /// Stats after two identical planned steps.
    pub stats: PoolStats,
    /// Driver map calls during the second step: 0 means steady state.
    pub maps_in_second_step: u64,
    /// Set when the planned step did not fit the budget.
    pub failure: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KernelFigure {
    pub what: String,
    pub gflops: f64,
}

#[derive(Debug, Serialize)]
pub struct ProfileReport {
    pub gpu: Option<DeviceReport>,
    pub gpu_missing: Option<String>,
    pub host: HostReport,
    pub budget: u64,
    pub budget_source: String,
    pub micro_batch: u64,
    pub frames: u64,
    pub mixed_precision: bool,
    pub footprint: Footprint,
    pub largest_batch_size: Option<u64>,
    pub largest_max_frames: Option<u64>,
    pub rehearsal: Rehearsal,
    pub kernels: Vec<KernelFigure>,
    pub suggestions: Vec<String>,
    pub warnings: Vec<String>,
}

fn budget_of(config: &Config, gpu: Option<&GpuInfo>) -> (u64, String) {
    let threshold = config.gpu.memory_management.gpu_threshold;
    match (config.gpu.vram_budget, gpu) {
        (VramBudget::Bytes(b), _) => (b, format!("[gpu] vram_budget = \"{}\"", config.gpu.vram_budget)),
        (VramBudget::Auto, Some(g)) => (
            (g.total_bytes as f64 * threshold) as u64,
            format!("auto: {:.0}% of {}", threshold * 100.0, format_bytes(g.total_bytes)),
        ),
        (VramBudget::Auto, None) => (
            (REFERENCE_CARD_BYTES as f64 * threshold) as u64,
            format!("auto: no GPU, so {:.0}% of a 12 GiB reference card", threshold * 100.0),
        ),
    }
}

/// Allocates the weights, gradients and optimizer state once, then a planned step's
/// tensors twice through a pool, as a training loop would, on host memory (nothing is
/// touched, so nothing is committed).
fn rehearse(config: &Config, footprint: &Footprint, budget: u64, frames: u64, mixed: bool) -> Rehearsal {
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

/// Frames in the CPU conv measurement: enough for the per-image parallelism to show.
const MEASURED_FRAMES: usize = 4;

/// GFLOP/s of the CPU conv forward on the config's first 3×3 stage layer.
fn cpu_conv_figure(config: &Config) -> Option<KernelFigure> {
    let layers = conv_layers(&ResNetSpec::of(config.model.backbone), config.model.input_size as usize);
    let l = layers.iter().find(|l| l.kernel == 3)?;
    let b = CpuBackend::default();
    let n = MEASURED_FRAMES;
    let x =
        b.tensor(Shape::from([n, l.h_in, l.w_in, l.cin]), &vec![0.5; n * l.h_in * l.w_in * l.cin]).ok()?;
    let w = b.tensor(Shape::from([l.cout, 3, 3, l.cin]), &vec![0.01; l.params()]).ok()?;
    let flops = 2.0 * (n * l.out_elems() * 9 * l.cin) as f64;
    let (mut runs, start) = (0u32, Instant::now());
    while runs < 3 || start.elapsed().as_secs_f64() < 0.2 {
        b.conv2d_fwd(&x, &w, [l.stride; 2], [l.pad(); 2]).ok()?;
        runs += 1;
    }
    let secs = start.elapsed().as_secs_f64() / runs as f64;
    Some(KernelFigure {
        what: format!(
            "CPU conv2d forward, {n} frames of {}×{}, {}→{} 3×3 ({})",
            l.h_in,
            l.w_in,
            l.cin,
            l.cout,
            b.name()
        ),
        gflops: flops / secs / 1e9,
    })
}

pub fn profile(config: &Config) -> ProfileReport {
    let gpu_probe = probe();
    let gpu_info = match &gpu_probe {
        GpuProbe::Ready(list) => list.iter().find(|g| g.ordinal == config.gpu.device).cloned(),
        GpuProbe::Unavailable(_) => None,
    };
    let mut source = SystemSource::new(gpu_info.as_ref().map(|g| g.ordinal));
    let sample = super::monitor::MemorySource::sample(&mut source, 0.0);
    let host = sample.host;
    let gpu = gpu_info.as_ref().map(|g| DeviceReport {
        name: g.name.clone(),
        compute_capability: format!("sm_{}{}", g.compute_capability.0, g.compute_capability.1),
        total: g.total_bytes,
        used: sample.gpu.map(|m| m.used),
        driver: source.driver_version(),
    });
    let gpu_missing = match (&gpu_probe, &gpu_info) {
        (GpuProbe::Unavailable(why), _) => Some(why.clone()),
        (GpuProbe::Ready(_), None) => Some(format!("no GPU with ordinal {}", config.gpu.device)),
        _ => None,
    };
    let (budget, budget_source) = budget_of(config, gpu_info.as_ref());
    let mixed = config.train.mixed_precision;
    let (batch, frames) = (config.dataloader.batch_size as u64, config.data.max_frames as u64);
    let footprint = plan_step(config, batch, frames, mixed);
    let fits = |clips: u64, frames: u64| plan_step(config, clips, frames, mixed).total() <= budget;
    let largest_batch_size = largest_fitting(SEARCH_LIMIT, |b| fits(b, frames));
    let largest_max_frames = largest_fitting(SEARCH_LIMIT, |f| fits(batch, f));
    let rehearsal = rehearse(config, &footprint, budget, batch * frames, mixed);
    let kernels = cpu_conv_figure(config).into_iter().collect();
    let logical_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let mut suggestions = Vec::new();
    let mut warnings = Vec::new();
    let total = footprint.total();
    if total > budget {
        warnings.push(format!(
            "a step of batch_size = {batch} × max_frames = {frames} plans {} against a budget of {}: it does not fit",
            format_bytes(total),
            format_bytes(budget)
        ));
    }
    match largest_batch_size {
        Some(b) => {
            let effective = batch * config.train.accumulation_steps as u64;
            let accumulation = effective.div_ceil(b.min(effective).max(1));
            suggestions.push(format!(
                "largest batch_size at max_frames = {frames}: {} (planned {}); for the effective batch {effective} use batch_size = {} with accumulation_steps = {accumulation}",
                at_most_limit(b),
                format_bytes(plan_step(config, b, frames, mixed).total()),
                effective.div_ceil(accumulation)
            ));
        }
        None => warnings.push(format!(
            "even batch_size = 1 at max_frames = {frames} exceeds the budget {}: lower max_frames or input_size",
            format_bytes(budget)
        )),
    }
    if let Some(f) = largest_max_frames {
        suggestions.push(format!("largest max_frames at batch_size = {batch}: {}", at_most_limit(f)));
    }
    if !mixed && gpu.is_some() {
        let with = largest_fitting(SEARCH_LIMIT, |b| plan_step(config, b, frames, true).total() <= budget);
        suggestions.push(format!(
            "mixed_precision = true halves activation memory (largest batch_size would be {})",
            with.map_or("none".to_string(), at_most_limit)
        ));
    }
    let raw_batch = batch * frames * 3 * (config.data.frame_size as u64).pow(2);
    let prefetched =
        raw_batch * config.dataloader.prefetch_factor as u64 * config.dataloader.num_workers.max(1) as u64;
    let available = host.total.saturating_sub(host.used);
    let by_ram = (available / 4 / (raw_batch * config.dataloader.prefetch_factor as u64).max(1)) as usize;
    let workers = (logical_cores.saturating_sub(1)).clamp(1, 8).min(by_ram.max(1));
    if config.dataloader.num_workers as usize != workers {
        suggestions.push(format!(
            "num_workers = {workers} ({logical_cores} cores; prefetched batches would take {} of {} available host memory at the configured {})",
            format_bytes(raw_batch * config.dataloader.prefetch_factor as u64 * workers as u64),
            format_bytes(available),
            config.dataloader.num_workers
        ));
    }
    if config.dataloader.pin_memory && prefetched > available / 10 {
        warnings.push(format!(
            "pin_memory = true would pin {} of prefetched batches, more than 10% of the {} available: set pin_memory = false",
            format_bytes(prefetched),
            format_bytes(available)
        ));
    }
    if config.data.enable_cache {
        let per_video = frames * 3 * (config.data.frame_size as u64).pow(2);
        suggestions.push(format!(
            "the frame cache holds {} per video at frame_size = {}: {} for FaceForensics++ (5,000 videos), {} for DFDC (119,000); disable it (enable_cache = false) when that exceeds your disk",
            format_bytes(per_video),
            config.data.frame_size,
            format_bytes(per_video * 5_000),
            format_bytes(per_video * 119_000)
        ));
    }
    if let Some(f) = &rehearsal.failure {
        warnings.push(format!("the pool rehearsal of one step failed: {f}"));
    }

    ProfileReport {
        gpu,
        gpu_missing,
        host: HostReport { memory: host, logical_cores },
        budget,
        budget_source,
        micro_batch: batch,
        frames,
        mixed_precision: mixed,
        footprint,
        largest_batch_size,
        largest_max_frames,
        rehearsal,
        kernels,
        suggestions,
        warnings,
    }
}

impl ProfileReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line("GPU".into());
        match (&self.gpu, &self.gpu_missing) {
            (Some(g), _) => {
                line(format!(
                    "  {} ({}), driver {}",
                    g.name,
                    g.compute_capability,
                    g.driver.as_deref().unwrap_or("unknown")
                ));
                match g.used {
                    Some(used) => line(format!(
                        "  memory {} used by all processes, {} free",
                        usage(used, g.total),
                        format_bytes(g.total.saturating_sub(used))
                    )),
                    None => line(format!("  memory {} (NVML gave no reading)", format_bytes(g.total))),
                }
            }
            (None, why) => line(format!("  no GPU found: {}", why.as_deref().unwrap_or("unknown reason"))),
        }
        let h = &self.host.memory;
        line("Host".into());
        line(format!(
            "  memory {} used, this process {} resident, {} logical cores",
            usage(h.used, h.total),
            format_bytes(h.process_rss),
            self.host.logical_cores
        ));
        line("Planned training step".into());
        line(format!(
            "  batch_size {} × max_frames {} = {} frames, {}",
            self.micro_batch,
            self.frames,
            self.micro_batch * self.frames,
            if self.mixed_precision { "fp16 activations, fp32 master weights" } else { "fp32" }
        ));
        line(format!("  {}", self.footprint.describe()));
        line(format!(
            "  budget {} ({}): {:.0}% used by the plan",
            format_bytes(self.budget),
            self.budget_source,
            100.0 * self.footprint.total() as f64 / self.budget.max(1) as f64
        ));
        let s = &self.rehearsal.stats;
        line("Pool (one planned step rehearsed twice, host memory)".into());
        line(format!(
            "  reserved peak {}, allocated peak {}, fragmentation {:.1}%, {} maps / {} unmaps, {} allocations, {} out-of-memory",
            format_bytes(s.peak_reserved_bytes as u64),
            format_bytes(s.peak_allocated_bytes as u64),
            100.0 * s.fragmentation(),
            s.num_device_alloc,
            s.num_device_free,
            s.num_allocs,
            s.num_ooms
        ));
        line(format!(
            "  second step: {} driver map calls ({})",
            self.rehearsal.maps_in_second_step,
            if self.rehearsal.maps_in_second_step == 0 { "steady state" } else { "not yet steady" }
        ));
        line("Kernel throughput".into());
        for k in &self.kernels {
            line(format!("  {}: {:.1} GFLOP/s", k.what, k.gflops));
        }
        line(format!(
            "  GPU kernels: {}",
            if self.gpu.is_some() { "not measured here yet (cargo bench measures them)" } else { "no GPU" }
        ));
        if !self.warnings.is_empty() {
            line("Warnings".into());
            self.warnings.iter().for_each(|w| line(format!("  ! {w}")));
        }
        line("Suggestions".into());
        self.suggestions.iter().for_each(|s| line(format!("  - {s}")));
        out
    }
}
