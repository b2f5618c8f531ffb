//! What to change, one function per rule. Each reads the config and the gathered report
//! and says nothing, a suggestion, or a warning; `advise` runs them in the order a user
//! reads them.

use super::{ProfileReport, SEARCH_LIMIT, at_most_limit};
use crate::config::{Config, format_bytes};
use crate::model::footprint::{largest_fitting, plan_step};

pub enum Advice {
    Suggestion(String),
    Warning(String),
}

type Rule = fn(&Config, &ProfileReport) -> Option<Advice>;

const RULES: [Rule; 8] = [
    step_does_not_fit,
    largest_batch_size,
    largest_max_frames,
    mixed_precision,
    num_workers,
    pin_memory,
    frame_cache,
    rehearsal_failed,
];

pub fn advise(config: &Config, report: &ProfileReport) -> Vec<Advice> {
    RULES.iter().filter_map(|rule| rule(config, report)).collect()
}

fn step_does_not_fit(_: &Config, r: &ProfileReport) -> Option<Advice> {
    let total = r.footprint.total();
    (total > r.budget).then(|| {
        Advice::Warning(format!(
            "a step of batch_size = {} × max_frames = {} plans {} against a budget of {}: it does not fit",
            r.micro_batch,
            r.frames,
            format_bytes(total),
            format_bytes(r.budget)
        ))
    })
}

fn largest_batch_size(config: &Config, r: &ProfileReport) -> Option<Advice> {
    let frames = r.frames;
    Some(match r.largest_batch_size {
        Some(b) => {
            let effective = config.effective_batch() as u64;
            let accumulation = effective.div_ceil(b.min(effective).max(1));
            Advice::Suggestion(format!(
                "largest batch_size at max_frames = {frames}: {} (planned {}); for the effective batch {effective} use batch_size = {} with accumulation_steps = {accumulation}",
                at_most_limit(b),
                format_bytes(plan_step(config, b, frames, r.mixed_precision, r.activation_mode).total()),
                effective.div_ceil(accumulation)
            ))
        }
        None => Advice::Warning(format!(
            "even batch_size = 1 at max_frames = {frames} exceeds the budget {}: lower max_frames or input_size",
            format_bytes(r.budget)
        )),
    })
}

fn largest_max_frames(_: &Config, r: &ProfileReport) -> Option<Advice> {
    r.largest_max_frames.map(|f| {
        Advice::Suggestion(format!(
            "largest max_frames at batch_size = {}: {}",
            r.micro_batch,
            at_most_limit(f)
        ))
    })
}

fn mixed_precision(config: &Config, r: &ProfileReport) -> Option<Advice> {
    if r.mixed_precision || r.gpu.is_none() {
        return None;
    }
    let with = largest_fitting(SEARCH_LIMIT, |b| {
        plan_step(config, b, r.frames, true, r.activation_mode).total() <= r.budget
    });
    Some(Advice::Suggestion(format!(
        "mixed_precision = true halves activation memory (largest batch_size would be {})",
        with.map_or("none".to_string(), at_most_limit)
    )))
}

/// Bytes of one batch of raw u8 frames, as the loader prefetches it.
fn raw_batch_bytes(config: &Config, r: &ProfileReport) -> u64 {
    r.micro_batch * r.frames * 3 * (config.data.frame_size as u64).pow(2)
}

fn available_host(r: &ProfileReport) -> u64 {
    r.host.memory.total.saturating_sub(r.host.memory.used)
}

fn num_workers(config: &Config, r: &ProfileReport) -> Option<Advice> {
    let prefetch = config.dataloader.prefetch_factor as u64;
    let raw_batch = raw_batch_bytes(config, r);
    let available = available_host(r);
    let cores = r.host.logical_cores;
    let by_ram = (available / 4 / (raw_batch * prefetch).max(1)) as usize;
    let workers = (cores.saturating_sub(1)).clamp(1, 8).min(by_ram.max(1));
    (config.dataloader.num_workers as usize != workers).then(|| {
        Advice::Suggestion(format!(
            "num_workers = {workers} ({cores} cores; prefetched batches would take {} of {} available host memory at the configured {})",
            format_bytes(raw_batch * prefetch * workers as u64),
            format_bytes(available),
            config.dataloader.num_workers
        ))
    })
}

fn pin_memory(_: &Config, r: &ProfileReport) -> Option<Advice> {
    let (pinned, available) = (r.host_plan.pinned, available_host(r));
    (pinned > available / 10).then(|| {
        Advice::Warning(format!(
            "pin_memory = true pins {} for its staging ring, more than 10% of the {} available: set pin_memory = false",
            format_bytes(pinned),
            format_bytes(available)
        ))
    })
}

fn frame_cache(config: &Config, r: &ProfileReport) -> Option<Advice> {
    config.data.enable_cache.then(|| {
        let per_video = r.frames * 3 * (config.data.frame_size as u64).pow(2);
        Advice::Suggestion(format!(
            "the frame cache holds {} per video at frame_size = {}: {} for FaceForensics++ (5,000 videos), {} for DFDC (119,000); disable it (enable_cache = false) when that exceeds your disk",
            format_bytes(per_video),
            config.data.frame_size,
            format_bytes(per_video * 5_000),
            format_bytes(per_video * 119_000)
        ))
    })
}

fn rehearsal_failed(_: &Config, r: &ProfileReport) -> Option<Advice> {
    r.rehearsal
        .failure
        .as_ref()
        .map(|f| Advice::Warning(format!("the pool rehearsal of one step failed: {f}")))
}
