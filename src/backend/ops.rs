//! The op set every backend provides: one model code path runs on any of them, and the
//! CPU backend is the reference the others are tested against.
//!
//! Layouts: activations NHWC, conv weights KRSC, linear weights [out, in], per-channel
//! vectors [C]. Ops allocate their outputs from the backend (the CUDA backend's pool);
//! in-place ops (`add_assign`, `bias_prelu`, optimizer steps) update their first argument.
//!
//! Check once, implement per backend: the methods model code calls (`conv2d_fwd`,
//! `batch_norm_bwd`, ...) are provided here and check shapes, dtypes and exclusivity
//! (backend/check.rs), so that a mistake gets the same error naming the op, the argument
//! and the shapes on any device; each backend implements only the `run_*` bodies, which
//! receive checked arguments and computed geometry. Backends do not override the checked
//! methods.
//!
//! Dtypes: activations and their gradients are FP32 or FP16 (mixed precision), and the
//! activation ops (convolution forward and input gradient, batch norm, ReLU, add, max
//! pool, the means) give their input's dtype; a convolution's weight has its input's
//! dtype (the FP16 copy made once per step). Everything the optimizer touches is FP32:
//! the weight gradient of a convolution, batch norm's γ, β, statistics and their
//! gradients, the linear head, the loss, the optimizer's tensors. `cast` converts.

use std::sync::Arc;

use super::check;
use super::error::OpError;
use super::params::{AdamWParams, BatchNormParams, BceParams, Conv2dGeom, FrameBatch, Pool2dGeom, SgdParams};
use crate::memory::PoolStats;
use crate::tensor::{DType, Shape, Tensor};

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

/// What the op set needs of a backend's tensor storage beyond sharing it.
pub trait Storage: Clone + Send + Sync {
    /// Whether no other tensor shares it (an op may then update it in place).
    fn is_unique(&mut self) -> bool;
}

impl<X: Send + Sync> Storage for Arc<X> {
    fn is_unique(&mut self) -> bool {
        Arc::get_mut(self).is_some()
    }
}

/// A checked matrix product c [m, n] = α·op(a) [m, k]·op(b) [k, n] + β·c.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmGeom {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// A checked linear layer: x [n, fin], w [fout, fin], b [fout].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearGeom {
    pub n: usize,
    pub fin: usize,
    pub fout: usize,
}

type T<B> = Tensor<<B as Backend>::Storage>;

pub trait Backend: Sync + Sized {
    type Storage: Storage;

    /// e.g. "cpu" or "cuda:0 NVIDIA H200".
    fn name(&self) -> String;
    /// Whether tensors live on a GPU: inputs then cross a bus, and `preprocess` runs
    /// kernels there rather than the CPU twin.
    fn on_gpu(&self) -> bool {
        false
    }
    /// The GPU's streaming multiprocessors (None off a GPU): the planner sizes the weight
    /// gradient's split-K workspace by them (`footprint::PlanDevice::of`).
    fn multiprocessors(&self) -> Option<usize> {
        None
    }

    // ---- memory ----
    /// The stats of the pool this backend allocates from.
    fn pool_stats(&self) -> PoolStats;
    /// Returns free memory of the pool to the system (the governor's first action);
    /// the bytes released.
    fn trim_pool(&self) -> usize;
    /// Starts the pool's peaks over (a step's own peak is then `pool_stats()` after it).
    fn reset_pool_peaks(&self);
    /// Page-locked host bytes held to stage uploads (`pin_memory = true` on a GPU).
    fn pinned_bytes(&self) -> usize {
        0
    }
    /// Called by every checked op that computes, just before its body, with the op's name
    /// and its least global-memory traffic in bytes: each operand read once, each result
    /// written once, an operand updated in place both. The CUDA backend's traffic ledger
    /// (`cuda::ledger`) attributes the kernel launches that follow to it, so that the bytes
    /// a training step moves can be set against the sum of its ops' minimums.
    fn op_begins(&self, _op: &'static str, _min_bytes: usize) {}

    // ---- the op bodies, each backend's own: arguments checked by the methods below ----
    /// A tensor of `data` rounded to `dtype`.
    fn run_upload(&self, shape: Shape, data: &[f32], dtype: DType) -> Result<T<Self>, OpError>;
    fn run_zeros(&self, shape: Shape, dtype: DType) -> Result<T<Self>, OpError>;
    /// The elements widened to f32.
    fn run_download(&self, t: &T<Self>) -> Result<Vec<f32>, OpError>;
    /// A copy of `x` (whose dtype differs from `to`) in `to`, rounding to nearest even.
    fn run_cast(&self, x: &T<Self>, to: DType) -> Result<T<Self>, OpError>;
    fn run_gemm(
        &self,
        g: &GemmGeom,
        alpha: f32,
        a: &T<Self>,
        b: &T<Self>,
        beta: f32,
        c: &mut T<Self>,
    ) -> Result<(), OpError>;
    fn run_linear_fwd(
        &self,
        g: &LinearGeom,
        x: &T<Self>,
        w: &T<Self>,
        b: &T<Self>,
    ) -> Result<T<Self>, OpError>;
    fn run_linear_bwd(
        &self,
        g: &LinearGeom,
        dy: &T<Self>,
        x: &T<Self>,
        w: &T<Self>,
    ) -> Result<LinearGrads<T<Self>>, OpError>;
    fn run_conv2d_fwd(&self, g: &Conv2dGeom, x: &T<Self>, w: &T<Self>) -> Result<T<Self>, OpError>;
    fn run_conv2d_dgrad(&self, g: &Conv2dGeom, dy: &T<Self>, w: &T<Self>) -> Result<T<Self>, OpError>;
    /// The FP32 weight gradient.
    fn run_conv2d_wgrad(&self, g: &Conv2dGeom, x: &T<Self>, dy: &T<Self>) -> Result<T<Self>, OpError>;
    #[allow(clippy::too_many_arguments)]
    fn run_batch_norm_fwd_train(
        &self,
        c: usize,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        running_mean: &mut T<Self>,
        running_var: &mut T<Self>,
        params: &BatchNormParams,
    ) -> Result<BnForward<T<Self>>, OpError>;
    #[allow(clippy::too_many_arguments)]
    fn run_batch_norm_fwd_eval(
        &self,
        c: usize,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        running_mean: &T<Self>,
        running_var: &T<Self>,
        params: &BatchNormParams,
    ) -> Result<T<Self>, OpError>;
    fn run_batch_norm_bwd(
        &self,
        c: usize,
        dy: &T<Self>,
        x: &T<Self>,
        gamma: &T<Self>,
        saved: &BnSaved<T<Self>>,
        relu_y: Option<&T<Self>>,
    ) -> Result<BnGrads<T<Self>>, OpError>;
    #[allow(clippy::too_many_arguments)]
    fn run_batch_norm_normalize(
        &self,
        c: usize,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        saved: &BnSaved<T<Self>>,
        relu: bool,
    ) -> Result<T<Self>, OpError>;
    fn run_batch_norm_relu_bwd(
        &self,
        c: usize,
        dy: &T<Self>,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        saved: &BnSaved<T<Self>>,
    ) -> Result<BnGrads<T<Self>>, OpError>;
    fn run_relu_fwd(&self, x: &T<Self>) -> Result<T<Self>, OpError>;
    fn run_relu_bwd(&self, dy: &T<Self>, y: &T<Self>) -> Result<T<Self>, OpError>;
    fn run_add_assign(&self, y: &mut T<Self>, x: &T<Self>) -> Result<(), OpError>;
    fn run_scale(&self, y: &mut T<Self>, alpha: f32) -> Result<(), OpError>;
    fn run_fill(&self, y: &mut T<Self>, value: f32) -> Result<(), OpError>;
    fn run_sigmoid(&self, x: &T<Self>) -> Result<T<Self>, OpError>;
    fn run_max_pool2d_fwd(&self, g: &Pool2dGeom, x: &T<Self>) -> Result<T<Self>, OpError>;
    fn run_max_pool2d_bwd(&self, g: &Pool2dGeom, x: &T<Self>, dy: &T<Self>) -> Result<T<Self>, OpError>;
    /// y [.., C] += b [C], in place (FP32).
    fn run_bias_add(&self, y: &mut T<Self>, b: &T<Self>) -> Result<(), OpError>;
    /// y [.., C] ← PReLU(y + b) with slopes alpha [C], in place (FP32).
    fn run_bias_prelu(&self, y: &mut T<Self>, b: &T<Self>, alpha: &T<Self>) -> Result<(), OpError>;
    /// Softmax over each row of `c` elements of x (its last dimension; FP32).
    fn run_softmax_rows(&self, x: &T<Self>, c: usize) -> Result<T<Self>, OpError>;
    /// y `out` [blocks, C] = the mean of each block of `group` consecutive rows of x
    /// [blocks·group, C] (global average pool: group = H·W; temporal mean: group = T).
    fn run_mean_rows(&self, x: &T<Self>, group: usize, out: Shape) -> Result<T<Self>, OpError>;
    /// dx `out` [blocks·group, C]: each row of a block gets dy [blocks, C] / group.
    fn run_mean_rows_bwd(&self, dy: &T<Self>, group: usize, out: Shape) -> Result<T<Self>, OpError>;
    fn run_bce_with_logits_fwd(
        &self,
        logits: &T<Self>,
        targets: &T<Self>,
        params: &BceParams,
    ) -> Result<f32, OpError>;
    fn run_bce_with_logits_bwd(
        &self,
        logits: &T<Self>,
        targets: &T<Self>,
        params: &BceParams,
        scale: f32,
    ) -> Result<T<Self>, OpError>;
    #[allow(clippy::too_many_arguments)]
    fn run_adamw_step(
        &self,
        p: &mut T<Self>,
        g: &T<Self>,
        m: &mut T<Self>,
        v: &mut T<Self>,
        hp: &AdamWParams,
        step: u64,
    ) -> Result<(), OpError>;
    fn run_sgd_step(
        &self,
        p: &mut T<Self>,
        g: &T<Self>,
        momentum_buf: &mut T<Self>,
        hp: &SgdParams,
        first_step: bool,
    ) -> Result<(), OpError>;
    fn run_unscale_check(&self, g: &mut T<Self>, inv_scale: f32) -> Result<bool, OpError>;
    fn run_sum_squares(&self, g: &T<Self>) -> Result<f64, OpError>;
    /// The model's input from frames as stored (the preprocessing kernels on CUDA, the
    /// CPU twin here), rounded to `dtype`.
    fn run_preprocess(&self, frames: &FrameBatch<'_>, dtype: DType) -> Result<T<Self>, OpError>;

    // ---- tensors ----
    /// An FP32 tensor of `data`.
    fn tensor(&self, shape: Shape, data: &[f32]) -> Result<T<Self>, OpError> {
        self.tensor_as(shape, data, DType::F32)
    }
    /// The network input [frames, side, side, 3] in `dtype` from frames as stored: each
    /// cropped, resized, flipped, jittered and normalised as its `FrameOp` says, on this
    /// backend's device (only the stored bytes cross to a GPU).
    fn preprocess(&self, frames: &FrameBatch<'_>, dtype: DType) -> Result<T<Self>, OpError> {
        frames.check()?;
        self.begin_op("preprocess", &[], frames.data.len() + frames.shape().numel() * dtype.size());
        self.run_preprocess(frames, dtype)
    }
    /// A tensor of `data` rounded to `dtype` on the host (no FP32 copy on the device).
    fn tensor_as(&self, shape: Shape, data: &[f32], dtype: DType) -> Result<T<Self>, OpError> {
        check::element_count("tensor", &shape, data.len())?;
        self.run_upload(shape, data, dtype)
    }
    fn zeros(&self, shape: Shape) -> Result<T<Self>, OpError> {
        self.zeros_as(shape, DType::F32)
    }
    fn zeros_as(&self, shape: Shape, dtype: DType) -> Result<T<Self>, OpError> {
        self.begin_op("zeros", &[], shape.numel() * dtype.size());
        self.run_zeros(shape, dtype)
    }
    /// The elements widened to f32.
    fn to_vec(&self, t: &T<Self>) -> Result<Vec<f32>, OpError> {
        self.run_download(t)
    }
    /// `x` in `to`: `x` itself (shared) when it is already, else a rounded copy.
    fn cast(&self, x: &T<Self>, to: DType) -> Result<T<Self>, OpError> {
        if x.dtype() == to {
            return Ok(x.clone());
        }
        self.begin_op("cast", &[x], x.numel() * to.size());
        self.run_cast(x, to)
    }
    /// Announces an op to `op_begins`: it reads `read` once and writes `written` bytes.
    fn begin_op(&self, op: &'static str, read: &[&T<Self>], written: usize) {
        self.op_begins(op, read.iter().map(|t| t.bytes()).sum::<usize>() + written);
    }

    // ---- matrix products (FP32 tensors) ----
    /// c = α·op(a)·op(b) + β·c with 2-D `a`, `b`, `c`; op transposes when asked.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        alpha: f32,
        a: &T<Self>,
        trans_a: bool,
        b: &T<Self>,
        trans_b: bool,
        beta: f32,
        c: &mut T<Self>,
    ) -> Result<(), OpError> {
        let g = check::gemm(a, trans_a, b, trans_b, c)?;
        check::exclusive("gemm", "c", c)?;
        let c_read: &[&T<Self>] = if beta == 0.0 { &[] } else { &[&*c] };
        self.begin_op("gemm", &[&[a, b], c_read].concat(), c.bytes());
        self.run_gemm(&g, alpha, a, b, beta, c)
    }
    /// y [N, out] = x [N, in] · wᵀ + b, with w [out, in] and b [out].
    fn linear_fwd(&self, x: &T<Self>, w: &T<Self>, b: &T<Self>) -> Result<T<Self>, OpError> {
        let g = check::linear(x, w, b)?;
        self.begin_op("linear_fwd", &[x, w, b], g.n * g.fout * x.dtype().size());
        self.run_linear_fwd(&g, x, w, b)
    }
    fn linear_bwd(&self, dy: &T<Self>, x: &T<Self>, w: &T<Self>) -> Result<LinearGrads<T<Self>>, OpError> {
        let g = check::linear_bwd(dy, x, w)?;
        self.begin_op("linear_bwd", &[dy, x, w], x.bytes() + w.bytes() + g.fout * DType::F32.size());
        self.run_linear_bwd(&g, dy, x, w)
    }

    // ---- convolution: x [N, H, W, C], w [K, R, S, C], y [N, P, Q, K] ----
    fn conv2d_fwd(
        &self,
        x: &T<Self>,
        w: &T<Self>,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<T<Self>, OpError> {
        let g = check::conv2d_fwd(x, w, stride, pad)?;
        self.begin_op("conv2d_fwd", &[x, w], numel(g.y_dims()) * x.dtype().size());
        self.run_conv2d_fwd(&g, x, w)
    }
    /// Gradient w.r.t. the input, whose dims `x_dims` the output alone cannot tell
    /// (stride 2 maps two input sizes to one output size); in dy's dtype.
    fn conv2d_dgrad(
        &self,
        dy: &T<Self>,
        w: &T<Self>,
        x_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<T<Self>, OpError> {
        let g = check::conv2d_dgrad(dy, w, x_dims, stride, pad)?;
        self.begin_op("conv2d_dgrad", &[dy, w], numel(x_dims) * dy.dtype().size());
        self.run_conv2d_dgrad(&g, dy, w)
    }
    /// The weight gradient, FP32 whatever the activations' dtype.
    fn conv2d_wgrad(
        &self,
        x: &T<Self>,
        dy: &T<Self>,
        w_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<T<Self>, OpError> {
        let g = check::conv2d_wgrad(x, dy, w_dims, stride, pad)?;
        self.begin_op("conv2d_wgrad", &[x, dy], numel(w_dims) * DType::F32.size());
        self.run_conv2d_wgrad(&g, x, dy)
    }

    // ---- batch norm over the last dimension (channels); FP32 statistics ----
    /// Training mode: batch statistics; updates the running statistics in place.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_fwd_train(
        &self,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        running_mean: &mut T<Self>,
        running_var: &mut T<Self>,
        params: &BatchNormParams,
    ) -> Result<BnForward<T<Self>>, OpError> {
        let vectors = [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", &*running_mean),
            ("running_var", &*running_var),
        ];
        let c = check::batch_norm("batch_norm", x, &vectors)?;
        check::exclusive("batch_norm", "running_mean", running_mean)?;
        check::exclusive("batch_norm", "running_var", running_var)?;
        // Reads x and four vectors; writes y, the running statistics back, the batch's
        // mean and invstd.
        self.begin_op("batch_norm_fwd_train", &[x], x.bytes() + 8 * c * DType::F32.size());
        self.run_batch_norm_fwd_train(c, x, gamma, beta, running_mean, running_var, params)
    }
    fn batch_norm_fwd_eval(
        &self,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        running_mean: &T<Self>,
        running_var: &T<Self>,
        params: &BatchNormParams,
    ) -> Result<T<Self>, OpError> {
        let vectors =
            [("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)];
        let c = check::batch_norm("batch_norm", x, &vectors)?;
        self.begin_op("batch_norm_fwd_eval", &[&[x], &vectors.map(|(_, v)| v)[..]].concat(), x.bytes());
        self.run_batch_norm_fwd_eval(c, x, gamma, beta, running_mean, running_var, params)
    }
    /// `relu_y` is the forward output when the ReLU was fused, else `None`.
    fn batch_norm_bwd(
        &self,
        dy: &T<Self>,
        x: &T<Self>,
        gamma: &T<Self>,
        saved: &BnSaved<T<Self>>,
        relu_y: Option<&T<Self>>,
    ) -> Result<BnGrads<T<Self>>, OpError> {
        let c = check::batch_norm_bwd("batch_norm_bwd", dy, x, gamma, saved, relu_y)?;
        let read = [&[dy, x, gamma, &saved.mean, &saved.invstd], relu_y.as_slice()].concat();
        self.begin_op("batch_norm_bwd", &read, x.bytes() + 2 * c * DType::F32.size());
        self.run_batch_norm_bwd(c, dy, x, gamma, saved, relu_y)
    }
    /// A training forward's output recomputed from its input `x` and its saved
    /// statistics: bit for bit what `batch_norm_fwd_train` returned (with `relu` as its
    /// params had it), so that backward may recompute instead of keeping it.
    fn batch_norm_normalize(
        &self,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        saved: &BnSaved<T<Self>>,
        relu: bool,
    ) -> Result<T<Self>, OpError> {
        let vectors = [("gamma", gamma), ("beta", beta), ("mean", &saved.mean), ("invstd", &saved.invstd)];
        let c = check::batch_norm("batch_norm_normalize", x, &vectors)?;
        self.begin_op("batch_norm_normalize", &[&[x], &vectors.map(|(_, v)| v)[..]].concat(), x.bytes());
        self.run_batch_norm_normalize(c, x, gamma, beta, saved, relu)
    }
    /// Backward of a batch norm with a fused ReLU whose mask is recomputed from the input
    /// `x` and β: the gradients `batch_norm_bwd` gives with the forward's output, without
    /// keeping that output.
    fn batch_norm_relu_bwd(
        &self,
        dy: &T<Self>,
        x: &T<Self>,
        gamma: &T<Self>,
        beta: &T<Self>,
        saved: &BnSaved<T<Self>>,
    ) -> Result<BnGrads<T<Self>>, OpError> {
        let op = "batch_norm_relu_bwd";
        let c = check::batch_norm_bwd(op, dy, x, gamma, saved, None)?;
        check::batch_norm(op, x, &[("beta", beta)])?;
        let read = [dy, x, gamma, beta, &saved.mean, &saved.invstd];
        self.begin_op(op, &read, x.bytes() + 2 * c * DType::F32.size());
        self.run_batch_norm_relu_bwd(c, dy, x, gamma, beta, saved)
    }

    // ---- elementwise ----
    fn relu_fwd(&self, x: &T<Self>) -> Result<T<Self>, OpError> {
        self.begin_op("relu_fwd", &[x], x.bytes());
        self.run_relu_fwd(x)
    }
    fn relu_bwd(&self, dy: &T<Self>, y: &T<Self>) -> Result<T<Self>, OpError> {
        check::same_shape_dtype("relu_bwd", ("dy", dy), ("y", y))?;
        self.begin_op("relu_bwd", &[dy, y], dy.bytes());
        self.run_relu_bwd(dy, y)
    }
    /// y += x (residual add, gradient accumulation), both of one dtype.
    fn add_assign(&self, y: &mut T<Self>, x: &T<Self>) -> Result<(), OpError> {
        check::same_shape_dtype("add", ("y", y), ("x", x))?;
        check::exclusive("add", "y", y)?;
        self.begin_op("add_assign", &[y, x], y.bytes());
        self.run_add_assign(y, x)
    }
    fn scale(&self, y: &mut T<Self>, alpha: f32) -> Result<(), OpError> {
        check::dtype("scale", "y", y, DType::F32)?;
        check::exclusive("scale", "y", y)?;
        self.begin_op("scale", &[y], y.bytes());
        self.run_scale(y, alpha)
    }
    fn fill(&self, y: &mut T<Self>, value: f32) -> Result<(), OpError> {
        check::dtype("fill", "y", y, DType::F32)?;
        check::exclusive("fill", "y", y)?;
        self.begin_op("fill", &[], y.bytes());
        self.run_fill(y, value)
    }
    fn sigmoid(&self, x: &T<Self>) -> Result<T<Self>, OpError> {
        check::dtype("sigmoid", "x", x, DType::F32)?;
        self.begin_op("sigmoid", &[x], x.bytes());
        self.run_sigmoid(x)
    }

    // ---- per-channel activations and softmax, FP32, channels last (the face detector's) ----
    /// y [.., C] += b [C] in place: a convolution's bias.
    fn bias_add(&self, y: &mut T<Self>, b: &T<Self>) -> Result<(), OpError> {
        check::per_channel("bias_add", y, &[("bias", b)])?;
        check::dtype("bias_add", "y", y, DType::F32)?;
        check::exclusive("bias_add", "y", y)?;
        self.begin_op("bias_add", &[y, b], y.bytes());
        self.run_bias_add(y, b)
    }
    /// y [.., C] ← PReLU(y + b) in place (a biased convolution, then PyTorch's
    /// `nn.PReLU(C)`): v = y + b[c], kept where v ≥ 0 and alpha[c]·v below.
    fn bias_prelu(&self, y: &mut T<Self>, b: &T<Self>, alpha: &T<Self>) -> Result<(), OpError> {
        check::per_channel("bias_prelu", y, &[("bias", b), ("alpha", alpha)])?;
        check::dtype("bias_prelu", "y", y, DType::F32)?;
        check::exclusive("bias_prelu", "y", y)?;
        self.begin_op("bias_prelu", &[y, b, alpha], y.bytes());
        self.run_bias_prelu(y, b, alpha)
    }
    /// Softmax over the last dimension: each row of C becomes exp(x − max) / Σ exp(x − max).
    fn softmax_rows(&self, x: &T<Self>) -> Result<T<Self>, OpError> {
        let (_, c) = check::rows_channels("softmax_rows", x)?;
        check::dtype("softmax_rows", "x", x, DType::F32)?;
        self.begin_op("softmax_rows", &[x], x.bytes());
        self.run_softmax_rows(x, c)
    }

    // ---- pooling ----
    fn max_pool2d_fwd(
        &self,
        x: &T<Self>,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<T<Self>, OpError> {
        let g = Pool2dGeom::new(check::dims("max_pool2d", "x", x)?, window, stride, pad)?;
        self.begin_op("max_pool2d_fwd", &[x], numel(g.y_dims()) * x.dtype().size());
        self.run_max_pool2d_fwd(&g, x)
    }
    fn max_pool2d_bwd(
        &self,
        x: &T<Self>,
        dy: &T<Self>,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<T<Self>, OpError> {
        let g = check::max_pool2d_bwd(x, dy, window, stride, pad)?;
        self.begin_op("max_pool2d_bwd", &[x, dy], x.numel() * dy.dtype().size());
        self.run_max_pool2d_bwd(&g, x, dy)
    }
    /// Max pool without padding in ceil mode (PyTorch's `ceil_mode=True`, MTCNN's pools):
    /// the last window of a row or column may hang over the bottom or right edge and takes
    /// the maximum of the cells it covers (`Pool2dGeom::ceil_mode`).
    fn max_pool2d_ceil_fwd(&self, x: &T<Self>, window: usize, stride: usize) -> Result<T<Self>, OpError> {
        let g = Pool2dGeom::ceil_mode(check::dims("max_pool2d (ceil mode)", "x", x)?, window, stride)?;
        self.begin_op("max_pool2d_ceil_fwd", &[x], numel(g.y_dims()) * x.dtype().size());
        self.run_max_pool2d_fwd(&g, x)
    }
    /// [N, H, W, C] → [N, C].
    fn global_avg_pool_fwd(&self, x: &T<Self>) -> Result<T<Self>, OpError> {
        let [n, h, w, c] = check::dims("global_avg_pool", "x", x)?;
        self.begin_op("global_avg_pool_fwd", &[x], n * c * x.dtype().size());
        self.run_mean_rows(x, h * w, Shape::from([n, c]))
    }
    fn global_avg_pool_bwd(&self, dy: &T<Self>, x_dims: [usize; 4]) -> Result<T<Self>, OpError> {
        let [n, h, w, c] = x_dims;
        check::expect_dims("global_avg_pool_bwd", "dy", dy, &[n, c])?;
        self.begin_op("global_avg_pool_bwd", &[dy], numel(x_dims) * dy.dtype().size());
        self.run_mean_rows_bwd(dy, h * w, Shape::from(x_dims))
    }
    /// [B·T, C] (T frames of each clip consecutive) → [B, C].
    fn temporal_mean_fwd(&self, x: &T<Self>, t: usize) -> Result<T<Self>, OpError> {
        let [bt, c] = check::dims("temporal_mean", "x", x)?;
        let b = check::clips("temporal_mean", bt, t)?;
        self.begin_op("temporal_mean_fwd", &[x], b * c * x.dtype().size());
        self.run_mean_rows(x, t, Shape::from([b, c]))
    }
    fn temporal_mean_bwd(&self, dy: &T<Self>, t: usize) -> Result<T<Self>, OpError> {
        let [b, c] = check::dims("temporal_mean_bwd", "dy", dy)?;
        self.begin_op("temporal_mean_bwd", &[dy], b * t * c * dy.dtype().size());
        self.run_mean_rows_bwd(dy, t, Shape::from([b * t, c]))
    }

    // ---- loss (FP32) ----
    /// Mean BCE-with-logits over the batch.
    fn bce_with_logits_fwd(
        &self,
        logits: &T<Self>,
        targets: &T<Self>,
        params: &BceParams,
    ) -> Result<f32, OpError> {
        check::f32_pair("bce_with_logits", ("logits", logits), ("targets", targets))?;
        self.begin_op("bce_with_logits_fwd", &[logits, targets], 0);
        self.run_bce_with_logits_fwd(logits, targets, params)
    }
    /// `scale` · ∂(mean loss)/∂logits.
    fn bce_with_logits_bwd(
        &self,
        logits: &T<Self>,
        targets: &T<Self>,
        params: &BceParams,
        scale: f32,
    ) -> Result<T<Self>, OpError> {
        check::f32_pair("bce_with_logits_bwd", ("logits", logits), ("targets", targets))?;
        self.begin_op("bce_with_logits_bwd", &[logits, targets], logits.bytes());
        self.run_bce_with_logits_bwd(logits, targets, params, scale)
    }

    // ---- optimizer, on fp32 master weights ----
    /// `step` counts from 1.
    fn adamw_step(
        &self,
        p: &mut T<Self>,
        g: &T<Self>,
        m: &mut T<Self>,
        v: &mut T<Self>,
        hp: &AdamWParams,
        step: u64,
    ) -> Result<(), OpError> {
        check::optimizer("adamw", p, g, &mut [("m", &mut *m), ("v", &mut *v)])?;
        if step == 0 {
            return Err(super::error::shape_err("adamw", "step counts from 1"));
        }
        self.begin_op("adamw_step", &[p, g, m, v], p.bytes() + m.bytes() + v.bytes());
        self.run_adamw_step(p, g, m, v, hp, step)
    }
    fn sgd_step(
        &self,
        p: &mut T<Self>,
        g: &T<Self>,
        momentum_buf: &mut T<Self>,
        hp: &SgdParams,
        first_step: bool,
    ) -> Result<(), OpError> {
        check::optimizer("sgd", p, g, &mut [("momentum_buf", &mut *momentum_buf)])?;
        self.begin_op("sgd_step", &[p, g, momentum_buf], p.bytes() + momentum_buf.bytes());
        self.run_sgd_step(p, g, momentum_buf, hp, first_step)
    }
    /// g ← g·inv_scale; true when any element is non-finite.
    fn unscale_check(&self, g: &mut T<Self>, inv_scale: f32) -> Result<bool, OpError> {
        check::dtype("unscale", "grad", g, DType::F32)?;
        check::exclusive("unscale", "grad", g)?;
        self.begin_op("unscale_check", &[g], g.bytes());
        self.run_unscale_check(g, inv_scale)
    }
    fn sum_squares(&self, g: &T<Self>) -> Result<f64, OpError> {
        check::dtype("sum_squares", "grad", g, DType::F32)?;
        self.begin_op("sum_squares", &[g], 0);
        self.run_sum_squares(g)
    }

    /// The L2 norm of all gradients together.
    fn grad_norm(&self, grads: &[&T<Self>]) -> Result<f64, OpError> {
        let mut total = 0.0;
        for g in grads {
            total += self.sum_squares(g)?;
        }
        Ok(total.sqrt())
    }

    /// Scales all gradients down so that their global norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    fn clip_grad_norm(&self, grads: &mut [T<Self>], max_norm: f64) -> Result<f64, OpError> {
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

/// The elements of a tensor of `dims`.
fn numel<const R: usize>(dims: [usize; R]) -> usize {
    dims.iter().product()
}
