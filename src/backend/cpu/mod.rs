//! The CPU backend: the reference implementation of every op (f32, parallel with rayon)
//! and a real backend that trains small models on machines with no GPU.
//!
//! The op bodies live in one file per family with the kernel file's name (`conv.rs` ↔
//! `kernels/conv.cu`); this module checks shapes and allocates outputs.

pub mod activation;
pub mod conv;
pub mod eltwise;
pub mod gemm;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod pooling;
pub mod storage;

use std::sync::{Arc, PoisonError};

use super::check::{self, dims, expect_dims, same_shape};
use super::error::{OpError, shape_err};
use super::ops::{Backend, BnForward, BnGrads, BnSaved, LinearGrads};
use super::params::{AdamWParams, BatchNormParams, BceParams, Conv2dGeom, Pool2dGeom, SgdParams};
use crate::memory::{PoolError, PoolStats};
use crate::tensor::{Shape, Tensor};
use gemm::MatRef;
use storage::{HostBuf, SharedPool, default_pool, host_pool};

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

    /// A zeroed tensor of `shape` from the pool.
    fn alloc(&self, shape: impl Into<Shape>) -> Result<CpuTensor, OpError> {
        let shape = shape.into();
        let buf = HostBuf::zeroed(self.pool(), shape.numel()).map_err(OpError::from)?;
        Ok(Tensor::from_parts(shape, Arc::new(buf)))
    }
}

/// The elements of a tensor this backend just allocated (and so holds alone).
fn fresh(t: &mut CpuTensor) -> &mut [f32] {
    Arc::get_mut(t.storage_mut()).expect("a freshly allocated tensor is not shared")
}

/// The elements of a tensor an op updates in place, which must not be shared.
fn exclusive<'a>(op: &'static str, name: &str, t: &'a mut CpuTensor) -> Result<&'a mut [f32], OpError> {
    check::exclusive(op, name, t).map(|b| &mut **b)
}

impl Backend for CpuBackend {
    type Storage = Arc<HostBuf>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool().lock().unwrap_or_else(PoisonError::into_inner).stats()
    }

    fn trim_pool(&self) -> usize {
        // A trim that fails leaves the pool as it was; the governor moves on to its next
        // measure, so there is nothing to report upwards.
        self.pool().lock().unwrap_or_else(PoisonError::into_inner).trim(0).unwrap_or(0)
    }

    fn tensor(&self, shape: Shape, data: &[f32]) -> Result<CpuTensor, OpError> {
        if shape.numel() != data.len() {
            return Err(shape_err(
                "tensor",
                format!("{} needs {} elements, got {}", shape, shape.numel(), data.len()),
            ));
        }
        let mut t = self.alloc(shape)?;
        fresh(&mut t).copy_from_slice(data);
        Ok(t)
    }

    fn zeros(&self, shape: Shape) -> Result<CpuTensor, OpError> {
        self.alloc(shape)
    }

    fn to_vec(&self, t: &CpuTensor) -> Result<Vec<f32>, OpError> {
        Ok(t.storage().to_vec())
    }

    fn gemm(
        &self,
        alpha: f32,
        a: &CpuTensor,
        trans_a: bool,
        b: &CpuTensor,
        trans_b: bool,
        beta: f32,
        c: &mut CpuTensor,
    ) -> Result<(), OpError> {
        let [ar, ac] = dims("gemm", "a", a)?;
        let [br, bc] = dims("gemm", "b", b)?;
        let [cr, cc] = dims("gemm", "c", c)?;
        let am = MatRef::row_major(a.storage(), ar, ac);
        let bm = MatRef::row_major(b.storage(), br, bc);
        let (am, bm) = (if trans_a { am.t() } else { am }, if trans_b { bm.t() } else { bm });
        if am.cols != bm.rows || am.rows != cr || bm.cols != cc {
            return Err(shape_err(
                "gemm",
                format!(
                    "op(a) {}×{} · op(b) {}×{} does not give c {}",
                    am.rows,
                    am.cols,
                    bm.rows,
                    bm.cols,
                    c.shape()
                ),
            ));
        }
        gemm::gemm(alpha, am, bm, beta, exclusive("gemm", "c", c)?);
        Ok(())
    }

    fn linear_fwd(&self, x: &CpuTensor, w: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor, OpError> {
        let (n, fin, fout) = check::linear(x, w, b)?;
        // Start from the broadcast bias and let the GEMM accumulate onto it (β = 1).
        let mut y = self.alloc([n, fout])?;
        let out = fresh(&mut y);
        out.chunks_exact_mut(fout).for_each(|row| row.copy_from_slice(b.storage()));
        gemm::gemm(
            1.0,
            MatRef::row_major(x.storage(), n, fin),
            MatRef::row_major(w.storage(), fout, fin).t(),
            1.0,
            out,
        );
        Ok(y)
    }

    fn linear_bwd(
        &self,
        dy: &CpuTensor,
        x: &CpuTensor,
        w: &CpuTensor,
    ) -> Result<LinearGrads<CpuTensor>, OpError> {
        let (n, fin, fout) = check::linear_bwd(dy, x, w)?;
        let dym = MatRef::row_major(dy.storage(), n, fout);
        let mut dx = self.alloc([n, fin])?;
        gemm::gemm(1.0, dym, MatRef::row_major(w.storage(), fout, fin), 0.0, fresh(&mut dx));
        let mut dw = self.alloc([fout, fin])?;
        gemm::gemm(1.0, dym.t(), MatRef::row_major(x.storage(), n, fin), 0.0, fresh(&mut dw));
        let mut db = self.alloc([fout])?;
        pooling::mean_rows(dy.storage(), n, fout, fresh(&mut db));
        eltwise::scale(fresh(&mut db), n as f32);
        Ok(LinearGrads { dx, dw, db })
    }

    fn conv2d_fwd(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<CpuTensor, OpError> {
        let g = Conv2dGeom::new(dims("conv2d", "x", x)?, dims("conv2d", "w", w)?, stride, pad)?;
        let mut y = self.alloc(g.y_dims())?;
        conv::conv2d_fwd(&g, x.storage(), w.storage(), fresh(&mut y));
        Ok(y)
    }

    fn conv2d_dgrad(
        &self,
        dy: &CpuTensor,
        w: &CpuTensor,
        x_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<CpuTensor, OpError> {
        let g = Conv2dGeom::new(x_dims, dims("conv2d_dgrad", "w", w)?, stride, pad)?;
        expect_dims("conv2d_dgrad", "dy", dy, &g.y_dims())?;
        let mut dx = self.alloc(x_dims)?;
        conv::conv2d_dgrad(&g, dy.storage(), w.storage(), fresh(&mut dx));
        Ok(dx)
    }

    fn conv2d_wgrad(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        w_dims: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<CpuTensor, OpError> {
        let g = Conv2dGeom::new(dims("conv2d_wgrad", "x", x)?, w_dims, stride, pad)?;
        expect_dims("conv2d_wgrad", "dy", dy, &g.y_dims())?;
        let mut dw = self.alloc(w_dims)?;
        conv::conv2d_wgrad(&g, x.storage(), dy.storage(), fresh(&mut dw));
        Ok(dw)
    }

    fn batch_norm_fwd_train(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        running_mean: &mut CpuTensor,
        running_var: &mut CpuTensor,
        params: &BatchNormParams,
    ) -> Result<BnForward<CpuTensor>, OpError> {
        let vectors = [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", &*running_mean),
            ("running_var", &*running_var),
        ];
        let c = check::batch_norm("batch_norm", x, &vectors)?;
        let mut y = self.alloc(x.shape().clone())?;
        let (mean, invstd) = norm::batch_norm_fwd_train(
            x.storage(),
            c,
            gamma.storage(),
            beta.storage(),
            exclusive("batch_norm", "running_mean", running_mean)?,
            exclusive("batch_norm", "running_var", running_var)?,
            params,
            fresh(&mut y),
        );
        let saved = BnSaved {
            mean: self.tensor(Shape::from([c]), &mean)?,
            invstd: self.tensor(Shape::from([c]), &invstd)?,
        };
        Ok(BnForward { y, saved })
    }

    fn batch_norm_fwd_eval(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        running_mean: &CpuTensor,
        running_var: &CpuTensor,
        params: &BatchNormParams,
    ) -> Result<CpuTensor, OpError> {
        let vectors =
            [("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)];
        let c = check::batch_norm("batch_norm", x, &vectors)?;
        let mut y = self.alloc(x.shape().clone())?;
        norm::batch_norm_fwd_eval(
            x.storage(),
            c,
            gamma.storage(),
            beta.storage(),
            running_mean.storage(),
            running_var.storage(),
            params,
            fresh(&mut y),
        );
        Ok(y)
    }

    fn batch_norm_bwd(
        &self,
        dy: &CpuTensor,
        x: &CpuTensor,
        gamma: &CpuTensor,
        saved: &BnSaved<CpuTensor>,
        relu_y: Option<&CpuTensor>,
    ) -> Result<BnGrads<CpuTensor>, OpError> {
        let c = check::batch_norm_bwd(dy, x, gamma, saved, relu_y)?;
        let mut dx = self.alloc(x.shape().clone())?;
        let (dgamma, dbeta) = norm::batch_norm_bwd(
            dy.storage(),
            x.storage(),
            c,
            gamma.storage(),
            saved.mean.storage(),
            saved.invstd.storage(),
            relu_y.map(|y| &y.storage()[..]),
            fresh(&mut dx),
        );
        Ok(BnGrads {
            dx,
            dgamma: self.tensor(Shape::from([c]), &dgamma)?,
            dbeta: self.tensor(Shape::from([c]), &dbeta)?,
        })
    }

    fn relu_fwd(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone())?;
        eltwise::relu_fwd(x.storage(), fresh(&mut y));
        Ok(y)
    }

    fn relu_bwd(&self, dy: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor, OpError> {
        same_shape("relu_bwd", ("dy", dy), ("y", y))?;
        let mut dx = self.alloc(y.shape().clone())?;
        eltwise::relu_bwd(dy.storage(), y.storage(), fresh(&mut dx));
        Ok(dx)
    }

    fn add_assign(&self, y: &mut CpuTensor, x: &CpuTensor) -> Result<(), OpError> {
        same_shape("add", ("y", y), ("x", x))?;
        eltwise::add_assign(exclusive("add", "y", y)?, x.storage());
        Ok(())
    }

    fn scale(&self, y: &mut CpuTensor, alpha: f32) -> Result<(), OpError> {
        eltwise::scale(exclusive("scale", "y", y)?, alpha);
        Ok(())
    }

    fn fill(&self, y: &mut CpuTensor, value: f32) -> Result<(), OpError> {
        eltwise::fill(exclusive("fill", "y", y)?, value);
        Ok(())
    }

    fn sigmoid(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = self.alloc(x.shape().clone())?;
        eltwise::sigmoid(x.storage(), fresh(&mut y));
        Ok(y)
    }

    fn max_pool2d_fwd(
        &self,
        x: &CpuTensor,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<CpuTensor, OpError> {
        let g = Pool2dGeom::new(dims("max_pool2d", "x", x)?, window, stride, pad)?;
        let mut y = self.alloc(g.y_dims())?;
        pooling::max_pool2d_fwd(&g, x.storage(), fresh(&mut y));
        Ok(y)
    }

    fn max_pool2d_bwd(
        &self,
        x: &CpuTensor,
        dy: &CpuTensor,
        window: usize,
        stride: usize,
        pad: usize,
    ) -> Result<CpuTensor, OpError> {
        let g = Pool2dGeom::new(dims("max_pool2d_bwd", "x", x)?, window, stride, pad)?;
        expect_dims("max_pool2d_bwd", "dy", dy, &g.y_dims())?;
        let mut dx = self.alloc(x.shape().clone())?;
        pooling::max_pool2d_bwd(&g, x.storage(), dy.storage(), fresh(&mut dx));
        Ok(dx)
    }

    fn global_avg_pool_fwd(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let [n, h, w, c] = dims("global_avg_pool", "x", x)?;
        let mut y = self.alloc([n, c])?;
        pooling::mean_rows(x.storage(), h * w, c, fresh(&mut y));
        Ok(y)
    }

    fn global_avg_pool_bwd(&self, dy: &CpuTensor, x_dims: [usize; 4]) -> Result<CpuTensor, OpError> {
        let [n, h, w, c] = x_dims;
        expect_dims("global_avg_pool_bwd", "dy", dy, &[n, c])?;
        let mut dx = self.alloc(x_dims)?;
        pooling::mean_rows_bwd(dy.storage(), h * w, c, fresh(&mut dx));
        Ok(dx)
    }

    fn temporal_mean_fwd(&self, x: &CpuTensor, t: usize) -> Result<CpuTensor, OpError> {
        let [bt, c] = dims("temporal_mean", "x", x)?;
        let mut y = self.alloc([check::clips("temporal_mean", bt, t)?, c])?;
        pooling::mean_rows(x.storage(), t, c, fresh(&mut y));
        Ok(y)
    }

    fn temporal_mean_bwd(&self, dy: &CpuTensor, t: usize) -> Result<CpuTensor, OpError> {
        let [b, c] = dims("temporal_mean_bwd", "dy", dy)?;
        let mut dx = self.alloc([b * t, c])?;
        pooling::mean_rows_bwd(dy.storage(), t, c, fresh(&mut dx));
        Ok(dx)
    }

    fn bce_with_logits_fwd(
        &self,
        logits: &CpuTensor,
        targets: &CpuTensor,
        params: &BceParams,
    ) -> Result<f32, OpError> {
        same_shape("bce_with_logits", ("logits", logits), ("targets", targets))?;
        Ok(loss::bce_with_logits_fwd(logits.storage(), targets.storage(), params))
    }

    fn bce_with_logits_bwd(
        &self,
        logits: &CpuTensor,
        targets: &CpuTensor,
        params: &BceParams,
        scale: f32,
    ) -> Result<CpuTensor, OpError> {
        same_shape("bce_with_logits_bwd", ("logits", logits), ("targets", targets))?;
        let mut grad = self.alloc(logits.shape().clone())?;
        loss::bce_with_logits_bwd(logits.storage(), targets.storage(), params, scale, fresh(&mut grad));
        Ok(grad)
    }

    fn adamw_step(
        &self,
        p: &mut CpuTensor,
        g: &CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        hp: &AdamWParams,
        step: u64,
    ) -> Result<(), OpError> {
        same_shape("adamw", ("param", p), ("grad", g))?;
        same_shape("adamw", ("m", m), ("grad", g))?;
        same_shape("adamw", ("v", v), ("grad", g))?;
        if step == 0 {
            return Err(shape_err("adamw", "step counts from 1"));
        }
        let (p, m, v) =
            (exclusive("adamw", "param", p)?, exclusive("adamw", "m", m)?, exclusive("adamw", "v", v)?);
        optim::adamw_step(p, g.storage(), m, v, hp, step);
        Ok(())
    }

    fn sgd_step(
        &self,
        p: &mut CpuTensor,
        g: &CpuTensor,
        momentum_buf: &mut CpuTensor,
        hp: &SgdParams,
        first_step: bool,
    ) -> Result<(), OpError> {
        same_shape("sgd", ("param", p), ("grad", g))?;
        same_shape("sgd", ("momentum_buf", momentum_buf), ("grad", g))?;
        let (p, buf) = (exclusive("sgd", "param", p)?, exclusive("sgd", "momentum_buf", momentum_buf)?);
        optim::sgd_step(p, g.storage(), buf, hp, first_step);
        Ok(())
    }

    fn unscale_check(&self, g: &mut CpuTensor, inv_scale: f32) -> Result<bool, OpError> {
        Ok(optim::unscale_check(exclusive("unscale", "grad", g)?, inv_scale))
    }

    fn sum_squares(&self, g: &CpuTensor) -> Result<f64, OpError> {
        Ok(optim::sum_squares(g.storage()))
    }
}
