//! Dynamic loss scaling for mixed precision (as `torch.amp.GradScaler`): the loss
//! gradient is multiplied by `scale` so that small f16 gradients do not flush to zero;
//! gradients are unscaled before the optimizer; a step whose gradients hold inf/NaN is
//! skipped and the scale halved; after `growth_interval` good steps in a row it doubles.

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f32,
    pub growth_interval: u32,
    /// Good steps since the last change.
    pub good_steps: u32,
    /// Steps skipped for non-finite gradients, in total.
    pub skipped: u64,
}

impl LossScaler {
    /// PyTorch's defaults: 2¹⁶, doubling after 2000 good steps.
    pub fn new() -> Self {
        LossScaler { scale: 65536.0, growth_interval: 2000, good_steps: 0, skipped: 0 }
    }

    /// The scaler a run starts with: dynamic with `[train] mixed_precision`, on every
    /// backend (the CPU computes in f32, where the power-of-two scale cancels exactly),
    /// disabled without.
    pub fn of(t: &TrainConfig) -> Self {
        if t.mixed_precision { Self::new() } else { Self::disabled() }
    }

    /// No scaling (f32 training): always 1, never skips.
    pub fn disabled() -> Self {
        LossScaler { scale: 1.0, growth_interval: u32::MAX, good_steps: 0, skipped: 0 }
    }

    /// Records whether the step's gradients were finite; returns whether to apply it.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale = (self.scale * 2.0).min(f32::MAX / 2.0);
            self.good_steps = 0;
        }
        true
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_overflow_and_grows_after_a_run_of_good_steps() {
        let mut s = LossScaler { growth_interval: 3, ..LossScaler::new() };
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped), (32768.0, 1));
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        s.update(true);
        assert!(!s.update(false), "an overflow resets the run");
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
    }

    #[test]
    fn disabled_never_changes() {
        let mut s = LossScaler::disabled();
        for _ in 0..10 {
            s.update(true);
        }
        assert_eq!(s.scale, 1.0);
    }
}
