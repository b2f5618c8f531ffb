//! The monitor: samples on its thread and on demand, keeps them in order, writes every
//! one to the CSV, stops when dropped; the system source reads real host memory and
//! works without a GPU, and reads the GPU through NVML where there is one.

mod common;

use std::time::Duration;

use dfengine::memory::monitor::{CSV_HEADER, MemorySource, Monitor, SystemSource};
use dfengine::memory::sample::{DeviceMemory, HostMemory, MemorySample};

/// GPU use that climbs by 1 MiB per sample.
struct Climbing(u64);

impl MemorySource for Climbing {
    fn sample(&mut self, t: f64) -> MemorySample {
        self.0 += 1;
        MemorySample {
            t,
            gpu: Some(DeviceMemory { used: self.0 << 20, total: 1 << 30, utilisation: Some(50) }),
            host: HostMemory { used: 2 << 30, total: 8 << 30, process_rss: 1 << 28 },
        }
    }
}

#[test]
fn samples_on_its_thread_and_on_demand_into_history_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("memory.csv");
    let monitor = Monitor::start(Box::new(Climbing(0)), Duration::from_millis(5), Some(&csv)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let now = monitor.sample_now();
    let history = monitor.history();
    drop(monitor);
    assert!(history.len() >= 3, "only {} samples in 100 ms at a 5 ms interval", history.len());
    assert_eq!(history.last(), Some(&now));
    assert!(history.windows(2).all(|w| w[0].t <= w[1].t && w[0].gpu.unwrap().used < w[1].gpu.unwrap().used));

    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= history.len(), "every sample reaches the CSV");
    let first: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(first[1..].to_vec(), ["1048576", "1073741824", "50", "2147483648", "8589934592", "268435456"]);
}

#[test]
fn dropping_the_monitor_stops_sampling() {
    let monitor = Monitor::start(Box::new(Climbing(0)), Duration::from_millis(2), None).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    drop(monitor);
    // Reaching here means the thread joined; a monitor that ignored its stop would hang.
}

#[test]
fn system_source_reads_this_machine() {
    let mut source = SystemSource::new(Some(0));
    let s = source.sample(0.0);
    assert!(s.host.total > 0 && s.host.used <= s.host.total, "{:?}", s.host);
    assert!(s.host.process_rss > 0, "this process has a resident set");
    if s.gpu.is_none() {
        let why = source.gpu_unavailable.as_deref().unwrap_or("");
        assert!(!why.is_empty(), "no GPU reading and no reason given");
        eprintln!("no GPU reading: {why}");
    }
}

/// NVML's reading of device 0 where the probe finds one.
#[cfg(feature = "cuda")]
#[test]
fn system_source_reads_the_gpu_through_nvml_cuda() {
    let Some(info) = common::gpu_info() else { return };
    let mut source = SystemSource::new(Some(0));
    let g = source.sample(0.0).gpu.unwrap_or_else(|| {
        panic!("{info}: no NVML reading ({})", source.gpu_unavailable.as_deref().unwrap_or("no reason given"))
    });
    assert!(g.total > 0 && g.used <= g.total, "{info}: NVML reads {g:?}");
}
