//! A torchvision ResNet-18 state dict, saved as safetensors, loads as `pretrained` and
//! gives torchvision's logits. The fixture (tests/fixtures/make_torchvision_resnet18.py)
//! holds torchvision's key list and its output; the weights and the input are drawn here
//! from the same formula the script used, so the 44 MB of weights need not be stored.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use common::torch_init::{pattern, value};

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::ops::Backend;
use dfengine::config::Backbone;
use dfengine::model::arch::ResNetSpec;
use dfengine::model::resnet::ResNet;
use dfengine::model::weights::{HostTensor, TensorFile, load_pretrained, write_safetensors};
use dfengine::tensor::Shape;

fn fixture() -> TensorFile {
    TensorFile::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchvision_resnet18.safetensors"),
    )
    .unwrap()
}

/// torchvision's state dict as the script built it, with the head reshaped by `head`.
fn state_dict(f: &TensorFile, head: Option<usize>) -> BTreeMap<String, HostTensor> {
    let keys: Vec<(String, Vec<usize>)> = serde_json::from_str(f.meta("keys").unwrap()).unwrap();
    keys.iter()
        .enumerate()
        .map(|(i, (name, dims))| {
            let dims = match (head, name.as_str()) {
                (Some(classes), "fc.weight") => vec![classes, 512],
                (Some(classes), "fc.bias") => vec![classes],
                _ => dims.clone(),
            };
            (name.clone(), value(name, i, &dims))
        })
        .collect()
}

fn load(dict: &BTreeMap<String, HostTensor>, frames: usize) -> (CpuBackend, ResNet<CpuBackend>, usize, bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.safetensors");
    write_safetensors(&path, dict, HashMap::new()).unwrap();
    let b = CpuBackend::default();
    let mut net = ResNet::new(&b, ResNetSpec::of(Backbone::Resnet18), frames, 1).unwrap();
    let report = load_pretrained(&b, &mut net, &TensorFile::read(&path).unwrap()).unwrap();
    assert!(report.unused.is_empty(), "unused tensors: {:?}", report.unused);
    (b, net, report.loaded, report.head_reinitialised)
}

#[test]
fn torchvision_resnet18_loads_and_gives_its_logits() {
    let f = fixture();
    let dict = state_dict(&f, None);
    let input: HashMap<String, usize> = serde_json::from_str(f.meta("input").unwrap()).unwrap();
    let (clips, frames, side) = (input["clips"], input["frames"], input["side"]);
    let (b, net, loaded, reinit) = load(&dict, frames);
    assert_eq!((loaded, reinit), (dict.len(), false), "every tensor of the file loads");

    // The script's input is NCHW; the engine's NHWC.
    let images = clips * frames;
    let nchw = pattern(-1, images * 3 * side * side);
    let mut nhwc = vec![0.0f32; nchw.len()];
    for n in 0..images {
        for c in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    nhwc[((n * side + y) * side + x) * 3 + c] =
                        nchw[((n * 3 + c) * side + y) * side + x] as f32;
                }
            }
        }
    }
    let x = b.tensor(Shape::from([images, side, side, 3]), &nhwc).unwrap();
    let logits = net.forward_eval(&b, &x).unwrap();
    let got = b.to_vec(&logits.frames).unwrap();
    let want = &f.tensors["frame_logits"].data;
    // Eighteen layers of f32 sums in another order than PyTorch's: the worst element sat
    // at 1e-6 when this was written, against logits near 1.6 (a hundredfold margin).
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "frame {i}: dfengine {g}, torchvision {w}");
    }
    let clip = b.to_vec(&logits.clips).unwrap();
    for c in 0..clips {
        let mean = want[c * frames..(c + 1) * frames].iter().sum::<f32>() / frames as f32;
        assert!((clip[c] - mean).abs() <= 1e-4, "clip {c}: {} vs mean of frames {mean}", clip[c]);
    }
}

#[test]
fn an_imagenet_head_is_reinitialised_and_the_backbone_still_loads() {
    let dict = state_dict(&fixture(), Some(1000));
    let (_, _, loaded, reinit) = load(&dict, 1);
    assert!(reinit, "a 1000-way fc cannot be the clip head");
    assert_eq!(loaded, dict.len() - 2, "everything but fc.weight and fc.bias");
}
