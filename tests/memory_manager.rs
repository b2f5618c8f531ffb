//! The memory manager: governor decisions carried out through cleanup callbacks, peaks
//! and suggestions from what was sampled, memory.csv in the run folder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dfengine::config::{self, Config};
use dfengine::memory::governor::Action;
use dfengine::memory::manager::MemoryManager;
use dfengine::memory::monitor::MemorySource;
use dfengine::memory::sample::{DeviceMemory, HostMemory, MemorySample};

const GIB: u64 = 1 << 30;

/// Replays GPU fractions, one per sample, then holds the last.
struct Script(Vec<f64>, usize);

impl MemorySource for Script {
    fn sample(&mut self, t: f64) -> MemorySample {
        let f = self.0[self.1.min(self.0.len() - 1)];
        self.1 += 1;
        MemorySample {
            t,
            gpu: Some(DeviceMemory {
                used: (f * 12.0 * GIB as f64) as u64,
                total: 12 * GIB,
                utilisation: None,
            }),
            host: HostMemory { used: 4 * GIB, total: 32 * GIB, process_rss: GIB },
        }
    }
}

fn demo_config(monitoring: bool) -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/memory_optimized.toml");
    let set: config::Override =
        format!("gpu.memory_management.enable_monitoring={monitoring}").parse().unwrap();
    config::load(Some(std::path::Path::new(path)), &[set]).unwrap().config
}

#[test]
fn cache_clears_run_the_registered_callbacks() {
    let cfg = demo_config(false);
    let mut m = MemoryManager::start(&cfg, Box::new(Script(vec![0.5, 0.9, 0.9, 0.9, 0.9], 0)), None).unwrap();
    let freed = Arc::new(AtomicU64::new(0));
    let counter = freed.clone();
    m.register_cleanup_callback("frame cache", move || {
        counter.fetch_add(1, Ordering::SeqCst);
        64 << 20
    });
    let mut actions = Vec::new();
    for step in 1..=5 {
        let (decisions, plan) = m.step_boundary(step, None);
        actions.extend(decisions.into_iter().map(|d| d.action));
        assert_eq!(
            plan.micro_batch * plan.accumulation,
            12,
            "effective batch of memory_optimized.toml is 6 × 2"
        );
    }
    assert_eq!(actions[..3], [Action::TrimPool, Action::ClearCaches, Action::PreprocessOnCpu]);
    assert_eq!(freed.load(Ordering::SeqCst), 1, "ClearCaches ran the callback once");
    assert_eq!(m.cleanup(), vec![("frame cache".to_string(), 64 << 20)]);

    let stats = m.memory_stats();
    assert_eq!(stats.samples, 5);
    assert_eq!(stats.peak_gpu_used, Some((0.9 * 12.0 * GIB as f64) as u64));
    let tips = m.suggestions();
    assert!(tips[0].contains("GPU peaked at") && tips[0].contains("(90%)"), "{tips:?}");
    let info = m.memory_info();
    assert!(info.contains("GPU  10.80 GiB/12.00 GiB (90%) now"), "{info}");
}

#[test]
fn monitoring_writes_memory_csv_in_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(true);
    let mut m = MemoryManager::start(&cfg, Box::new(Script(vec![0.3], 0)), Some(dir.path())).unwrap();
    let pool = dfengine::memory::PoolStats {
        reserved_bytes: 4 << 20,
        allocated_bytes: 3 << 20,
        ..Default::default()
    };
    m.step_boundary(1, Some(&pool));
    m.step_boundary(2, Some(&pool));
    assert_eq!(
        m.suggestions(),
        ["memory stayed under both thresholds: there is room for a larger batch_size"]
    );
    drop(m);
    let csv = std::fs::read_to_string(dir.path().join("memory.csv")).unwrap();
    assert!(csv.lines().count() >= 4, "header, the first sample and two step samples:\n{csv}");
    let steps = std::fs::read_to_string(dir.path().join("steps.csv")).unwrap();
    let rows: Vec<&str> = steps.lines().skip(1).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[1].ends_with(",2,4194304,3145728"), "{steps}");
    assert!(
        std::fs::read_to_string(dir.path().join("governor.csv"))
            .unwrap()
            .starts_with("t_s,step,action,reason")
    );
}
