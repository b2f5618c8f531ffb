//! MTCNN's three networks (Zhang et al. 2016, as ported by facenet-pytorch): P-Net, a
//! fully convolutional 12×12 face/no-face classifier run over an image pyramid, R-Net on
//! 24×24 crops and O-Net on 48×48 crops with five landmarks. Forward only, on the CPU
//! backend's slice functions (convolution, ceil-mode max pool, per-channel PReLU, dense
//! layers, softmax); `data::detect` runs the cascade around them.
//!
//! Inputs are NHWC, already scaled to (x − 127.5)/128. The weights come from
//! `scripts/get-face-detector.sh` in PyTorch's layout; loading converts them once:
//! convolutions to KRSC, the two or three heads of each network concatenated into one
//! layer (face/no-face, box regression, landmarks side by side), and the first dense
//! layer's columns reordered, because facenet-pytorch flattens its convolution output as
//! (N, W, H, C) (`permute(0, 3, 2, 1)`) while dfengine's NHWC flattens as (N, H, W, C).

use std::path::{Path, PathBuf};

use super::weights::{HostTensor, TensorFile, WeightsError};
use crate::backend::cpu::{activation, conv, gemm, pooling};
use crate::backend::params::Conv2dGeom;

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

/// A convolution with bias, valid padding, stride 1; weights KRSC.
struct Conv {
    w: Vec<f32>,
    b: Vec<f32>,
    dims: [usize; 4],
}

/// A dense layer: w [out, in] row-major, b [out].
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    fin: usize,
    fout: usize,
}

/// A layer of the trunk; every convolution and dense layer but the heads is followed by
/// its PReLU.
enum Layer {
    Conv(Conv, Vec<f32>),
    Pool { window: usize, stride: usize },
    Dense(Dense, Vec<f32>),
}

/// Activations flowing through a network: NHWC while convolutional, [N, F] once dense.
struct Act {
    data: Vec<f32>,
    dims: [usize; 4],
}

impl Conv {
    fn run(&self, x: &Act) -> Act {
        let g = Conv2dGeom::new(x.dims, self.dims, [1, 1], [0, 0])
            .expect("shapes checked when the net was built");
        let mut y = vec![0.0; g.n * g.p * g.q * g.k];
        conv::conv2d_fwd(&g, &x.data, &self.w, &mut y);
        activation::bias_add(&mut y, &self.b);
        Act { data: y, dims: g.y_dims() }
    }
}

impl Dense {
    fn run(&self, x: &Act) -> Act {
        let n = x.dims[0];
        debug_assert_eq!(x.data.len(), n * self.fin);
        let mut y: Vec<f32> = self.b.iter().copied().cycle().take(n * self.fout).collect();
        gemm::gemm(
            1.0,
            gemm::MatRef::row_major(&x.data, n, self.fin),
            gemm::MatRef::row_major(&self.w, self.fout, self.fin).t(),
            1.0,
            &mut y,
        );
        Act { data: y, dims: [n, 1, 1, self.fout] }
    }
}

/// One of the three networks: a trunk, then one layer holding every head.
pub struct Net {
    trunk: Vec<Layer>,
    head: Head,
    /// The input side the network is built for (12 for P-Net, which takes any size ≥ 12).
    side: usize,
}

enum Head {
    Conv(Conv),
    Dense(Dense),
}

/// A network's outputs per position (P-Net: per cell of its output map; R-, O-Net: per
/// crop): the face probability (softmax of the first two head channels, class 1), then
/// the remaining head channels (box regression, landmarks).
pub struct NetOutput {
    pub rows: usize,
    /// Head channels after the probability: 4 (P-, R-Net) or 14 (O-Net: 4 + 10).
    pub extra: usize,
    pub prob: Vec<f32>,
    pub extra_data: Vec<f32>,
    /// P-Net's output map size (P, Q); (1, 1) for R- and O-Net.
    pub map: [usize; 2],
}

impl Net {
    /// Runs the network on `x` [N, H, W, 3].
    pub fn forward(&self, x: Vec<f32>, dims: [usize; 4]) -> NetOutput {
        let mut a = Act { data: x, dims };
        for layer in &self.trunk {
            a = match layer {
                Layer::Conv(c, alpha) => {
                    let mut y = c.run(&a);
                    activation::prelu(&mut y.data, alpha);
                    y
                }
                Layer::Pool { window, stride } => {
                    let g = pooling::ceil_mode_geom(a.dims, *window, *stride)
                        .expect("input sizes are checked before the network runs");
                    let mut y = vec![0.0; g.n * g.p * g.q * g.c];
                    pooling::max_pool2d_fwd(&g, &a.data, &mut y);
                    Act { data: y, dims: g.y_dims() }
                }
                Layer::Dense(d, alpha) => {
                    let mut y = d.run(&a);
                    activation::prelu(&mut y.data, alpha);
                    y
                }
            };
        }
        let out = match &self.head {
            Head::Conv(c) => c.run(&a),
            Head::Dense(d) => d.run(&a),
        };
        let [n, p, q, k] = out.dims;
        let rows = n * p * q;
        let mut both = vec![0.0; rows * 2];
        let logits: Vec<f32> = out.data.chunks_exact(k).flat_map(|r| [r[0], r[1]]).collect();
        activation::softmax_rows(&logits, 2, &mut both);
        NetOutput {
            rows,
            extra: k - 2,
            prob: both.chunks_exact(2).map(|r| r[1]).collect(),
            extra_data: out.data.chunks_exact(k).flat_map(|r| r[2..].iter().copied()).collect(),
            map: [p, q],
        }
    }

    /// The smallest input this network takes (its crop side for R- and O-Net).
    pub fn side(&self) -> usize {
        self.side
    }
}

/// P-, R- and O-Net with their weights.
pub struct Mtcnn {
    pub pnet: Net,
    pub rnet: Net,
    pub onet: Net,
}

/// Reads the layers of one network from the file.
struct Loader<'a> {
    file: &'a TensorFile,
    net: &'static str,
}

impl Loader<'_> {
    fn get(&self, name: &str, dims: &[usize]) -> Result<HostTensor, WeightsError> {
        self.file.get(&format!("{}.{name}", self.net), dims)
    }

    fn conv(&self, name: &str, dims: [usize; 4]) -> Result<Conv, WeightsError> {
        let w = self.get(&format!("{name}.weight"), &dims)?.data;
        let b = self.get(&format!("{name}.bias"), &[dims[0]])?.data;
        Ok(Conv { w, b, dims })
    }

    fn prelu(&self, name: &str, c: usize) -> Result<Vec<f32>, WeightsError> {
        Ok(self.get(&format!("{name}.weight"), &[c])?.data)
    }

    fn dense(&self, name: &str, fin: usize, fout: usize) -> Result<Dense, WeightsError> {
        let w = self.get(&format!("{name}.weight"), &[fout, fin])?.data;
        let b = self.get(&format!("{name}.bias"), &[fout])?.data;
        Ok(Dense { w, b, fin, fout })
    }

    /// The first dense layer after a [side, side, c] map, its columns moved from
    /// facenet-pytorch's (W, H, C) flatten order to NHWC's (H, W, C).
    fn dense_after_map(&self, name: &str, side: usize, c: usize, fout: usize) -> Result<Dense, WeightsError> {
        let fin = side * side * c;
        let mut d = self.dense(name, fin, fout)?;
        let torch = std::mem::take(&mut d.w);
        d.w = vec![0.0; fin * fout];
        for o in 0..fout {
            for h in 0..side {
                for w in 0..side {
                    for ch in 0..c {
                        d.w[o * fin + (h * side + w) * c + ch] = torch[o * fin + (w * side + h) * c + ch];
                    }
                }
            }
        }
        Ok(d)
    }
}

/// Heads stacked along the output channels (one GEMM instead of two or three).
fn stack_conv(heads: Vec<Conv>) -> Conv {
    let [_, r, s, c] = heads[0].dims;
    let k = heads.iter().map(|h| h.dims[0]).sum();
    Conv {
        w: heads.iter().flat_map(|h| h.w.iter().copied()).collect(),
        b: heads.iter().flat_map(|h| h.b.iter().copied()).collect(),
        dims: [k, r, s, c],
    }
}

fn stack_dense(heads: Vec<Dense>) -> Dense {
    Dense {
        fin: heads[0].fin,
        fout: heads.iter().map(|h| h.fout).sum(),
        w: heads.iter().flat_map(|h| h.w.iter().copied()).collect(),
        b: heads.iter().flat_map(|h| h.b.iter().copied()).collect(),
    }
}

impl Mtcnn {
    /// Loads the three networks from the safetensors file the fetch script writes.
    pub fn load(path: &Path) -> Result<Self, MtcnnError> {
        if !path.exists() {
            return Err(MtcnnError::Missing(path.to_path_buf()));
        }
        let file = TensorFile::read(path)?;
        Ok(Mtcnn { pnet: pnet(&file)?, rnet: rnet(&file)?, onet: onet(&file)? })
    }
}

fn pnet(file: &TensorFile) -> Result<Net, WeightsError> {
    let l = Loader { file, net: "pnet" };
    Ok(Net {
        trunk: vec![
            Layer::Conv(l.conv("conv1", [10, 3, 3, 3])?, l.prelu("prelu1", 10)?),
            Layer::Pool { window: 2, stride: 2 },
            Layer::Conv(l.conv("conv2", [16, 3, 3, 10])?, l.prelu("prelu2", 16)?),
            Layer::Conv(l.conv("conv3", [32, 3, 3, 16])?, l.prelu("prelu3", 32)?),
        ],
        head: Head::Conv(stack_conv(vec![
            l.conv("conv4_1", [2, 1, 1, 32])?,
            l.conv("conv4_2", [4, 1, 1, 32])?,
        ])),
        side: 12,
    })
}

fn rnet(file: &TensorFile) -> Result<Net, WeightsError> {
    let l = Loader { file, net: "rnet" };
    Ok(Net {
        trunk: vec![
            Layer::Conv(l.conv("conv1", [28, 3, 3, 3])?, l.prelu("prelu1", 28)?),
            Layer::Pool { window: 3, stride: 2 },
            Layer::Conv(l.conv("conv2", [48, 3, 3, 28])?, l.prelu("prelu2", 48)?),
            Layer::Pool { window: 3, stride: 2 },
            Layer::Conv(l.conv("conv3", [64, 2, 2, 48])?, l.prelu("prelu3", 64)?),
            Layer::Dense(l.dense_after_map("dense4", 3, 64, 128)?, l.prelu("prelu4", 128)?),
        ],
        head: Head::Dense(stack_dense(vec![l.dense("dense5_1", 128, 2)?, l.dense("dense5_2", 128, 4)?])),
        side: 24,
    })
}

fn onet(file: &TensorFile) -> Result<Net, WeightsError> {
    let l = Loader { file, net: "onet" };
    Ok(Net {
        trunk: vec![
            Layer::Conv(l.conv("conv1", [32, 3, 3, 3])?, l.prelu("prelu1", 32)?),
            Layer::Pool { window: 3, stride: 2 },
            Layer::Conv(l.conv("conv2", [64, 3, 3, 32])?, l.prelu("prelu2", 64)?),
            Layer::Pool { window: 3, stride: 2 },
            Layer::Conv(l.conv("conv3", [64, 3, 3, 64])?, l.prelu("prelu3", 64)?),
            Layer::Pool { window: 2, stride: 2 },
            Layer::Conv(l.conv("conv4", [128, 2, 2, 64])?, l.prelu("prelu4", 128)?),
            Layer::Dense(l.dense_after_map("dense5", 3, 128, 256)?, l.prelu("prelu5", 256)?),
        ],
        head: Head::Dense(stack_dense(vec![
            l.dense("dense6_1", 256, 2)?,
            l.dense("dense6_2", 256, 4)?,
            l.dense("dense6_3", 256, 10)?,
        ])),
        side: 48,
    })
}
