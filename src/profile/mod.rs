//! `dfengine profile`: what the machine has (`facts`), what a training step of the config
//! will need and a rehearsal of it through the pool (`rehearsal`), the host memory the
//! loader, staging and frame cache take (`host_plan`), what to change
//! (`advice`, one function per rule), and the report a user reads (`render`).

mod advice;
mod facts;
mod host_plan;
mod rehearsal;
mod render;
mod yardstick;

use serde::Serialize;

use crate::config::Config;
use crate::model::footprint::{
    ActivationMode, Footprint, largest_fitting, model_size, plan_step, resolve_mode,
};

pub use facts::{DeviceReport, HostReport, KernelFigure, REFERENCE_CARD_BYTES};
pub use host_plan::HostPlan;
pub use rehearsal::Rehearsal;
pub use yardstick::Yardstick;

/// The search limit for the largest batch_size / max_frames that fit.
const SEARCH_LIMIT: u64 = 4096;

#[derive(Debug, Serialize)]
pub struct ProfileReport {
    pub gpu: Option<DeviceReport>,
    pub gpu_missing: Option<String>,
    pub host: HostReport,
    pub budget: u64,
    pub budget_source: String,
    pub micro_batch: u64,
    pub frames: u64,
    pub mixed_precision: bool,
    /// What the step keeps for backward: `[train] activation_memory`, "auto" resolved.
    pub activation_mode: ActivationMode,
    pub footprint: Footprint,
    /// Planned bytes per frame kept for backward in `activation_mode`, the input included.
    pub planned_per_frame: u64,
    /// PyTorch AMP's saved bytes for the same backbone and frame size, where measured.
    pub pytorch_amp: Option<Yardstick>,
    /// Host memory beside the process: batches ahead, staging, the frame cache.
    pub host_plan: HostPlan,
    pub largest_batch_size: Option<u64>,
    pub largest_max_frames: Option<u64>,
    pub rehearsal: Rehearsal,
    pub kernels: Vec<KernelFigure>,
    pub suggestions: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn profile(config: &Config) -> ProfileReport {
    let machine = facts::gather(config);
    let mixed = config.train.mixed_precision;
    let (batch, frames) = (config.dataloader.batch_size as u64, config.data.max_frames as u64);
    let budget = machine.budget;
    let mode = resolve_mode(config, batch, frames, mixed, budget);
    let footprint = plan_step(config, batch, frames, mixed, mode);
    let fits = |clips: u64, frames: u64| {
        plan_step(config, clips, frames, mixed, resolve_mode(config, clips, frames, mixed, budget)).total()
            <= budget
    };
    let host_plan = HostPlan::of(config, machine.gpu.is_some());
    let mut report = ProfileReport {
        gpu: machine.gpu,
        gpu_missing: machine.gpu_missing,
        host: machine.host,
        budget,
        budget_source: machine.budget_source,
        micro_batch: batch,
        frames,
        mixed_precision: mixed,
        activation_mode: mode,
        footprint,
        planned_per_frame: {
            let side = config.model.input_size as u64;
            (model_size(config).kept_per_frame(mode) + 3 * side * side) * if mixed { 2 } else { 4 }
        },
        pytorch_amp: yardstick::pytorch_amp(config.model.backbone, config.model.input_size),
        host_plan,
        largest_batch_size: largest_fitting(SEARCH_LIMIT, |b| fits(b, frames)),
        largest_max_frames: largest_fitting(SEARCH_LIMIT, |f| fits(batch, f)),
        rehearsal: rehearsal::rehearse(config, budget, batch, frames, mixed, mode),
        kernels: facts::cpu_conv_figure(config).into_iter().collect(),
        suggestions: Vec::new(),
        warnings: Vec::new(),
    };
    for advice in advice::advise(config, &report) {
        match advice {
            advice::Advice::Suggestion(s) => report.suggestions.push(s),
            advice::Advice::Warning(w) => report.warnings.push(w),
        }
    }
    report
}

/// "4096 or more" where a search stopped at its limit.
fn at_most_limit(v: u64) -> String {
    if v >= SEARCH_LIMIT { format!("{v} or more") } else { v.to_string() }
}
