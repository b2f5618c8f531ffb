//! What the machine has: the GPU (from the CUDA probe and NVML), host memory and cores,
//! the budget the config resolves to there, and a measured CPU convolution figure.

use std::time::Instant;

use serde::Serialize;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{GpuInfo, GpuProbe, probe};
use crate::backend::ops::Backend;
use crate::config::{Config, VramBudget, format_bytes};
use crate::memory::monitor::{MemorySource, SystemSource};
use crate::memory::sample::HostMemory;
use crate::model::arch::{ResNetSpec, conv_layers};
use crate::tensor::Shape;

/// The reference card budgets are planned against when no GPU is present.
pub const REFERENCE_CARD_BYTES: u64 = 12 << 30;

/// Frames in the CPU conv measurement: enough for the per-image parallelism to show.
const MEASURED_FRAMES: usize = 4;

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
pub struct KernelFigure {
    pub what: String,
    pub gflops: f64,
}

/// The machine as the config sees it.
pub struct Machine {
    pub gpu: Option<DeviceReport>,
    /// Why there is no GPU report, when there is none.
    pub gpu_missing: Option<String>,
    pub host: HostReport,
    pub budget: u64,
    /// Where the budget came from, in the config's words.
    pub budget_source: String,
}

pub fn gather(config: &Config) -> Machine {
    let gpu_probe = probe();
    let gpu_info = match &gpu_probe {
        GpuProbe::Ready(list) => list.iter().find(|g| g.ordinal == config.gpu.device).cloned(),
        GpuProbe::Unavailable(_) => None,
    };
    let mut source = SystemSource::new(gpu_info.as_ref().map(|g| g.ordinal));
    let sample = MemorySource::sample(&mut source, 0.0);
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
    let logical_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Machine {
        gpu,
        gpu_missing,
        host: HostReport { memory: sample.host, logical_cores },
        budget,
        budget_source,
    }
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

/// GFLOP/s of the CPU conv forward on the config's first 3×3 stage layer.
pub fn cpu_conv_figure(config: &Config) -> Option<KernelFigure> {
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
