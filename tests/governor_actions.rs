//! Every governor action a run logs, it carries out: a training run fed a scripted memory
//! source (host pressure, calm, GPU pressure, calm) and checked by effect, not by log
//! line — the frame cache's memory empties on "clear caches", the loader holds fewer
//! batches ahead after "prefetch fewer batches" and more again after "restore
//! prefetching", the steps after "preprocess on the CPU" upload the FP32 input instead of
//! the u8 frames and those after "on the GPU again" the frames again — and an action the
//! run cannot carry out (moving preprocessing that already runs on the CPU) is not logged;
//! "keep lean activations" turns the steps lean until calm brings "saved" back, and on
//! the CPU backend each lean step's pool peak is below every saved step's. Each body runs
//! on the CPU backend and on the CUDA backend (the software GPU in CI).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dfengine::backend::ops::Backend;
use dfengine::config::{self, Config, PreprocessDevice};
use dfengine::data::cache::FrameCache;
use dfengine::data::clip::ClipFrames;
use dfengine::data::loader::LoaderControl;
use dfengine::data::sources::ClipSource;
use dfengine::memory::governor::Action;
use dfengine::memory::manager::MemoryManager;
use dfengine::memory::monitor::MemorySource;
use dfengine::memory::sample::{DeviceMemory, HostMemory, MemorySample};
use dfengine::train::run::{RunOptions, Trainer};

const GIB: u64 = 1 << 30;
/// Calm observations before the governor steps back: enough for the batches made ahead
/// before "prefetch fewer batches" to be consumed.
const CALM: u32 = 5;

/// The synthetic clips through a frame cache held in memory.
struct Cached {
    inner: Arc<dyn ClipSource>,
    cache: Arc<FrameCache>,
}

impl ClipSource for Cached {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn target(&self, c: usize) -> f32 {
        self.inner.target(c)
    }
    fn name(&self, c: usize) -> String {
        self.inner.name(c)
    }
    fn load(&self, c: usize) -> Result<Arc<ClipFrames>, String> {
        self.cache.get_or_load(c as u64, || self.inner.load(c).map(|f| (*f).clone()))
    }
    fn clear_memory(&self) -> u64 {
        self.cache.clear_memory() as u64
    }
}

/// What the script saw at each step boundary, before that boundary's decisions.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    cache_bytes: usize,
    held_batches: usize,
}

/// Host pressure at boundaries 1–3, GPU pressure at `GPU_HOT`; calm elsewhere. Notes the
/// frame cache's bytes and the batches the loader holds ahead at every sample.
struct Script {
    k: usize,
    cache: Arc<FrameCache>,
    control: Arc<Mutex<Option<Arc<LoaderControl>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

const HOST_HOT: std::ops::Range<usize> = 1..4;
const GPU_HOT: std::ops::Range<usize> = 19..22;

impl MemorySource for Script {
    fn sample(&mut self, t: f64) -> MemorySample {
        let held = self.control.lock().unwrap().as_ref().map_or(0, |c| c.held().0);
        self.seen
            .lock()
            .unwrap()
            .push(Seen { cache_bytes: self.cache.stats().memory_bytes, held_batches: held });
        let gpu = if GPU_HOT.contains(&self.k) { 0.95 } else { 0.3 };
        let host = if HOST_HOT.contains(&self.k) { 0.9 } else { 0.3 };
        self.k += 1;
        sample(t, gpu, host)
    }
}

/// A 12 GiB card and 32 GiB of host memory, used to the fractions given.
fn sample(t: f64, gpu: f64, host: f64) -> MemorySample {
    MemorySample {
        t,
        gpu: Some(DeviceMemory {
            used: (gpu * 12.0 * GIB as f64) as u64,
            total: 12 * GIB,
            utilisation: None,
        }),
        host: HostMemory { used: (host * 32.0 * GIB as f64) as u64, total: 32 * GIB, process_rss: GIB },
    }
}

fn demo(out: &Path, preprocess: PreprocessDevice) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quick_demo.toml");
    let mut c = config::load(Some(&path), &[]).unwrap().config;
    c.data.synthetic_videos = 200;
    c.train.epochs = 2;
    c.train.out_dir = out.display().to_string();
    c.dataloader.num_workers = 1;
    c.dataloader.prefetch_factor = 4;
    c.gpu.preprocess = preprocess;
    let mm = &mut c.gpu.memory_management;
    mm.enable_monitoring = false;
    mm.calm_steps = CALM;
    c
}

/// (step, `text` as a string, `number`) of each step record.
fn steps(run: &Path, text: &str, number: &str) -> Vec<(u64, String, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| {
            (v["step"].as_u64().unwrap(), v[text].as_str().unwrap().to_string(), v[number].as_u64().unwrap())
        })
        .collect()
}

fn governor_actions_take_effect<B: Backend>(b: B, gpu: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = PathBuf::from(dir.path());
    let c = demo(&out, if gpu { PreprocessDevice::Gpu } else { PreprocessDevice::Cpu });
    let mut splits = dfengine::data::splits::splits(&c).unwrap();
    let cache = Arc::new(FrameCache::new(None, 1 << 30).unwrap());
    splits.train = Arc::new(Cached { inner: splits.train.clone(), cache: cache.clone() });
    let control = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Script { k: 0, cache: cache.clone(), control: control.clone(), seen: seen.clone() };
    let mut mm = MemoryManager::start(&c, Box::new(script), Some(&out)).unwrap();
    let mut t =
        Trainer::new(b, c, splits, RunOptions { quiet: true, max_steps: Some(34), ..Default::default() })
            .unwrap();
    *control.lock().unwrap() = Some(t.loader_control().clone());
    t.run(&mut mm).unwrap();
    let log: Vec<(u64, Action)> = mm.governor().log().iter().map(|d| (d.step, d.action)).collect();
    let seen = seen.lock().unwrap().clone();
    let at = |a: Action| {
        log.iter().find(|(_, x)| *x == a).unwrap_or_else(|| panic!("{a} not in {log:?}")).0 as usize
    };

    // Host pressure: trim, clear caches, fewer batches ahead; restored after the calm.
    let clear = at(Action::ClearCaches);
    assert!(seen[clear].cache_bytes > 0 && seen[clear + 1].cache_bytes < seen[clear].cache_bytes, "{seen:?}");
    let (reduce, restore) = (at(Action::ReducePrefetch), at(Action::RestorePrefetch));
    assert_eq!(restore, reduce + CALM as usize);
    assert!(seen[..reduce].iter().any(|s| s.held_batches > 1), "4 batches ahead before: {seen:?}");
    assert!(seen[restore].held_batches <= 1, "1 worker × 1 batch ahead after: {seen:?}");
    assert!(seen[restore + 2..].iter().any(|s| s.held_batches > 1), "prefetching back: {seen:?}");

    // GPU pressure: preprocessing moves to the CPU where it ran on the GPU, and back.
    let records = steps(&out, "preprocess", "input_bytes");
    let frames_u8 = 8 * 4 * 40 * 40 * 3;
    let input_f32 = 8 * 4 * 32 * 32 * 3 * 4;
    if gpu {
        let (to_cpu, back) = (at(Action::PreprocessOnCpu), at(Action::PreprocessOnGpu));
        assert_eq!(back, to_cpu + CALM as usize);
        // A decision at the boundary before step k (0-based) shows in record k + 1. The
        // move to the CPU is immediate (stored batches made ahead are preprocessed in the
        // step); back on the GPU, the batches the loader threads preprocessed meanwhile
        // are uploaded as they are: at most the 4 held ahead and the one the worker was
        // making when the switch came (a slow device lets the loader fill its depth).
        let back_on_gpu =
            records.iter().find(|(step, on, _)| *step > back as u64 && on == "gpu").map_or(u64::MAX, |r| r.0);
        assert!(back_on_gpu <= back as u64 + 1 + 4 + 1, "{records:?}");
        for (step, on, bytes) in &records {
            let cpu = (to_cpu as u64 + 1..back_on_gpu).contains(step);
            let want = if cpu { ("cpu", input_f32) } else { ("gpu", frames_u8) };
            assert_eq!((on.as_str(), *bytes), want, "step {step}");
        }
    } else {
        assert!(
            !log.iter().any(|(_, a)| matches!(a, Action::PreprocessOnCpu | Action::PreprocessOnGpu)),
            "{log:?}"
        );
        // The level-3 switch passed over, the next rung is the one above it.
        assert!(log.iter().any(|(_, a)| *a == Action::LeanActivations), "{log:?}");
        assert!(records.iter().all(|(_, on, bytes)| on == "cpu" && *bytes == input_f32), "{records:?}");
    }
}

#[test]
fn governor_actions_take_effect_cpu() {
    governor_actions_take_effect(common::cpu(), false);
}

#[cfg(feature = "cuda")]
#[test]
fn governor_actions_take_effect_cuda() {
    // Uploads staged through page-locked memory on the copy stream, as `pin_memory = true`.
    let Some((b, _)) = common::cuda_backend_with(None, true) else { return };
    governor_actions_take_effect(b, true);
}

/// GPU pressure at the boundaries `HOT`, calm elsewhere.
struct GpuHot {
    k: usize,
}

const HOT: std::ops::Range<usize> = 1..4;

impl MemorySource for GpuHot {
    fn sample(&mut self, t: f64) -> MemorySample {
        let gpu = if HOT.contains(&self.k) { 0.95 } else { 0.3 };
        self.k += 1;
        sample(t, gpu, 0.25)
    }
}

/// Preprocessing on the CPU already, so the third hot observation (trim, clear, the
/// level-3 switch passed over) turns activations lean; `CALM` calm ones turn them back.
fn lean_activations_take_effect<B: Backend>(b: B, peaks_separate: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = PathBuf::from(dir.path());
    let c = demo(&out, PreprocessDevice::Cpu);
    let splits = dfengine::data::splits::splits(&c).unwrap();
    let mut mm = MemoryManager::start(&c, Box::new(GpuHot { k: 0 }), Some(&out)).unwrap();
    let opts = RunOptions { quiet: true, max_steps: Some(12), ..Default::default() };
    Trainer::new(b, c, splits, opts).unwrap().run(&mut mm).unwrap();
    let log: Vec<(u64, Action)> = mm.governor().log().iter().map(|d| (d.step, d.action)).collect();
    let at = |a: Action| log.iter().find(|(_, x)| *x == a).unwrap_or_else(|| panic!("{a} not in {log:?}")).0;
    let (lean, saved) = (at(Action::LeanActivations), at(Action::SavedActivations));
    assert_eq!(saved, lean + CALM as u64, "{log:?}");
    // A decision at the boundary before step k (0-based) shows in record k + 1.
    let records = steps(&out, "activation_memory", "pool_peak");
    for (step, mode, _) in &records {
        let want = if (lean + 1..=saved).contains(step) { "lean" } else { "saved" };
        assert_eq!(mode, want, "step {step}: {records:?}");
    }
    if peaks_separate {
        let peaks = |m: &str| records.iter().filter(|r| r.1 == m).map(|r| r.2).collect::<Vec<u64>>();
        let (lean_max, saved_min) =
            (*peaks("lean").iter().max().unwrap(), *peaks("saved").iter().min().unwrap());
        assert!(
            lean_max < saved_min,
            "lean steps peaked at up to {lean_max} bytes, saved at {saved_min}: {records:?}"
        );
    }
}

#[test]
fn lean_activations_take_effect_cpu() {
    // A pool of its own: the process's shared one would mix in the other tests' peaks.
    lean_activations_take_effect(dfengine::backend::cpu::CpuBackend::with_budget(1 << 30).unwrap(), true);
}

#[cfg(feature = "cuda")]
#[test]
fn lean_activations_take_effect_cuda() {
    // The demo's step on the CUDA backend peaks in kernel scratch, the same in either mode.
    let Some((b, _)) = common::cuda_backend() else { return };
    lean_activations_take_effect(b, false);
}
