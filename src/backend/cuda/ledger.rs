//! Which op launched which kernels: while a ledger records, every checked op
//! (`Backend::op_begins`) opens an entry with its name and least traffic, and the kernel
//! launches and pool zero-fills that follow until the next op are its own. The software
//! GPU writes one line of counters per launch in launch order (`SOFTGPU_COUNTERS`), so
//! launch numbers join the two: benches/step_traffic.rs sets the bytes a training step
//! moves against the sum of its ops' minimums, op by op.
//!
//! Counting launches costs an atomic increment; an op's entry, a mutex that nobody else
//! holds. Both run whether or not anything records, so that launch numbers are the
//! device's from its first launch.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// One op of a recorded span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    pub op: &'static str,
    /// Each operand read once, each result written once (`Backend::op_begins`).
    pub min_bytes: usize,
    /// The device's launch numbers of its kernels, counted from its first launch.
    pub launches: Range<u64>,
    /// Bytes of pool blocks it took zeroed (a memset each: traffic no kernel counts).
    pub zeroed_bytes: usize,
}

#[derive(Debug, Default)]
pub struct Ledger {
    launches: AtomicU64,
    /// The ops so far, while recording.
    recording: Mutex<Option<Vec<OpRecord>>>,
}

impl Ledger {
    /// Kernels launched on the device so far.
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    pub(super) fn launched(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a span (dropping one still open).
    pub fn record(&self) {
        *self.lock() = Some(Vec::new());
    }

    /// Ends the span: its ops in order, each with its launches.
    pub fn finish(&self) -> Vec<OpRecord> {
        let mut ops = self.lock().take().unwrap_or_default();
        let end = self.launches();
        let mut next = end;
        for r in ops.iter_mut().rev() {
            r.launches.end = next;
            next = r.launches.start;
        }
        ops
    }

    pub(super) fn op_begins(&self, op: &'static str, min_bytes: usize) {
        if let Some(ops) = self.lock().as_mut() {
            let at = self.launches();
            ops.push(OpRecord { op, min_bytes, launches: at..at, zeroed_bytes: 0 });
        }
    }

    pub(super) fn zeroed(&self, bytes: usize) {
        if let Some(r) = self.lock().as_mut().and_then(|ops| ops.last_mut()) {
            r.zeroed_bytes += bytes;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<OpRecord>>> {
        self.recording.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_and_zero_fills_belong_to_the_op_before_them() {
        let l = Ledger::default();
        l.launched();
        l.op_begins("ignored: not recording", 1);
        l.record();
        l.op_begins("conv2d_fwd", 100);
        l.zeroed(64);
        l.launched();
        l.launched();
        l.op_begins("relu_fwd", 8);
        l.launched();
        l.op_begins("fill", 4);
        let ops = l.finish();
        let got: Vec<_> =
            ops.iter().map(|r| (r.op, r.min_bytes, r.launches.clone(), r.zeroed_bytes)).collect();
        assert_eq!(got, [("conv2d_fwd", 100, 1..3, 64), ("relu_fwd", 8, 3..4, 0), ("fill", 4, 4..4, 0)]);
        l.op_begins("after the span", 1);
        l.launched();
        assert!(l.finish().is_empty());
        assert_eq!(l.launches(), 5);
    }
}
