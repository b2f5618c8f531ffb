//! The whole backward chain of the library's ResNet (`resnet_tiny`: 7×7/2 stem, max pool,
//! four stages of basic blocks with strided downsample shortcuts, global average pool,
//! per-frame head, temporal mean): finite differences of the loss agree with the
//! analytic gradients, and training on a fixed toy problem drives the loss to near zero.
//! A wrong gradient anywhere in the chain fails one or the other.

mod common;

use common::{Rng, check_gradient, cpu};
use dfengine::backend::cpu::{CpuBackend, CpuTensor};
use dfengine::backend::ops::Backend;
use dfengine::config::{Backbone, OptimizerKind};
use dfengine::model::arch::ResNetSpec;
use dfengine::model::resnet::ResNet;
use dfengine::tensor::Shape;
use dfengine::train::optimizer::Optimizer;

fn tiny(b: &CpuBackend, frames: usize, seed: u64) -> ResNet<CpuBackend> {
    ResNet::new(b, ResNetSpec::of(Backbone::ResnetTiny), frames, seed).unwrap()
}

/// The mean BCE loss on clip labels `y` and the gradient of every trainable tensor.
fn loss_and_grads(
    b: &CpuBackend,
    net: &mut ResNet<CpuBackend>,
    x: &CpuTensor,
    y: &CpuTensor,
) -> (f32, Vec<CpuTensor>) {
    let (logits, cache) = net.forward_train(b, x).unwrap();
    let loss = b.bce_with_logits_fwd(&logits.clips, y, &Default::default()).unwrap();
    let d = b.bce_with_logits_bwd(&logits.clips, y, &Default::default(), 1.0).unwrap();
    (loss, net.backward(b, &d, cache).unwrap())
}

#[test]
fn tiny_resnet_gradients_reach_the_stem_intact() {
    // Finite differences of the whole network's loss with respect to the stem's weights
    // and batch-norm scale, a middle block's conv and the head: every op's backward lies
    // on the path to the stem.
    let b = cpu();
    let mut rng = Rng::new(72);
    let x = b.tensor(Shape::from([4, 32, 32, 3]), &rng.vec(4 * 32 * 32 * 3, -1.0, 1.0)).unwrap();
    let y = b.tensor(Shape::from([2, 1]), &[0.0, 1.0]).unwrap();
    let mut net = tiny(&b, 2, 73);
    let (_, grads) = loss_and_grads(&b, &mut net, &x, &y);
    let last = grads.len() - 2;
    for (index, what) in
        [(0, "stem conv weight"), (1, "stem bn gamma"), (6, "layer2.0.conv1 weight"), (last, "fc weight")]
    {
        let original = b.to_vec(net.trainable_mut()[index]).unwrap();
        let shape = grads[index].shape().clone();
        let analytic = b.to_vec(&grads[index]).unwrap();
        let loss_at = |v: &[f32]| {
            *net.trainable_mut()[index] = b.tensor(shape.clone(), v).unwrap();
            loss_and_grads(&b, &mut net, &x, &y).0 as f64
        };
        check_gradient(what, &original, &analytic, loss_at, 3e-4, 3e-2, 24);
        *net.trainable_mut()[index] = b.tensor(shape, &original).unwrap();
    }
}

#[test]
fn tiny_resnet_fits_a_fixed_toy_problem() {
    let b = cpu();
    let (clips, frames, side) = (8, 2, 32);
    let mut rng = Rng::new(70);
    // Random frames with random labels: the net can only succeed by fitting them, which
    // takes every parameter's gradient pointing the right way.
    let x = rng.vec(clips * frames * side * side * 3, -1.0, 1.0);
    let x = b.tensor(Shape::from([clips * frames, side, side, 3]), &x).unwrap();
    let labels: Vec<f32> = (0..clips).map(|i| (i % 2) as f32).collect();
    let y = b.tensor(Shape::from([clips, 1]), &labels).unwrap();
    let mut net = tiny(&b, frames, 71);
    let mut opt = Optimizer::new(&b, OptimizerKind::Adamw, 0.0, &net.trainable_mut()).unwrap();

    let mut losses = Vec::new();
    for _ in 0..150 {
        let (loss, grads) = loss_and_grads(&b, &mut net, &x, &y);
        opt.step(&b, net.trainable_mut(), &grads, 3e-3).unwrap();
        losses.push(loss);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(first > 0.5, "an untrained net should be near chance (ln 2 ≈ 0.69), got {first}");
    assert!(last < 0.02, "loss after 150 steps {last} (from {first}): the backward chain is broken");
}
