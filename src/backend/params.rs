//! Geometry and hyper-parameters of the ops, shared by every backend.

use super::error::{OpError, shape_err};
use crate::data::preprocess::{FrameFormat, FrameOp};

/// Rows per partial sum of the batch-norm statistics: both backends cut the rows of
/// [M, C] into chunks of this many, sum each chunk in order and then the chunks in order,
/// so that their statistics agree bit for bit.
pub const STATS_CHUNK_ROWS: usize = 256;

/// The per-frame parameters of preprocessing, in the layout kernels/preprocess.cu reads:
/// the crop (y0, x0, h, w) in source pixels, the mirror flag, and (brightness, contrast).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameParams {
    pub crops: Vec<[i32; 4]>,
    pub flips: Vec<u8>,
    pub jitter: Vec<[f32; 2]>,
}

/// How preprocessing normalises: (v − mean) / std per RGB channel, on 0..1 values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// A batch of frames as stored, for `Backend::preprocess`: `ops.len()` frames of `h × w`
/// in `format`, one after the other in `data`, each with its crop, flip and jitter; the
/// output is [frames, side, side, 3], normalised with `norm`.
#[derive(Debug, Clone, Copy)]
pub struct FrameBatch<'a> {
    pub format: FrameFormat,
    pub h: usize,
    pub w: usize,
    pub data: &'a [u8],
    pub ops: &'a [FrameOp],
    pub side: usize,
    pub norm: Normalize,
}

impl FrameBatch<'_> {
    /// The checks of `Backend::preprocess`: the bytes of `ops.len()` frames, crops inside
    /// the frame and not empty, an output side of at least 1.
    pub fn check(&self) -> Result<(), OpError> {
        const OP: &str = "preprocess";
        let need = self.ops.len() * self.format.frame_bytes(self.h, self.w);
        if self.data.len() != need {
            return Err(shape_err(
                OP,
                format!(
                    "{} frames of {}×{} {:?} need {need} bytes, got {}",
                    self.ops.len(),
                    self.h,
                    self.w,
                    self.format,
                    self.data.len()
                ),
            ));
        }
        if self.side == 0 {
            return Err(shape_err(OP, "the output side must be at least 1"));
        }
        for (i, op) in self.ops.iter().enumerate() {
            let c = op.crop;
            if c.h == 0 || c.w == 0 || c.y0 + c.h > self.h || c.x0 + c.w > self.w {
                return Err(shape_err(
                    OP,
                    format!(
                        "frame {i}: crop {}×{} at ({}, {}) is not inside the {}×{} frame",
                        c.h, c.w, c.y0, c.x0, self.h, self.w
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The output shape.
    pub fn shape(&self) -> crate::tensor::Shape {
        crate::tensor::Shape::from([self.ops.len(), self.side, self.side, 3])
    }
}

/// A 2-D convolution of `x` [N, H, W, C] with `w` [K, R, S, C] into `y` [N, P, Q, K].
/// Dilation 1, groups 1, no bias (ResNet convolutions feed batch norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub p: usize,
    pub q: usize,
}

impl Conv2dGeom {
    pub fn new(x: [usize; 4], w: [usize; 4], stride: [usize; 2], pad: [usize; 2]) -> Result<Self, OpError> {
        let [n, h, wd, c] = x;
        let [k, r, s, wc] = w;
        if wc != c {
            return Err(shape_err("conv2d", format!("input has {c} channels, weight expects {wc}")));
        }
        if stride.contains(&0) || r == 0 || s == 0 {
            return Err(shape_err("conv2d", format!("window {r}×{s} stride {stride:?}: all must be ≥ 1")));
        }
        if h + 2 * pad[0] < r || wd + 2 * pad[1] < s {
            return Err(shape_err(
                "conv2d",
                format!("window {r}×{s} larger than padded input {h}×{wd} pad {pad:?}"),
            ));
        }
        let p = (h + 2 * pad[0] - r) / stride[0] + 1;
        let q = (wd + 2 * pad[1] - s) / stride[1] + 1;
        Ok(Conv2dGeom { n, h, w: wd, c, k, r, s, stride, pad, p, q })
    }
    pub fn y_dims(&self) -> [usize; 4] {
        [self.n, self.p, self.q, self.k]
    }
}

/// A 2-D pooling window over `x` [N, H, W, C] giving [N, P, Q, C]; padded cells never win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub window: usize,
    pub stride: usize,
    pub pad: usize,
    pub p: usize,
    pub q: usize,
}

impl Pool2dGeom {
    pub fn new(x: [usize; 4], window: usize, stride: usize, pad: usize) -> Result<Self, OpError> {
        let [n, h, w, c] = x;
        if window == 0 || stride == 0 || pad >= window || h + 2 * pad < window || w + 2 * pad < window {
            return Err(shape_err(
                "max_pool2d",
                format!("window {window} stride {stride} pad {pad} does not fit input {h}×{w}"),
            ));
        }
        let p = (h + 2 * pad - window) / stride + 1;
        let q = (w + 2 * pad - window) / stride + 1;
        Ok(Pool2dGeom { n, h, w, c, window, stride, pad, p, q })
    }
    /// An unpadded pool in ceil mode (PyTorch's `ceil_mode=True`): P = ⌈(H − window) /
    /// stride⌉ + 1, so that the last window may hang over the bottom and right edges and
    /// takes the maximum of the cells it covers. The max-pool kernels run it as they are,
    /// since cells outside the input never win. As in PyTorch, a last window that would
    /// start past the input (possible when the window is smaller than the stride) is
    /// dropped.
    pub fn ceil_mode(x: [usize; 4], window: usize, stride: usize) -> Result<Self, OpError> {
        let [n, h, w, c] = x;
        if window == 0 || stride == 0 || h < window || w < window {
            return Err(shape_err(
                "max_pool2d (ceil mode)",
                format!("window {window} stride {stride} does not fit input {h}×{w}"),
            ));
        }
        let out = |extent: usize| {
            let n = (extent - window).div_ceil(stride) + 1;
            if (n - 1) * stride >= extent { n - 1 } else { n }
        };
        Ok(Pool2dGeom { n, h, w, c, window, stride, pad: 0, p: out(h), q: out(w) })
    }
    pub fn y_dims(&self) -> [usize; 4] {
        [self.n, self.p, self.q, self.c]
    }
}

/// Batch norm over the channels of an NHWC tensor seen as [M, C].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    pub eps: f32,
    /// Weight of the new batch statistic in the running average (PyTorch's momentum).
    pub momentum: f32,
    /// Apply ReLU to the output (and mask the gradient by it in backward).
    pub relu: bool,
}

impl Default for BatchNormParams {
    fn default() -> Self {
        BatchNormParams { eps: 1e-5, momentum: 0.1, relu: false }
    }
}

/// Binary cross-entropy with logits, averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BceParams {
    /// Weight of the positive (fake) term, as PyTorch's `pos_weight`.
    pub pos_weight: f32,
    /// Targets become `y·(1−ε) + ε/2`.
    pub label_smoothing: f32,
}

impl Default for BceParams {
    fn default() -> Self {
        BceParams { pos_weight: 1.0, label_smoothing: 0.0 }
    }
}

/// AdamW with decoupled weight decay, as `torch.optim.AdamW`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// SGD with momentum (dampening 0) and optional Nesterov, L2 weight decay added to the
/// gradient, as `torch.optim.SGD`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}
