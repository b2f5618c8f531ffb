//! Training end to end: the run loop (`run`), one governed step (`step`), the optimizer,
//! the learning-rate schedule, loss scaling, detection metrics, checkpoints, and the
//! clip sources of each split (`data`).

pub mod checkpoint;
pub mod metrics;
pub mod optimizer;
pub mod run;
pub mod scaler;
pub mod schedule;
pub mod step;
