//! The initial weights the PyTorch fixture scripts give a state dict
//! (tests/fixtures/make_torchvision_resnet18.py, which make_torch_run.py imports), from a
//! formula both sides compute, so that the fixtures need not store them.

use dfengine::model::weights::HostTensor;
use dfengine::rng::Rng;

/// The scripts' `pattern`: uniform in [-1, 1) from SplitMix64 of (index + 1) << 32 | j.
pub fn pattern(index: i64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|j| {
            let z = Rng::new((((index + 1) as u64) << 32) + j as u64).next_u64();
            2.0 * ((z >> 11) as f64 / (1u64 << 53) as f64) - 1.0
        })
        .collect()
}

/// The scripts' `value`: the initial value of state-dict tensor `name`, the `index`-th,
/// in torch's layout.
pub fn value(name: &str, index: usize, dims: &[usize]) -> HostTensor {
    let n: usize = dims.iter().product();
    let p = pattern(index as i64, n);
    let data: Vec<f64> = if name.ends_with("running_var") {
        p.iter().map(|v| 1.0 + 0.5 * v * v).collect()
    } else if name.ends_with("running_mean") || name.ends_with(".bias") {
        p.iter().map(|v| 0.1 * v).collect()
    } else if name.contains(".bn") || name.starts_with("bn") || name.contains("downsample.1") {
        p.iter().map(|v| 0.8 + 0.1 * v).collect()
    } else {
        let fan_in = n / dims[0];
        p.iter().map(|v| (2.0 / fan_in as f64).sqrt() * 3f64.sqrt() * v).collect()
    };
    HostTensor { dims: dims.to_vec(), data: data.into_iter().map(|v| v as f32).collect() }
}
