//! The CUDA backend: every op of `ops::Backend` on the GPU, tensors in blocks of the
//! device pool.
//!
//! Precision: tensors are FP32 or FP16 (`DeviceBuf`). Under mixed precision activations
//! and their gradients are FP16 from the input on: the tensor-core convolutions read them
//! (and the FP16 weight copy the model makes once per step) directly and write FP16
//! outputs from their FP32 accumulators, and batch norm, ReLU, the residual add and the
//! pools have FP16 kernels with FP32 arithmetic — no cast pass between layers. With
//! `mixed_precision = false` tensors are FP32 and each product casts FP16 copies of its
//! operands into pool scratch just before it (PyTorch autocast's recipe), with FP32
//! output. The linear head, the loss and the optimizer are FP32 in both.

use std::sync::{Arc, PoisonError};

use cudarc::driver::CudaSlice;
use half::f16;

use super::buffer::{DeviceBuf, DeviceElem, PoolSlice, with_elem};
use super::conv::{self, Epilogue};
use super::device::{CudaError, Device};
use super::eltwise;
use super::gemm::{GemmNt, GemmOut, GemmRef, gemm_nt, gemm_reference};
use super::preprocess::preprocess_frames;
use super::{activation, loss, norm, optim, pooling};
use crate::backend::check::unique;
use crate::backend::error::OpError;
use crate::backend::ops::{Backend, BnForward, BnGrads, BnSaved, GemmGeom, LinearGeom, LinearGrads};
use crate::backend::params::{
    AdamWParams, BatchNormParams, BceParams, Conv2dGeom, FrameBatch, Pool2dGeom, SgdParams,
};
use crate::data::preprocess::frame_params;
use crate::memory::PoolStats;
use crate::tensor::{DType, Shape, Tensor};

/// A tensor in device memory.
pub type CudaTensor = Tensor<Arc<DeviceBuf>>;

/// The CUDA backend on one device.
#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<Device>,
}

/// An FP16 operand of a tensor-core kernel: the tensor's own buffer when it is FP16, else
/// an FP16 copy in pool scratch (FP32 tensors, and the FP32 linear head).
enum Half<'a> {
    Borrowed(&'a CudaSlice<f16>),
    Copied(PoolSlice<f16>),
}

impl std::ops::Deref for Half<'_> {
    type Target = CudaSlice<f16>;
    fn deref(&self) -> &CudaSlice<f16> {
        match self {
            Half::Borrowed(s) => s,
            Half::Copied(s) => s,
        }
    }
}

impl CudaBackend {
    /// Device `ordinal`; `budget` caps its pool (None: the whole device); `pinned` stages
    /// uploads through page-locked memory on a copy stream (`[dataloader] pin_memory`).
    pub fn open(ordinal: u32, budget: Option<usize>, pinned: bool) -> Result<Self, CudaError> {
        let dev = Device::open(ordinal, pinned)?;
        if let Some(bytes) = budget {
            dev.pool().lock().unwrap_or_else(PoisonError::into_inner).set_budget(bytes)?;
        }
        Ok(CudaBackend { dev: Arc::new(dev) })
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// A tensor for an op's result. Every op body here writes each element of the
    /// tensors it takes from this before anything reads them (the GPU tests run on the
    /// software GPU with new memory filled with NaNs, `SOFTGPU_FILL=255`, so a result
    /// left partly unwritten fails its parity test).
    fn alloc(&self, shape: impl Into<Shape>, dtype: DType) -> Result<CudaTensor, OpError> {
        let shape = shape.into();
        let n = shape.numel();
        // SAFETY: the op allocating it writes every element (above).
        let buf = with_elem!(dtype, E => E::wrap(unsafe { self.dev.alloc_uninit::<E>(n) }?));
        Ok(Tensor::from_parts(shape, dtype, Arc::new(buf)))
    }

    /// `t` as an FP16 operand of the tensor cores.
    fn half<'a>(&self, t: &'a CudaTensor) -> Result<Half<'a>, OpError> {
        match &**t.storage() {
            DeviceBuf::F16(s) => Ok(Half::Borrowed(s)),
            DeviceBuf::F32(s) => {
                // SAFETY: the cast below writes every element.
                let mut h = unsafe { self.dev.alloc_uninit::<f16>(t.numel()) }?;
                eltwise::cast_f32_f16(&self.dev, s, &mut h, t.numel())?;
                Ok(Half::Copied(h))
            }
        }
    }
}

/// The FP32 elements of a tensor.
fn f32s(t: &CudaTensor) -> &CudaSlice<f32> {
    t.storage().f32s()
}

/// The FP32 elements of a tensor that is unshared (checked, or just allocated).
fn f32s_mut(t: &mut CudaTensor) -> &mut CudaSlice<f32> {
    unique(t).f32s_mut()
}

/// The output of a tensor-core kernel writing `t` in its own dtype.
fn gemm_out(t: &mut CudaTensor) -> GemmOut<'_> {
    match unique(t) {
        DeviceBuf::F32(s) => GemmOut::F32(s),
        DeviceBuf::F16(s) => GemmOut::F16(s),
    }
}

impl Backend for CudaBackend {
    type Storage = Arc<DeviceBuf>;

    fn name(&self) -> String {
        let model = self.dev.context().name().unwrap_or_else(|_| "unknown GPU".into());
        format!("cuda:{} {model}", self.dev.ordinal)
    }

    fn on_gpu(&self) -> bool {
        true
    }

    fn multiprocessors(&self) -> Option<usize> {
        Some(self.dev.sm_count)
    }

    fn pool_stats(&self) -> PoolStats {
        self.dev.pool().lock().unwrap_or_else(PoisonError::into_inner).stats()
    }

    fn reset_pool_peaks(&self) {
        self.dev.pool().lock().unwrap_or_else(PoisonError::into_inner).reset_peaks();
    }

    fn trim_pool(&self) -> usize {
        // As on the CPU: a failed trim leaves the pool as it was, and the governor moves on.
        self.dev.pool().lock().unwrap_or_else(PoisonError::into_inner).trim(0).unwrap_or(0)
    }

    fn pinned_bytes(&self) -> usize {
        self.dev.staged_bytes()
    }

    fn op_begins(&self, op: &'static str, min_bytes: usize) {
        self.dev.ledger().op_begins(op, min_bytes);
    }

    fn run_upload(&self, shape: Shape, data: &[f32], dtype: DType) -> Result<CudaTensor, OpError> {
        let buf = match dtype {
            DType::F32 => DeviceBuf::F32(self.dev.upload(data)?),
            DType::F16 => {
                let halves: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
                DeviceBuf::F16(self.dev.upload(&halves)?)
            }
        };
        Ok(Tensor::from_parts(shape, dtype, Arc::new(buf)))
    }

    fn run_zeros(&self, shape: Shape, dtype: DType) -> Result<CudaTensor, OpError> {
        let n = shape.numel();
        let buf = with_elem!(dtype, E => E::wrap(self.dev.alloc::<E>(n)?));
        Ok(Tensor::from_parts(shape, dtype, Arc::new(buf)))
    }

    fn run_download(&self, t: &CudaTensor) -> Result<Vec<f32>, OpError> {
        if t.numel() == 0 {
            return Ok(Vec::new());
        }
        Ok(match &**t.storage() {
            DeviceBuf::F32(s) => self.dev.download(s)?,
            DeviceBuf::F16(s) => self.dev.download(s)?.into_iter().map(f16::to_f32).collect(),
        })
    }

    fn run_cast(&self, x: &CudaTensor, to: DType) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), to)?;
        let n = x.numel();
        match (&**x.storage(), unique(&mut y)) {
            (DeviceBuf::F32(src), DeviceBuf::F16(dst)) => eltwise::cast_f32_f16(&self.dev, src, dst, n)?,
            (DeviceBuf::F16(src), DeviceBuf::F32(dst)) => eltwise::cast_f16_f32(&self.dev, src, dst, n)?,
            _ => unreachable!("Backend::cast runs a cast only between different dtypes"),
        }
        Ok(y)
    }

    fn run_gemm(
        &self,
        g: &GemmGeom,
        alpha: f32,
        a: &CudaTensor,
        b: &CudaTensor,
        beta: f32,
        c: &mut CudaTensor,
    ) -> Result<(), OpError> {
        let (a16, b16) = (self.half(a)?, self.half(b)?);
        let GemmGeom { m, n, k, trans_a, trans_b } = *g;
        let r = GemmRef { m, n, k, alpha, a: &a16, trans_a, b: &b16, trans_b, beta };
        gemm_reference(&self.dev, &r, f32s_mut(c))?;
        Ok(())
    }

    fn run_linear_fwd(
        &self,
        g: &LinearGeom,
        x: &CudaTensor,
        w: &CudaTensor,
        b: &CudaTensor,
    ) -> Result<CudaTensor, OpError> {
        let LinearGeom { n, fin, fout } = *g;
        let (x16, w16) = (self.half(x)?, self.half(w)?);
        if super::gemm::uses_tensor_cores(fin) {
            let mut y = self.alloc([n, fout], DType::F32)?;
            let bias = Some(f32s(b));
            let g =
                GemmNt { m: n, n: fout, k: fin, alpha: 1.0, a: &x16, b: &w16, beta: 0.0, bias, relu: false };
            gemm_nt(&self.dev, &g, GemmOut::F32(f32s_mut(&mut y)))?;
            return Ok(y);
        }
        // In-features the tensor-core loader cannot take (no ResNet head has them): the
        // bias broadcast on the host, the product accumulated onto it (β = 1).
        let bias = self.to_vec(b)?;
        let rows: Vec<f32> = (0..n).flat_map(|_| bias.iter().copied()).collect();
        let mut y = self.tensor(Shape::from([n, fout]), &rows)?;
        let r = GemmRef {
            m: n,
            n: fout,
            k: fin,
            alpha: 1.0,
            a: &x16,
            trans_a: false,
            b: &w16,
            trans_b: true,
            beta: 1.0,
        };
        gemm_reference(&self.dev, &r, f32s_mut(&mut y))?;
        Ok(y)
    }

    fn run_linear_bwd(
        &self,
        g: &LinearGeom,
        dy: &CudaTensor,
        x: &CudaTensor,
        w: &CudaTensor,
    ) -> Result<LinearGrads<CudaTensor>, OpError> {
        let LinearGeom { n, fin, fout } = *g;
        let (dy16, x16, w16) = (self.half(dy)?, self.half(x)?, self.half(w)?);
        let mut dx = self.alloc([n, fin], DType::F32)?;
        let r = GemmRef {
            m: n,
            n: fin,
            k: fout,
            alpha: 1.0,
            a: &dy16,
            trans_a: false,
            b: &w16,
            trans_b: false,
            beta: 0.0,
        };
        gemm_reference(&self.dev, &r, f32s_mut(&mut dx))?;
        let mut dw = self.alloc([fout, fin], DType::F32)?;
        let r = GemmRef {
            m: fout,
            n: fin,
            k: n,
            alpha: 1.0,
            a: &dy16,
            trans_a: true,
            b: &x16,
            trans_b: false,
            beta: 0.0,
        };
        gemm_reference(&self.dev, &r, f32s_mut(&mut dw))?;
        let mut db = self.alloc([fout], DType::F32)?;
        pooling::mean_rows(&self.dev, f32s(dy), f32s_mut(&mut db), 1, n, fout)?;
        eltwise::scale(&self.dev, f32s_mut(&mut db), n as f32, fout)?;
        Ok(LinearGrads { dx, dw, db })
    }

    fn run_conv2d_fwd(&self, g: &Conv2dGeom, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor, OpError> {
        let (x16, w16) = (self.half(x)?, self.half(w)?);
        let mut y = self.alloc(g.y_dims(), x.dtype())?;
        conv::conv2d_fwd(&self.dev, g, &x16, &w16, gemm_out(&mut y), Epilogue::default())?;
        Ok(y)
    }

    fn run_conv2d_dgrad(
        &self,
        g: &Conv2dGeom,
        dy: &CudaTensor,
        w: &CudaTensor,
    ) -> Result<CudaTensor, OpError> {
        let (dy16, w16) = (self.half(dy)?, self.half(w)?);
        let mut dx = self.alloc([g.n, g.h, g.w, g.c], dy.dtype())?;
        conv::conv2d_dgrad(&self.dev, g, &dy16, &w16, gemm_out(&mut dx), 0.0)?;
        Ok(dx)
    }

    fn run_conv2d_wgrad(
        &self,
        g: &Conv2dGeom,
        x: &CudaTensor,
        dy: &CudaTensor,
    ) -> Result<CudaTensor, OpError> {
        let (x16, dy16) = (self.half(x)?, self.half(dy)?);
        let mut dw = self.alloc([g.k, g.r, g.s, g.c], DType::F32)?;
        conv::conv2d_wgrad(&self.dev, g, &x16, &dy16, f32s_mut(&mut dw), 0.0)?;
        Ok(dw)
    }

    fn run_batch_norm_fwd_train(
        &self,
        c: usize,
        x: &CudaTensor,
        gamma: &CudaTensor,
        beta: &CudaTensor,
        running_mean: &mut CudaTensor,
        running_var: &mut CudaTensor,
        params: &BatchNormParams,
    ) -> Result<BnForward<CudaTensor>, OpError> {
        let m = x.numel() / c;
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        let (mut mean, mut invstd) = (self.alloc([c], DType::F32)?, self.alloc([c], DType::F32)?);
        with_elem!(x.dtype(), E => norm::batch_norm_fwd_train(
            &self.dev,
            x.storage().get::<E>(),
            m,
            c,
            f32s(gamma),
            f32s(beta),
            f32s_mut(running_mean),
            f32s_mut(running_var),
            params,
            unique(&mut y).get_mut::<E>(),
            f32s_mut(&mut mean),
            f32s_mut(&mut invstd),
        ))?;
        Ok(BnForward { y, saved: BnSaved { mean, invstd } })
    }

    fn run_batch_norm_fwd_eval(
        &self,
        c: usize,
        x: &CudaTensor,
        gamma: &CudaTensor,
        beta: &CudaTensor,
        running_mean: &CudaTensor,
        running_var: &CudaTensor,
        params: &BatchNormParams,
    ) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        with_elem!(x.dtype(), E => norm::batch_norm_fwd_eval(
            &self.dev,
            x.storage().get::<E>(),
            x.numel() / c,
            c,
            f32s(gamma),
            f32s(beta),
            f32s(running_mean),
            f32s(running_var),
            params,
            unique(&mut y).get_mut::<E>(),
        ))?;
        Ok(y)
    }

    fn run_batch_norm_bwd(
        &self,
        c: usize,
        dy: &CudaTensor,
        x: &CudaTensor,
        gamma: &CudaTensor,
        saved: &BnSaved<CudaTensor>,
        relu_y: Option<&CudaTensor>,
    ) -> Result<BnGrads<CudaTensor>, OpError> {
        let mut dx = self.alloc(x.shape().clone(), x.dtype())?;
        let (mut dgamma, mut dbeta) = (self.alloc([c], DType::F32)?, self.alloc([c], DType::F32)?);
        with_elem!(x.dtype(), E => norm::batch_norm_bwd(
            &self.dev,
            dy.storage().get::<E>(),
            x.storage().get::<E>(),
            x.numel() / c,
            c,
            f32s(gamma),
            f32s(&saved.mean),
            f32s(&saved.invstd),
            relu_y.map(|y| y.storage().get::<E>()),
            unique(&mut dx).get_mut::<E>(),
            f32s_mut(&mut dgamma),
            f32s_mut(&mut dbeta),
        ))?;
        Ok(BnGrads { dx, dgamma, dbeta })
    }

    fn run_batch_norm_normalize(
        &self,
        c: usize,
        x: &CudaTensor,
        gamma: &CudaTensor,
        beta: &CudaTensor,
        saved: &BnSaved<CudaTensor>,
        relu: bool,
    ) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        with_elem!(x.dtype(), E => norm::batch_norm_normalize(
            &self.dev,
            x.storage().get::<E>(),
            x.numel() / c,
            c,
            f32s(&saved.mean),
            f32s(&saved.invstd),
            f32s(gamma),
            f32s(beta),
            relu,
            unique(&mut y).get_mut::<E>(),
        ))?;
        Ok(y)
    }

    fn run_batch_norm_relu_bwd(
        &self,
        c: usize,
        dy: &CudaTensor,
        x: &CudaTensor,
        gamma: &CudaTensor,
        beta: &CudaTensor,
        saved: &BnSaved<CudaTensor>,
    ) -> Result<BnGrads<CudaTensor>, OpError> {
        let mut dx = self.alloc(x.shape().clone(), x.dtype())?;
        let (mut dgamma, mut dbeta) = (self.alloc([c], DType::F32)?, self.alloc([c], DType::F32)?);
        with_elem!(x.dtype(), E => norm::batch_norm_relu_bwd(
            &self.dev,
            dy.storage().get::<E>(),
            x.storage().get::<E>(),
            x.numel() / c,
            c,
            f32s(gamma),
            f32s(beta),
            f32s(&saved.mean),
            f32s(&saved.invstd),
            unique(&mut dx).get_mut::<E>(),
            f32s_mut(&mut dgamma),
            f32s_mut(&mut dbeta),
        ))?;
        Ok(BnGrads { dx, dgamma, dbeta })
    }

    fn run_relu_fwd(&self, x: &CudaTensor) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        let n = x.numel();
        with_elem!(x.dtype(), E => eltwise::relu_fwd(&self.dev, x.storage().get::<E>(), unique(&mut y).get_mut::<E>(), n))?;
        Ok(y)
    }

    fn run_relu_bwd(&self, dy: &CudaTensor, y: &CudaTensor) -> Result<CudaTensor, OpError> {
        let mut dx = self.alloc(y.shape().clone(), y.dtype())?;
        let n = y.numel();
        with_elem!(y.dtype(), E => eltwise::relu_bwd(
            &self.dev,
            dy.storage().get::<E>(),
            y.storage().get::<E>(),
            unique(&mut dx).get_mut::<E>(),
            n,
        ))?;
        Ok(dx)
    }

    fn run_add_assign(&self, y: &mut CudaTensor, x: &CudaTensor) -> Result<(), OpError> {
        let n = x.numel();
        with_elem!(x.dtype(), E => eltwise::add_assign(&self.dev, unique(y).get_mut::<E>(), x.storage().get::<E>(), n))?;
        Ok(())
    }

    fn run_scale(&self, y: &mut CudaTensor, alpha: f32) -> Result<(), OpError> {
        let n = y.numel();
        eltwise::scale(&self.dev, f32s_mut(y), alpha, n)?;
        Ok(())
    }

    fn run_fill(&self, y: &mut CudaTensor, value: f32) -> Result<(), OpError> {
        let n = y.numel();
        eltwise::fill(&self.dev, f32s_mut(y), value, n)?;
        Ok(())
    }

    fn run_sigmoid(&self, x: &CudaTensor) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), DType::F32)?;
        eltwise::sigmoid(&self.dev, f32s(x), f32s_mut(&mut y), x.numel())?;
        Ok(y)
    }

    fn run_max_pool2d_fwd(&self, g: &Pool2dGeom, x: &CudaTensor) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(g.y_dims(), x.dtype())?;
        with_elem!(x.dtype(), E => pooling::max_pool2d_fwd(&self.dev, g, x.storage().get::<E>(), unique(&mut y).get_mut::<E>()))?;
        Ok(y)
    }

    fn run_max_pool2d_bwd(
        &self,
        g: &Pool2dGeom,
        x: &CudaTensor,
        dy: &CudaTensor,
    ) -> Result<CudaTensor, OpError> {
        let mut dx = self.alloc(x.shape().clone(), x.dtype())?;
        with_elem!(x.dtype(), E => pooling::max_pool2d_bwd(
            &self.dev,
            g,
            x.storage().get::<E>(),
            dy.storage().get::<E>(),
            unique(&mut dx).get_mut::<E>(),
        ))?;
        Ok(dx)
    }

    fn run_bias_add(&self, y: &mut CudaTensor, b: &CudaTensor) -> Result<(), OpError> {
        let (c, rows) = (b.numel(), y.numel() / b.numel());
        activation::bias_add(&self.dev, f32s_mut(y), f32s(b), rows, c)?;
        Ok(())
    }

    fn run_bias_prelu(&self, y: &mut CudaTensor, b: &CudaTensor, alpha: &CudaTensor) -> Result<(), OpError> {
        let (c, rows) = (b.numel(), y.numel() / b.numel());
        activation::bias_prelu(&self.dev, f32s_mut(y), f32s(b), f32s(alpha), rows, c)?;
        Ok(())
    }

    fn run_softmax_rows(&self, x: &CudaTensor, c: usize) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), DType::F32)?;
        activation::softmax_rows(&self.dev, f32s(x), f32s_mut(&mut y), x.numel() / c, c)?;
        Ok(y)
    }

    fn run_mean_rows(&self, x: &CudaTensor, group: usize, out: Shape) -> Result<CudaTensor, OpError> {
        let c = *out.dims().last().unwrap_or(&1);
        let blocks = out.numel() / c.max(1);
        let mut y = self.alloc(out, x.dtype())?;
        with_elem!(x.dtype(), E => pooling::mean_rows(&self.dev, x.storage().get::<E>(), unique(&mut y).get_mut::<E>(), blocks, group, c))?;
        Ok(y)
    }

    fn run_mean_rows_bwd(&self, dy: &CudaTensor, group: usize, out: Shape) -> Result<CudaTensor, OpError> {
        let c = *dy.dims().last().unwrap_or(&1);
        let blocks = dy.numel() / c.max(1);
        let mut dx = self.alloc(out, dy.dtype())?;
        with_elem!(dy.dtype(), E => pooling::mean_rows_bwd(&self.dev, dy.storage().get::<E>(), unique(&mut dx).get_mut::<E>(), blocks, group, c))?;
        Ok(dx)
    }

    fn run_bce_with_logits_fwd(
        &self,
        logits: &CudaTensor,
        targets: &CudaTensor,
        params: &BceParams,
    ) -> Result<f32, OpError> {
        let mut out = self.alloc([1], DType::F32)?;
        loss::bce_with_logits_fwd(
            &self.dev,
            f32s(logits),
            f32s(targets),
            logits.numel(),
            params,
            f32s_mut(&mut out),
        )?;
        Ok(self.to_vec(&out)?[0])
    }

    fn run_bce_with_logits_bwd(
        &self,
        logits: &CudaTensor,
        targets: &CudaTensor,
        params: &BceParams,
        scale: f32,
    ) -> Result<CudaTensor, OpError> {
        let mut grad = self.alloc(logits.shape().clone(), DType::F32)?;
        let n = logits.numel();
        loss::bce_with_logits_bwd(
            &self.dev,
            f32s(logits),
            f32s(targets),
            n,
            params,
            scale,
            f32s_mut(&mut grad),
        )?;
        Ok(grad)
    }

    fn run_adamw_step(
        &self,
        p: &mut CudaTensor,
        g: &CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        hp: &AdamWParams,
        step: u64,
    ) -> Result<(), OpError> {
        let n = g.numel();
        optim::adamw_step(&self.dev, f32s_mut(p), f32s(g), f32s_mut(m), f32s_mut(v), n, hp, step)?;
        Ok(())
    }

    fn run_sgd_step(
        &self,
        p: &mut CudaTensor,
        g: &CudaTensor,
        momentum_buf: &mut CudaTensor,
        hp: &SgdParams,
        first_step: bool,
    ) -> Result<(), OpError> {
        let n = g.numel();
        optim::sgd_step(&self.dev, f32s_mut(p), f32s(g), f32s_mut(momentum_buf), n, hp, first_step)?;
        Ok(())
    }

    fn run_unscale_check(&self, g: &mut CudaTensor, inv_scale: f32) -> Result<bool, OpError> {
        let n = g.numel();
        Ok(optim::unscale_check(&self.dev, f32s_mut(g), n, inv_scale)?)
    }

    fn run_sum_squares(&self, g: &CudaTensor) -> Result<f64, OpError> {
        Ok(optim::sum_squares(&self.dev, f32s(g), g.numel())?)
    }

    /// Only the stored bytes cross to the device; the kernel writes FP16 (cast once for an
    /// FP32 model).
    fn run_preprocess(&self, f: &FrameBatch<'_>, dtype: DType) -> Result<CudaTensor, OpError> {
        let src = self.dev.upload(f.data)?;
        let mut y = self.alloc(f.shape(), DType::F16)?;
        let params = frame_params(f.ops);
        let dst = unique(&mut y).get_mut::<f16>();
        preprocess_frames(&self.dev, f.format, &src, (f.h, f.w), &params, f.side, f.norm, dst)?;
        match dtype {
            DType::F16 => Ok(y),
            DType::F32 => self.run_cast(&y, DType::F32),
        }
    }
}
