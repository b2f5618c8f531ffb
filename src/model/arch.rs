//! The ResNet family as data: every convolution with its shapes, in execution order.
//! The memory planner sizes a training step from this list; the model builder (to come)
//! instantiates the same list, so the plan and the model cannot drift apart.

use crate::config::Backbone;

/// Basic (two 3×3) or bottleneck (1×1, 3×3, 1×1 ×4) residual blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetSpec {
    pub kind: BlockKind,
    /// Channels out of the 7×7 stem.
    pub stem: usize,
    pub blocks: [usize; 4],
    pub widths: [usize; 4],
}

impl ResNetSpec {
    pub fn of(backbone: Backbone) -> Self {
        let standard = [64, 128, 256, 512];
        match backbone {
            Backbone::ResnetTiny => ResNetSpec {
                kind: BlockKind::Basic,
                stem: 16,
                blocks: [1, 1, 1, 1],
                widths: [16, 32, 64, 128],
            },
            Backbone::Resnet18 => {
                ResNetSpec { kind: BlockKind::Basic, stem: 64, blocks: [2, 2, 2, 2], widths: standard }
            }
            Backbone::Resnet34 => {
                ResNetSpec { kind: BlockKind::Basic, stem: 64, blocks: [3, 4, 6, 3], widths: standard }
            }
            Backbone::Resnet50 => {
                ResNetSpec { kind: BlockKind::Bottleneck, stem: 64, blocks: [3, 4, 6, 3], widths: standard }
            }
        }
    }

    /// Channels out of the last stage (the features the classifier sees).
    pub fn feature_channels(&self) -> usize {
        let expansion = if self.kind == BlockKind::Bottleneck { 4 } else { 1 };
        self.widths[3] * expansion
    }
}

/// One convolution (each followed by a batch norm) at its place in the network, for an
/// input of `h × w` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayer {
    pub name: &'static str,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub h_in: usize,
    pub w_in: usize,
    /// Ends a residual block (its output is added to the shortcut, then ReLU).
    pub block_end: bool,
    /// The first convolution of a stage (`layer1` …): its input is the stage's input.
    pub stage_start: bool,
}

impl ConvLayer {
    pub fn pad(&self) -> usize {
        self.kernel / 2
    }
    pub fn h_out(&self) -> usize {
        (self.h_in + 2 * self.pad() - self.kernel) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w_in + 2 * self.pad() - self.kernel) / self.stride + 1
    }
    pub fn params(&self) -> usize {
        self.cout * self.kernel * self.kernel * self.cin
    }
    /// Output elements per image.
    pub fn out_elems(&self) -> usize {
        self.cout * self.h_out() * self.w_out()
    }
}

/// Every convolution for a `side × side` input, stem first, downsample shortcuts right
/// after the block's first convolution. The stem's max pool sits between `conv1` and the
/// first stage.
pub fn conv_layers(spec: &ResNetSpec, side: usize) -> Vec<ConvLayer> {
    let mut layers = Vec::new();
    let stem = ConvLayer {
        name: "conv1",
        cin: 3,
        cout: spec.stem,
        kernel: 7,
        stride: 2,
        h_in: side,
        w_in: side,
        block_end: false,
        stage_start: false,
    };
    layers.push(stem);
    let pooled = |x: usize| (x + 2 - 3) / 2 + 1;
    let (mut h, mut w) = (pooled(stem.h_out()), pooled(stem.w_out()));
    let mut cin = stem.cout;
    let expansion = if spec.kind == BlockKind::Bottleneck { 4 } else { 1 };
    for stage in 0..4 {
        let width = spec.widths[stage];
        for block in 0..spec.blocks[stage] {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let cout = width * expansion;
            let convs: Vec<(usize, usize, usize, usize)> = match spec.kind {
                BlockKind::Basic => vec![(cin, width, 3, stride), (width, width, 3, 1)],
                BlockKind::Bottleneck => {
                    vec![(cin, width, 1, 1), (width, width, 3, stride), (width, cout, 1, 1)]
                }
            };
            let (h0, w0) = (h, w);
            let last = convs.len() - 1;
            for (i, &(ci, co, k, s)) in convs.iter().enumerate() {
                let layer = ConvLayer {
                    name: "block",
                    cin: ci,
                    cout: co,
                    kernel: k,
                    stride: s,
                    h_in: h,
                    w_in: w,
                    block_end: i == last,
                    stage_start: block == 0 && i == 0,
                };
                h = layer.h_out();
                w = layer.w_out();
                layers.push(layer);
            }
            if stride != 1 || cin != cout {
                layers.push(ConvLayer {
                    name: "downsample",
                    cin,
                    cout,
                    kernel: 1,
                    stride,
                    h_in: h0,
                    w_in: w0,
                    block_end: false,
                    stage_start: false,
                });
            }
            cin = cout;
        }
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(backbone: Backbone) -> usize {
        let spec = ResNetSpec::of(backbone);
        let convs: usize = conv_layers(&spec, 224).iter().map(|l| l.params() + 2 * l.cout).sum();
        convs + spec.feature_channels() * 1000 + 1000
    }

    #[test]
    fn parameter_counts_match_torchvision() {
        // torchvision's counts with a 1000-class head (batch-norm γ/β included).
        assert_eq!(params(Backbone::Resnet18), 11_689_512);
        assert_eq!(params(Backbone::Resnet34), 21_797_672);
        assert_eq!(params(Backbone::Resnet50), 25_557_032);
    }

    #[test]
    fn spatial_sizes_follow_the_strides() {
        let layers = conv_layers(&ResNetSpec::of(Backbone::Resnet18), 224);
        assert_eq!((layers[0].h_out(), layers[1].h_in), (112, 56));
        let last = layers.last().unwrap();
        assert_eq!((last.h_out(), last.cout), (7, 512));
    }
}
