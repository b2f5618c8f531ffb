//! The op set every backend provides: one model code path runs on any of them, and the
//! CPU backend is the reference the others are tested against.
//!
//! Layouts: activations NHWC, conv weights KRSC, linear weights [out, in], per-channel
//! vectors [C]. Ops allocate their outputs from the backend (the CUDA backend's pool);
//! in-place ops (`add_assign`, optimizer steps) update their first argument.

use super::error::OpError;
use super::params::{AdamWParams, BatchNormParams, BceParams, SgdParams};
use crate::memory::PoolStats;
use crate::tensor::{Shape, Tensor};

/// What batch-norm backward needs from its forward.
#[derive(Debug, Clone)]
pub struct BnSaved<T> {
    pub mean: T,
    pub invstd: T,
}

/// A training-mode batch-norm forward: the output and what backward needs.
#[derive(Debug, Clone)]
pub struct BnForward<T> {
    pub y: T,
    pub saved: BnSaved<T>,
}

/// The gradients of a linear layer.
#[derive(Debug, Clone)]
pub struct LinearGrads<T> {
    pub dx: T,
    pub dw: T,
    pub db: T,
}

/// The gradients of a batch norm.
#[derive(Debug, Clone)]
pub struct BnGrads<T> {
    pub dx: T,
    pub dgamma: T,
    pub dbeta: T,
}

pub trait Backend: Sync {
    type Storage: Clone + Send + Sync;

    /// e.g. "cpu" or "cuda:0 NVIDIA H200".
    fn name(&self) -> String;

    // ---- memory ----
    /// The stats of the pool this backend allocates from.
    fn pool_stats(&self) -> PoolStats;
    /// Returns free memory of the pool to the system (the governor's first action);
    /// the bytes released.
    fn trim_pool(&self) -> usize;
    fn tensor(&self, shape: Shape, data: &[f32]) -> Result<Tensor<Self::Storage>, OpError>;
    fn zeros(&self, shape: Shape) -> Result<Tensor<Self::Storage>, OpError>;
    fn to_vec(&self, t: &Tensor<Self::Storage>) -> Result<Vec<f32>, OpError>;

    // ---- matrix products ----
    /// c = α·op(a)·op(b) + β·c with 2-D `a`, `b`, `c`; op transposes when asked.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        alpha: f32,
        a: &Tensor<Self::Storage>,
        trans_a: bool,
        b: &Tensor<Self::Storage>,
        trans_b: bool,
        beta: f32,
        c: &mut Tensor<Self::Storage>,
    ) -> Result<(), OpError>;
    /// y [N, out] = x [N, in] · wᵀ + b, with w [out, in] and b [out].
    fn linear_fwd(
        &self,
        x: &Tensor<Self::Storage>,
        w: &Tensor<Self::Storage>,
        b: &Tensor<Self::Storage>,
    ) -> Result<Tensor<Self::Storage>, OpError>;
    fn linear_bwd(
        &self,
        dy: &Tensor<Self::Storage>,
        x: &Tensor<Self::Storage>,
        w: &Tensor<Self::Storage>,
    ) -> Result<LinearGrads<Tensor<Self::Storage>>, OpError>;

    // ---- convolution: x [N, H, W, C], w [K, R, S, C], y [N, P, Q, K] ----
    fn conv2d_fwd(
        &self,
        x: &Tensor<Self::Storage>,
        w: &Tensor<Self::Storage>,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<Tensor<Self::Storage>, OpError>;
    /// Gradient w.r.t. the input, whose dims `x_dims` the output alone cannot tell
    /// (stride 2 maps two input sizes to one output size).
    fn conv2d_dgrad(
        &self,
        dy: &Tensor<Self::Storage>,
        w: &Tensor<Self::Storage>,
        x_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<Tensor<Self::Storage>, OpError>;
    fn conv2d_wgrad(
        &self,
        x: &Tensor<Self::Storage>,
        dy: &Tensor<Self::Storage>,
        w_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<Tensor<Self::Storage>, OpError>;

    // ---- batch norm over the last dimension (channels) ----
    /// Training mode: batch statistics; updates the running statistics in place.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_fwd_train(
        &self,
        x: &Tensor<Self::Storage>,
        gamma: &Tensor<Self::Storage>,
        beta: &Tensor<Self::Storage>,
        running_mean: &mut Tensor<Self::Storage>,
        running_var: &mut Tensor<Self::Storage>,
        params: &BatchNormParams,
    ) -> Result<BnForward<Tensor<Self::Storage>>, OpError>;
    fn batch_norm_fwd_eval(
        &self,
        x: &Tensor<Self::Storage>,
        gamma: &Tensor<Self::Storage>,
        beta: &Tensor<Self::Storage>,
        running_mean: &Tensor<Self::Storage>,
        running_var: &Tensor<Self::Storage>,
        params: &BatchNormParams,
    ) -> Result<Tensor<Self::Storage>, OpError>;
    /// `relu_y` is the forward output when the ReLU was fused, else `None`.
    fn batch_norm_bwd(
        &self,
        dy: &Tensor<Self::Storage>,
        x: &Tensor<Self::Storage>,
        gamma: &Tensor<Self::Storage>,
        saved: &BnSaved<Tensor<Self::Storage>>,
        relu_y: Option<&Tensor<Self::Storage>>,
    ) -> Result<BnGrads<Tensor<Self::Storage>>, OpError>;

    // ---- elementwise ----
    fn relu_fwd(&self, x: &Tensor<Self::Storage>) -> Result<Tensor<Self::Storage>, OpError>;
    fn relu_bwd(
        &self,
        dy: &Tensor<Self::Storage>,
        y: &Tensor<Self::Storage>,
    ) -> Result<Tensor<Self::Storage>, OpError>;
    /// y += x (residual add, gradient accumulation).
    fn add_assign(&self, y: &mut Tensor<Self::Storage>, x: &Tensor<Self::Storage>) -> Result<(), OpError>;
    fn scale(&self, y: &mut Tensor<Self::Storage>, alpha: f32) -> Result<(), OpError>;
    fn fill(&self, y: &mut Tensor<Self::Storage>, value: f32) -> Result<(), OpError>;
    fn sigmoid(&self, x: &Tensor<Self::Storage>) -> Result<Tensor<Self::Storage>, OpError>;

    // ---- pooling ----
    fn max_pool2d_fwd(
        &self,
        x: &Tensor<Self::Storage>,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor<Self::Storage>, OpError>;
    fn max_pool2d_bwd(
        &self,
        x: &Tensor<Self::Storage>,
        dy: &Tensor<Self::Storage>,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor<Self::Storage>, OpError>;
    /// [N, H, W, C] → [N, C].
    fn global_avg_pool_fwd(&self, x: &Tensor<Self::Storage>) -> Result<Tensor<Self::Storage>, OpError>;
    fn global_avg_pool_bwd(
        &self,
        dy: &Tensor<Self::Storage>,
        x_dims: [usize; 4],
    ) -> Result<Tensor<Self::Storage>, OpError>;
    /// [B·T, C] (T frames of each clip consecutive) → [B, C].
    fn temporal_mean_fwd(
        &self,
        x: &Tensor<Self::Storage>,
        t: usize,
    ) -> Result<Tensor<Self::Storage>, OpError>;
    fn temporal_mean_bwd(
        &self,
        dy: &Tensor<Self::Storage>,
        t: usize,
    ) -> Result<Tensor<Self::Storage>, OpError>;

    // ---- loss ----
    /// Mean BCE-with-logits over the batch.
    fn bce_with_logits_fwd(
        &self,
        logits: &Tensor<Self::Storage>,
        targets: &Tensor<Self::Storage>,
        params: &BceParams,
    ) -> Result<f32, OpError>;
    /// `scale` · ∂(mean loss)/∂logits.
    fn bce_with_logits_bwd(
        &self,
        logits: &Tensor<Self::Storage>,
        targets: &Tensor<Self::Storage>,
        params: &BceParams,
        scale: f32,
    ) -> Result<Tensor<Self::Storage>, OpError>;

    // ---- optimizer, on fp32 master weights ----
    /// `step` counts from 1.
    fn adamw_step(
        &self,
        p: &mut Tensor<Self::Storage>,
        g: &Tensor<Self::Storage>,
        m: &mut Tensor<Self::Storage>,
        v: &mut Tensor<Self::Storage>,
        hp: &AdamWParams,
        step: u64,
    ) -> Result<(), OpError>;
    fn sgd_step(
        &self,
        p: &mut Tensor<Self::Storage>,
        g: &Tensor<Self::Storage>,
        momentum_buf: &mut Tensor<Self::Storage>,
        hp: &SgdParams,
        first_step: bool,
    ) -> Result<(), OpError>;
    /// g ← g·inv_scale; true when any element is non-finite.
    fn unscale_check(&self, g: &mut Tensor<Self::Storage>, inv_scale: f32) -> Result<bool, OpError>;
    fn sum_squares(&self, g: &Tensor<Self::Storage>) -> Result<f64, OpError>;

    /// The L2 norm of all gradients together.
    fn grad_norm(&self, grads: &[&Tensor<Self::Storage>]) -> Result<f64, OpError> {
        let mut total = 0.0;
        for g in grads {
            total += self.sum_squares(g)?;
        }
        Ok(total.sqrt())
    }

    /// Scales all gradients down so that their global norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    fn clip_grad_norm(&self, grads: &mut [Tensor<Self::Storage>], max_norm: f64) -> Result<f64, OpError> {
        let norm = self.grad_norm(&grads.iter().collect::<Vec<_>>())?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                self.scale(g, coef as f32)?;
            }
        }
        Ok(norm)
    }
}
