//! The monitor: a thread that samples GPU memory (NVML: every process on the card) and
//! host memory (sysinfo) every interval, plus a sample at each step boundary on demand;
//! keeps the history in a ring and appends every sample to `memory.csv`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sample::{DeviceMemory, HostMemory, MemorySample};

/// Samples kept in memory (a day at the 10 s default).
const HISTORY: usize = 8640;

/// Where samples come from: the machine, or a script in tests.
pub trait MemorySource: Send {
    fn sample(&mut self, t: f64) -> MemorySample;
}

/// The machine's own memory: sysinfo for the host, NVML for the GPU when there is one.
pub struct SystemSource {
    sys: sysinfo::System,
    pid: Option<sysinfo::Pid>,
    #[cfg(feature = "cuda")]
    nvml: Option<(nvml_wrapper::Nvml, u32)>,
    /// Why there is no GPU reading, when there is none.
    pub gpu_unavailable: Option<String>,
}

impl SystemSource {
    /// Reads the host, and GPU `ordinal` through NVML when `ordinal` is given and NVML loads.
    pub fn new(ordinal: Option<u32>) -> Self {
        let sys = sysinfo::System::new().expect("sysinfo supports this platform");
        let pid = sysinfo::get_current_pid().ok();
        #[cfg(feature = "cuda")]
        {
            let (nvml, gpu_unavailable) = match ordinal.map(|o| (nvml_wrapper::Nvml::init(), o)) {
                None => (None, Some("no GPU requested".to_string())),
                Some((Ok(nvml), o)) => match nvml.device_by_index(o) {
                    Ok(_) => (Some((nvml, o)), None),
                    Err(e) => (None, Some(format!("NVML has no device {o}: {e}"))),
                },
                Some((Err(e), _)) => (None, Some(format!("NVML unavailable: {e}"))),
            };
            SystemSource { sys, pid, nvml, gpu_unavailable }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            SystemSource { sys, pid, gpu_unavailable: Some("built without the `cuda` feature".to_string()) }
        }
    }

    /// The driver's version as NVML reports it.
    #[cfg(feature = "cuda")]
    pub fn driver_version(&self) -> Option<String> {
        self.nvml.as_ref().and_then(|(nvml, _)| nvml.sys_driver_version().ok())
    }

    #[cfg(not(feature = "cuda"))]
    pub fn driver_version(&self) -> Option<String> {
        None
    }

    #[cfg(feature = "cuda")]
    fn gpu(&self) -> Option<DeviceMemory> {
        let (nvml, ordinal) = self.nvml.as_ref()?;
        let device = nvml.device_by_index(*ordinal).ok()?;
        let info = device.memory_info().ok()?;
        let utilisation = device.utilization_rates().ok().map(|u| u.gpu);
        Some(DeviceMemory { used: info.used, total: info.total, utilisation })
    }

    #[cfg(not(feature = "cuda"))]
    fn gpu(&self) -> Option<DeviceMemory> {
        None
    }

    pub fn host(&mut self) -> HostMemory {
        self.sys.refresh_memory();
        let total = self.sys.total_memory();
        let used = total.saturating_sub(self.sys.available_memory());
        let process_rss = self
            .pid
            .and_then(|pid| {
                self.sys.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[pid]),
                    false,
                    sysinfo::ProcessRefreshKind::nothing().with_memory(),
                );
                self.sys.process(pid).map(|p| p.memory())
            })
            .unwrap_or(0);
        HostMemory { used, total, process_rss }
    }
}

impl MemorySource for SystemSource {
    fn sample(&mut self, t: f64) -> MemorySample {
        MemorySample { t, gpu: self.gpu(), host: self.host() }
    }
}

struct Shared {
    source: Box<dyn MemorySource>,
    history: VecDeque<MemorySample>,
    csv: Option<BufWriter<File>>,
    started: Instant,
}

impl Shared {
    fn take(&mut self) -> MemorySample {
        let s = self.source.sample(self.started.elapsed().as_secs_f64());
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(s);
        if let Some(csv) = &mut self.csv {
            let (gu, gt, util) = match s.gpu {
                Some(g) => (
                    g.used.to_string(),
                    g.total.to_string(),
                    g.utilisation.map(|u| u.to_string()).unwrap_or_default(),
                ),
                None => Default::default(),
            };
            // A full disk must not stop training; the CSV is a record, not a dependency.
            let _ = writeln!(
                csv,
                "{:.3},{gu},{gt},{util},{},{},{}",
                s.t, s.host.used, s.host.total, s.host.process_rss
            )
            .and_then(|_| csv.flush());
        }
        s
    }
}

pub const CSV_HEADER: &str =
    "t_s,gpu_used_bytes,gpu_total_bytes,gpu_util_pct,host_used_bytes,host_total_bytes,process_rss_bytes";

/// A running monitor; stops its thread when dropped.
pub struct Monitor {
    shared: Arc<Mutex<Shared>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts sampling `source` every `interval` (a first sample is taken at once), with
    /// every sample appended to `csv` when given.
    pub fn start(
        source: Box<dyn MemorySource>,
        interval: Duration,
        csv: Option<&Path>,
    ) -> std::io::Result<Self> {
        let csv = match csv {
            Some(path) => {
                let mut w = BufWriter::new(File::create(path)?);
                writeln!(w, "{CSV_HEADER}")?;
                Some(w)
            }
            None => None,
        };
        let shared =
            Arc::new(Mutex::new(Shared { source, history: VecDeque::new(), csv, started: Instant::now() }));
        lock(&shared).take();
        let (stop, stopped) = mpsc::channel::<()>();
        let worker = shared.clone();
        let thread = std::thread::Builder::new().name("dfengine-memory-monitor".into()).spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                lock(&worker).take();
            }
        })?;
        Ok(Monitor { shared, stop: Some(stop), thread: Some(thread) })
    }

    /// Takes a sample now (the trainer calls this at step boundaries).
    pub fn sample_now(&self) -> MemorySample {
        lock(&self.shared).take()
    }

    pub fn latest(&self) -> Option<MemorySample> {
        lock(&self.shared).history.back().copied()
    }

    pub fn history(&self) -> Vec<MemorySample> {
        lock(&self.shared).history.iter().copied().collect()
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while sampling leaves plain data behind; keep using it.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Monitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
