//! Training end to end: the run loop (`run`) and what it writes as it goes (`record`),
//! one step over micro-batches (`step`), the optimizer, the learning-rate schedule, loss
//! scaling, evaluation and detection metrics, checkpoints, and Ctrl-C (`interrupt`).

pub mod checkpoint;
pub mod error;
pub mod evaluate;
pub mod interrupt;
pub mod metrics;
pub mod optimizer;
pub mod predict;
pub mod record;
pub mod run;
pub mod scaler;
pub mod schedule;
pub mod step;
