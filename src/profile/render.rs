//! The profile as a user reads it, section by section.

use super::ProfileReport;
use crate::config::format_bytes;
use crate::memory::sample::usage;

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
            "  batch_size {} × max_frames {} = {} frames, {}, activation_memory = \"{}\"",
            self.micro_batch,
            self.frames,
            self.micro_batch * self.frames,
            if self.mixed_precision { "fp16 activations, fp32 master weights" } else { "fp32" },
            self.activation_mode
        ));
        line(format!("  {}", self.footprint.describe()));
        match &self.pytorch_amp {
            Some(y) => line(format!(
                "  activations per {}² frame: {} planned, PyTorch AMP saves {} ({}, torch {}, autocast {}, {})",
                y.side,
                format_bytes(self.planned_per_frame),
                format_bytes(y.saved_per_frame),
                y.source,
                y.torch,
                y.autocast_dtype,
                y.date
            )),
            None => line(format!(
                "  activations per frame: {} planned (no PyTorch AMP yardstick for this backbone and frame size in {})",
                format_bytes(self.planned_per_frame),
                super::yardstick::SOURCE
            )),
        }
        line(format!(
            "  budget {} ({}): {:.0}% used by the plan",
            format_bytes(self.budget),
            self.budget_source,
            100.0 * self.footprint.total() as f64 / self.budget.max(1) as f64
        ));
        let hp = &self.host_plan;
        line("Planned host memory (beside the process)".into());
        line(format!(
            "  batches ahead: {} × {} = {} (num_workers × prefetch_factor micro-batches, {})",
            hp.prefetched_batches,
            format_bytes(hp.batch_bytes),
            format_bytes(hp.prefetched()),
            if hp.stored_frames { "u8 frames for the GPU's preprocessing" } else { "FP32 input" }
        ));
        line(format!(
            "  page-locked staging: {}",
            if hp.pinned > 0 {
                format!("{} (pin_memory = true: two slots of the largest upload)", format_bytes(hp.pinned))
            } else {
                "none (pin_memory = false, or no GPU)".into()
            }
        ));
        line(format!(
            "  frame cache in memory: {}",
            if hp.frame_cache > 0 { format!("up to {}", format_bytes(hp.frame_cache)) } else { "off".into() }
        ));
        line(format!(
            "  total {} of {} available",
            format_bytes(hp.total()),
            format_bytes(h.total.saturating_sub(h.used))
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
