//! CPU batch norm (training forward, and backward with the ReLU mask recomputed, as
//! "lean" runs it) on ResNet-18 shapes, FP32 and FP16, on each vector instruction set the
//! CPU has (`backend::cpu::simd`), beside a copy of the same bytes on the same threads:
//! the ceiling for an op that must read its inputs and write its output once. GB/s counts
//! those bytes (forward: x read, y written; backward: dy and x read, dx written) — the
//! statistics passes read them again, which is why the ops sit below the copy.
//!
//! `cargo bench --bench norm_cpu`.

#[path = "common/timing.rs"]
mod timing;

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::cpu::simd::{Isa, cap_vectors, widest};
use dfengine::backend::ops::Backend;
use dfengine::backend::params::BatchNormParams;
use dfengine::tensor::{DType, Shape};
use rayon::prelude::*;
use timing::median_seconds;

/// GB/s of copying `bytes` bytes, split over the threads as the ops split their rows.
fn copy_gbps(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes.div_ceil(rayon::current_num_threads());
    let s = median_seconds(|| {
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s))
    });
    2.0 * bytes as f64 / s / 1e9
}

fn main() {
    let b = CpuBackend::default();
    println!("CPU batch norm, {} — ms (GB/s of the bytes read and written once; / copy)", b.name());
    println!(
        "{:<26} {:<5} {:<9} {:>22} {:>22}",
        "shape [rows, C]", "dtype", "vectors", "forward", "backward (ReLU mask)"
    );
    // ResNet-18 at 112², batch 32: the stem's output, layer1's and layer3's.
    for (what, rows, c) in [
        ("stem 56² ×32", 32 * 56 * 56, 64),
        ("layer1 28² ×32", 32 * 28 * 28, 64),
        ("layer3 7² ×32", 32 * 7 * 7, 256),
    ] {
        for dtype in [DType::F32, DType::F16] {
            let n = rows * c;
            let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let x = b.tensor_as(Shape::from([rows, c]), &v, dtype).unwrap();
            let dy = b
                .tensor_as(Shape::from([rows, c]), &v.iter().rev().copied().collect::<Vec<_>>(), dtype)
                .unwrap();
            let gamma = b.tensor(Shape::from([c]), &vec![1.0; c]).unwrap();
            let beta = b.tensor(Shape::from([c]), &vec![0.1; c]).unwrap();
            let mut mean = b.zeros(Shape::from([c])).unwrap();
            let mut var = b.tensor(Shape::from([c]), &vec![1.0; c]).unwrap();
            let p = BatchNormParams { relu: true, ..BatchNormParams::default() };
            let saved = b.batch_norm_fwd_train(&x, &gamma, &beta, &mut mean, &mut var, &p).unwrap().saved;
            let bytes = n * dtype.size();
            let copy = copy_gbps(bytes);
            for isa in Isa::ALL {
                cap_vectors(isa);
                if widest() != isa {
                    continue;
                }
                let fwd = median_seconds(|| {
                    drop(b.batch_norm_fwd_train(&x, &gamma, &beta, &mut mean, &mut var, &p).unwrap())
                });
                let bwd =
                    median_seconds(|| drop(b.batch_norm_relu_bwd(&dy, &x, &gamma, &beta, &saved).unwrap()));
                let show = |s: f64, moved: usize| {
                    let gbps = (moved * bytes) as f64 / s / 1e9;
                    format!("{:.2} ({gbps:.1}; {:.2})", s * 1e3, gbps / copy)
                };
                let vectors = format!("{isa:?}");
                println!("{what:<26} {dtype:<5} {vectors:<9} {:>22} {:>22}", show(fwd, 2), show(bwd, 3));
            }
            cap_vectors(Isa::Avx512);
        }
    }
}
