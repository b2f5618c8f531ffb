//! A training run: epochs of governed steps, validation after each, checkpoints (last,
//! best, and on Ctrl-C), `metrics.jsonl`, and `summary.json` with the test split
//! evaluated once, at the end, on the best checkpoint.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::checkpoint::{self, Progress};
use super::metrics::{Metrics, sigmoid};
use super::optimizer::Optimizer;
use super::scaler::LossScaler;
use super::schedule::Schedule;
use super::step::{StepSettings, infer, train_step};
use crate::backend::OpError;
use crate::backend::ops::Backend;
use crate::config::{Config, format_bytes};
use crate::data::loader::{EpochLoader, LoaderError, LoaderSettings, Workers};
use crate::data::sources::ClipSource;
use crate::data::splits::Splits;
use crate::memory::governor::Action;
use crate::memory::manager::MemoryManager;
use crate::model::arch::ResNetSpec;
use crate::model::resnet::ResNet;
use crate::model::weights::{TensorFile, WeightsError, load_pretrained};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("{0}")]
    Weights(#[from] WeightsError),
    #[error("{0}")]
    Loader(#[from] LoaderError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Input(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Set by Ctrl-C: the run finishes its step, writes a checkpoint and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // A second Ctrl-C: the user does not want to wait for the checkpoint.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Makes Ctrl-C stop the run cleanly (after the current step, with a checkpoint).
pub fn install_interrupt_handler() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Option<PathBuf>,
    /// No progress bar (tests, logs).
    pub quiet: bool,
    /// Stop after this many optimizer steps in total, as Ctrl-C does (checkpoint, no test
    /// evaluation): for smoke runs and throughput measurements.
    pub max_steps: Option<u64>,
}

/// The evaluation of one split: metrics and per-clip scores.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub metrics: Metrics,
    /// (clip name, label, probability of fake)
    pub scores: Vec<(String, f32, f64)>,
}

/// Every clip `loader` gives (an evaluation pass over `source`) through `net` in
/// inference mode.
pub fn evaluate<B: Backend>(
    b: &B,
    net: &ResNet<B>,
    source: &Arc<dyn ClipSource>,
    loader: EpochLoader,
    micro: &mut usize,
) -> Result<Evaluation, TrainError> {
    let (mut clip_p, mut clip_l, mut frame_p, mut frame_l) = (vec![], vec![], vec![], vec![]);
    let mut scores = Vec::new();
    for batch in loader {
        let batch = batch?;
        let (clips, frames) = infer(b, net, &batch, micro)?;
        for (i, (&c, &label)) in batch.clips.iter().zip(&batch.targets).enumerate() {
            let p = sigmoid(clips[i] as f64);
            clip_p.push(p);
            clip_l.push(label as f64);
            scores.push((source.name(c), label, p));
            for f in &frames[i * batch.frames_per_clip..(i + 1) * batch.frames_per_clip] {
                frame_p.push(sigmoid(*f as f64));
                frame_l.push(label as f64);
            }
        }
    }
    Ok(Evaluation { metrics: Metrics::compute(&clip_p, &clip_l, &frame_p, &frame_l), scores })
}

/// The network a checkpoint holds, built from the config stored in it.
pub fn load_checkpoint_model<B: Backend>(b: &B, path: &Path) -> Result<(Config, ResNet<B>), TrainError> {
    let file = TensorFile::read(path)?;
    let config = checkpoint::config_of(&file)?;
    let spec = ResNetSpec::of(config.model.backbone);
    let mut net = ResNet::new(b, spec, config.data.max_frames as usize, 0)?;
    checkpoint::load_model(b, &mut net, &file)?;
    Ok((config, net))
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Record {
    Step {
        epoch: u32,
        step: u64,
        loss: f64,
        lr: f64,
        scale: f32,
        grad_norm: f64,
        skipped: bool,
        clips_per_s: f64,
        micro_batch: u32,
        accumulation: u32,
        pool_allocated: u64,
        pool_reserved: u64,
    },
    Val {
        epoch: u32,
        step: u64,
        train_loss: f64,
        #[serde(flatten)]
        metrics: Metrics,
    },
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub backend: String,
    pub data: String,
    pub epochs: u32,
    pub steps: u64,
    pub best_epoch: Option<u32>,
    pub val: Option<Metrics>,
    pub test: Option<Metrics>,
    pub clips_per_s: f64,
    pub peak_pool_reserved: u64,
    pub peak_process_rss: u64,
    pub governor_actions: Vec<String>,
    pub skipped_steps: u64,
    pub interrupted: bool,
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
}

impl<B: Backend> Trainer<B> {
    pub fn new(b: B, config: Config, splits: Splits, opts: RunOptions) -> Result<Self, TrainError> {
        let spec = ResNetSpec::of(config.model.backbone);
        let frames = config.data.max_frames as usize;
        let mut net = ResNet::new(&b, spec, frames, config.train.seed)?;
        if !config.model.pretrained.is_empty() && opts.resume.is_none() {
            let file = TensorFile::read(Path::new(&config.model.pretrained))?;
            let r = load_pretrained(&b, &mut net, &file)?;
            eprintln!(
                "pretrained: {} tensors from {}{}{}",
                r.loaded,
                file.path.display(),
                if r.head_reinitialised { "; fc has another shape there: re-initialised" } else { "" },
                if r.unused.is_empty() {
                    String::new()
                } else {
                    format!("; unused: {}", r.unused.join(", "))
                }
            );
        }
        let t = &config.train;
        let opt = Optimizer::new(&b, t.optimizer, t.weight_decay as f32, &net.trainable_mut())?;
        let steps_per_epoch = steps_per_epoch(splits.train.len(), &config);
        let total = steps_per_epoch * t.epochs as u64;
        let schedule = Schedule::of(t, total);
        let scaler = LossScaler::of(t);
        let run_dir = PathBuf::from(&t.out_dir);
        let mut trainer = Trainer {
            b,
            config,
            net,
            opt,
            scaler,
            schedule,
            progress: Progress::default(),
            splits,
            run_dir,
            opts,
            workers: None,
        };
        if trainer.config.dataloader.persistent_workers {
            trainer.workers = Some(Workers::new(trainer.config.dataloader.num_workers as usize));
        }
        if let Some(path) = trainer.opts.resume.clone() {
            let file = TensorFile::read(&path)?;
            let theirs = checkpoint::config_of(&file)?;
            if theirs.model != trainer.config.model
                || theirs.data.max_frames != trainer.config.data.max_frames
            {
                return Err(TrainError::Input(format!(
                    "{}: trained with [model] {:?} and max_frames {}, the config asks for {:?} and {}",
                    path.display(),
                    theirs.model,
                    theirs.data.max_frames,
                    trainer.config.model,
                    trainer.config.data.max_frames
                )));
            }
            let (scaler, progress) =
                checkpoint::load_all(&trainer.b, &mut trainer.net, &mut trainer.opt, &file)?;
            trainer.scaler = scaler;
            trainer.progress = progress;
            eprintln!(
                "resuming {} at epoch {}, batch {}, step {}",
                path.display(),
                progress.epoch + 1,
                progress.batch,
                progress.step
            );
        }
        Ok(trainer)
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
        match &self.workers {
            Some(w) => EpochLoader::start_on(w.clone(), source.clone(), s, epoch, first),
            None => EpochLoader::start_at(source.clone(), s, epoch, first),
        }
    }

    fn save(&self, name: &str) -> Result<(), TrainError> {
        let path = self.run_dir.join(name);
        checkpoint::save(&path, &self.b, &self.net, &self.opt, &self.scaler, &self.progress, &self.config)?;
        Ok(())
    }

    /// Trains to the last epoch (or until Ctrl-C), then evaluates the best checkpoint on
    /// the test split. `mm` watches memory and decides the micro-batch.
    pub fn run(&mut self, mm: &mut MemoryManager) -> Result<Summary, TrainError> {
        fs::create_dir_all(&self.run_dir).map_err(io_err(&self.run_dir))?;
        let config_copy = self.run_dir.join("config.toml");
        fs::write(&config_copy, toml::to_string(&self.config).unwrap_or_default())
            .map_err(io_err(&config_copy))?;
        let metrics_path = self.run_dir.join("metrics.jsonl");
        // A resumed run continues its record; a fresh one starts its own.
        let resumed = self.opts.resume.is_some();
        let mut metrics = BufWriter::new(
            fs::OpenOptions::new()
                .create(true)
                .append(resumed)
                .write(true)
                .truncate(!resumed)
                .open(&metrics_path)
                .map_err(io_err(&metrics_path))?,
        );
        let epochs = self.config.train.epochs;
        let (mut clips_done, mut train_time) = (0usize, 0.0f64);
        let mut peak_reserved = 0u64;
        let mut best_val: Option<Metrics> = None;
        let mut interrupted = false;
        let started_epoch = self.progress.epoch;
        'epochs: for epoch in started_epoch..epochs {
            let first = if epoch == started_epoch { self.progress.batch } else { 0 };
            let loader = self.loader(&self.splits.train, true, epoch as u64, first);
            let bar = self.bar(loader.batches() as u64, epoch);
            bar.set_position(first as u64);
            let (mut loss_sum, mut loss_n) = (0.0, 0usize);
            for batch in loader {
                let batch = batch?;
                let (decisions, plan) = mm.step_boundary(self.progress.step, Some(&self.b.pool_stats()));
                for d in &decisions {
                    if d.action == Action::TrimPool {
                        self.b.trim_pool();
                    }
                    bar.suspend(|| eprintln!("governor: {d}"));
                }
                let lr = self.schedule.lr_at(self.progress.step);
                let settings = StepSettings::of(&self.config.train, lr);
                let t0 = Instant::now();
                let step = self.progress.step;
                let report = train_step(
                    &self.b,
                    &mut self.net,
                    &mut self.opt,
                    &mut self.scaler,
                    &batch,
                    plan,
                    &settings,
                    |e| {
                        let plan = mm.governor().on_out_of_memory(step, &e.to_string()).ok()?;
                        bar.suspend(|| {
                            eprintln!(
                                "governor: out of memory in step {step}, micro-batch now {}",
                                plan.micro_batch
                            )
                        });
                        Some(plan)
                    },
                )?;
                let dt = t0.elapsed().as_secs_f64();
                clips_done += batch.clips.len();
                train_time += dt;
                self.progress.step += 1;
                self.progress.batch += 1;
                let pool = self.b.pool_stats();
                peak_reserved = peak_reserved.max(pool.reserved_bytes as u64);
                loss_sum += report.loss;
                loss_n += 1;
                let record = Record::Step {
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
                };
                write_record(&mut metrics, &record, &metrics_path)?;
                bar.set_message(format!(
                    "loss {:.4}  {:.1} clips/s  mem {}/{}",
                    loss_sum / loss_n as f64,
                    clips_done as f64 / train_time.max(1e-9),
                    format_bytes(pool.reserved_bytes as u64),
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
                    interrupted = true;
                    break 'epochs;
                }
            }
            bar.finish_and_clear();
            let mut micro = mm.governor().plan().micro_batch as usize;
            let val = evaluate(
                &self.b,
                &self.net,
                &self.splits.val,
                self.loader(&self.splits.val, false, 0, 0),
                &mut micro,
            )?;
            let train_loss = loss_sum / loss_n.max(1) as f64;
            let m = val.metrics;
            write_record(
                &mut metrics,
                &Record::Val { epoch, step: self.progress.step, train_loss, metrics: m },
                &metrics_path,
            )?;
            self.progress.epoch = epoch + 1;
            self.progress.batch = 0;
            let improved = self.progress.improves_on_best(&m);
            if improved {
                self.progress.best_val_auc = Some(m.clip_auc);
                self.progress.best_val_log_loss = Some(m.log_loss);
                self.progress.best_epoch = Some(epoch + 1);
                best_val = Some(m);
                self.save("best.safetensors")?;
            }
            self.save("last.safetensors")?;
            eprintln!(
                "epoch {}/{epochs}: train loss {train_loss:.4} | val clip AUC {:.4}, frame AUC {:.4}, ACC {:.3}, EER {:.3}, log loss {:.4}{}",
                epoch + 1,
                m.clip_auc,
                m.frame_auc,
                m.acc,
                m.eer,
                m.log_loss,
                if improved { " (best)" } else { "" }
            );
        }
        metrics.flush().map_err(io_err(&metrics_path))?;

        let test = if interrupted { None } else { Some(self.test_on_best(mm)?) };
        let stats = mm.memory_stats();
        let summary = Summary {
            backend: self.b.name(),
            data: self.splits.description.clone(),
            epochs: self.progress.epoch,
            steps: self.progress.step,
            best_epoch: self.progress.best_epoch,
            val: best_val,
            test,
            clips_per_s: clips_done as f64 / train_time.max(1e-9),
            peak_pool_reserved: peak_reserved,
            peak_process_rss: stats.peak_process_rss,
            governor_actions: mm.governor().log().iter().map(ToString::to_string).collect(),
            skipped_steps: self.scaler.skipped,
            interrupted,
        };
        let path = self.run_dir.join("summary.json");
        fs::write(&path, serde_json::to_string_pretty(&summary).expect("plain data serialises"))
            .map_err(io_err(&path))?;
        Ok(summary)
    }

    /// The test split, once, with the best checkpoint's weights.
    fn test_on_best(&mut self, mm: &mut MemoryManager) -> Result<Metrics, TrainError> {
        let best = self.run_dir.join("best.safetensors");
        if best.is_file() {
            checkpoint::load_model(&self.b, &mut self.net, &TensorFile::read(&best)?)?;
        }
        let mut micro = mm.governor().plan().micro_batch as usize;
        let loader = self.loader(&self.splits.test, false, 0, 0);
        let test = evaluate(&self.b, &self.net, &self.splits.test, loader, &mut micro)?;
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

fn write_record(out: &mut BufWriter<File>, r: &Record, path: &Path) -> Result<(), TrainError> {
    serde_json::to_writer(&mut *out, r).expect("plain data serialises");
    out.write_all(b"\n").and_then(|_| out.flush()).map_err(io_err(path))
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

fn steps_per_epoch(train_clips: usize, config: &Config) -> u64 {
    (train_clips as u64).div_ceil(config.effective_batch() as u64).max(1)
}
