//! The memory manager of a run: it owns the monitor and the governor for the run's
//! lifetime (a scope, like a Python `with` block), runs cleanup callbacks when the
//! governor clears caches, and prints a summary when dropped.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::governor::{Action, BatchPlan, Decision, Governor, GovernorConfig};
use super::monitor::{MemorySource, Monitor};
use super::pool::PoolStats;
use super::sample::{MemorySample, usage};
use crate::config::{Config, format_bytes};

type Callback = Box<dyn FnMut() -> u64 + Send>;

/// Peaks over the manager's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemoryStats {
    pub latest: Option<MemorySample>,
    pub peak_gpu_used: Option<u64>,
    pub gpu_total: Option<u64>,
    pub peak_host_used: u64,
    pub host_total: u64,
    pub peak_process_rss: u64,
    pub samples: u64,
}

pub struct MemoryManager {
    /// The sampling thread; `None` when `enable_monitoring = false` (step-boundary
    /// samples still happen).
    monitor: Option<Monitor>,
    /// The source used directly when there is no monitor thread.
    source: Option<Box<dyn MemorySource>>,
    governor: Governor,
    callbacks: Vec<(String, Callback)>,
    stats: MemoryStats,
    gpu_threshold: f64,
    cpu_threshold: f64,
    started: Instant,
    /// `steps.csv` and `governor.csv` in the run folder.
    records: Option<(BufWriter<File>, BufWriter<File>)>,
}

pub const STEPS_CSV_HEADER: &str = "t_s,step,pool_reserved_bytes,pool_allocated_bytes";
pub const GOVERNOR_CSV_HEADER: &str = "t_s,step,action,reason";

impl MemoryManager {
    /// Starts managing memory for `config`'s run; with `run_dir`, every sample is written
    /// to `run_dir/memory.csv`.
    pub fn start(
        config: &Config,
        source: Box<dyn MemorySource>,
        run_dir: Option<&Path>,
    ) -> std::io::Result<Self> {
        let mm = &config.gpu.memory_management;
        let (monitor, source) = if mm.enable_monitoring {
            let csv = run_dir.map(|d| d.join("memory.csv"));
            let interval = Duration::from_secs_f64(mm.auto_cleanup_interval);
            (Some(Monitor::start(source, interval, csv.as_deref())?), None)
        } else {
            (None, Some(source))
        };
        let governor = Governor::new(GovernorConfig {
            gpu_threshold: mm.gpu_threshold,
            cpu_threshold: mm.cpu_threshold,
            calm_steps: mm.calm_steps as u64,
            force_cleanup_every: mm.force_cleanup_every as u64,
            effective_batch: config.effective_batch(),
            micro_batch: config.dataloader.batch_size,
        });
        let records = match run_dir {
            Some(dir) => {
                let mut steps = BufWriter::new(File::create(dir.join("steps.csv"))?);
                writeln!(steps, "{STEPS_CSV_HEADER}")?;
                let mut governor = BufWriter::new(File::create(dir.join("governor.csv"))?);
                writeln!(governor, "{GOVERNOR_CSV_HEADER}")?;
                Some((steps, governor))
            }
            None => None,
        };
        Ok(MemoryManager {
            started: Instant::now(),
            records,
            monitor,
            source,
            governor,
            callbacks: Vec::new(),
            stats: MemoryStats::default(),
            gpu_threshold: mm.gpu_threshold,
            cpu_threshold: mm.cpu_threshold,
        })
    }

    /// `f` frees what it can and returns the bytes it freed; it runs whenever the governor
    /// clears caches.
    pub fn register_cleanup_callback(&mut self, name: &str, f: impl FnMut() -> u64 + Send + 'static) {
        self.callbacks.push((name.to_string(), Box::new(f)));
    }

    /// Runs every cleanup callback; returns (name, bytes freed) for each.
    pub fn cleanup(&mut self) -> Vec<(String, u64)> {
        self.callbacks.iter_mut().map(|(name, f)| (name.clone(), f())).collect()
    }

    /// The trainer calls this between steps with the pool's stats: a fresh sample, the
    /// governor's decisions (cache clears already carried out), and the batch plan for the
    /// next step. Steps and decisions go to the run folder's CSVs.
    pub fn step_boundary(&mut self, step: u64, pool: Option<&PoolStats>) -> (Vec<Decision>, BatchPlan) {
        let sample = match (&self.monitor, &mut self.source) {
            (Some(m), _) => m.sample_now(),
            (None, Some(s)) => s.sample(0.0),
            (None, None) => unreachable!("a manager has a monitor or a source"),
        };
        self.record(sample);
        let decisions = self.governor.observe(step, &sample);
        if decisions.iter().any(|d| d.action == Action::ClearCaches) {
            self.cleanup();
        }
        if let Some((steps, _)) = &mut self.records {
            let t = self.started.elapsed().as_secs_f64();
            let (reserved, allocated) = pool.map_or((0, 0), |p| (p.reserved_bytes, p.allocated_bytes));
            // The CSVs are a record of the run, not a dependency of it: a full disk must
            // not stop training.
            let _ = writeln!(steps, "{t:.3},{step},{reserved},{allocated}").and_then(|_| steps.flush());
        }
        self.write_decisions(&decisions);
        (decisions, self.governor.plan())
    }

    /// An allocation failed inside `step`: the governor's smaller micro-batch (same
    /// effective batch; the largest whose planned step `fits`), recorded in governor.csv
    /// like every other decision; `None` at micro-batch 1.
    pub fn on_out_of_memory(
        &mut self,
        step: u64,
        detail: &str,
        fits: impl Fn(u32) -> bool,
    ) -> Option<BatchPlan> {
        let plan = self.governor.on_out_of_memory(step, detail, fits).ok()?;
        if let Some(d) = self.governor.log().last().cloned() {
            self.write_decisions(&[d]);
        }
        Some(plan)
    }

    fn write_decisions(&mut self, decisions: &[Decision]) {
        let Some((_, governor)) = &mut self.records else { return };
        let t = self.started.elapsed().as_secs_f64();
        for d in decisions {
            let reason = d.reason.replace('"', "'");
            let _ = writeln!(governor, "{t:.3},{},{},\"{reason}\"", d.step, d.action)
                .and_then(|_| governor.flush());
        }
    }

    pub fn governor(&mut self) -> &mut Governor {
        &mut self.governor
    }

    fn record(&mut self, s: MemorySample) {
        let st = &mut self.stats;
        st.latest = Some(s);
        st.samples += 1;
        if let Some(g) = s.gpu {
            st.peak_gpu_used = Some(st.peak_gpu_used.unwrap_or(0).max(g.used));
            st.gpu_total = Some(g.total);
        }
        st.peak_host_used = st.peak_host_used.max(s.host.used);
        st.host_total = s.host.total;
        st.peak_process_rss = st.peak_process_rss.max(s.host.process_rss);
    }

    /// Peaks so far, including the monitor thread's samples.
    pub fn memory_stats(&mut self) -> MemoryStats {
        if let Some(m) = &self.monitor {
            for s in m.history() {
                if self.stats.latest.is_none_or(|l| s.t > l.t) {
                    self.record(s);
                }
            }
        }
        self.stats
    }

    /// Current and peak memory, and the governor's state, as text.
    pub fn memory_info(&mut self) -> String {
        let s = self.memory_stats();
        let mut lines = Vec::new();
        match (s.latest.and_then(|l| l.gpu), s.peak_gpu_used) {
            (Some(g), Some(peak)) => {
                lines.push(format!("GPU  {} now, peak {}", usage(g.used, g.total), format_bytes(peak)))
            }
            _ => lines.push("GPU  no reading (no GPU or NVML)".to_string()),
        }
        if let Some(l) = s.latest {
            lines.push(format!(
                "host {} now, peak {}; this process {} (peak {})",
                usage(l.host.used, l.host.total),
                format_bytes(s.peak_host_used),
                format_bytes(l.host.process_rss),
                format_bytes(s.peak_process_rss)
            ));
        }
        lines.push(format!(
            "governor level {}, {} actions, {}",
            self.governor.level(),
            self.governor.log().len(),
            self.governor.plan()
        ));
        lines.join("\n")
    }

    /// The memory report printed at the end of a run.
    pub fn print_memory_info(&mut self) {
        println!("{}", self.memory_info());
    }

    /// What the peaks say to change.
    pub fn suggestions(&mut self) -> Vec<String> {
        let s = self.memory_stats();
        let mut out = Vec::new();
        if let (Some(peak), Some(total)) = (s.peak_gpu_used, s.gpu_total)
            && peak as f64 > self.gpu_threshold * total as f64
        {
            out.push(format!(
                "GPU peaked at {}: lower batch_size or max_frames (`dfengine profile` gives the largest that fit), or keep mixed_precision = true",
                usage(peak, total)
            ));
        }
        if s.host_total > 0 && s.peak_host_used as f64 > self.cpu_threshold * s.host_total as f64 {
            out.push(format!(
                "host memory peaked at {}: fewer num_workers, prefetch_factor = 1, enable_cache = false",
                usage(s.peak_host_used, s.host_total)
            ));
        }
        if out.is_empty() {
            out.push(
                "memory stayed under both thresholds: there is room for a larger batch_size".to_string(),
            );
        }
        out
    }
}

impl Drop for MemoryManager {
    fn drop(&mut self) {
        let info = self.memory_info();
        self.monitor.take();
        eprintln!("memory summary:\n{info}");
        for d in self.governor.log() {
            eprintln!("  {d}");
        }
    }
}
