//! The governor: the one place that decides what to do about memory pressure.
//!
//! Policy. At each step boundary the governor reads the latest sample. When GPU or host
//! use passes its threshold it escalates one level per observation:
//!   1. trim the pool (free granules back to the driver);
//!   2. clear caches (frame cache, autotune workspaces, registered callbacks);
//!   3. GPU pressure: preprocess on the CPU; host pressure: fewer prefetched batches —
//!      each only where the run can make that switch (`Switches`); where it cannot,
//!      this level is passed over without a word;
//!   4. first, where the run keeps "saved" activations because `activation_memory =
//!      "auto"` found them to fit, lean activations (recomputed in backward: about 40%
//!      less activation memory at the same micro-batch); then a smaller micro-batch with
//!      more accumulation steps — repeated while pressure lasts, down to micro-batch 1. The
//!      effective batch (micro × accumulation) never changes: micro-batches are always
//!      divisors of it.
//!
//! After `calm_steps` consecutive calm observations (below threshold − `HYSTERESIS`) it
//! steps back one level, undoing the most recent lasting change. Every action is logged
//! with the figures that caused it. The trainer asks `plan()` once per step.

use std::fmt;

use super::sample::{MemorySample, usage};

/// Use must fall this far below a threshold to count as calm, so that a run hovering at
/// the threshold does not flap between levels.
pub const HYSTERESIS: f64 = 0.05;

#[derive(Debug, Clone, PartialEq)]
pub struct GovernorConfig {
    pub gpu_threshold: f64,
    pub cpu_threshold: f64,
    /// Calm observations before stepping back one level.
    pub calm_steps: u64,
    /// Force a trim + cache clear every this many steps; 0 never.
    pub force_cleanup_every: u64,
    pub effective_batch: u32,
    pub micro_batch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    pub micro_batch: u32,
    pub accumulation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    TrimPool,
    ClearCaches,
    PreprocessOnCpu,
    PreprocessOnGpu,
    ReducePrefetch,
    RestorePrefetch,
    LeanActivations,
    SavedActivations,
    ShrinkMicroBatch(BatchPlan),
    GrowMicroBatch(BatchPlan),
}

/// "micro-batch 2 × 4 accumulation", as the config would say it.
impl fmt::Display for BatchPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "micro-batch {} × {} accumulation", self.micro_batch, self.accumulation)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::TrimPool => f.write_str("trim the pool"),
            Action::ClearCaches => f.write_str("clear caches"),
            Action::PreprocessOnCpu => f.write_str("preprocess on the CPU"),
            Action::PreprocessOnGpu => f.write_str("preprocess on the GPU again"),
            Action::ReducePrefetch => f.write_str("prefetch fewer batches"),
            Action::RestorePrefetch => f.write_str("restore prefetching"),
            Action::LeanActivations => f.write_str("keep lean activations (recomputed in backward)"),
            Action::SavedActivations => f.write_str("keep saved activations again"),
            Action::ShrinkMicroBatch(p) | Action::GrowMicroBatch(p) => {
                let verb = if matches!(self, Action::ShrinkMicroBatch(_)) { "shrink" } else { "grow" };
                write!(f, "{verb} to {p}")
            }
        }
    }
}

/// An action, when, and the figures that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub step: u64,
    pub action: Action,
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {} ({})", self.step, self.action, self.reason)
    }
}

/// The switches a run can make: preprocessing can move to the CPU only when it runs on
/// the GPU, prefetching can only fall when more than one batch per worker is made ahead,
/// and activations can turn lean only when "auto" chose "saved". The trainer says which,
/// from its backend and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    pub preprocess_to_cpu: bool,
    pub fewer_prefetch: bool,
    pub lean_activations: bool,
}

/// A lasting change above level 3, undone last-first when calm returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lasting {
    /// The micro-batch shrank from this plan.
    Shrunk(BatchPlan),
    Lean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShrinkError {
    /// Micro-batch 1 already; nothing left to give.
    AtMinimum,
}

/// Level 0 is calm; 1 trimmed; 2 caches cleared; 3 the level-3 switch is on; every level
/// above 3 is one lasting change (lean activations, or a micro-batch shrink), so stepping
/// back from there undoes the latest.
pub struct Governor {
    cfg: GovernorConfig,
    level: u32,
    /// What level 3 switched (CPU preprocessing or less prefetch), to undo on the way down.
    level3: Option<Action>,
    plan: BatchPlan,
    switches: Switches,
    /// The changes above level 3, most recent last: stepping back is their exact inverse.
    lasting: Vec<Lasting>,
    calm: u64,
    log: Vec<Decision>,
}

impl Governor {
    pub fn new(cfg: GovernorConfig) -> Self {
        let micro = largest_divisor_at_most(cfg.effective_batch, cfg.micro_batch.max(1));
        let plan = BatchPlan { micro_batch: micro, accumulation: cfg.effective_batch / micro };
        let switches = Switches { preprocess_to_cpu: true, fewer_prefetch: true, lean_activations: false };
        Governor {
            cfg,
            level: 0,
            level3: None,
            plan,
            switches,
            lasting: Vec::new(),
            calm: 0,
            log: Vec::new(),
        }
    }

    /// Which switches the run can carry out (preprocessing and prefetching, until told
    /// otherwise; lean activations only when told).
    pub fn set_switches(&mut self, switches: Switches) {
        self.switches = switches;
    }

    pub fn plan(&self) -> BatchPlan {
        self.plan
    }

    pub fn level(&self) -> u32 {
        self.level
    }

    pub fn log(&self) -> &[Decision] {
        &self.log
    }

    /// Reads `sample` at the boundary before `step` and returns what to do now.
    pub fn observe(&mut self, step: u64, sample: &MemorySample) -> Vec<Decision> {
        let first = self.log.len();
        let gpu = sample.gpu.map(|g| (g.fraction(), usage(g.used, g.total)));
        let host = (sample.host.fraction(), usage(sample.host.used, sample.host.total));
        let gpu_hot = gpu.as_ref().filter(|(f, _)| *f > self.cfg.gpu_threshold);
        let host_hot = (host.0 > self.cfg.cpu_threshold).then_some(&host);

        if let Some((_, text)) = gpu_hot.or(host_hot) {
            self.calm = 0;
            let which = if gpu_hot.is_some() { "GPU" } else { "host" };
            let limit = if gpu_hot.is_some() { self.cfg.gpu_threshold } else { self.cfg.cpu_threshold };
            let reason = format!("{which} {text} > {:.0}%", limit * 100.0);
            self.escalate(step, gpu_hot.is_some(), reason);
        } else {
            let calm = gpu.as_ref().is_none_or(|(f, _)| *f < self.cfg.gpu_threshold - HYSTERESIS)
                && host.0 < self.cfg.cpu_threshold - HYSTERESIS;
            self.calm = if calm { self.calm + 1 } else { 0 };
            if self.calm >= self.cfg.calm_steps && self.level > 0 {
                self.calm = 0;
                let reason = format!("calm for {} observations", self.cfg.calm_steps);
                self.step_back(step, reason);
            }
        }
        let every = self.cfg.force_cleanup_every;
        if every > 0 && step > 0 && step.is_multiple_of(every) && self.log.len() == first {
            let reason = format!("forced every {every} steps");
            self.record(step, Action::TrimPool, &reason);
            self.record(step, Action::ClearCaches, &reason);
        }
        self.log[first..].to_vec()
    }

    /// An allocation failed inside a step: the largest smaller micro-batch (a divisor of
    /// the effective batch, which stays) whose planned step `fits`, so that the step is
    /// redone once, at the most the memory holds, rather than halved until it passes. When
    /// the plan says the current micro-batch fits too, the memory went where the plan does
    /// not look (the pool's granules, fragmentation, another process): half of it then. `fits` may say no to
    /// every size; micro-batch 1 is still tried. The caller frees the step's memory and
    /// redoes it with `plan()`.
    pub fn on_out_of_memory(
        &mut self,
        step: u64,
        detail: &str,
        fits: impl Fn(u32) -> bool,
    ) -> Result<BatchPlan, ShrinkError> {
        let halved = self.smaller_plan().ok_or(ShrinkError::AtMinimum)?;
        let (b, micro) = (self.cfg.effective_batch, self.plan.micro_batch);
        let (next, why) = if fits(micro) {
            let why = format!(
                "the plan fits micro-batch {micro}, so what is missing lies beyond it (the pool's granules, \
                 fragmentation, another process): halved"
            );
            (halved, why)
        } else {
            let m = (1..micro).rev().find(|&m| b % m == 0 && fits(m)).unwrap_or(1);
            let why = if fits(m) {
                format!("micro-batch {m} is the largest whose planned step fits")
            } else {
                "no micro-batch's planned step fits: trying 1".to_string()
            };
            (BatchPlan { micro_batch: m, accumulation: b / m }, why)
        };
        self.lasting.push(Lasting::Shrunk(self.plan));
        self.plan = next;
        self.level = self.level.max(3) + 1;
        self.calm = 0;
        self.record(step, Action::ShrinkMicroBatch(next), &format!("out of memory: {detail}; {why}"));
        Ok(next)
    }

    fn escalate(&mut self, step: u64, gpu: bool, reason: String) {
        let action = match self.level + 1 {
            1 => Action::TrimPool,
            2 => Action::ClearCaches,
            3 => {
                let (switch, possible) = if gpu {
                    (Action::PreprocessOnCpu, self.switches.preprocess_to_cpu)
                } else {
                    (Action::ReducePrefetch, self.switches.fewer_prefetch)
                };
                if !possible {
                    // Nothing to switch: on to the next level in this observation.
                    self.level = 3;
                    return self.escalate(step, gpu, reason);
                }
                self.level3 = Some(switch);
                switch
            }
            _ if self.switches.lean_activations && !self.lasting.contains(&Lasting::Lean) => {
                self.lasting.push(Lasting::Lean);
                Action::LeanActivations
            }
            _ => match self.smaller_plan() {
                Some(plan) => {
                    self.lasting.push(Lasting::Shrunk(self.plan));
                    self.plan = plan;
                    Action::ShrinkMicroBatch(plan)
                }
                // Micro-batch 1 already: nothing left to give; an allocation failure will
                // say so with the figures.
                None => return,
            },
        };
        self.level += 1;
        self.record(step, action, &reason);
    }

    fn step_back(&mut self, step: u64, reason: String) {
        let undo = match self.level {
            4.. => self.lasting.pop().map(|change| match change {
                Lasting::Shrunk(previous) => {
                    self.plan = previous;
                    Action::GrowMicroBatch(previous)
                }
                Lasting::Lean => Action::SavedActivations,
            }),
            3 => match self.level3.take() {
                Some(Action::PreprocessOnCpu) => Some(Action::PreprocessOnGpu),
                Some(_) => Some(Action::RestorePrefetch),
                None => None,
            },
            _ => None,
        };
        self.level -= 1;
        if let Some(action) = undo {
            self.record(step, action, &reason);
        }
    }

    fn smaller_plan(&self) -> Option<BatchPlan> {
        let b = self.cfg.effective_batch;
        let micro = self.plan.micro_batch;
        (micro > 1).then(|| {
            let m = largest_divisor_at_most(b, micro / 2);
            BatchPlan { micro_batch: m, accumulation: b / m }
        })
    }

    fn record(&mut self, step: u64, action: Action, reason: &str) {
        self.log.push(Decision { step, action, reason: reason.to_string() });
    }
}

/// The largest divisor of `n` that is at most `limit` (at least 1).
fn largest_divisor_at_most(n: u32, limit: u32) -> u32 {
    (1..=limit.clamp(1, n.max(1))).rev().find(|d| n.is_multiple_of(*d)).unwrap_or(1)
}
