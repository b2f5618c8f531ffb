//! CPU conv2d throughput (forward, dgrad, wgrad) on ResNet-18 layer shapes, beside the
//! ceiling that matters for an im2col design: the same-size f32 GEMM through the same
//! `gemm` (its AVX-512 kernel where the CPU has it), split over the same threads. A conv at 0.8× its GEMM spends
//! 20% on lowering (im2col/col2im); the GEMM itself is what the CPU can do.
//!
//! `cargo bench --bench conv_cpu` (DFENGINE_BENCH_BATCH sets the batch, default 4).

#[path = "common/timing.rs"]
mod timing;

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::cpu::gemm::{MatRef, gemm};
use dfengine::backend::ops::Backend;
use dfengine::tensor::Shape;
use rayon::prelude::*;
use timing::median_seconds;

/// The GEMM ceiling: y [m, n] = a [m, k] · b [k, n], rows split in one chunk per rayon
/// thread, so that each packs b once (a finer split packs it again per chunk, which
/// made this "ceiling" lower than the conv it measures on the late layers).
fn gemm_ceiling(m: usize, n: usize, k: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let rows = m.div_ceil(rayon::current_num_threads()).max(1);
    median_seconds(|| {
        c.par_chunks_mut(rows * n).zip(a.par_chunks(rows * k)).for_each(|(cc, ac)| {
            let r = ac.len() / k;
            gemm(1.0, MatRef::row_major(ac, r, k), MatRef::row_major(&b, k, n), 0.0, cc);
        });
    })
}

fn main() {
    let batch: usize = std::env::var("DFENGINE_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let b = CpuBackend::default();
    println!("CPU conv2d, batch {batch}, {} — GFLOP/s (2·MACs / s)", b.name());
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>11} {:>9}",
        "layer (HxW, C→K, RxS/s)", "fwd", "dgrad", "wgrad", "GEMM ceil", "fwd/ceil"
    );
    // ResNet-18 at 224×224: the stem and one 3×3 conv per stage, plus a 1×1 downsample.
    let layers: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        ("stem 224, 3→64, 7x7/2", 224, 3, 64, 7, 2, 3),
        ("layer1 56, 64→64, 3x3/1", 56, 64, 64, 3, 1, 1),
        ("layer2 28, 128→128, 3x3/1", 28, 128, 128, 3, 1, 1),
        ("layer3 14, 256→256, 3x3/1", 14, 256, 256, 3, 1, 1),
        ("layer4 7, 512→512, 3x3/1", 7, 512, 512, 3, 1, 1),
        ("down3 28, 128→256, 1x1/2", 28, 128, 256, 1, 2, 0),
    ];
    for &(name, hw, c, k, rs, stride, pad) in layers {
        let x = b.tensor(Shape::from([batch, hw, hw, c]), &vec![0.1; batch * hw * hw * c]).unwrap();
        let w = b.tensor(Shape::from([k, rs, rs, c]), &vec![0.01; k * rs * rs * c]).unwrap();
        let y = b.conv2d_fwd(&x, &w, [stride; 2], [pad; 2]).unwrap();
        let dy = y.clone();
        let [_, p, q, _] = y.shape().as_array().unwrap();
        let flops = 2.0 * (batch * p * q * k * rs * rs * c) as f64;
        let gflops = |secs: f64| flops / secs / 1e9;
        let fwd = gflops(median_seconds(|| drop(b.conv2d_fwd(&x, &w, [stride; 2], [pad; 2]).unwrap())));
        let dgrad = gflops(median_seconds(|| {
            drop(b.conv2d_dgrad(&dy, &w, [batch, hw, hw, c], [stride; 2], [pad; 2]).unwrap())
        }));
        let wgrad = gflops(median_seconds(|| {
            drop(b.conv2d_wgrad(&x, &dy, [k, rs, rs, c], [stride; 2], [pad; 2]).unwrap())
        }));
        let ceil = gflops(gemm_ceiling(batch * p * q, k, rs * rs * c));
        println!("{name:<28} {fwd:>9.1} {dgrad:>9.1} {wgrad:>9.1} {ceil:>11.1} {:>9.2}", fwd / ceil);
    }
}
