//! GPU kernel throughput, each beside its yardstick from the same run: the
//! device-to-device copy bandwidth for the bandwidth-bound kernels (add, ReLU, AdamW on
//! 256 MiB tensors: GB/s counting every byte read and written; target ≥ 0.8 of the
//! copy), the tensor-core GEMM's TFLOP/s at 1024³, 4096³, 8192³, and every convolution
//! of ResNet-18/50 at a batch of 32 clips × 16 frames, 224² — forward, input gradient and
//! weight gradient TFLOP/s beside the GEMM of the same M/N/K (M = N·P·Q, N = K,
//! K = C·R·S), then the network's fwd + bwd convolution time summed. cuBLAS and cuDNN stand beside these through
//! `benches/torch_yardstick.py`, run on the same GPU. Prints why and exits 0 without one.
//!
//! `cargo bench --no-default-features --features cuda --bench cuda_kernels`

use cudarc::driver::PushKernelArg;
use dfengine::backend::cuda::conv::{
    Epilogue, conv2d_dgrad, conv2d_fwd, conv2d_wgrad, fwd_kernel_for, wgrad_plan,
};
use dfengine::backend::cuda::device::{CudaError, Device, grid_1d};
use dfengine::backend::cuda::gemm::{GemmNt, GemmOut, gemm_nt, kernel_for as gemm_kernel_for};
use dfengine::backend::params::Conv2dGeom;
use dfengine::config::Backbone;
use dfengine::kernels::entries;
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
    let a = random_f16(m * k);
    let b = random_f16(n * k);
    let d_a = stream.clone_htod(&a).unwrap();
    let d_b = stream.clone_htod(&b).unwrap();
    let mut d_c = stream.alloc_zeros::<f16>(m * n).unwrap();
    let g = GemmNt { m, n, k, alpha: 1.0, a: &d_a, b: &d_b, beta: 0.0, bias: None, relu: false };
    let reps = if (m * n * k) as f64 > 1e11 { 5 } else { 20 };
    let ms = median_ms(dev, reps, || gemm_nt(dev, &g, GemmOut::F16(&mut d_c)).unwrap());
    2.0 * (m * n * k) as f64 / ms / 1e9
}

/// `n` values in [-1, 1): a million random ones, repeated (random enough for timing —
/// zeros run faster than real data on some GPUs — and quick to make at 10⁹ elements).
fn random_f16(n: usize) -> Vec<f16> {
    let mut rng = Rng::new(n as u64);
    let pattern: Vec<f16> = (0..n.min(1 << 20)).map(|_| f16::from_f32(rng.uniform(-1.0, 1.0))).collect();
    (0..n).map(|i| pattern[i % pattern.len()]).collect()
}

/// Milliseconds of the forward, input-gradient and weight-gradient convolutions of `g`
/// (FP16 activations and gradients, FP32 weight gradient), each the kernels the host
/// picks (tile table, split-K, stem padding, the GEMM for pointwise layers).
fn conv_ms(dev: &Device, g: &Conv2dGeom) -> [f64; 3] {
    let stream = dev.stream();
    let (xn, wn, yn) = (g.n * g.h * g.w * g.c, g.k * g.r * g.s * g.c, g.n * g.p * g.q * g.k);
    let x = stream.clone_htod(&random_f16(xn)).unwrap();
    let w = stream.clone_htod(&random_f16(wn)).unwrap();
    let dy = stream.clone_htod(&random_f16(yn)).unwrap();
    let mut y = stream.alloc_zeros::<f16>(yn).unwrap();
    let mut dx = stream.alloc_zeros::<f16>(xn).unwrap();
    let mut dw = stream.alloc_zeros::<f32>(wn).unwrap();
    let fwd = median_ms(dev, 5, || {
        conv2d_fwd(dev, g, &x, &w, GemmOut::F16(&mut y), Epilogue::default()).unwrap();
    });
    let dgrad = median_ms(dev, 5, || conv2d_dgrad(dev, g, &dy, &w, GemmOut::F16(&mut dx), 0.0).unwrap());
    let wgrad = median_ms(dev, 5, || conv2d_wgrad(dev, g, &x, &dy, &mut dw, 0.0).unwrap());
    [fwd, dgrad, wgrad]
}

/// Add, ReLU and an AdamW step on 64 Mi floats each, in GB/s of every byte moved.
fn bandwidth_kernels(dev: &Device, copy: f64) {
    let stream = dev.stream().clone();
    let n = 64usize << 20;
    let nn = n as i64;
    let mut rng = Rng::new(9);
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let a = stream.clone_htod(&data).unwrap();
    let mut b = stream.clone_htod(&data).unwrap();
    let mut c = stream.clone_htod(&data).unwrap();
    let mut d = stream.alloc_zeros::<f32>(n).unwrap();
    let report = |name: &str, bytes_per_elem: usize, ms: f64| {
        let gbps = (bytes_per_elem * n) as f64 / ms / 1e6;
        println!("{name:<16} {gbps:>7.0} GB/s = {:.2} of the copy", gbps / copy);
    };
    let vec_cfg = grid_1d(n / 4);
    let add = dev.kernel(entries::ADD_ASSIGN_F32).unwrap();
    let ms = median_ms(dev, 10, || {
        let mut args = dev.args(&add);
        args.arg(&mut b).arg(&a).arg(&nn);
        // SAFETY: add_assign_f32's signature; both buffers hold n floats.
        unsafe { dev.launch(&add, args, vec_cfg, || format!("n = {n}")) }.unwrap();
    });
    report("add_assign_f32", 12, ms);
    let relu = dev.kernel(entries::RELU_FWD_F32).unwrap();
    let ms = median_ms(dev, 10, || {
        let mut args = dev.args(&relu);
        args.arg(&a).arg(&mut d).arg(&nn);
        // SAFETY: relu_fwd_f32's signature; both buffers hold n floats.
        unsafe { dev.launch(&relu, args, vec_cfg, || format!("n = {n}")) }.unwrap();
    });
    report("relu_fwd_f32", 8, ms);
    let adamw = dev.kernel(entries::ADAMW_STEP_F32).unwrap();
    let (beta1, beta2, eps, decay, step_size, bc2) = (0.9f32, 0.999f32, 1e-8f32, 0.9999f32, 1e-3f32, 0.5f64);
    let ms = median_ms(dev, 10, || {
        let mut args = dev.args(&adamw);
        args.arg(&mut b).arg(&a).arg(&mut c).arg(&mut d).arg(&nn);
        args.arg(&beta1).arg(&beta2).arg(&eps).arg(&decay).arg(&step_size).arg(&bc2);
        // SAFETY: adamw_step_f32's signature; all four buffers hold n floats.
        unsafe { dev.launch(&adamw, args, grid_1d(n), || format!("n = {n}")) }.unwrap();
    });
    report("adamw_step_f32", 28, ms);
}

fn main() {
    let dev = match Device::open(0, false) {
        Ok(d) => d,
        Err(CudaError::Unavailable(why)) => {
            println!("cuda_kernels: skipped, no GPU ({why})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let stream = dev.stream().clone();

    let bytes = 1usize << 30;
    let src = stream.clone_htod(&vec![7u8; bytes]).unwrap();
    let mut dst = stream.alloc_zeros::<u8>(bytes).unwrap();
    let ms = median_ms(&dev, 10, || stream.memcpy_dtod(&src, &mut dst).unwrap());
    let copy = 2.0 * bytes as f64 / ms / 1e6;
    println!("device-to-device copy: {copy:.0} GB/s (read + write)");
    drop((src, dst));
    bandwidth_kernels(&dev, copy);

    for s in [1024, 4096, 8192] {
        let kernel = gemm_kernel_for(&dev, s, s, s);
        println!("{kernel} {s}×{s}×{s}: {:.1} TFLOP/s", gemm_tflops(&dev, s, s, s));
    }
    // Batch 32 clips × 16 frames at 224², the layers of each network in order; the
    // network line sums every layer once per occurrence, as cuDNN's sum is taken.
    let images = 32 * 16;
    for backbone in [Backbone::Resnet18, Backbone::Resnet50] {
        let mut timed = std::collections::HashMap::new();
        let (mut total_ms, mut total_flop) = (0.0, 0.0);
        for l in conv_layers(&ResNetSpec::of(backbone), 224) {
            let g = Conv2dGeom::new(
                [images, l.h_in, l.w_in, l.cin],
                [l.cout, l.kernel, l.kernel, l.cin],
                [l.stride; 2],
                [l.pad(); 2],
            )
            .unwrap();
            let flop = 2.0 * (g.n * g.p * g.q * g.k * g.r * g.s * g.c) as f64;
            let ms = *timed.entry(g).or_insert_with(|| {
                let ms = conv_ms(&dev, &g);
                let (m, n, k) = (g.n * g.p * g.q, g.k, g.c * g.r * g.s);
                let gemm = if k % 8 == 0 {
                    format!("{:>6.1}", gemm_tflops(&dev, m, n, k))
                } else {
                    "     —".into()
                };
                let t = |ms: f64| flop / ms / 1e9;
                println!(
                    "{backbone:?} {:<22} M={m:>8} N={n:>5} K={k:>5}: fwd {:>6.1} dgrad {:>6.1} wgrad {:>6.1} \
                     TFLOP/s (GEMM same M/N/K {gemm}) [{}, wgrad {:?}]",
                    l.name,
                    t(ms[0]),
                    t(ms[1]),
                    t(ms[2]),
                    fwd_kernel_for(&dev, &g),
                    wgrad_plan(&dev, &g),
                );
                ms
            });
            // The stem's input gradient is never computed in training.
            let dgrad = if l.cin == 3 { 0.0 } else { ms[1] };
            total_ms += ms[0] + dgrad + ms[2];
            total_flop += flop * if l.cin == 3 { 2.0 } else { 3.0 };
        }
        println!(
            "{backbone:?} every convolution, fwd + bwd: {total_ms:.2} ms = {:.1} TFLOP/s (cuDNN: torch_yardstick.py)",
            total_flop / total_ms / 1e9
        );
    }
}
