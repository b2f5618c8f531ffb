//! The CUDA backend: every op of `ops::Backend` on the GPU, tensors in blocks of the
//! device pool.
//!
//! Precision: tensors are FP32 (master weights, activations, gradients), and the
//! convolutions and linear layers feed the tensor cores FP16 copies made by a cast kernel
//! into pool scratch just before the product — PyTorch autocast's recipe, with FP32
//! accumulation and output. Keeping activations in FP16 between layers (half the
//! activation memory the planner's mixed mode assumes) is the next step; runs on this
//! backend plan as FP32 until then.

use std::sync::{Arc, PoisonError};

use cudarc::driver::CudaSlice;
use half::f16;

use super::buffer::PoolSlice;
use super::conv::{self, Epilogue};
use super::device::{CudaError, Device};
use super::eltwise;
use super::gemm::{GemmNt, GemmOut, GemmRef, gemm_nt, gemm_reference};
use super::{loss, norm, optim, pooling};
use crate::backend::check::{self, dims, expect_dims, same_shape};
use crate::backend::error::{OpError, shape_err};
use crate::backend::ops::{Backend, BnForward, BnGrads, BnSaved, LinearGrads};
use crate::backend::params::{AdamWParams, BatchNormParams, BceParams, Conv2dGeom, Pool2dGeom, SgdParams};
use crate::memory::PoolStats;
use crate::tensor::{Shape, Tensor};

/// A tensor in device memory.
pub type CudaTensor = Tensor<Arc<PoolSlice<f32>>>;

/// The CUDA backend on one device.
#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<Device>,
}

impl CudaBackend {
    /// Device `ordinal`; `budget` caps its pool (None: the whole device).
    pub fn open(ordinal: u32, budget: Option<usize>) -> Result<Self, CudaError> {
        let dev = Device::open(ordinal)?;
        if let Some(bytes) = budget {
            dev.pool().lock().unwrap_or_else(PoisonError::into_inner).set_budget(bytes)?;
        }
        Ok(CudaBackend { dev: Arc::new(dev) })
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn alloc(&self, shape: impl Into<Shape>) -> Result<CudaTensor, OpError> {
        let shape = shape.into();
        let buf = self.dev.alloc::<f32>(shape.numel())?;
        Ok(Tensor::from_parts(shape, Arc::new(buf)))
    }

    /// An FP16 copy of `t` in pool scratch, for the tensor-core kernels.
    fn half(&self, t: &CudaTensor) -> Result<PoolSlice<f16>, OpError> {
        let mut h = self.dev.alloc::<f16>(t.numel())?;
        eltwise::cast_f32_f16(&self.dev, t.storage(), &mut h, t.numel())?;
        Ok(h)
    }
}

/// The device buffer of a tensor this backend just allocated (and so holds alone).
fn fresh(t: &mut CudaTensor) -> &mut CudaSlice<f32> {
    Arc::get_mut(t.storage_mut()).expect("a freshly allocated tensor is not shared")
}

/// The buffer of a tensor an op updates in place, which must not be shared.
fn exclusive<'a>(
    op: &'static str,
    name: &str,
    t: &'a mut CudaTensor,
) -> Result<&'a mut CudaSlice<f32>, OpError> {
    check::exclusive(op, name, t).map(|b| &mut **b)
}

impl Backend for CudaBackend {
    type Storage = Arc<PoolSlice<f32>>;

    fn name(&self) -> String {
        let model = self.dev.context().name().unwrap_or_else(|_| "unknown GPU".into());
        format!("cuda:{} {model}", self.dev.ordinal)
    }

    fn pool_stats(&self) -> PoolStats {
        self.dev.pool().lock().unwrap_or_else(PoisonError::into_inner).stats()
    }

    fn trim_pool(&self) -> usize {
        // As on the CPU: a failed trim leaves the pool as it was, and the governor moves on.
        self.dev.pool().lock().unwrap_or_else(PoisonError::into_inner).trim(0).unwrap_or(0)
    }

    fn tensor(&self, shape: Shape, data: &[f32]) -> Result<CudaTensor, OpError> {
        if shape.numel() != data.len() {
            return Err(shape_err(
                "tensor",
                format!("{} needs {} elements, got {}", shape, shape.numel(), data.len()),
            ));
        }
        let mut t = self.alloc(shape)?;
        if !data.is_empty() {
            self.dev
                .stream()
                .memcpy_htod(data, fresh(&mut t))
                .map_err(|e| OpError::Device(format!("copy to device: {e}")))?;
        }
        Ok(t)
    }

    fn zeros(&self, shape: Shape) -> Result<CudaTensor, OpError> {
        self.alloc(shape)
    }

    fn to_vec(&self, t: &CudaTensor) -> Result<Vec<f32>, OpError> {
        if t.numel() == 0 {
            return Ok(Vec::new());
        }
        self.dev
            .stream()
            .clone_dtoh(&***t.storage())
            .map_err(|e| OpError::Device(format!("copy to host: {e}")))
    }

    fn gemm(
        &self,
        alpha: f32,
        a: &CudaTensor,
        trans_a: bool,
        b: &CudaTensor,
        trans_b: bool,
        beta: f32,
        c: &mut CudaTensor,
    ) -> Result<(), OpError> {
        let [ar, ac] = dims("gemm", "a", a)?;
        let [br, bc] = dims("gemm", "b", b)?;
        let [cr, cc] = dims("gemm", "c", c)?;
        let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
        if k != kb || m != cr || n != cc {
            return Err(shape_err(
                "gemm",
                format!("op(a) {m}×{k} · op(b) {kb}×{n} does not give c {}", c.shape()),
            ));
        }
        let (a16, b16) = (self.half(a)?, self.half(b)?);
        let r = GemmRef { m, n, k, alpha, a: &a16, trans_a, b: &b16, trans_b, beta };
        gemm_reference(&self.dev, &r, exclusive("gemm", "c", c)?)?;
        Ok(())
    }

    fn linear_fwd(&self, x: &CudaTensor, w: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor, OpError> {
        let (n, fin, fout) = check::linear(x, w, b)?;
        let (x16, w16) = (self.half(x)?, self.half(w)?);
        if super::gemm::uses_tensor_cores(fin) {
            let mut y = self.alloc([n, fout])?;
            let bias = Some(&***b.storage());
            let g =
                GemmNt { m: n, n: fout, k: fin, alpha: 1.0, a: &x16, b: &w16, beta: 0.0, bias, relu: false };
            gemm_nt(&self.dev, &g, GemmOut::F32(fresh(&mut y)))?;
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
        gemm_reference(&self.dev, &r, fresh(&mut y))?;
        Ok(y)
    }

    fn linear_bwd(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        w: &CudaTensor,
    ) -> Result<LinearGrads<CudaTensor>, OpError> {
        let (n, fin, fout) = check::linear_bwd(dy, x, w)?;
        let (dy16, x16, w16) = (self.half(dy)?, self.half(x)?, self.half(w)?);
        let mut dx = self.alloc([n, fin])?;
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
        gemm_reference(&self.dev, &r, fresh(&mut dx))?;
        let mut dw = self.alloc([fout, fin])?;
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
        gemm_reference(&self.dev, &r, fresh(&mut dw))?;
        let mut db = self.alloc([fout])?;
        pooling::mean_rows(&self.dev, dy.storage(), fresh(&mut db), 1, n, fout)?;
        eltwise::scale(&self.dev, fresh(&mut db), n as f32, fout)?;
        Ok(LinearGrads { dx, dw, db })
    }

    fn conv2d_fwd(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<CudaTensor, OpError> {
        let g = Conv2dGeom::new(dims("conv2d", "x", x)?, dims("conv2d", "w", w)?, stride, pad)?;
        let (x16, w16) = (self.half(x)?, self.half(w)?);
        let mut y = self.alloc(g.y_dims())?;
        conv::conv2d_fwd(&self.dev, &g, &x16, &w16, GemmOut::F32(fresh(&mut y)), Epilogue::default())?;
        Ok(y)
    }

    fn conv2d_dgrad(
        &self,
        dy: &CudaTensor,
        w: &CudaTensor,
        x_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<CudaTensor, OpError> {
        let g = Conv2dGeom::new(x_dims, dims("conv2d_dgrad", "w", w)?, stride, pad)?;
        expect_dims("conv2d_dgrad", "dy", dy, &g.y_dims())?;
        let (dy16, w16) = (self.half(dy)?, self.half(w)?);
        let mut dx = self.alloc(x_dims)?;
        conv::conv2d_dgrad(&self.dev, &g, &dy16, &w16, GemmOut::F32(fresh(&mut dx)), 0.0)?;
        Ok(dx)
    }

    fn conv2d_wgrad(
        &self,
        x: &CudaTensor,
        dy: &CudaTensor,
        w_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<CudaTensor, OpError> {
        let g = Conv2dGeom::new(dims("conv2d_wgrad", "x", x)?, w_dims, stride, pad)?;
        expect_dims("conv2d_wgrad", "dy", dy, &g.y_dims())?;
        let (x16, dy16) = (self.half(x)?, self.half(dy)?);
        let mut dw = self.alloc(w_dims)?;
        conv::conv2d_wgrad(&self.dev, &g, &x16, &dy16, fresh(&mut dw), 0.0)?;
        Ok(dw)
    }

    fn batch_norm_fwd_train(
        &self,
        x: &CudaTensor,
        gamma: &CudaTensor,
        beta: &CudaTensor,
        running_mean: &mut CudaTensor,
        running_var: &mut CudaTensor,
        params: &BatchNormParams,
    ) -> Result<BnForward<CudaTensor>, OpError> {
        let vectors = [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", &*running_mean),
            ("running_var", &*running_var),
        ];
        let c = check::batch_norm("batch_norm", x, &vectors)?;
        let m = x.numel() / c;
        let mut y = self.alloc(x.shape().clone())?;
        let (mut mean, mut invstd) = (self.alloc([c])?, self.alloc([c])?);
        norm::batch_norm_fwd_train(
            &self.dev,
            x.storage(),
            m,
            c,
            gamma.storage(),
            beta.storage(),
            exclusive("batch_norm", "running_mean", running_mean)?,
            exclusive("batch_norm", "running_var", running_var)?,
            params,
            fresh(&mut y),
            fresh(&mut mean),
            fresh(&mut invstd),
        )?;
        Ok(BnForward { y, saved: BnSaved { mean, invstd } })
    }

    fn batch_norm_fwd_eval(
        &self,
        x: &CudaTensor,
        gamma: &CudaTensor,
        beta: &CudaTensor,
        running_mean: &CudaTensor,
        running_var: &CudaTensor,
        params: &BatchNormParams,
    ) -> Result<CudaTensor, OpError> {
        let vectors =
            [("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)];
        let c = check::batch_norm("batch_norm", x, &vectors)?;
        let mut y = self.alloc(x.shape().clone())?;
        norm::batch_norm_fwd_eval(
            &self.dev,
            x.storage(),
            x.numel() / c,
            c,
            gamma.storage(),
            beta.storage(),
            running_mean.storage(),
            running_var.storage(),
            params,
            fresh(&mut y),
        )?;
        Ok(y)
    }

    fn batch_norm_bwd(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        gamma: &CudaTensor,
        saved: &BnSaved<CudaTensor>,
        relu_y: Option<&CudaTensor>,
    ) -> Result<BnGrads<CudaTensor>, OpError> {
        let c = check::batch_norm_bwd(dy, x, gamma, saved, relu_y)?;
        let mut dx = self.alloc(x.shape().clone())?;
        let (mut dgamma, mut dbeta) = (self.alloc([c])?, self.alloc([c])?);
        norm::batch_norm_bwd(
            &self.dev,
            dy.storage(),
            x.storage(),
            x.numel() / c,
            c,
            gamma.storage(),
            saved.mean.storage(),
            saved.invstd.storage(),
            relu_y.map(|y| &***y.storage()),
            fresh(&mut dx),
            fresh(&mut dgamma),
            fresh(&mut dbeta),
        )?;
        Ok(BnGrads { dx, dgamma, dbeta })
    }

    fn relu_fwd(&self, x: &CudaTensor) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone())?;
        eltwise::relu_fwd(&self.dev, x.storage(), fresh(&mut y), x.numel())?;
        Ok(y)
    }

    fn relu_bwd(&self, dy: &CudaTensor, y: &CudaTensor) -> Result<CudaTensor, OpError> {
        same_shape("relu_bwd", ("dy", dy), ("y", y))?;
        let mut dx = self.alloc(y.shape().clone())?;
        eltwise::relu_bwd(&self.dev, dy.storage(), y.storage(), fresh(&mut dx), y.numel())?;
        Ok(dx)
    }

    fn add_assign(&self, y: &mut CudaTensor, x: &CudaTensor) -> Result<(), OpError> {
        same_shape("add", ("y", y), ("x", x))?;
        let n = x.numel();
        eltwise::add_assign(&self.dev, exclusive("add", "y", y)?, x.storage(), n)?;
        Ok(())
    }

    fn scale(&self, y: &mut CudaTensor, alpha: f32) -> Result<(), OpError> {
        let n = y.numel();
        eltwise::scale(&self.dev, exclusive("scale", "y", y)?, alpha, n)?;
        Ok(())
    }

    fn fill(&self, y: &mut CudaTensor, value: f32) -> Result<(), OpError> {
        let n = y.numel();
        eltwise::fill(&self.dev, exclusive("fill", "y", y)?, value, n)?;
        Ok(())
    }

    fn sigmoid(&self, x: &CudaTensor) -> Result<CudaTensor, OpError> {
        let mut y = self.alloc(x.shape().clone())?;
        eltwise::sigmoid(&self.dev, x.storage(), fresh(&mut y), x.numel())?;
        Ok(y)
    }

    fn max_pool2d_fwd(
        &self,
        x: &CudaTensor,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<CudaTensor, OpError> {
        let g = Pool2dGeom::new(dims("max_pool2d", "x", x)?, window, stride, pad)?;
        let mut y = self.alloc(g.y_dims())?;
        pooling::max_pool2d_fwd(&self.dev, &g, x.storage(), fresh(&mut y))?;
        Ok(y)
    }

    fn max_pool2d_bwd(
        &self,
        x: &CudaTensor,
        dy: &CudaTensor,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<CudaTensor, OpError> {
        let g = Pool2dGeom::new(dims("max_pool2d_bwd", "x", x)?, window, stride, pad)?;
        expect_dims("max_pool2d_bwd", "dy", dy, &g.y_dims())?;
        let mut dx = self.alloc(x.shape().clone())?;
        pooling::max_pool2d_bwd(&self.dev, &g, x.storage(), dy.storage(), fresh(&mut dx))?;
        Ok(dx)
    }

    fn global_avg_pool_fwd(&self, x: &CudaTensor) -> Result<CudaTensor, OpError> {
        let [n, h, w, c] = dims("global_avg_pool", "x", x)?;
        let mut y = self.alloc([n, c])?;
        pooling::mean_rows(&self.dev, x.storage(), fresh(&mut y), n, h * w, c)?;
        Ok(y)
    }

    fn global_avg_pool_bwd(&self, dy: &CudaTensor, x_dims: [usize; 4]) -> Result<CudaTensor, OpError> {
        let [n, h, w, c] = x_dims;
        expect_dims("global_avg_pool_bwd", "dy", dy, &[n, c])?;
        let mut dx = self.alloc(x_dims)?;
        pooling::mean_rows_bwd(&self.dev, dy.storage(), fresh(&mut dx), n, h * w, c)?;
        Ok(dx)
    }

    fn temporal_mean_fwd(&self, x: &CudaTensor, t: usize) -> Result<CudaTensor, OpError> {
        let [bt, c] = dims("temporal_mean", "x", x)?;
        let b = check::clips("temporal_mean", bt, t)?;
        let mut y = self.alloc([b, c])?;
        pooling::mean_rows(&self.dev, x.storage(), fresh(&mut y), b, t, c)?;
        Ok(y)
    }

    fn temporal_mean_bwd(&self, dy: &CudaTensor, t: usize) -> Result<CudaTensor, OpError> {
        let [b, c] = dims("temporal_mean_bwd", "dy", dy)?;
        let mut dx = self.alloc([b * t, c])?;
        pooling::mean_rows_bwd(&self.dev, dy.storage(), fresh(&mut dx), b, t, c)?;
        Ok(dx)
    }

    fn bce_with_logits_fwd(
        &self,
        logits: &CudaTensor,
        targets: &CudaTensor,
        params: &BceParams,
    ) -> Result<f32, OpError> {
        same_shape("bce_with_logits", ("logits", logits), ("targets", targets))?;
        let mut out = self.alloc([1])?;
        loss::bce_with_logits_fwd(
            &self.dev,
            logits.storage(),
            targets.storage(),
            logits.numel(),
            params,
            fresh(&mut out),
        )?;
        Ok(self.to_vec(&out)?[0])
    }

    fn bce_with_logits_bwd(
        &self,
        logits: &CudaTensor,
        targets: &CudaTensor,
        params: &BceParams,
        scale: f32,
    ) -> Result<CudaTensor, OpError> {
        same_shape("bce_with_logits_bwd", ("logits", logits), ("targets", targets))?;
        let mut grad = self.alloc(logits.shape().clone())?;
        let n = logits.numel();
        loss::bce_with_logits_bwd(
            &self.dev,
            logits.storage(),
            targets.storage(),
            n,
            params,
            scale,
            fresh(&mut grad),
        )?;
        Ok(grad)
    }

    fn adamw_step(
        &self,
        p: &mut CudaTensor,
        g: &CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        hp: &AdamWParams,
        step: u64,
    ) -> Result<(), OpError> {
        if step == 0 {
            return Err(shape_err("adamw", "step counts from 1"));
        }
        same_shape("adamw", ("p", p), ("g", g))?;
        same_shape("adamw", ("m", m), ("g", g))?;
        same_shape("adamw", ("v", v), ("g", g))?;
        let n = g.numel();
        let (p, m, v) =
            (exclusive("adamw", "p", p)?, exclusive("adamw", "m", m)?, exclusive("adamw", "v", v)?);
        optim::adamw_step(&self.dev, p, g.storage(), m, v, n, hp, step)?;
        Ok(())
    }

    fn sgd_step(
        &self,
        p: &mut CudaTensor,
        g: &CudaTensor,
        momentum_buf: &mut CudaTensor,
        hp: &SgdParams,
        first_step: bool,
    ) -> Result<(), OpError> {
        same_shape("sgd", ("p", p), ("g", g))?;
        same_shape("sgd", ("momentum_buf", momentum_buf), ("g", g))?;
        let n = g.numel();
        let (p, buf) = (exclusive("sgd", "p", p)?, exclusive("sgd", "momentum_buf", momentum_buf)?);
        optim::sgd_step(&self.dev, p, g.storage(), buf, n, hp, first_step)?;
        Ok(())
    }

    fn unscale_check(&self, g: &mut CudaTensor, inv_scale: f32) -> Result<bool, OpError> {
        let n = g.numel();
        Ok(optim::unscale_check(&self.dev, exclusive("unscale", "g", g)?, n, inv_scale)?)
    }

    fn sum_squares(&self, g: &CudaTensor) -> Result<f64, OpError> {
        Ok(optim::sum_squares(&self.dev, g.storage(), g.numel())?)
    }
}
