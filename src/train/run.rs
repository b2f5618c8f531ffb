//! A training run: epochs of governed steps, validation after each, checkpoints (last,
//! best, and on Ctrl-C), `metrics.jsonl`, and `summary.json` with the test split
//! evaluated once, at the end, on the best checkpoint.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, Progress};
use super::error::{TrainError, io_err};
use super::evaluate::evaluate;
use super::interrupt::INTERRUPTED;
use super::metrics::Metrics;
use super::optimizer::Optimizer;
use super::record::{Record, RunLog, Summary};
use super::scaler::LossScaler;
use super::schedule::Schedule;
use super::step::{PreprocessOn, StepSettings, train_step};
use crate::backend::ops::Backend;
use crate::config::{ActivationMemory, Config, PreprocessDevice, VramBudget, format_bytes};
use crate::data::loader::{Batch, EpochLoader, LoaderControl, LoaderSettings, Pixels, Workers};
use crate::data::sources::ClipSource;
use crate::data::splits::Splits;
use crate::memory::governor::{Action, Switches};
use crate::memory::manager::MemoryManager;
use crate::model::arch::ResNetSpec;
use crate::model::footprint::{ActivationMode, PlanDevice, plan_step_on, resolve_mode};
use crate::model::resnet::ResNet;
use crate::model::weights::{TensorFile, load_pretrained};
use crate::tensor::DType;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Option<PathBuf>,
    /// No progress bar (tests, logs).
    pub quiet: bool,
    /// Stop after this many optimizer steps in total, as Ctrl-C does (checkpoint, no test
    /// evaluation): for smoke runs and throughput measurements.
    pub max_steps: Option<u64>,
}

pub struct Trainer<B: Backend> {
    b: B,
    config: Config,
    net: ResNet<B>,
    opt: Optimizer<B>,
    scaler: LossScaler,
    schedule: Schedule,
    progress: Progress,
    splits: Splits,
    run_dir: PathBuf,
    opts: RunOptions,
    /// The loader threads every epoch shares when `persistent_workers` is on.
    workers: Option<Arc<Workers>>,
    /// Where stored frames are preprocessed now (`[gpu] preprocess`, then the governor).
    preprocess: PreprocessOn,
    /// What the governor changes in the running loaders: CPU preprocessing on the
    /// workers (whenever `preprocess` is `Host`) and the batches made ahead.
    control: Arc<LoaderControl>,
}

/// Training throughput and memory over a run.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    clips: usize,
    secs: f64,
    peak_reserved: u64,
}

impl Tally {
    fn clips_per_s(&self) -> f64 {
        self.clips as f64 / self.secs.max(1e-9)
    }
}

/// How an epoch's training pass ended.
enum EpochEnd {
    /// Every batch trained; the mean loss over them.
    Completed { train_loss: f64 },
    /// Ctrl-C or the step limit: a checkpoint is written, the run stops.
    Stopped,
}

impl<B: Backend> Trainer<B> {
    pub fn new(b: B, config: Config, splits: Splits, opts: RunOptions) -> Result<Self, TrainError> {
        let spec = ResNetSpec::of(config.model.backbone);
        let mut net = ResNet::new(&b, spec, config.data.max_frames as usize, config.train.seed)?;
        net.activations = DType::activations(config.train.mixed_precision);
        net.activation_mode = resolve_mode(
            &config,
            config.dataloader.batch_size as u64,
            config.data.max_frames as u64,
            config.train.mixed_precision,
            b.pool_stats().budget_bytes as u64,
        );
        if !config.model.pretrained.is_empty() && opts.resume.is_none() {
            load_pretrained_weights(&b, &mut net, Path::new(&config.model.pretrained))?;
        }
        let t = &config.train;
        let opt = Optimizer::new(&b, t.optimizer, t.weight_decay as f32, &net.trainable_mut())?;
        let schedule = Schedule::of(t, steps_per_epoch(splits.train.len(), &config) * t.epochs as u64);
        let workers = config
            .dataloader
            .persistent_workers
            .then(|| Workers::new(config.dataloader.num_workers as usize));
        let (preprocess, warning) = preprocess_on(&config, b.on_gpu());
        for w in warning.into_iter().chain(pin_memory_unused(&config, b.on_gpu())) {
            eprintln!("warning: {w}");
        }
        let control = LoaderControl::new(preprocess == PreprocessOn::Host);
        let mut trainer = Trainer {
            preprocess,
            control,
            scaler: LossScaler::of(t),
            run_dir: PathBuf::from(&t.out_dir),
            b,
            config,
            net,
            opt,
            schedule,
            progress: Progress::default(),
            splits,
            opts,
            workers,
        };
        if let Some(path) = trainer.opts.resume.clone() {
            trainer.resume(&path)?;
        }
        Ok(trainer)
    }

    /// Continues from a checkpoint of the same model: weights, optimizer state, loss
    /// scaler and the position in the run.
    fn resume(&mut self, path: &Path) -> Result<(), TrainError> {
        let file = TensorFile::read(path)?;
        let theirs = checkpoint::config_of(&file)?;
        if let Some(difference) = model_difference(&theirs, &self.config) {
            return Err(TrainError::Input(format!("{}: {difference}", path.display())));
        }
        let (scaler, progress) = checkpoint::load_all(&self.b, &mut self.net, &mut self.opt, &file)?;
        self.scaler = scaler;
        self.progress = progress;
        eprintln!(
            "resuming {} at epoch {}, batch {}, step {}",
            path.display(),
            progress.epoch + 1,
            progress.batch,
            progress.step
        );
        Ok(())
    }

    pub fn net(&self) -> &ResNet<B> {
        &self.net
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// An epoch of `source` on the run's loader threads (kept across epochs with
    /// `persistent_workers`).
    fn loader(&self, source: &Arc<dyn ClipSource>, train: bool, epoch: u64, first: usize) -> EpochLoader {
        let s = loader_settings(&self.config, train);
        let workers = match &self.workers {
            Some(w) => w.clone(),
            None => Workers::new(s.num_workers.clamp(1, source.len().div_ceil(s.batch_size.max(1)).max(1))),
        };
        EpochLoader::start_on(workers, source.clone(), s, epoch, first, self.control.clone())
    }

    fn save(&self, name: &str) -> Result<(), TrainError> {
        let path = self.run_dir.join(name);
        checkpoint::save(&path, &self.b, &self.net, &self.opt, &self.scaler, &self.progress, &self.config)?;
        Ok(())
    }

    /// Trains to the last epoch (or until Ctrl-C), then evaluates the best checkpoint on
    /// the test split. `mm` watches memory and decides the micro-batch.
    pub fn run(&mut self, mm: &mut MemoryManager) -> Result<Summary, TrainError> {
        self.connect(mm);
        fs::create_dir_all(&self.run_dir).map_err(io_err(&self.run_dir))?;
        let config_copy = self.run_dir.join("config.toml");
        fs::write(&config_copy, toml::to_string(&self.config).unwrap_or_default())
            .map_err(io_err(&config_copy))?;
        let mut log = RunLog::open(&self.run_dir, self.opts.resume.is_some())?;
        let mut tally = Tally::default();
        let mut best_val: Option<Metrics> = None;
        let mut interrupted = false;
        for epoch in self.progress.epoch..self.config.train.epochs {
            match self.train_epoch(epoch, mm, &mut log, &mut tally)? {
                EpochEnd::Completed { train_loss } => {
                    if let Some(m) = self.end_epoch(epoch, train_loss, mm, &mut log)? {
                        best_val = Some(m);
                    }
                }
                EpochEnd::Stopped => {
                    interrupted = true;
                    break;
                }
            }
        }
        let test = if interrupted { None } else { Some(self.test_on_best(mm)?) };
        let summary = Summary {
            backend: self.b.name(),
            data: self.splits.description.clone(),
            epochs: self.progress.epoch,
            steps: self.progress.step,
            best_epoch: self.progress.best_epoch,
            val: best_val,
            test,
            clips_per_s: tally.clips_per_s(),
            peak_pool_reserved: tally.peak_reserved,
            pinned_host_bytes: self.b.pinned_bytes() as u64,
            peak_process_rss: mm.memory_stats().peak_process_rss,
            governor_actions: mm.governor().log().iter().map(ToString::to_string).collect(),
            skipped_steps: self.scaler.skipped,
            interrupted,
        };
        summary.write(&self.run_dir)?;
        Ok(summary)
    }

    /// Tells the governor which switches this run can make, and registers the caches its
    /// "clear caches" empties: each split's frame cache (splits may share one; the first
    /// clear frees it).
    fn connect(&self, mm: &mut MemoryManager) {
        mm.governor().set_switches(Switches {
            preprocess_to_cpu: self.preprocess == PreprocessOn::Device,
            fewer_prefetch: self.config.dataloader.prefetch_factor > 1,
            lean_activations: self.config.train.activation_memory == ActivationMemory::Auto
                && self.net.activation_mode == ActivationMode::Saved,
        });
        for (split, source) in
            [("train", &self.splits.train), ("val", &self.splits.val), ("test", &self.splits.test)]
        {
            let source = source.clone();
            mm.register_cleanup_callback(&format!("frame cache ({split} clips)"), move || {
                source.clear_memory()
            });
        }
    }

    /// Where stored frames are preprocessed now.
    pub fn preprocess(&self) -> PreprocessOn {
        self.preprocess
    }

    /// The loaders' control (for tests that watch what the governor changes).
    pub fn loader_control(&self) -> &Arc<LoaderControl> {
        &self.control
    }

    /// Carries out a governor decision; returns what it freed or changed, for the log.
    fn carry_out(&mut self, action: Action) -> Option<String> {
        match action {
            // The manager ran the cleanup callbacks already; the pool gives back what
            // the cleared caches and the trim left free.
            Action::TrimPool | Action::ClearCaches => {
                Some(format!("{} returned to the system", format_bytes(self.b.trim_pool() as u64)))
            }
            Action::PreprocessOnCpu | Action::PreprocessOnGpu => {
                let host = action == Action::PreprocessOnCpu;
                self.preprocess = if host { PreprocessOn::Host } else { PreprocessOn::Device };
                self.control.set_prepare_on_cpu(host);
                None
            }
            Action::ReducePrefetch | Action::RestorePrefetch => {
                self.control.set_fewer_ahead(action == Action::ReducePrefetch);
                None
            }
            Action::LeanActivations | Action::SavedActivations => {
                let lean = action == Action::LeanActivations;
                self.net.activation_mode = if lean { ActivationMode::Lean } else { ActivationMode::Saved };
                None
            }
            // The plan `step_boundary` returned carries these.
            Action::ShrinkMicroBatch(_) | Action::GrowMicroBatch(_) => None,
        }
    }

    /// The training pass of `epoch` (from the batch a resumed run stopped at).
    fn train_epoch(
        &mut self,
        epoch: u32,
        mm: &mut MemoryManager,
        log: &mut RunLog,
        tally: &mut Tally,
    ) -> Result<EpochEnd, TrainError> {
        let first = if epoch == self.progress.epoch { self.progress.batch } else { 0 };
        let loader = self.loader(&self.splits.train, true, epoch as u64, first);
        let bar = self.bar(loader.batches() as u64, epoch);
        bar.set_position(first as u64);
        let (mut loss_sum, mut loss_n) = (0.0, 0usize);
        for batch in loader {
            let record = self.governed_step(&batch?, epoch, mm, &bar, tally)?;
            log.write(&record)?;
            if let Record::Step { loss, .. } = record {
                loss_sum += loss;
                loss_n += 1;
            }
            bar.set_message(format!(
                "loss {:.4}  {:.1} clips/s  mem {}/{}",
                loss_sum / loss_n as f64,
                tally.clips_per_s(),
                format_bytes(self.b.pool_stats().reserved_bytes as u64),
                self.config.gpu.vram_budget
            ));
            bar.inc(1);
            let at_limit = self.opts.max_steps.is_some_and(|m| self.progress.step >= m);
            if INTERRUPTED.load(Ordering::SeqCst) || at_limit {
                bar.abandon();
                self.save("last.safetensors")?;
                eprintln!(
                    "{}: checkpoint {} written at epoch {}, batch {}; continue with --resume",
                    if at_limit { "step limit reached" } else { "interrupted" },
                    self.run_dir.join("last.safetensors").display(),
                    epoch + 1,
                    self.progress.batch
                );
                return Ok(EpochEnd::Stopped);
            }
        }
        bar.finish_and_clear();
        Ok(EpochEnd::Completed { train_loss: loss_sum / loss_n.max(1) as f64 })
    }

    /// One optimizer step on `batch`: the governor's decisions at the step boundary are
    /// carried out, an out-of-memory inside the step shrinks the micro-batch and redoes it.
    fn governed_step(
        &mut self,
        batch: &Batch,
        epoch: u32,
        mm: &mut MemoryManager,
        bar: &ProgressBar,
        tally: &mut Tally,
    ) -> Result<Record, TrainError> {
        let (decisions, plan) = mm.step_boundary(self.progress.step, Some(&self.b.pool_stats()));
        for d in &decisions {
            let effect = self.carry_out(d.action).map_or(String::new(), |e| format!(": {e}"));
            bar.suspend(|| eprintln!("governor: {d}{effect}"));
        }
        let lr = self.schedule.lr_at(self.progress.step);
        let settings =
            StepSettings { preprocess: self.preprocess, ..StepSettings::of(&self.config.train, lr) };
        let step = self.progress.step;
        // What the governor shrinks to on an out-of-memory: the largest micro-batch whose
        // planned step on this backend's pool fits its budget, in this run's activation mode.
        let (config, mode, budget) =
            (&self.config, self.net.activation_mode, self.b.pool_stats().budget_bytes as u64);
        let device = PlanDevice::of(&self.b);
        let fits = |m: u32| {
            let (frames, mixed) = (config.data.max_frames as u64, config.train.mixed_precision);
            plan_step_on(device, config, m as u64, frames, mixed, mode).total() <= budget
        };
        self.b.reset_pool_peaks();
        let t0 = Instant::now();
        let report = train_step(
            &self.b,
            &mut self.net,
            &mut self.opt,
            &mut self.scaler,
            batch,
            plan,
            &settings,
            |e| {
                let plan = mm.on_out_of_memory(step, &e.to_string(), fits)?;
                bar.suspend(|| eprintln!("governor: out of memory in step {step}, now {plan}"));
                Some(plan)
            },
        )?;
        let dt = t0.elapsed().as_secs_f64();
        tally.clips += batch.clips.len();
        tally.secs += dt;
        self.progress.step += 1;
        self.progress.batch += 1;
        let pool = self.b.pool_stats();
        tally.peak_reserved = tally.peak_reserved.max(pool.reserved_bytes as u64);
        Ok(Record::Step {
            epoch,
            step: self.progress.step,
            loss: report.loss,
            lr,
            scale: self.scaler.scale,
            grad_norm: report.grad_norm,
            skipped: report.skipped,
            clips_per_s: batch.clips.len() as f64 / dt,
            micro_batch: report.plan.micro_batch,
            accumulation: report.plan.accumulation,
            pool_allocated: pool.allocated_bytes as u64,
            pool_reserved: pool.reserved_bytes as u64,
            pool_peak: pool.peak_allocated_bytes as u64,
            activation_memory: self.net.activation_mode,
            input_bytes: report.input_bytes as u64,
            // A batch the loader threads preprocessed (made before a switch back to the
            // GPU) is uploaded as it is.
            preprocess: match (&batch.pixels, settings.preprocess) {
                (Pixels::Stored(_), PreprocessOn::Device) if self.b.on_gpu() => "gpu",
                _ => "cpu",
            },
        })
    }

    /// Validation after `epoch`, its record, and the checkpoints (best when it improved,
    /// last always). Returns the metrics when they are the best so far.
    fn end_epoch(
        &mut self,
        epoch: u32,
        train_loss: f64,
        mm: &mut MemoryManager,
        log: &mut RunLog,
    ) -> Result<Option<Metrics>, TrainError> {
        let mut micro = mm.governor().plan().micro_batch as usize;
        let loader = self.loader(&self.splits.val, false, 0, 0);
        let m = evaluate(&self.b, &self.net, &self.splits.val, loader, &mut micro, self.preprocess)?.metrics;
        log.write(&Record::Val { epoch, step: self.progress.step, train_loss, metrics: m })?;
        self.progress.epoch = epoch + 1;
        self.progress.batch = 0;
        let improved = self.progress.improves_on_best(&m);
        if improved {
            self.progress.best_val_auc = Some(m.clip_auc);
            self.progress.best_val_log_loss = Some(m.log_loss);
            self.progress.best_epoch = Some(epoch + 1);
            self.save("best.safetensors")?;
        }
        self.save("last.safetensors")?;
        eprintln!(
            "epoch {}/{}: train loss {train_loss:.4} | val clip AUC {:.4}, frame AUC {:.4}, ACC {:.3}, EER {:.3}, log loss {:.4}{}",
            epoch + 1,
            self.config.train.epochs,
            m.clip_auc,
            m.frame_auc,
            m.acc,
            m.eer,
            m.log_loss,
            if improved { " (best)" } else { "" }
        );
        Ok(improved.then_some(m))
    }

    /// The test split, once, with the best checkpoint's weights.
    fn test_on_best(&mut self, mm: &mut MemoryManager) -> Result<Metrics, TrainError> {
        let best = self.run_dir.join("best.safetensors");
        if best.is_file() {
            checkpoint::load_model(&self.b, &mut self.net, &TensorFile::read(&best)?)?;
        }
        let mut micro = mm.governor().plan().micro_batch as usize;
        let loader = self.loader(&self.splits.test, false, 0, 0);
        let test = evaluate(&self.b, &self.net, &self.splits.test, loader, &mut micro, self.preprocess)?;
        Ok(test.metrics)
    }

    fn bar(&self, len: u64, epoch: u32) -> ProgressBar {
        if self.opts.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, self.config.train.epochs));
        bar
    }
}

/// The loader of a run: batches of the effective batch size (the step splits them into
/// micro-batches), augmentation and shuffling when `train`.
pub fn loader_settings(c: &Config, train: bool) -> LoaderSettings {
    LoaderSettings {
        batch_size: c.effective_batch() as usize,
        num_workers: c.dataloader.num_workers as usize,
        prefetch_factor: c.dataloader.prefetch_factor as usize,
        input_size: c.model.input_size as usize,
        seed: c.train.seed,
        train,
        max_bad_fraction: c.data.max_bad_fraction,
    }
}

/// Where a run preprocesses, from `[gpu] preprocess` and whether the backend is a GPU,
/// with a warning naming the key when it asks for what this run cannot do.
/// `"auto"` takes the GPU when its planned step, the u8 frames it uploads included, fits
/// `vram_budget` (an "auto" budget is the card's: it fits).
pub fn preprocess_on(c: &Config, gpu: bool) -> (PreprocessOn, Option<String>) {
    match c.gpu.preprocess {
        PreprocessDevice::Cpu => (PreprocessOn::Host, None),
        PreprocessDevice::Gpu if gpu => (PreprocessOn::Device, None),
        PreprocessDevice::Gpu => (
            PreprocessOn::Host,
            Some(
                "[gpu] preprocess = \"gpu\": this run has no GPU; preprocessing on the CPU (loader threads)"
                    .into(),
            ),
        ),
        PreprocessDevice::Auto if gpu && staging_fits(c) => (PreprocessOn::Device, None),
        PreprocessDevice::Auto => (PreprocessOn::Host, None),
    }
}

/// A warning when `[dataloader] pin_memory = true` asks for staging a run without a GPU
/// cannot use: nothing crosses a bus, so nothing is pinned.
pub fn pin_memory_unused(c: &Config, gpu: bool) -> Option<String> {
    (c.dataloader.pin_memory && !gpu).then(|| {
        "[dataloader] pin_memory = true: this run has no GPU; nothing is uploaded, so nothing is pinned"
            .into()
    })
}

/// Whether a micro-batch's step, the stored frames uploaded for the GPU's preprocessing
/// included (the planner counts them), fits `vram_budget`.
fn staging_fits(c: &Config) -> bool {
    match c.gpu.vram_budget {
        VramBudget::Auto => true,
        VramBudget::Bytes(budget) => {
            let (micro, frames, mixed) =
                (c.dataloader.batch_size as u64, c.data.max_frames as u64, c.train.mixed_precision);
            let mode = resolve_mode(c, micro, frames, mixed, budget);
            let plan = crate::model::footprint::plan_step(c, micro, frames, mixed, mode);
            plan.total() <= budget
        }
    }
}

fn steps_per_epoch(train_clips: usize, config: &Config) -> u64 {
    (train_clips as u64).div_ceil(config.effective_batch() as u64).max(1)
}

/// Loads a torchvision-named state dict into `net` and says what it did.
fn load_pretrained_weights<B: Backend>(b: &B, net: &mut ResNet<B>, path: &Path) -> Result<(), TrainError> {
    let file = TensorFile::read(path)?;
    let r = load_pretrained(b, net, &file)?;
    eprintln!(
        "pretrained: {} tensors from {}{}{}",
        r.loaded,
        file.path.display(),
        if r.head_reinitialised { "; fc has another shape there: re-initialised" } else { "" },
        if r.unused.is_empty() { String::new() } else { format!("; unused: {}", r.unused.join(", ")) }
    );
    Ok(())
}

/// What keeps a checkpoint from continuing under `ours`, in the config's words: a
/// different `[model]` or `max_frames`.
fn model_difference(theirs: &Config, ours: &Config) -> Option<String> {
    let words = |c: &Config| -> Vec<String> {
        let mut keys: Vec<String> =
            toml::to_string(&c.model).unwrap_or_default().lines().map(|l| format!("[model] {l}")).collect();
        keys.push(format!("[data] max_frames = {}", c.data.max_frames));
        keys
    };
    let (t, o) = (words(theirs), words(ours));
    let differ: Vec<(&String, &String)> = t.iter().zip(&o).filter(|(a, b)| a != b).collect();
    if differ.is_empty() {
        return None;
    }
    Some(format!(
        "trained with {}; the config asks for {}",
        differ.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>().join(", "),
        differ.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>().join(", ")
    ))
}
