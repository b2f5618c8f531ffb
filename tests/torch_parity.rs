//! The CPU backend against PyTorch: every op's forward and backward, and a whole
//! torchvision BasicBlock in training mode, on the values that
//! `tests/fixtures/make_torch_fixtures.py` recorded (torch, float32, CPU). Its docstring
//! lists the keys and layouts and says how to regenerate the fixture; CI needs no torch.
//!
//! Tolerances compare f32 with f32: the two sides differ only in summation order (and
//! the engine's f64 accumulation in batch norm and BCE), so for O(1) values a few ulps
//! of the largest partial sum is all the slack needed. Each test says what it uses.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use common::{Rng, assert_close};
use dfengine::backend::cpu::{CpuBackend, CpuTensor};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::{AdamWParams, BatchNormParams, BceParams};
use dfengine::model::arch::BlockKind;
use dfengine::model::footprint::ActivationMode;
use dfengine::model::resnet::{Block, ConvBn, ParamKind};
use dfengine::tensor::Shape;
use safetensors::{Dtype, SafeTensors};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch_ops.safetensors");

/// Values O(1), sums of at most ~400 products in f32 on both sides: summation order moves
/// the result by well under 1e-5. Measured with torch 2.9.1: the worst element of any case
/// uses 3.4% of this (conv3x3.dw, |diff| 4.3e-6 on values up to 19).
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

/// (case, stride, pad) as `CONV_CASES` in make_torch_fixtures.py; the dims come from the
/// stored tensors.
const CONV_CASES: [(&str, usize, usize); 3] = [("conv3x3", 1, 1), ("conv7x7s2", 2, 3), ("conv1x1s2", 2, 0)];

/// Window, stride, pad as `POOL` in make_torch_fixtures.py.
const POOL: (usize, usize, usize) = (3, 2, 1);

fn fixture() -> SafeTensors<'static> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}")));
    SafeTensors::deserialize(bytes).unwrap_or_else(|e| panic!("{FIXTURE}: not a safetensors file: {e}"))
}

/// The fixture tensor `name` as (dims, values).
fn load(name: &str) -> (Vec<usize>, Vec<f32>) {
    let view = fixture().tensor(name).unwrap_or_else(|e| {
        panic!(
            "{FIXTURE}: no tensor {name:?} ({e}); regenerate it with tests/fixtures/make_torch_fixtures.py"
        )
    });
    assert_eq!(view.dtype(), Dtype::F32, "{FIXTURE}: {name} is {:?}, expected F32", view.dtype());
    let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (view.shape().to_vec(), values)
}

fn tensor(name: &str) -> CpuTensor {
    let (dims, values) = load(name);
    CpuBackend::default().tensor(Shape::new(dims), &values).unwrap()
}

/// A hyper-parameter, stored as a 1-element tensor.
fn scalar(name: &str) -> f32 {
    match load(name) {
        (_, v) if v.len() == 1 => v[0],
        (dims, _) => panic!("{FIXTURE}: {name} should hold one value, has dims {dims:?}"),
    }
}

/// The fixture's keys under `prefix`, so a test can prove it compared every one.
fn keys_under(prefix: &str) -> BTreeSet<String> {
    fixture().names().into_iter().filter(|k| k.starts_with(prefix)).map(str::to_string).collect()
}

fn dims4(t: &CpuTensor) -> [usize; 4] {
    t.shape().as_array().expect("a 4-D tensor")
}

/// Compares an engine tensor with the fixture tensor `name`: dims, then values.
#[track_caller]
fn assert_matches(got: &CpuTensor, name: &str, atol: f32, rtol: f32) {
    let (dims, want) = load(name);
    assert_eq!(got.dims(), dims.as_slice(), "{name}: dims differ from the fixture's");
    assert_close(name, got.storage().f32s(), &want, atol, rtol);
}

#[test]
fn conv2d_fwd_matches_torch() {
    for (case, stride, pad) in CONV_CASES {
        let y = CpuBackend::default()
            .conv2d_fwd(&tensor(&format!("{case}.x")), &tensor(&format!("{case}.w")), [stride; 2], [pad; 2])
            .unwrap();
        assert_matches(&y, &format!("{case}.y"), ATOL, RTOL);
    }
}

#[test]
fn conv2d_dgrad_matches_torch() {
    for (case, stride, pad) in CONV_CASES {
        let x_dims = dims4(&tensor(&format!("{case}.x")));
        let dx = CpuBackend::default()
            .conv2d_dgrad(
                &tensor(&format!("{case}.dy")),
                &tensor(&format!("{case}.w")),
                x_dims,
                [stride; 2],
                [pad; 2],
            )
            .unwrap();
        assert_matches(&dx, &format!("{case}.dx"), ATOL, RTOL);
    }
}

#[test]
fn conv2d_wgrad_matches_torch() {
    for (case, stride, pad) in CONV_CASES {
        let w_dims = dims4(&tensor(&format!("{case}.w")));
        let dw = CpuBackend::default()
            .conv2d_wgrad(
                &tensor(&format!("{case}.x")),
                &tensor(&format!("{case}.dy")),
                w_dims,
                [stride; 2],
                [pad; 2],
            )
            .unwrap();
        assert_matches(&dw, &format!("{case}.dw"), ATOL, RTOL);
    }
}

/// Training-mode forward (output, running statistics) and backward of fixture case `case`.
fn check_batch_norm(case: &str, relu: bool) {
    let b = CpuBackend::default();
    let key = |k: &str| format!("{case}.{k}");
    let params = BatchNormParams { eps: scalar(&key("eps")), momentum: scalar(&key("momentum")), relu };
    let (x, gamma) = (tensor(&key("x")), tensor(&key("gamma")));
    let mut running_mean = tensor(&key("running_mean"));
    let mut running_var = tensor(&key("running_var"));
    let fwd = b
        .batch_norm_fwd_train(&x, &gamma, &tensor(&key("beta")), &mut running_mean, &mut running_var, &params)
        .unwrap();
    assert_matches(&fwd.y, &key("y"), ATOL, RTOL);
    assert_matches(&running_mean, &key("after.running_mean"), ATOL, RTOL);
    assert_matches(&running_var, &key("after.running_var"), ATOL, RTOL);

    // Backward as the engine runs it: the fused ReLU masks by the engine's own output.
    let relu_y = relu.then_some(&fwd.y);
    let grads = b.batch_norm_bwd(&tensor(&key("dy")), &x, &gamma, &fwd.saved, relu_y).unwrap();
    assert_matches(&grads.dx, &key("dx"), ATOL, RTOL);
    assert_matches(&grads.dgamma, &key("dgamma"), ATOL, RTOL);
    assert_matches(&grads.dbeta, &key("dbeta"), ATOL, RTOL);
}

#[test]
fn batch_norm_matches_torch() {
    check_batch_norm("bn", false);
}

#[test]
fn batch_norm_relu_matches_torch() {
    check_batch_norm("bn_relu", true);
}

#[test]
fn max_pool2d_matches_torch() {
    let (window, stride, pad) = POOL;
    let x = tensor("maxpool.x");
    let y = CpuBackend::default().max_pool2d_fwd(&x, window, stride, pad).unwrap();
    // A max is a copy, and dx a sum of at most four copies (overlapping windows): exact
    // up to the order of those few additions.
    assert_matches(&y, "maxpool.y", 0.0, 0.0);
    let dx = CpuBackend::default().max_pool2d_bwd(&x, &tensor("maxpool.dy"), window, stride, pad).unwrap();
    assert_matches(&dx, "maxpool.dx", 1e-6, 1e-6);
}

#[test]
fn global_avg_pool_matches_torch() {
    let x = tensor("gap.x");
    let y = CpuBackend::default().global_avg_pool_fwd(&x).unwrap();
    assert_matches(&y, "gap.y", ATOL, RTOL);
    let dx = CpuBackend::default().global_avg_pool_bwd(&tensor("gap.dy"), dims4(&x)).unwrap();
    assert_matches(&dx, "gap.dx", ATOL, RTOL);
}

#[test]
fn linear_matches_torch() {
    let (x, w) = (tensor("linear.x"), tensor("linear.w"));
    let y = CpuBackend::default().linear_fwd(&x, &w, &tensor("linear.b")).unwrap();
    assert_matches(&y, "linear.y", ATOL, RTOL);
    let grads = CpuBackend::default().linear_bwd(&tensor("linear.dy"), &x, &w).unwrap();
    assert_matches(&grads.dx, "linear.dx", ATOL, RTOL);
    assert_matches(&grads.dw, "linear.dw", ATOL, RTOL);
    assert_matches(&grads.db, "linear.db", ATOL, RTOL);
}

#[test]
fn bce_with_logits_matches_torch() {
    let params =
        BceParams { pos_weight: scalar("bce.pos_weight"), label_smoothing: scalar("bce.label_smoothing") };
    let (logits, targets) = (tensor("bce.logits"), tensor("bce.targets"));
    let loss = CpuBackend::default().bce_with_logits_fwd(&logits, &targets, &params).unwrap();
    assert_close("bce.loss", &[loss], &load("bce.loss").1, ATOL, RTOL);
    let dlogits = CpuBackend::default().bce_with_logits_bwd(&logits, &targets, &params, 1.0).unwrap();
    assert_matches(&dlogits, "bce.dlogits", ATOL, RTOL);
}

#[test]
fn adamw_matches_torch() {
    let hp = AdamWParams {
        lr: scalar("adamw.lr"),
        beta1: scalar("adamw.beta1"),
        beta2: scalar("adamw.beta2"),
        eps: scalar("adamw.eps"),
        weight_decay: scalar("adamw.weight_decay"),
    };
    let b = CpuBackend::default();
    let mut p = tensor("adamw.p0");
    let mut m = b.zeros(p.shape().clone()).unwrap();
    let mut v = b.zeros(p.shape().clone()).unwrap();
    for step in [1, 2] {
        b.adamw_step(&mut p, &tensor(&format!("adamw.g{step}")), &mut m, &mut v, &hp, step).unwrap();
        // Elementwise, no sums: parameters O(1) agree to a few ulps, which resolves the
        // lr = 1e-2 update to 1e-4 of itself.
        assert_matches(&p, &format!("adamw.p{step}"), 1e-6, 1e-6);
    }
}

/// Replaces `t` by the fixture tensor `name`, which must have the same dims.
fn overwrite(t: &mut CpuTensor, name: &str) {
    let loaded = tensor(name);
    assert_eq!(loaded.dims(), t.dims(), "{name}: dims differ from the engine's tensor");
    *t = loaded;
}

/// Loads a conv + batch norm pair from torchvision's names `block.{conv}.weight`,
/// `block.{bn}.weight` (γ), `.bias` (β), `.running_mean`, `.running_var`.
fn load_conv_bn(layer: &mut ConvBn<CpuBackend>, conv: &str, bn: &str) {
    overwrite(&mut layer.w, &format!("block.{conv}.weight"));
    overwrite(&mut layer.gamma, &format!("block.{bn}.weight"));
    overwrite(&mut layer.beta, &format!("block.{bn}.bias"));
    overwrite(&mut layer.running_mean, &format!("block.{bn}.running_mean"));
    overwrite(&mut layer.running_var, &format!("block.{bn}.running_var"));
}

#[test]
fn basic_block_matches_torch() {
    // Three convs and three batch norms deep, yet the single-op tolerance holds with a
    // tenfold margin (worst: grad.conv1.weight, |diff| 5.7e-6 on values up to 26), so
    // the block gets no extra slack.
    let b = CpuBackend::default();
    let mut block = Block::new(&b, &mut Rng::new(0), BlockKind::Basic, 4, 8, 2).unwrap();
    load_conv_bn(&mut block.convs[0], "conv1", "bn1");
    load_conv_bn(&mut block.convs[1], "conv2", "bn2");
    let down = block.down.as_mut().expect("4 → 8 channels at stride 2 needs a shortcut");
    load_conv_bn(down, "downsample.0", "downsample.1");

    // "lean": backward recomputes the block's output and the inner batch norm's.
    let x = tensor("block.x");
    let (y, cache) = block.forward_train(&b, &x, ActivationMode::Lean).unwrap();
    assert_matches(&y, "block.y", ATOL, RTOL);
    let mut compared = BTreeSet::new();
    let mut names = Vec::new();
    block.visit("", &mut |name, t, kind| names.push((name, t.clone(), kind)));
    for (name, t, _) in names.iter().filter(|(name, _, _)| name.contains("running_")) {
        let key = format!("block.after.{name}");
        assert_matches(t, &key, ATOL, RTOL);
        compared.insert(key);
    }
    assert_eq!(compared, keys_under("block.after."), "running statistics compared vs stored");

    let mut grads = Vec::new();
    let out = block.output(&b, Some(x.clone()), &cache).unwrap();
    let dx = block.backward(&b, tensor("block.dy"), cache, out, || Ok(x.clone()), &mut grads).unwrap();
    assert_matches(&dx, "block.dx", ATOL, RTOL);
    // The gradients come in visiting order, one per trainable tensor.
    let trainable = names.iter().filter(|(_, _, k)| *k == ParamKind::Trainable);
    let mut compared = BTreeSet::new();
    for ((name, _, _), g) in trainable.zip(&grads) {
        let key = format!("block.grad.{name}");
        assert_matches(g, &key, ATOL, RTOL);
        compared.insert(key);
    }
    assert_eq!(compared, keys_under("block.grad."), "gradients compared vs stored");
}
