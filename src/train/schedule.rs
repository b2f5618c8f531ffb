//! The learning-rate schedule: linear warmup from 0, then cosine decay to `floor`·lr at
//! the last step (as `timm`'s cosine scheduler with warmup, without restarts).

use crate::config::TrainConfig;

/// Where a run's cosine ends, as a fraction of `[train] lr`.
const FLOOR: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The final learning rate as a fraction of `lr`.
    pub floor: f64,
}

impl Schedule {
    /// The schedule of a run of `total_steps` optimizer steps: `[train] warmup_fraction` of
    /// them (rounded to the nearest step) warm up, the rest decay to 1% of `[train] lr`.
    pub fn of(t: &TrainConfig, total_steps: u64) -> Self {
        Schedule {
            lr: t.lr,
            warmup_steps: (t.warmup_fraction * total_steps as f64).round() as u64,
            total_steps,
            floor: FLOOR,
        }
    }

    /// The learning rate of optimizer step `step` (counting from 0).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        self.lr * (self.floor + (1.0 - self.floor) * cos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let s = Schedule { lr: 1.0, warmup_steps: 4, total_steps: 104, floor: 0.01 };
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(3), 1.0);
        assert_eq!(s.lr_at(4), 1.0);
        assert!((s.lr_at(54) - 0.505).abs() < 1e-9, "half way: {}", s.lr_at(54));
        assert!((s.lr_at(104) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(500) - 0.01).abs() < 1e-12, "stays at the floor");
        let mut prev = f64::INFINITY;
        for step in 4..104 {
            assert!(s.lr_at(step) <= prev);
            prev = s.lr_at(step);
        }
    }
}
