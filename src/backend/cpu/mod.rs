//! The CPU backend: the reference implementation of every op (f32, parallel with rayon)
//! and a real backend that trains small models on machines with no GPU.
//!
//! The op bodies live in one file per family with the kernel file's name (`conv.rs` ↔
//! `kernels/conv.cu`); this module checks shapes and allocates outputs.

pub mod conv;
pub mod eltwise;
pub mod gemm;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod pool;

use super::error::{OpError, shape_err};
use super::ops::{Backend, BnForward, BnGrads, BnSaved, LinearGrads};
use super::params::{AdamWParams, BatchNormParams, BceParams, Conv2dGeom, Pool2dGeom, SgdParams};
use crate::tensor::{Shape, Tensor};
use gemm::MatRef;

/// A tensor in host memory.
pub type CpuTensor = Tensor<Vec<f32>>;

#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

fn dims<const R: usize>(op: &'static str, name: &str, t: &CpuTensor) -> Result<[usize; R], OpError> {
    t.shape().as_array().ok_or_else(|| shape_err(op, format!("{name} must have rank {R}, got {}", t.shape())))
}

fn same_shape(op: &'static str, a: (&str, &CpuTensor), b: (&str, &CpuTensor)) -> Result<(), OpError> {
    if a.1.shape() != b.1.shape() {
        return Err(shape_err(op, format!("{} {} and {} {} must match", a.0, a.1.shape(), b.0, b.1.shape())));
    }
    Ok(())
}

fn channels(op: &'static str, name: &str, t: &CpuTensor, c: usize) -> Result<(), OpError> {
    if t.dims() != [c] {
        return Err(shape_err(op, format!("{name} must be [{c}], got {}", t.shape())));
    }
    Ok(())
}

fn new(shape: impl Into<Shape>, data: Vec<f32>) -> CpuTensor {
    Tensor::from_parts(shape.into(), data)
}

fn zeros(shape: impl Into<Shape>) -> CpuTensor {
    let shape = shape.into();
    let n = shape.numel();
    Tensor::from_parts(shape, vec![0.0; n])
}

/// The channel count of an activation (its last dimension) and the rows before it.
fn rows_channels(op: &'static str, x: &CpuTensor) -> Result<(usize, usize), OpError> {
    let c = *x.dims().last().ok_or_else(|| shape_err(op, "input is a scalar"))?;
    if c == 0 {
        return Err(shape_err(op, format!("input {} has no channels", x.shape())));
    }
    Ok((x.numel() / c, c))
}

impl Backend for CpuBackend {
    type Storage = Vec<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn tensor(&self, shape: Shape, data: &[f32]) -> Result<CpuTensor, OpError> {
        if shape.numel() != data.len() {
            return Err(shape_err(
                "tensor",
                format!("{} needs {} elements, got {}", shape, shape.numel(), data.len()),
            ));
        }
        Ok(new(shape, data.to_vec()))
    }

    fn zeros(&self, shape: Shape) -> Result<CpuTensor, OpError> {
        Ok(zeros(shape))
    }

    fn to_vec(&self, t: &CpuTensor) -> Result<Vec<f32>, OpError> {
        Ok(t.storage().clone())
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
        gemm::gemm(alpha, am, bm, beta, c.storage_mut());
        Ok(())
    }

    fn linear_fwd(&self, x: &CpuTensor, w: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor, OpError> {
        let [n, fin] = dims("linear", "x", x)?;
        let [fout, win] = dims("linear", "w", w)?;
        if win != fin {
            return Err(shape_err(
                "linear",
                format!("x {} and w {}: in-features differ", x.shape(), w.shape()),
            ));
        }
        channels("linear", "b", b, fout)?;
        // Start from the broadcast bias and let the GEMM accumulate onto it (β = 1).
        let mut y = b.storage().repeat(n);
        gemm::gemm(
            1.0,
            MatRef::row_major(x.storage(), n, fin),
            MatRef::row_major(w.storage(), fout, fin).t(),
            1.0,
            &mut y,
        );
        Ok(new([n, fout], y))
    }

    fn linear_bwd(
        &self,
        dy: &CpuTensor,
        x: &CpuTensor,
        w: &CpuTensor,
    ) -> Result<LinearGrads<CpuTensor>, OpError> {
        let [n, fin] = dims("linear_bwd", "x", x)?;
        let [fout, _] = dims("linear_bwd", "w", w)?;
        if dy.dims() != [n, fout] {
            return Err(shape_err("linear_bwd", format!("dy must be [{n}×{fout}], got {}", dy.shape())));
        }
        let dym = MatRef::row_major(dy.storage(), n, fout);
        let mut dx = vec![0.0; n * fin];
        gemm::gemm(1.0, dym, MatRef::row_major(w.storage(), fout, fin), 0.0, &mut dx);
        let mut dw = vec![0.0; fout * fin];
        gemm::gemm(1.0, dym.t(), MatRef::row_major(x.storage(), n, fin), 0.0, &mut dw);
        let mut db = vec![0.0; fout];
        pool::mean_rows(dy.storage(), n, fout, &mut db);
        eltwise::scale(&mut db, n as f32);
        Ok(LinearGrads { dx: new([n, fin], dx), dw: new([fout, fin], dw), db: new([fout], db) })
    }

    fn conv2d_fwd(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Result<CpuTensor, OpError> {
        let g = Conv2dGeom::new(dims("conv2d", "x", x)?, dims("conv2d", "w", w)?, stride, pad)?;
        let mut y = zeros(g.y_dims());
        conv::conv2d_fwd(&g, x.storage(), w.storage(), y.storage_mut());
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
        if dy.dims() != g.y_dims() {
            return Err(shape_err(
                "conv2d_dgrad",
                format!("dy must be {}, got {}", Shape::from(g.y_dims()), dy.shape()),
            ));
        }
        let mut dx = zeros(x_dims);
        conv::conv2d_dgrad(&g, dy.storage(), w.storage(), dx.storage_mut());
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
        if dy.dims() != g.y_dims() {
            return Err(shape_err(
                "conv2d_wgrad",
                format!("dy must be {}, got {}", Shape::from(g.y_dims()), dy.shape()),
            ));
        }
        let mut dw = zeros(w_dims);
        conv::conv2d_wgrad(&g, x.storage(), dy.storage(), dw.storage_mut());
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
        let (_, c) = rows_channels("batch_norm", x)?;
        for (name, t) in [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", &*running_mean),
            ("running_var", &*running_var),
        ] {
            channels("batch_norm", name, t, c)?;
        }
        let mut y = zeros(x.shape().clone());
        let (mean, invstd) = norm::batch_norm_fwd_train(
            x.storage(),
            c,
            gamma.storage(),
            beta.storage(),
            running_mean.storage_mut(),
            running_var.storage_mut(),
            params,
            y.storage_mut(),
        );
        Ok(BnForward { y, saved: BnSaved { mean: new([c], mean), invstd: new([c], invstd) } })
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
        let (_, c) = rows_channels("batch_norm", x)?;
        for (name, t) in
            [("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)]
        {
            channels("batch_norm", name, t, c)?;
        }
        let mut y = zeros(x.shape().clone());
        norm::batch_norm_fwd_eval(
            x.storage(),
            c,
            gamma.storage(),
            beta.storage(),
            running_mean.storage(),
            running_var.storage(),
            params,
            y.storage_mut(),
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
        let (_, c) = rows_channels("batch_norm_bwd", x)?;
        same_shape("batch_norm_bwd", ("dy", dy), ("x", x))?;
        if let Some(y) = relu_y {
            same_shape("batch_norm_bwd", ("relu_y", y), ("x", x))?;
        }
        for (name, t) in [("gamma", gamma), ("mean", &saved.mean), ("invstd", &saved.invstd)] {
            channels("batch_norm_bwd", name, t, c)?;
        }
        let mut dx = zeros(x.shape().clone());
        let (dgamma, dbeta) = norm::batch_norm_bwd(
            dy.storage(),
            x.storage(),
            c,
            gamma.storage(),
            saved.mean.storage(),
            saved.invstd.storage(),
            relu_y.map(|y| y.storage().as_slice()),
            dx.storage_mut(),
        );
        Ok(BnGrads { dx, dgamma: new([c], dgamma), dbeta: new([c], dbeta) })
    }

    fn relu_fwd(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = zeros(x.shape().clone());
        eltwise::relu_fwd(x.storage(), y.storage_mut());
        Ok(y)
    }

    fn relu_bwd(&self, dy: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor, OpError> {
        same_shape("relu_bwd", ("dy", dy), ("y", y))?;
        let mut dx = zeros(y.shape().clone());
        eltwise::relu_bwd(dy.storage(), y.storage(), dx.storage_mut());
        Ok(dx)
    }

    fn add_assign(&self, y: &mut CpuTensor, x: &CpuTensor) -> Result<(), OpError> {
        same_shape("add", ("y", y), ("x", x))?;
        eltwise::add_assign(y.storage_mut(), x.storage());
        Ok(())
    }

    fn scale(&self, y: &mut CpuTensor, alpha: f32) -> Result<(), OpError> {
        eltwise::scale(y.storage_mut(), alpha);
        Ok(())
    }

    fn fill(&self, y: &mut CpuTensor, value: f32) -> Result<(), OpError> {
        eltwise::fill(y.storage_mut(), value);
        Ok(())
    }

    fn sigmoid(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let mut y = zeros(x.shape().clone());
        eltwise::sigmoid(x.storage(), y.storage_mut());
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
        let mut y = zeros(g.y_dims());
        pool::max_pool2d_fwd(&g, x.storage(), y.storage_mut());
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
        if dy.dims() != g.y_dims() {
            return Err(shape_err(
                "max_pool2d_bwd",
                format!("dy must be {}, got {}", Shape::from(g.y_dims()), dy.shape()),
            ));
        }
        let mut dx = zeros(x.shape().clone());
        pool::max_pool2d_bwd(&g, x.storage(), dy.storage(), dx.storage_mut());
        Ok(dx)
    }

    fn global_avg_pool_fwd(&self, x: &CpuTensor) -> Result<CpuTensor, OpError> {
        let [n, h, w, c] = dims("global_avg_pool", "x", x)?;
        let mut y = zeros([n, c]);
        pool::mean_rows(x.storage(), h * w, c, y.storage_mut());
        Ok(y)
    }

    fn global_avg_pool_bwd(&self, dy: &CpuTensor, x_dims: [usize; 4]) -> Result<CpuTensor, OpError> {
        let [n, h, w, c] = x_dims;
        if dy.dims() != [n, c] {
            return Err(shape_err(
                "global_avg_pool_bwd",
                format!("dy must be [{n}×{c}], got {}", dy.shape()),
            ));
        }
        let mut dx = zeros(x_dims);
        pool::mean_rows_bwd(dy.storage(), h * w, c, dx.storage_mut());
        Ok(dx)
    }

    fn temporal_mean_fwd(&self, x: &CpuTensor, t: usize) -> Result<CpuTensor, OpError> {
        let [bt, c] = dims("temporal_mean", "x", x)?;
        if t == 0 || bt % t != 0 {
            return Err(shape_err("temporal_mean", format!("{bt} frames do not split into clips of {t}")));
        }
        let mut y = zeros([bt / t, c]);
        pool::mean_rows(x.storage(), t, c, y.storage_mut());
        Ok(y)
    }

    fn temporal_mean_bwd(&self, dy: &CpuTensor, t: usize) -> Result<CpuTensor, OpError> {
        let [b, c] = dims("temporal_mean_bwd", "dy", dy)?;
        let mut dx = zeros([b * t, c]);
        pool::mean_rows_bwd(dy.storage(), t, c, dx.storage_mut());
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
        let mut grad = zeros(logits.shape().clone());
        loss::bce_with_logits_bwd(logits.storage(), targets.storage(), params, scale, grad.storage_mut());
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
        optim::adamw_step(p.storage_mut(), g.storage(), m.storage_mut(), v.storage_mut(), hp, step);
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
        optim::sgd_step(p.storage_mut(), g.storage(), momentum_buf.storage_mut(), hp, first_step);
        Ok(())
    }

    fn unscale_check(&self, g: &mut CpuTensor, inv_scale: f32) -> Result<bool, OpError> {
        Ok(optim::unscale_check(g.storage_mut(), inv_scale))
    }

    fn sum_squares(&self, g: &CpuTensor) -> Result<f64, OpError> {
        Ok(optim::sum_squares(g.storage()))
    }
}
