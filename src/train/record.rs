//! What a run writes as it goes: one JSON line per step and per validation in
//! `metrics.jsonl`, and `summary.json` at the end.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{TrainError, io_err};
use super::metrics::Metrics;
use crate::model::footprint::ActivationMode;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
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
        /// The most the pool held allocated during this step.
        pool_peak: u64,
        /// What forward kept for backward: "saved" or "lean" (`activation_memory`, then
        /// the governor).
        activation_memory: ActivationMode,
        /// Bytes of network input handed to the backend this step: the stored u8 frames
        /// when the GPU preprocesses, else the FP16/FP32 input.
        input_bytes: u64,
        /// "gpu" or "cpu": where this step's stored frames were preprocessed.
        preprocess: &'static str,
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
    /// Page-locked host memory the staging ring held at the end (`pin_memory = true`).
    pub pinned_host_bytes: u64,
    pub peak_process_rss: u64,
    pub governor_actions: Vec<String>,
    pub skipped_steps: u64,
    pub interrupted: bool,
}

/// `metrics.jsonl` of a run, open for appending records.
pub struct RunLog {
    out: BufWriter<File>,
    path: PathBuf,
}

impl RunLog {
    /// Opens `dir/metrics.jsonl`: a resumed run continues its record, a fresh one starts
    /// its own.
    pub fn open(dir: &Path, resumed: bool) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let file = fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(RunLog { out: BufWriter::new(file), path })
    }

    /// Appends one record and flushes it, so that a crash loses nothing written.
    pub fn write(&mut self, r: &Record) -> Result<(), TrainError> {
        serde_json::to_writer(&mut self.out, r).expect("plain data serialises");
        self.out.write_all(b"\n").and_then(|_| self.out.flush()).map_err(io_err(&self.path))
    }
}

impl Summary {
    /// Writes `dir/summary.json`.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join("summary.json");
        fs::write(&path, serde_json::to_string_pretty(self).expect("plain data serialises"))
            .map_err(io_err(&path))
    }
}
