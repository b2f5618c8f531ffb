//! GPU GEMM throughput: `gemm_tc_f16` in TFLOP/s at 1024³, 4096³, 8192³ and at the GEMM
//! shapes of ResNet-18/50's convolutions (implicit GEMM: M = N·P·Q, N = K, K = C·R·S, at
//! a batch of 32 clips × 16 frames, 224²), with the device-to-device copy bandwidth of
//! the same run as the memory yardstick. cuBLAS and cuDNN stand beside these through
//! `benches/torch_yardstick.py`, run on the same GPU. Prints why and exits 0 without one.
//!
//! `cargo bench --no-default-features --features cuda --bench gemm_cuda`

use dfengine::backend::cuda::device::{CudaError, Device};
use dfengine::backend::cuda::gemm::{GemmNt, GemmOut, gemm_nt};
use dfengine::config::Backbone;
use dfengine::model::arch::{ResNetSpec, conv_layers};
use dfengine::rng::Rng;
use half::f16;

/// Median milliseconds of `reps` timed runs of `f` after two warm-ups, by CUDA events.
fn median_ms(dev: &Device, reps: usize, mut f: impl FnMut()) -> f64 {
    let (ctx, stream) = (dev.context(), dev.stream());
    f();
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let start = ctx.new_event(flags).unwrap();
            let end = ctx.new_event(flags).unwrap();
            start.record(stream).unwrap();
            f();
            end.record(stream).unwrap();
            start.elapsed_ms(&end).unwrap() as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn gemm_tflops(dev: &Device, m: usize, n: usize, k: usize) -> f64 {
    let stream = dev.stream();
    let mut rng = Rng::new((m * 31 + n * 7 + k) as u64);
    // Random data: zeros run faster than real inputs on some GPUs.
    let a: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rng.uniform(-1.0, 1.0))).collect();
    let b: Vec<f16> = (0..n * k).map(|_| f16::from_f32(rng.uniform(-1.0, 1.0))).collect();
    let d_a = stream.clone_htod(&a).unwrap();
    let d_b = stream.clone_htod(&b).unwrap();
    let mut d_c = stream.alloc_zeros::<f16>(m * n).unwrap();
    let g = GemmNt { m, n, k, alpha: 1.0, a: &d_a, b: &d_b, beta: 0.0, bias: None, relu: false };
    let reps = if (m * n * k) as f64 > 1e11 { 5 } else { 20 };
    let ms = median_ms(dev, reps, || gemm_nt(dev, &g, GemmOut::F16(&mut d_c)).unwrap());
    2.0 * (m * n * k) as f64 / ms / 1e9
}

fn main() {
    let dev = match Device::open(0) {
        Ok(d) => d,
        Err(CudaError::Unavailable(why)) => {
            println!("gemm_cuda: skipped, no GPU ({why})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let stream = dev.stream().clone();

    let bytes = 1usize << 30;
    let src = stream.clone_htod(&vec![7u8; bytes]).unwrap();
    let mut dst = stream.alloc_zeros::<u8>(bytes).unwrap();
    let ms = median_ms(&dev, 10, || stream.memcpy_dtod(&src, &mut dst).unwrap());
    println!("device-to-device copy: {:.0} GB/s (read + write)", 2.0 * bytes as f64 / ms / 1e6);
    drop((src, dst));

    for s in [1024, 4096, 8192] {
        println!("gemm_tc_f16 {s}×{s}×{s}: {:.1} TFLOP/s", gemm_tflops(&dev, s, s, s));
    }
    let images = 32 * 16;
    for backbone in [Backbone::Resnet18, Backbone::Resnet50] {
        let mut seen = std::collections::HashSet::new();
        for l in conv_layers(&ResNetSpec::of(backbone), 224) {
            let (m, n, k) = (images * l.h_out() * l.w_out(), l.cout, l.cin * l.kernel * l.kernel);
            if k % 8 != 0 || !seen.insert((m, n, k)) {
                continue; // the stem (K = 147) takes the conv kernel's own path
            }
            let t = gemm_tflops(&dev, m, n, k);
            println!("{backbone:?} {:<22} M={m:>8} N={n:>5} K={k:>5}: {t:.1} TFLOP/s", l.name);
        }
    }
}
