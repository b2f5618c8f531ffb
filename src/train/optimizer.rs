//! The optimizer state (fp32, one slot set per trainable tensor) and its step.

use crate::backend::OpError;
use crate::backend::ops::Backend;
use crate::backend::params::{AdamWParams, SgdParams};
use crate::config::OptimizerKind;
use crate::tensor::Tensor;

type T<B> = Tensor<<B as Backend>::Storage>;

pub struct Optimizer<B: Backend> {
    pub kind: OptimizerKind,
    pub weight_decay: f32,
    /// AdamW: first and second moments; SGD: the momentum buffer only (second unused).
    pub slots: Vec<(T<B>, Option<T<B>>)>,
    /// Optimizer steps taken (AdamW's bias correction counts from 1).
    pub steps: u64,
}

/// SGD's momentum, as torchvision's reference recipes use.
const SGD_MOMENTUM: f32 = 0.9;

impl<B: Backend> Optimizer<B> {
    pub fn new(b: &B, kind: OptimizerKind, weight_decay: f32, params: &[&mut T<B>]) -> Result<Self, OpError> {
        let slots = params
            .iter()
            .map(|p| {
                let first = b.zeros(p.shape().clone())?;
                let second = match kind {
                    OptimizerKind::Adamw => Some(b.zeros(p.shape().clone())?),
                    OptimizerKind::Sgd => None,
                };
                Ok((first, second))
            })
            .collect::<Result<Vec<_>, OpError>>()?;
        Ok(Optimizer { kind, weight_decay, slots, steps: 0 })
    }

    /// Slot names for checkpoints, e.g. ("exp_avg", "exp_avg_sq") as PyTorch's AdamW.
    pub fn slot_names(&self) -> (&'static str, &'static str) {
        match self.kind {
            OptimizerKind::Adamw => ("exp_avg", "exp_avg_sq"),
            OptimizerKind::Sgd => ("momentum_buffer", ""),
        }
    }

    pub fn step(&mut self, b: &B, params: Vec<&mut T<B>>, grads: &[T<B>], lr: f32) -> Result<(), OpError> {
        self.steps += 1;
        for ((p, g), (m, v)) in params.into_iter().zip(grads).zip(&mut self.slots) {
            match v {
                Some(v) => {
                    let hp = AdamWParams { lr, weight_decay: self.weight_decay, ..AdamWParams::default() };
                    b.adamw_step(p, g, m, v, &hp, self.steps)?;
                }
                None => {
                    let hp = SgdParams {
                        lr,
                        momentum: SGD_MOMENTUM,
                        nesterov: false,
                        weight_decay: self.weight_decay,
                    };
                    b.sgd_step(p, g, m, &hp, self.steps == 1)?;
                }
            }
        }
        Ok(())
    }
}
