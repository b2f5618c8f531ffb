//! The whole backward chain: a tiny ResNet (stem, max pool, a strided basic block with
//! its downsample shortcut, global average pool, temporal mean, linear) trained on a
//! fixed toy problem must drive its loss to near zero. A wrong gradient anywhere in the
//! chain stalls it.

mod common;

use common::resnet::TinyResNet;
use common::{Rng, check_gradient, cpu};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::AdamWParams;
use dfengine::tensor::Shape;

#[test]
fn tiny_resnet_gradients_reach_the_stem_intact() {
    // Finite differences of the whole network's loss with respect to the first layer's
    // weights and batch-norm scale: every op's backward lies on that path.
    let b = cpu();
    let mut rng = Rng::new(72);
    let x = b.tensor(Shape::from([4, 10, 10, 3]), &rng.vec(4 * 10 * 10 * 3, -1.0, 1.0)).unwrap();
    let y = b.tensor(Shape::from([2, 1]), &[0.0, 1.0]).unwrap();
    let mut net = TinyResNet::new(&b, 73, 4, 2);
    let (_, grads) = net.loss_and_grads(&b, &x, &y).unwrap();
    for (index, what) in [(0, "stem conv weight"), (1, "stem bn gamma"), (3, "block conv1 weight")] {
        let original = b.to_vec(net.trainable()[index]).unwrap();
        let shape = grads[index].shape().clone();
        let analytic = b.to_vec(&grads[index]).unwrap();
        let loss_at = |v: &[f32]| {
            *net.trainable()[index] = b.tensor(shape.clone(), v).unwrap();
            net.loss_and_grads(&b, &x, &y).unwrap().0 as f64
        };
        check_gradient(what, &original, &analytic, loss_at, 3e-4, 3e-2, 24);
        *net.trainable()[index] = b.tensor(shape, &original).unwrap();
    }
}

#[test]
fn tiny_resnet_fits_a_fixed_toy_problem() {
    let b = cpu();
    let (clips, frames, side) = (8, 2, 12);
    let mut rng = Rng::new(70);
    // Random frames with random labels: the net can only succeed by fitting them, which
    // takes every parameter's gradient pointing the right way.
    let x = rng.vec(clips * frames * side * side * 3, -1.0, 1.0);
    let x = b.tensor(Shape::from([clips * frames, side, side, 3]), &x).unwrap();
    let labels: Vec<f32> = (0..clips).map(|i| (i % 2) as f32).collect();
    let y = b.tensor(Shape::from([clips, 1]), &labels).unwrap();
    let mut net = TinyResNet::new(&b, 71, 8, frames);
    let hp = AdamWParams { lr: 1e-2, weight_decay: 0.0, ..AdamWParams::default() };

    let first = net.train_step(&b, &x, &y, &hp).unwrap();
    let mut last = first;
    for _ in 1..300 {
        last = net.train_step(&b, &x, &y, &hp).unwrap();
    }
    assert!(first > 0.5, "an untrained net should be near chance (ln 2 ≈ 0.69), got {first}");
    assert!(last < 0.02, "loss after 300 steps {last} (from {first}): the backward chain is broken");
}
