//! The CPU backend: the reference implementation of every op (f32, parallel with rayon)
//! and a real backend that trains small models on machines with no GPU.
//!
//! The op bodies live in one file per family with the kernel file's name (`conv.rs` ↔
//! `kernels/conv.cu`); this module allocates outputs and picks each body's element type
//! (FP32 or FP16 storage, FP32 arithmetic); the checks are `Backend`'s.

pub mod activation;
pub mod conv;
pub mod eltwise;
pub mod gemm;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod pooling;
pub mod simd;
pub mod storage;
pub mod window;

use std::sync::{Arc, PoisonError};

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::check::unique;
use super::error::OpError;
use super::ops::{Backend, BnForward, BnGrads, BnSaved, GemmGeom, LinearGeom, LinearGrads};
use super::params::{AdamWParams, BatchNormParams, BceParams, Conv2dGeom, FrameBatch, Pool2dGeom, SgdParams};
use crate::memory::{PoolError, PoolStats};
use crate::tensor::{DType, Shape, Tensor};
use gemm::MatRef;
use storage::{HostBuf, SharedPool, default_pool, host_pool, with_elem};

/// A tensor in host memory, its storage a block of the backend's pool.
pub type CpuTensor = Tensor<Arc<HostBuf>>;

/// The CPU backend. `default()` shares one pool as large as the machine's memory;
/// `with_budget` gives a backend its own pool with a hard budget.
#[derive(Clone, Default)]
pub struct CpuBackend {
    pool: Option<SharedPool>,
}

impl CpuBackend {
    pub fn with_budget(bytes: usize) -> Result<Self, PoolError> {
        Ok(CpuBackend { pool: Some(host_pool(bytes)?) })
    }

    pub fn pool(&self) -> &SharedPool {
        self.pool.as_ref().unwrap_or_else(|| default_pool())
    }

    /// A zeroed tensor of `shape` and `dtype` from the pool.
    fn zeroed(&self, shape: impl Into<Shape>, dtype: DType) -> Result<CpuTensor, OpError> {
        let shape = shape.into();
        let buf = HostBuf::zeroed(self.pool(), shape.numel(), dtype).map_err(OpError::from)?;
        Ok(Tensor::from_parts(shape, dtype, Arc::new(buf)))
    }

    /// An op's output tensor of `shape` and `dtype` from the pool, of stale values that
    /// the op overwrites, every element of them (`HostBuf::for_overwrite`).
    fn alloc(&self, shape: impl Into<Shape>, dtype: DType) -> Result<CpuTensor, OpError> {
        let shape = shape.into();
        let buf = HostBuf::for_overwrite(self.pool(), shape.numel(), dtype).map_err(OpError::from)?;
        Ok(Tensor::from_parts(shape, dtype, Arc::new(buf)))
    }

    /// An FP32 tensor of `data`.
    fn vector(&self, data: &[f32]) -> Result<CpuTensor, OpError> {
        let mut t = self.alloc([data.len()], DType::F32)?;
        f32s_mut(&mut t).copy_from_slice(data);
        Ok(t)
    }
}

/// The elements of an FP32 tensor.
fn f32s(t: &CpuTensor) -> &[f32] {
    t.storage().f32s()
}

/// The elements of an FP32 tensor that is unshared (checked, or just allocated).
fn f32s_mut(t: &mut CpuTensor) -> &mut [f32] {
    unique(t).f32s_mut()
}

impl Backend for CpuBackend {
    type Storage = Arc<HostBuf>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool().lock().unwrap_or_else(PoisonError::into_inner).stats()
    }

    fn reset_pool_peaks(&self) {
        self.pool().lock().unwrap_or_else(PoisonError::into_inner).reset_peaks();
    }

    fn trim_pool(&self) -> usize {
        // A trim that fails leaves the pool as it was; the governor moves on to its next
        // measure, so there is nothing to report upwards.
        self.pool().lock().unwrap_or_else(PoisonError::into_inner).trim(0).unwrap_or(0)
    }

    fn run_upload(&self, shape: Shape, data: &[f32], dtype: DType) -> Result<CpuTensor, OpError> {
        let mut t = self.alloc(shape, dtype)?;
        match dtype {
            DType::F32 => f32s_mut(&mut t).copy_from_slice(data),
            DType::F16 => unique(&mut t).get_mut::<f16>().convert_from_f32_slice(data),
        }
        Ok(t)
    }

    fn run_zeros(&self, shape: Shape, dtype: DType) -> Result<CpuTensor, OpError> {
        self.zeroed(shape, dtype)
    }

    fn run_download(&self, t: &CpuTensor) -> Result<Vec<f32>, OpError> {
        Ok(t.storage().to_f32_vec())
    }

    fn run_cast(&self, x: &CpuTensor, to: DType) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), to)?;
        let (src, dst) = (x.storage(), unique(&mut y));
        match to {
            DType::F16 => dst.get_mut::<f16>().convert_from_f32_slice(src.f32s()),
            DType::F32 => src.get::<f16>().convert_to_f32_slice(dst.f32s_mut()),
        }
        Ok(y)
    }

    fn run_gemm(
        &self,
        g: &GemmGeom,
        alpha: f32,
        a: &CpuTensor,
        b: &CpuTensor,
        beta: f32,
        c: &mut CpuTensor,
    ) -> Result<(), OpError> {
        // The stored (untransposed) shapes of a and b.
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let am = MatRef::row_major(f32s(a), ar, ac);
        let bm = MatRef::row_major(f32s(b), br, bc);
        let (am, bm) = (if g.trans_a { am.t() } else { am }, if g.trans_b { bm.t() } else { bm });
        gemm::gemm(alpha, am, bm, beta, f32s_mut(c));
        Ok(())
    }

    fn run_linear_fwd(
        &self,
        g: &LinearGeom,
        x: &CpuTensor,
        w: &CpuTensor,
        b: &CpuTensor,
    ) -> Result<CpuTensor, OpError> {
        let LinearGeom { n, fin, fout } = *g;
        // Start from the broadcast bias and let the GEMM accumulate onto it (β = 1).
        let mut y = self.alloc([n, fout], DType::F32)?;
        let out = f32s_mut(&mut y);
        out.chunks_exact_mut(fout).for_each(|row| row.copy_from_slice(f32s(b)));
        gemm::gemm(
            1.0,
            MatRef::row_major(f32s(x), n, fin),
            MatRef::row_major(f32s(w), fout, fin).t(),
            1.0,
            out,
        );
        Ok(y)
    }

    fn run_linear_bwd(
        &self,
        g: &LinearGeom,
        dy: &CpuTensor,
        x: &CpuTensor,
        w: &CpuTensor,
    ) -> Result<LinearGrads<CpuTensor>, OpError> {
        let LinearGeom { n, fin, fout } = *g;
        let dym = MatRef::row_major(f32s(dy), n, fout);
        let mut dx = self.alloc([n, fin], DType::F32)?;
        gemm::gemm(1.0, dym, MatRef::row_major(f32s(w), fout, fin), 0.0, f32s_mut(&mut dx));
        let mut dw = self.alloc([fout, fin], DType::F32)?;
        gemm::gemm(1.0, dym.t(), MatRef::row_major(f32s(x), n, fin), 0.0, f32s_mut(&mut dw));
        let mut db = self.alloc([fout], DType::F32)?;
        pooling::mean_rows(f32s(dy), n, fout, f32s_mut(&mut db));
        eltwise::scale(f32s_mut(&mut db), n as f32);
        Ok(LinearGrads { dx, dw, db })
    }

    fn run_conv2d_fwd(&self, g: &Conv2dGeom, x: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(g.y_dims(), x.dtype())?;
        let w = w.storage().widened();
        with_elem!(x.dtype(), E => conv::conv2d_fwd(g, x.storage().get::<E>(), &w, unique(&mut y).get_mut::<E>()));
        Ok(y)
    }

    fn run_conv2d_dgrad(&self, g: &Conv2dGeom, dy: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut dx = self.alloc([g.n, g.h, g.w, g.c], dy.dtype())?;
        let w = w.storage().widened();
        with_elem!(dy.dtype(), E => conv::conv2d_dgrad(g, dy.storage().get::<E>(), &w, unique(&mut dx).get_mut::<E>()));
        Ok(dx)
    }

    fn run_conv2d_wgrad(&self, g: &Conv2dGeom, x: &CpuTensor, dy: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut dw = self.alloc([g.k, g.r, g.s, g.c], DType::F32)?;
        with_elem!(x.dtype(), E => conv::conv2d_wgrad(g, x.storage().get::<E>(), dy.storage().get::<E>(), f32s_mut(&mut dw)));
        Ok(dw)
    }

    fn run_batch_norm_fwd_train(
        &self,
        c: usize,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        running_mean: &mut CpuTensor,
        running_var: &mut CpuTensor,
        params: &BatchNormParams,
    ) -> Result<BnForward<CpuTensor>, OpError> {
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        let (mean, invstd) = with_elem!(x.dtype(), E => norm::batch_norm_fwd_train(
            x.storage().get::<E>(),
            c,
            f32s(gamma),
            f32s(beta),
            f32s_mut(running_mean),
            f32s_mut(running_var),
            params,
            unique(&mut y).get_mut::<E>(),
        ));
        let saved = BnSaved { mean: self.vector(&mean)?, invstd: self.vector(&invstd)? };
        Ok(BnForward { y, saved })
    }

    fn run_batch_norm_fwd_eval(
        &self,
        c: usize,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        running_mean: &CpuTensor,
        running_var: &CpuTensor,
        params: &BatchNormParams,
    ) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        with_elem!(x.dtype(), E => norm::batch_norm_fwd_eval(
            x.storage().get::<E>(),
            c,
            f32s(gamma),
            f32s(beta),
            f32s(running_mean),
            f32s(running_var),
            params,
            unique(&mut y).get_mut::<E>(),
        ));
        Ok(y)
    }

    fn run_batch_norm_bwd(
        &self,
        c: usize,
        dy: &CpuTensor,
        x: &CpuTensor,
        gamma: &CpuTensor,
        saved: &BnSaved<CpuTensor>,
        relu_y: Option<&CpuTensor>,
    ) -> Result<BnGrads<CpuTensor>, OpError> {
        let mut dx = self.alloc(x.shape().clone(), x.dtype())?;
        let (dgamma, dbeta) = with_elem!(x.dtype(), E => norm::batch_norm_bwd(
            dy.storage().get::<E>(),
            x.storage().get::<E>(),
            c,
            f32s(gamma),
            f32s(&saved.mean),
            f32s(&saved.invstd),
            relu_y.map(|y| y.storage().get::<E>()),
            unique(&mut dx).get_mut::<E>(),
        ));
        Ok(BnGrads { dx, dgamma: self.vector(&dgamma)?, dbeta: self.vector(&dbeta)? })
    }

    fn run_batch_norm_normalize(
        &self,
        c: usize,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        saved: &BnSaved<CpuTensor>,
        relu: bool,
    ) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        with_elem!(x.dtype(), E => norm::batch_norm_normalize(
            x.storage().get::<E>(),
            c,
            f32s(&saved.mean),
            f32s(&saved.invstd),
            f32s(gamma),
            f32s(beta),
            relu,
            unique(&mut y).get_mut::<E>(),
        ));
        Ok(y)
    }

    fn run_batch_norm_relu_bwd(
        &self,
        c: usize,
        dy: &CpuTensor,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        saved: &BnSaved<CpuTensor>,
    ) -> Result<BnGrads<CpuTensor>, OpError> {
        let mut dx = self.alloc(x.shape().clone(), x.dtype())?;
        let (dgamma, dbeta) = with_elem!(x.dtype(), E => norm::batch_norm_relu_bwd(
            dy.storage().get::<E>(),
            x.storage().get::<E>(),
            c,
            f32s(gamma),
            f32s(beta),
            f32s(&saved.mean),
            f32s(&saved.invstd),
            unique(&mut dx).get_mut::<E>(),
        ));
        Ok(BnGrads { dx, dgamma: self.vector(&dgamma)?, dbeta: self.vector(&dbeta)? })
    }

    fn run_relu_fwd(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), x.dtype())?;
        with_elem!(x.dtype(), E => eltwise::relu_fwd(x.storage().get::<E>(), unique(&mut y).get_mut::<E>()));
        Ok(y)
    }

    fn run_relu_bwd(&self, dy: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut dx = self.alloc(y.shape().clone(), y.dtype())?;
        with_elem!(y.dtype(), E => eltwise::relu_bwd(
            dy.storage().get::<E>(),
            y.storage().get::<E>(),
            unique(&mut dx).get_mut::<E>(),
        ));
        Ok(dx)
    }

    fn run_add_assign(&self, y: &mut CpuTensor, x: &CpuTensor) -> Result<(), OpError> {
        with_elem!(x.dtype(), E => eltwise::add_assign(unique(y).get_mut::<E>(), x.storage().get::<E>()));
        Ok(())
    }

    fn run_scale(&self, y: &mut CpuTensor, alpha: f32) -> Result<(), OpError> {
        eltwise::scale(f32s_mut(y), alpha);
        Ok(())
    }

    fn run_fill(&self, y: &mut CpuTensor, value: f32) -> Result<(), OpError> {
        eltwise::fill(f32s_mut(y), value);
        Ok(())
    }

    fn run_sigmoid(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), DType::F32)?;
        eltwise::sigmoid(f32s(x), f32s_mut(&mut y));
        Ok(y)
    }

    fn run_max_pool2d_fwd(&self, g: &Pool2dGeom, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(g.y_dims(), x.dtype())?;
        with_elem!(x.dtype(), E => pooling::max_pool2d_fwd(g, x.storage().get::<E>(), unique(&mut y).get_mut::<E>()));
        Ok(y)
    }

    fn run_max_pool2d_bwd(
        &self,
        g: &Pool2dGeom,
        x: &CpuTensor,
        dy: &CpuTensor,
    ) -> Result<CpuTensor, OpError> {
        let mut dx = self.alloc(x.shape().clone(), x.dtype())?;
        with_elem!(x.dtype(), E => pooling::max_pool2d_bwd(
            g,
            x.storage().get::<E>(),
            dy.storage().get::<E>(),
            unique(&mut dx).get_mut::<E>(),
        ));
        Ok(dx)
    }

    fn run_bias_add(&self, y: &mut CpuTensor, b: &CpuTensor) -> Result<(), OpError> {
        activation::bias_add(f32s_mut(y), f32s(b));
        Ok(())
    }

    fn run_bias_prelu(&self, y: &mut CpuTensor, b: &CpuTensor, alpha: &CpuTensor) -> Result<(), OpError> {
        activation::bias_prelu(f32s_mut(y), f32s(b), f32s(alpha));
        Ok(())
    }

    fn run_softmax_rows(&self, x: &CpuTensor, c: usize) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone(), DType::F32)?;
        activation::softmax_rows(f32s(x), c, f32s_mut(&mut y));
        Ok(y)
    }

    fn run_mean_rows(&self, x: &CpuTensor, group: usize, out: Shape) -> Result<CpuTensor, OpError> {
        let c = *out.dims().last().unwrap_or(&1);
        let mut y = self.alloc(out, x.dtype())?;
        with_elem!(x.dtype(), E => pooling::mean_rows(x.storage().get::<E>(), group, c, unique(&mut y).get_mut::<E>()));
        Ok(y)
    }

    fn run_mean_rows_bwd(&self, dy: &CpuTensor, group: usize, out: Shape) -> Result<CpuTensor, OpError> {
        let c = *dy.dims().last().unwrap_or(&1);
        let mut dx = self.alloc(out, dy.dtype())?;
        with_elem!(dy.dtype(), E => pooling::mean_rows_bwd(dy.storage().get::<E>(), group, c, unique(&mut dx).get_mut::<E>()));
        Ok(dx)
    }

    fn run_bce_with_logits_fwd(
        &self,
        logits: &CpuTensor,
        targets: &CpuTensor,
        params: &BceParams,
    ) -> Result<f32, OpError> {
        Ok(loss::bce_with_logits_fwd(f32s(logits), f32s(targets), params))
    }

    fn run_bce_with_logits_bwd(
        &self,
        logits: &CpuTensor,
        targets: &CpuTensor,
        params: &BceParams,
        scale: f32,
    ) -> Result<CpuTensor, OpError> {
        let mut grad = self.alloc(logits.shape().clone(), DType::F32)?;
        loss::bce_with_logits_bwd(f32s(logits), f32s(targets), params, scale, f32s_mut(&mut grad));
        Ok(grad)
    }

    fn run_adamw_step(
        &self,
        p: &mut CpuTensor,
        g: &CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        hp: &AdamWParams,
        step: u64,
    ) -> Result<(), OpError> {
        optim::adamw_step(f32s_mut(p), f32s(g), f32s_mut(m), f32s_mut(v), hp, step);
        Ok(())
    }

    fn run_sgd_step(
        &self,
        p: &mut CpuTensor,
        g: &CpuTensor,
        momentum_buf: &mut CpuTensor,
        hp: &SgdParams,
        first_step: bool,
    ) -> Result<(), OpError> {
        optim::sgd_step(f32s_mut(p), f32s(g), f32s_mut(momentum_buf), hp, first_step);
        Ok(())
    }

    fn run_unscale_check(&self, g: &mut CpuTensor, inv_scale: f32) -> Result<bool, OpError> {
        Ok(optim::unscale_check(f32s_mut(g), inv_scale))
    }

    fn run_sum_squares(&self, g: &CpuTensor) -> Result<f64, OpError> {
        Ok(optim::sum_squares(f32s(g)))
    }

    fn run_preprocess(&self, f: &FrameBatch<'_>, dtype: DType) -> Result<CpuTensor, OpError> {
        let pixels = crate::data::preprocess::preprocess_as(
            f.format,
            f.data,
            (f.h, f.w),
            f.ops,
            f.side,
            f.norm.mean,
            f.norm.std,
        );
        self.run_upload(f.shape(), &pixels, dtype)
    }
}
