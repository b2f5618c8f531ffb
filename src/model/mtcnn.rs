//! MTCNN's three networks (Zhang et al. 2016, as ported by facenet-pytorch): P-Net, a
//! fully convolutional 12×12 face/no-face classifier run over an image pyramid, R-Net on
//! 24×24 crops and O-Net on 48×48 crops with five landmarks. Forward only, through the
//! `Backend` op set (convolution, bias with PReLU, ceil-mode max pool, softmax), so that
//! the same code runs on the CPU backend and on the CUDA backend, with the weights
//! uploaded once; `data::detect` runs the cascade around them.
//!
//! Inputs are NHWC, already scaled to (x − 127.5)/128. The weights come from
//! `scripts/get-face-detector.sh` in PyTorch's layout; loading converts them once. Every
//! layer becomes a convolution: a dense layer after a side×side map is a side×side
//! convolution with a 1×1 output, and a dense layer after that a 1×1 convolution, so that
//! activations stay NHWC from the input to the heads with nothing to flatten. The first
//! dense layer's columns are reordered into that filter's (H, W, C) order, because
//! facenet-pytorch flattens its convolution output as (N, W, H, C) (`permute(0, 3, 2,
//! 1)`). Each network ends in two heads: face/no-face (two channels, softmax on the
//! backend) and the rest side by side (box regression, and O-Net's landmarks), one
//! convolution each.

use std::path::{Path, PathBuf};

use super::weights::{TensorFile, WeightsError};
use crate::backend::OpError;
use crate::backend::ops::Backend;
use crate::tensor::{Shape, Tensor};

/// Where `scripts/get-face-detector.sh` puts the weights: `models/` of the checkout this
/// dfengine was built from, so that the default holds from any working directory.
pub const DEFAULT_WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mtcnn.safetensors");

#[derive(Debug, thiserror::Error)]
pub enum MtcnnError {
    #[error(
        "{}: no such file; scripts/get-face-detector.sh downloads the MTCNN weights and converts them \
         into {DEFAULT_WEIGHTS} (the default; a relative path in a config file is read from that \
         file's folder)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("face detector weights: {0}")]
    Weights(#[from] WeightsError),
}

type T<B> = Tensor<<B as Backend>::Storage>;

/// One of the three networks, as the cascade names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    PNet,
    RNet,
    ONet,
}

impl Stage {
    /// The input side the network is built for: P-Net's 12 (it takes any size from
    /// there), R- and O-Net's crop side.
    pub fn side(self) -> usize {
        match self {
            Stage::PNet => 12,
            Stage::RNet => 24,
            Stage::ONet => 48,
        }
    }
}

/// A network's outputs per position (P-Net: per cell of its output map; R-, O-Net: per
/// crop): the face probability (class 1 of the softmax over the face/no-face head), then
/// the other head's channels (box regression, landmarks).
pub struct NetOutput {
    pub rows: usize,
    /// Channels per row of `extra_data`: 4 (P-, R-Net) or 14 (O-Net: 4 + 10).
    pub extra: usize,
    pub prob: Vec<f32>,
    pub extra_data: Vec<f32>,
    /// P-Net's output map size (P, Q); (1, 1) for R- and O-Net.
    pub map: [usize; 2],
}

/// MTCNN on some backend, as the cascade (`data::detect`) runs it: the face of `Mtcnn<B>`
/// that does not name B, so that a detector is one type whichever backend it runs on.
pub trait Cascade: Send + Sync {
    /// Runs `stage` on `x` [N, H, W, 3] (`dims`).
    fn forward(&self, stage: Stage, x: &[f32], dims: [usize; 4]) -> Result<NetOutput, OpError>;
    /// The backend it runs on, e.g. "cpu (2 threads)" or "cuda:0 NVIDIA H200".
    fn backend_name(&self) -> String;
}

/// P-, R- and O-Net with their weights on `backend`.
pub struct Mtcnn<B: Backend> {
    backend: B,
    pnet: Net<B>,
    rnet: Net<B>,
    onet: Net<B>,
}

impl<B: Backend> Mtcnn<B> {
    /// Loads the three networks from the safetensors file the fetch script writes and
    /// uploads them to `backend`.
    pub fn load(backend: B, path: &Path) -> Result<Self, MtcnnError> {
        if !path.exists() {
            return Err(MtcnnError::Missing(path.to_path_buf()));
        }
        let file = TensorFile::read(path)?;
        let (pnet, rnet, onet) = (pnet(&file, &backend)?, rnet(&file, &backend)?, onet(&file, &backend)?);
        Ok(Mtcnn { backend, pnet, rnet, onet })
    }
}

impl<B: Backend + Send> Cascade for Mtcnn<B> {
    fn forward(&self, stage: Stage, x: &[f32], dims: [usize; 4]) -> Result<NetOutput, OpError> {
        let net = match stage {
            Stage::PNet => &self.pnet,
            Stage::RNet => &self.rnet,
            Stage::ONet => &self.onet,
        };
        net.forward(&self.backend, x, dims)
    }

    fn backend_name(&self) -> String {
        self.backend.name()
    }
}

/// A convolution with bias on the backend: weights KRSC, valid padding, stride 1.
struct Conv<B: Backend> {
    w: T<B>,
    b: T<B>,
}

impl<B: Backend> Conv<B> {
    /// The convolution of `x` with its bias added, then PReLU with slopes `alpha` when
    /// given (fused with the bias: one pass over the output).
    fn run(&self, be: &B, x: &T<B>, alpha: Option<&T<B>>) -> Result<T<B>, OpError> {
        let mut y = be.conv2d_fwd(x, &self.w, [1, 1], [0, 0])?;
        match alpha {
            Some(a) => be.bias_prelu(&mut y, &self.b, a)?,
            None => be.bias_add(&mut y, &self.b)?,
        }
        Ok(y)
    }
}

/// A layer of a trunk.
enum Layer<B: Backend> {
    /// A convolution and the slopes of the PReLU after it.
    Conv(Conv<B>, T<B>),
    /// Max pool in ceil mode.
    Pool { window: usize, stride: usize },
}

/// One of the three networks: a trunk, then the two heads.
struct Net<B: Backend> {
    trunk: Vec<Layer<B>>,
    classify: Conv<B>,
    regress: Conv<B>,
}

impl<B: Backend> Net<B> {
    fn forward(&self, be: &B, x: &[f32], dims: [usize; 4]) -> Result<NetOutput, OpError> {
        let mut a = be.tensor(Shape::from(dims), x)?;
        for layer in &self.trunk {
            a = match layer {
                Layer::Conv(c, alpha) => c.run(be, &a, Some(alpha))?,
                Layer::Pool { window, stride } => be.max_pool2d_ceil_fwd(&a, *window, *stride)?,
            };
        }
        let both = be.softmax_rows(&self.classify.run(be, &a, None)?)?;
        let extra = self.regress.run(be, &a, None)?;
        let [n, p, q, k]: [usize; 4] = extra.dims().try_into().expect("a convolution gives an NHWC map");
        Ok(NetOutput {
            rows: n * p * q,
            extra: k,
            prob: be.to_vec(&both)?.chunks_exact(2).map(|r| r[1]).collect(),
            extra_data: be.to_vec(&extra)?,
            map: [p, q],
        })
    }
}

/// Reads the layers of one network from the file and uploads them to the backend.
struct Loader<'a, B: Backend> {
    file: &'a TensorFile,
    net: &'static str,
    be: &'a B,
}

impl<B: Backend> Loader<'_, B> {
    fn get(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, WeightsError> {
        Ok(self.file.get(&format!("{}.{name}", self.net), dims)?.data)
    }

    fn upload(&self, data: &[f32], dims: &[usize]) -> Result<T<B>, WeightsError> {
        Ok(self.be.tensor(Shape::from(dims), data)?)
    }

    /// Weights [k, r, s, c] (KRSC) and bias [k] as a convolution on the backend.
    fn upload_conv(&self, w: &[f32], b: &[f32], dims: [usize; 4]) -> Result<Conv<B>, WeightsError> {
        Ok(Conv { w: self.upload(w, &dims)?, b: self.upload(b, &[dims[0]])? })
    }

    fn conv(&self, name: &str, dims: [usize; 4]) -> Result<Conv<B>, WeightsError> {
        let w = self.get(&format!("{name}.weight"), &dims)?;
        let b = self.get(&format!("{name}.bias"), &[dims[0]])?;
        self.upload_conv(&w, &b, dims)
    }

    fn prelu(&self, name: &str, c: usize) -> Result<T<B>, WeightsError> {
        self.upload(&self.get(&format!("{name}.weight"), &[c])?, &[c])
    }

    /// A convolution and the PReLU after it.
    fn conv_prelu(&self, conv: &str, prelu: &str, dims: [usize; 4]) -> Result<Layer<B>, WeightsError> {
        Ok(Layer::Conv(self.conv(conv, dims)?, self.prelu(prelu, dims[0])?))
    }

    /// Dense heads ([fout, fin] each, `heads` naming them and their fout) after a 1×1 map,
    /// side by side along the output channels: one 1×1 convolution.
    fn dense(&self, heads: &[(&str, usize)], fin: usize) -> Result<Conv<B>, WeightsError> {
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for &(name, fout) in heads {
            w.extend(self.get(&format!("{name}.weight"), &[fout, fin])?);
            b.extend(self.get(&format!("{name}.bias"), &[fout])?);
        }
        self.upload_conv(&w, &b, [b.len(), 1, 1, fin])
    }

    /// The first dense layer after a [side, side, c] map, and its PReLU: a side×side
    /// convolution, its columns moved from facenet-pytorch's (W, H, C) flatten order to
    /// the filter's (H, W, C).
    fn dense_after_map(
        &self,
        name: &str,
        prelu: &str,
        [side, c]: [usize; 2],
        fout: usize,
    ) -> Result<Layer<B>, WeightsError> {
        let fin = side * side * c;
        let torch = self.get(&format!("{name}.weight"), &[fout, fin])?;
        let mut w = vec![0.0; fin * fout];
        for o in 0..fout {
            for h in 0..side {
                for x in 0..side {
                    for ch in 0..c {
                        w[o * fin + (h * side + x) * c + ch] = torch[o * fin + (x * side + h) * c + ch];
                    }
                }
            }
        }
        let b = self.get(&format!("{name}.bias"), &[fout])?;
        Ok(Layer::Conv(self.upload_conv(&w, &b, [fout, side, side, c])?, self.prelu(prelu, fout)?))
    }
}

fn pnet<B: Backend>(file: &TensorFile, be: &B) -> Result<Net<B>, WeightsError> {
    let l = Loader { file, net: "pnet", be };
    Ok(Net {
        trunk: vec![
            l.conv_prelu("conv1", "prelu1", [10, 3, 3, 3])?,
            Layer::Pool { window: 2, stride: 2 },
            l.conv_prelu("conv2", "prelu2", [16, 3, 3, 10])?,
            l.conv_prelu("conv3", "prelu3", [32, 3, 3, 16])?,
        ],
        classify: l.conv("conv4_1", [2, 1, 1, 32])?,
        regress: l.conv("conv4_2", [4, 1, 1, 32])?,
    })
}

fn rnet<B: Backend>(file: &TensorFile, be: &B) -> Result<Net<B>, WeightsError> {
    let l = Loader { file, net: "rnet", be };
    Ok(Net {
        trunk: vec![
            l.conv_prelu("conv1", "prelu1", [28, 3, 3, 3])?,
            Layer::Pool { window: 3, stride: 2 },
            l.conv_prelu("conv2", "prelu2", [48, 3, 3, 28])?,
            Layer::Pool { window: 3, stride: 2 },
            l.conv_prelu("conv3", "prelu3", [64, 2, 2, 48])?,
            l.dense_after_map("dense4", "prelu4", [3, 64], 128)?,
        ],
        classify: l.dense(&[("dense5_1", 2)], 128)?,
        regress: l.dense(&[("dense5_2", 4)], 128)?,
    })
}

fn onet<B: Backend>(file: &TensorFile, be: &B) -> Result<Net<B>, WeightsError> {
    let l = Loader { file, net: "onet", be };
    Ok(Net {
        trunk: vec![
            l.conv_prelu("conv1", "prelu1", [32, 3, 3, 3])?,
            Layer::Pool { window: 3, stride: 2 },
            l.conv_prelu("conv2", "prelu2", [64, 3, 3, 32])?,
            Layer::Pool { window: 3, stride: 2 },
            l.conv_prelu("conv3", "prelu3", [64, 3, 3, 64])?,
            Layer::Pool { window: 2, stride: 2 },
            l.conv_prelu("conv4", "prelu4", [128, 2, 2, 64])?,
            l.dense_after_map("dense5", "prelu5", [3, 128], 256)?,
        ],
        classify: l.dense(&[("dense6_1", 2)], 256)?,
        regress: l.dense(&[("dense6_2", 4), ("dense6_3", 10)], 256)?,
    })
}
