//! A ResNet basic block and a tiny clip classifier built from the op set, generic over
//! the backend: the torch parity test runs the block, the convergence test trains the
//! classifier, and both will run unchanged on the CUDA backend.

use dfengine::backend::OpError;
use dfengine::backend::ops::{Backend, BnSaved};
use dfengine::backend::params::{AdamWParams, BatchNormParams};
use dfengine::tensor::{Shape, Tensor};

use super::Rng;

type T<B> = Tensor<<B as Backend>::Storage>;

/// conv (no bias) → batch norm (training mode) → optional ReLU.
pub struct ConvBn<B: Backend> {
    pub w: T<B>,
    pub gamma: T<B>,
    pub beta: T<B>,
    pub running_mean: T<B>,
    pub running_var: T<B>,
    pub stride: usize,
    pub pad: usize,
    pub relu: bool,
}

pub struct ConvBnCache<B: Backend> {
    x: T<B>,
    z: T<B>,
    /// The output, kept only when the ReLU is fused (it masks the gradient). Without
    /// ReLU the caller may update the output in place (the residual add).
    relu_y: Option<T<B>>,
    saved: BnSaved<T<B>>,
}

pub struct ConvBnGrads<B: Backend> {
    pub dw: T<B>,
    pub dgamma: T<B>,
    pub dbeta: T<B>,
}

impl<B: Backend> ConvBn<B> {
    /// Kaiming-uniform-like weights, γ = 1, β = 0, running stats (0, 1).
    pub fn new(b: &B, rng: &mut Rng, cin: usize, cout: usize, k: usize, stride: usize, relu: bool) -> Self {
        let bound = (6.0 / (cin * k * k) as f32).sqrt();
        let w =
            b.tensor(Shape::from([cout, k, k, cin]), &rng.vec(cout * k * k * cin, -bound, bound)).unwrap();
        let ones = || b.tensor(Shape::from([cout]), &vec![1.0; cout]).unwrap();
        let zeros = || b.zeros(Shape::from([cout])).unwrap();
        ConvBn {
            w,
            gamma: ones(),
            beta: zeros(),
            running_mean: zeros(),
            running_var: ones(),
            stride,
            pad: k / 2,
            relu,
        }
    }

    fn bn_params(&self) -> BatchNormParams {
        BatchNormParams { relu: self.relu, ..BatchNormParams::default() }
    }

    pub fn forward(&mut self, b: &B, x: &T<B>) -> Result<(T<B>, ConvBnCache<B>), OpError> {
        let z = b.conv2d_fwd(x, &self.w, [self.stride; 2], [self.pad; 2])?;
        let p = self.bn_params();
        let out = b.batch_norm_fwd_train(
            &z,
            &self.gamma,
            &self.beta,
            &mut self.running_mean,
            &mut self.running_var,
            &p,
        )?;
        let relu_y = self.relu.then(|| out.y.clone());
        let cache = ConvBnCache { x: x.clone(), z, relu_y, saved: out.saved };
        Ok((out.y, cache))
    }

    pub fn backward(&self, b: &B, dy: &T<B>, c: &ConvBnCache<B>) -> Result<(T<B>, ConvBnGrads<B>), OpError> {
        let bn = b.batch_norm_bwd(dy, &c.z, &self.gamma, &c.saved, c.relu_y.as_ref())?;
        let x_dims: [usize; 4] = c.x.shape().as_array().expect("NHWC input");
        let w_dims: [usize; 4] = self.w.shape().as_array().expect("KRSC weight");
        let s = [self.stride; 2];
        let p = [self.pad; 2];
        let dx = b.conv2d_dgrad(&bn.dx, &self.w, x_dims, s, p)?;
        let dw = b.conv2d_wgrad(&c.x, &bn.dx, w_dims, s, p)?;
        Ok((dx, ConvBnGrads { dw, dgamma: bn.dgamma, dbeta: bn.dbeta }))
    }

    /// (torchvision-style suffix, tensor) for the conv weight and the batch norm.
    pub fn named(&self) -> [(&'static str, &T<B>); 5] {
        [
            ("conv.weight", &self.w),
            ("bn.weight", &self.gamma),
            ("bn.bias", &self.beta),
            ("bn.running_mean", &self.running_mean),
            ("bn.running_var", &self.running_var),
        ]
    }

    fn trainable(&mut self) -> [&mut T<B>; 3] {
        [&mut self.w, &mut self.gamma, &mut self.beta]
    }
}

impl<B: Backend> ConvBnGrads<B> {
    fn list(&self) -> [&T<B>; 3] {
        [&self.dw, &self.dgamma, &self.dbeta]
    }
}

/// torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the
/// shortcut a strided 1×1 conv + bn when the shape changes.
pub struct BasicBlock<B: Backend> {
    pub c1: ConvBn<B>,
    pub c2: ConvBn<B>,
    pub down: Option<ConvBn<B>>,
}

pub struct BlockCache<B: Backend> {
    c1: ConvBnCache<B>,
    c2: ConvBnCache<B>,
    down: Option<ConvBnCache<B>>,
    out: T<B>,
}

pub struct BlockGrads<B: Backend> {
    pub c1: ConvBnGrads<B>,
    pub c2: ConvBnGrads<B>,
    pub down: Option<ConvBnGrads<B>>,
}

impl<B: Backend> BasicBlock<B> {
    pub fn new(b: &B, rng: &mut Rng, cin: usize, cout: usize, stride: usize) -> Self {
        let down = (stride != 1 || cin != cout).then(|| ConvBn::new(b, rng, cin, cout, 1, stride, false));
        BasicBlock {
            c1: ConvBn::new(b, rng, cin, cout, 3, stride, true),
            c2: ConvBn::new(b, rng, cout, cout, 3, 1, false),
            down,
        }
    }

    pub fn forward(&mut self, b: &B, x: &T<B>) -> Result<(T<B>, BlockCache<B>), OpError> {
        let (h, c1) = self.c1.forward(b, x)?;
        let (mut sum, c2) = self.c2.forward(b, &h)?;
        let down = match &mut self.down {
            Some(d) => {
                let (s, cache) = d.forward(b, x)?;
                b.add_assign(&mut sum, &s)?;
                Some(cache)
            }
            None => {
                b.add_assign(&mut sum, x)?;
                None
            }
        };
        let out = b.relu_fwd(&sum)?;
        Ok((out.clone(), BlockCache { c1, c2, down, out }))
    }

    pub fn backward(&self, b: &B, dy: &T<B>, c: &BlockCache<B>) -> Result<(T<B>, BlockGrads<B>), OpError> {
        let dsum = b.relu_bwd(dy, &c.out)?;
        let (dh, g2) = self.c2.backward(b, &dsum, &c.c2)?;
        let (mut dx, g1) = self.c1.backward(b, &dh, &c.c1)?;
        let gd = match (&self.down, &c.down) {
            (Some(d), Some(cache)) => {
                let (dxs, g) = d.backward(b, &dsum, cache)?;
                b.add_assign(&mut dx, &dxs)?;
                Some(g)
            }
            _ => {
                b.add_assign(&mut dx, &dsum)?;
                None
            }
        };
        Ok((dx, BlockGrads { c1: g1, c2: g2, down: gd }))
    }

    /// Parameters and buffers under torchvision's names (`conv1.weight`, `bn1.running_mean`,
    /// `downsample.0.weight`, `downsample.1.bias`, ...).
    pub fn named(&self) -> Vec<(String, &T<B>)> {
        let mut out = Vec::new();
        for (prefix, layer) in [("1", &self.c1), ("2", &self.c2)] {
            for (suffix, t) in layer.named() {
                out.push((
                    suffix
                        .replace("conv.", &format!("conv{prefix}."))
                        .replace("bn.", &format!("bn{prefix}.")),
                    t,
                ));
            }
        }
        if let Some(d) = &self.down {
            for (suffix, t) in d.named() {
                out.push((suffix.replace("conv.", "downsample.0.").replace("bn.", "downsample.1."), t));
            }
        }
        out
    }

    fn trainable(&mut self) -> Vec<&mut T<B>> {
        let mut out: Vec<&mut T<B>> = Vec::new();
        out.extend(self.c1.trainable());
        out.extend(self.c2.trainable());
        if let Some(d) = &mut self.down {
            out.extend(d.trainable());
        }
        out
    }
}

impl<B: Backend> BlockGrads<B> {
    pub fn list(&self) -> Vec<&T<B>> {
        let mut out: Vec<&T<B>> = Vec::new();
        out.extend(self.c1.list());
        out.extend(self.c2.list());
        if let Some(d) = &self.down {
            out.extend(d.list());
        }
        out
    }
}

/// stem conv-bn-relu → 3×3/2 max pool → basic block (stride 2) → global average pool →
/// mean over the T frames of each clip → linear → one logit per clip.
pub struct TinyResNet<B: Backend> {
    stem: ConvBn<B>,
    block: BasicBlock<B>,
    fc_w: T<B>,
    fc_b: T<B>,
    frames: usize,
    moments: Vec<(T<B>, T<B>)>,
    step: u64,
}

impl<B: Backend> TinyResNet<B> {
    pub fn new(b: &B, seed: u64, width: usize, frames: usize) -> Self {
        let mut rng = Rng::new(seed);
        let stem = ConvBn::new(b, &mut rng, 3, width, 3, 1, true);
        let block = BasicBlock::new(b, &mut rng, width, 2 * width, 2);
        let bound = (1.0 / (2 * width) as f32).sqrt();
        let fc_w = b.tensor(Shape::from([1, 2 * width]), &rng.vec(2 * width, -bound, bound)).unwrap();
        let fc_b = b.zeros(Shape::from([1])).unwrap();
        TinyResNet { stem, block, fc_w, fc_b, frames, moments: Vec::new(), step: 0 }
    }

    /// The loss on frames `x` [B·T, H, W, 3] with clip labels `y` [B, 1], and the
    /// gradient of every trainable tensor, in `trainable()` order.
    pub fn loss_and_grads(&mut self, b: &B, x: &T<B>, y: &T<B>) -> Result<(f32, Vec<T<B>>), OpError> {
        let (h0, c0) = self.stem.forward(b, x)?;
        let h1 = b.max_pool2d_fwd(&h0, 3, 2, 1)?;
        let (h2, c2) = self.block.forward(b, &h1)?;
        let dims2: [usize; 4] = h2.shape().as_array().expect("NHWC");
        let pooled = b.global_avg_pool_fwd(&h2)?;
        let clip = b.temporal_mean_fwd(&pooled, self.frames)?;
        let logits = b.linear_fwd(&clip, &self.fc_w, &self.fc_b)?;
        let loss = b.bce_with_logits_fwd(&logits, y, &Default::default())?;

        let dlogits = b.bce_with_logits_bwd(&logits, y, &Default::default(), 1.0)?;
        let fc = b.linear_bwd(&dlogits, &clip, &self.fc_w)?;
        let dpooled = b.temporal_mean_bwd(&fc.dx, self.frames)?;
        let dh2 = b.global_avg_pool_bwd(&dpooled, dims2)?;
        let (dh1, gblock) = self.block.backward(b, &dh2, &c2)?;
        let dh0 = b.max_pool2d_bwd(&h0, &dh1, 3, 2, 1)?;
        let (_, gstem) = self.stem.backward(b, &dh0, &c0)?;

        let mut grads: Vec<T<B>> = gstem.list().into_iter().cloned().collect();
        grads.extend(gblock.list().into_iter().cloned());
        grads.push(fc.dw);
        grads.push(fc.db);
        Ok((loss, grads))
    }

    /// Every trainable tensor: stem (conv, γ, β), block, then fc weight and bias.
    pub fn trainable(&mut self) -> Vec<&mut T<B>> {
        let mut params: Vec<&mut T<B>> = self.stem.trainable().into_iter().collect();
        params.extend(self.block.trainable());
        params.push(&mut self.fc_w);
        params.push(&mut self.fc_b);
        params
    }

    /// One AdamW step; returns the loss before the step.
    pub fn train_step(&mut self, b: &B, x: &T<B>, y: &T<B>, hp: &AdamWParams) -> Result<f32, OpError> {
        let (loss, grads) = self.loss_and_grads(b, x, y)?;
        if self.moments.is_empty() {
            for g in &grads {
                self.moments.push((b.zeros(g.shape().clone())?, b.zeros(g.shape().clone())?));
            }
        }
        self.step += 1;
        let step = self.step;
        let mut moments = std::mem::take(&mut self.moments);
        for ((p, g), (m, v)) in self.trainable().into_iter().zip(&grads).zip(&mut moments) {
            b.adamw_step(p, g, m, v, hp, step)?;
        }
        self.moments = moments;
        Ok(loss)
    }
}
