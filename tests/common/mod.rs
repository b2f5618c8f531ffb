//! Helpers shared by the op tests: one test body per device (`test_device!`), the GPU
//! that the `_cuda` tests run on (or the reason they skip), seeded random data, float
//! comparison that prints the first mismatches, and a finite-difference gradient check.
//!
//! Every GPU test's name ends in `_cuda` and opens its device through [`gpu_info`] (via
//! [`gpu_device`] or [`cuda_backend`]): without a GPU it prints `skipped: no GPU (why)`
//! and returns, or fails when `DFENGINE_REQUIRE_GPU=1` asks for a GPU. So
//! `cargo test --release _cuda` runs exactly the GPU tests and its summary counts them.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

pub mod torch_init;

use dfengine::backend::cpu::CpuBackend;
use dfengine::backend::ops::Backend;
use dfengine::tensor::{Shape, Tensor};

pub use dfengine::rng::Rng;

/// A tensor of backend `B`.
pub type BTensor<B> = Tensor<<B as Backend>::Storage>;

/// Instantiates the generic test body `$body(&backend, &DeviceUnderTest)` once per
/// device: `$cpu` on the CPU backend and, with the `cuda` feature, `$cuda` on the CUDA
/// backend of device 0 (skipping, or failing under `DFENGINE_REQUIRE_GPU=1`, without
/// one). `test_device!(relu_matches_definition, relu_matches_definition_cpu,
/// relu_matches_definition_cuda);`
#[allow(unused_macros)] // the test binaries without per-device bodies
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&$crate::common::cpu(), &$crate::common::DeviceUnderTest::CPU);
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            let Some((backend, dut)) = $crate::common::cuda_backend() else { return };
            $body(&backend, &dut);
        }
    };
}

/// `atol + rtol·|want|`, the comparison of [`assert_close`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

/// What a per-device test body needs to know about the device beyond the `Backend`
/// trait: how its arithmetic differs from the CPU reference's, and whether it is the
/// (slow) software GPU.
#[derive(Debug, Clone, Copy)]
pub struct DeviceUnderTest {
    /// Matrix products (GEMM, linear, convolution): the tolerance floor against an
    /// f64 definition on the test's FP32 inputs. Zero where the products are FP32 (the
    /// CPU, whose checks then keep their own tolerances); on CUDA the inputs are rounded
    /// to FP16 for the tensor cores (2⁻¹¹ relative each) and accumulated in FP32.
    pub products: Tol,
    /// The tolerance floor of finite-difference checks through a product. Central
    /// differences of ±1e-2 on FP16-rounded inputs move by the rounding of x ± eps
    /// (≤ 7·10⁻⁴, i.e. ≤ 4 % of 2·eps) on CUDA; 0 on the CPU.
    pub products_fd: f32,
    /// Adjoint identities ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ of a product: an extra tolerance relative
    /// to ‖A x‖·‖y‖ (Cauchy–Schwarz bounds the FP16 rounding of either side by 2⁻¹¹ of
    /// it); 0 on the CPU.
    pub adjoint: f32,
    /// The convolution gradients (dgrad, wgrad) need the output channels K in runs of
    /// this many: 8 on CUDA (the kernels' 16-byte rows of dy), 1 on the CPU. Bodies check
    /// that other K are refused with that reason.
    pub conv_grad_channels: usize,
    /// `exp` is a fast approximation that overflows to inf past ±88 and flushes
    /// subnormal results (CUDA's `__expf`): σ(−100) is 0 there, not 3.7·10⁻⁴⁴.
    pub fast_exp: bool,
    /// The PTX interpreter (device name containing "softgpu"), ~1000× slower than a
    /// card: tests that size themselves by the device take their small shapes there.
    pub software_gpu: bool,
}

impl DeviceUnderTest {
    pub const CPU: DeviceUnderTest = DeviceUnderTest {
        products: Tol { atol: 0.0, rtol: 0.0 },
        products_fd: 0.0,
        adjoint: 0.0,
        conv_grad_channels: 1,
        fast_exp: false,
        software_gpu: false,
    };

    /// The CUDA backend's figures (src/backend/cuda/backend.rs: FP16 tensor-core inputs,
    /// FP32 accumulation and output; `__expf` in the kernels).
    pub const CUDA: DeviceUnderTest = DeviceUnderTest {
        products: Tol { atol: 2e-2, rtol: 1e-2 },
        products_fd: 5e-2,
        adjoint: 2e-3,
        conv_grad_channels: 8,
        fast_exp: true,
        software_gpu: false,
    };

    /// The tolerance for a product check whose CPU tolerance is `atol`, `rtol`: those on
    /// the CPU, no tighter than [`DeviceUnderTest::products`] elsewhere.
    pub fn product_tol(&self, atol: f32, rtol: f32) -> Tol {
        Tol { atol: atol.max(self.products.atol), rtol: rtol.max(self.products.rtol) }
    }

    /// The finite-difference tolerance for a product whose CPU tolerance is `tol`.
    pub fn product_fd_tol(&self, tol: f32) -> f32 {
        tol.max(self.products_fd)
    }
}

/// Whether `DFENGINE_REQUIRE_GPU=1` asks that GPU tests fail rather than skip.
pub fn gpu_required() -> bool {
    std::env::var("DFENGINE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Device 0 as the probe sees it, or `None` after printing `skipped: no GPU (why)`;
/// under `DFENGINE_REQUIRE_GPU=1` a missing GPU panics with the reason instead. Every GPU
/// test goes through here.
pub fn gpu_info() -> Option<dfengine::backend::cuda::GpuInfo> {
    use dfengine::backend::cuda::{GpuProbe, probe};
    let why = match probe() {
        GpuProbe::Ready(devices) => match devices.into_iter().next() {
            Some(info) => return Some(info),
            None => "the driver lists no device".to_string(),
        },
        GpuProbe::Unavailable(why) => why,
    };
    assert!(!gpu_required(), "DFENGINE_REQUIRE_GPU=1 but no GPU: {why}");
    eprintln!("skipped: no GPU ({why})");
    None
}

/// Device 0 for the kernel parity tests (through the host functions of
/// `dfengine::backend::cuda::*`), or `None` as [`gpu_info`].
#[cfg(feature = "cuda")]
pub fn gpu_device() -> Option<dfengine::backend::cuda::device::Device> {
    let info = gpu_info()?;
    Some(dfengine::backend::cuda::device::Device::open(0, false).unwrap_or_else(|e| panic!("{info}: {e}")))
}

/// The CUDA backend on device 0 with the device's facts, or `None` as [`gpu_info`].
#[cfg(feature = "cuda")]
pub fn cuda_backend() -> Option<(dfengine::backend::cuda::backend::CudaBackend, DeviceUnderTest)> {
    cuda_backend_with(None, false)
}

/// [`cuda_backend`] with its pool capped at `budget` bytes, and uploads staged through
/// page-locked memory on a copy stream when `pinned`.
#[cfg(feature = "cuda")]
pub fn cuda_backend_with(
    budget: Option<usize>,
    pinned: bool,
) -> Option<(dfengine::backend::cuda::backend::CudaBackend, DeviceUnderTest)> {
    use dfengine::backend::cuda::backend::CudaBackend;
    let info = gpu_info()?;
    let backend = CudaBackend::open(0, budget, pinned).unwrap_or_else(|e| panic!("{info}: {e}"));
    let software_gpu = is_software_gpu(backend.device());
    Some((backend, DeviceUnderTest { software_gpu, ..DeviceUnderTest::CUDA }))
}

/// Whether `dev` is the software GPU (the PTX interpreter of softgpu/, which names
/// itself "dfengine softgpu"): GPU tests with large shapes take smaller ones there.
#[cfg(feature = "cuda")]
pub fn is_software_gpu(dev: &dfengine::backend::cuda::device::Device) -> bool {
    dev.context().name().is_ok_and(|name| name.contains("softgpu"))
}

/// `d` on the host, after the stream's work (the kernel under test) has finished.
#[cfg(feature = "cuda")]
pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
    dev: &dfengine::backend::cuda::device::Device,
    d: &cudarc::driver::CudaSlice<T>,
) -> Vec<T> {
    dev.synchronize("the kernel under test").unwrap();
    dev.download(d).unwrap()
}

pub fn cpu() -> CpuBackend {
    CpuBackend::default()
}

/// A tensor of `data` on backend `b`.
pub fn tensor<B: Backend>(b: &B, shape: impl Into<Shape>, data: &[f32]) -> BTensor<B> {
    b.tensor(shape.into(), data).unwrap()
}

/// Uniform values in [−scale, scale] on backend `b`.
pub fn randn<B: Backend>(b: &B, rng: &mut Rng, shape: impl Into<Shape>, scale: f32) -> BTensor<B> {
    let shape = shape.into();
    let data = rng.vec(shape.numel(), -scale, scale);
    b.tensor(shape, &data).unwrap()
}

/// The elements of `t`, copied to the host.
pub fn host<B: Backend>(b: &B, t: &BTensor<B>) -> Vec<f32> {
    b.to_vec(t).unwrap()
}

/// Asserts |got − want| ≤ atol + rtol·|want| elementwise; on failure prints the count and
/// the first mismatches with their indices.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let bad: Vec<(usize, f32, f32)> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| {
            // Written so that a NaN on either side counts as a mismatch.
            let within = (*g - *w).abs() <= atol + rtol * w.abs();
            !within
        })
        .map(|(i, (g, w))| (i, *g, *w))
        .collect();
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(8)
            .map(|(i, g, w)| format!("[{i}] got {g:.7} want {w:.7} (diff {:.2e})", (g - w).abs()))
            .collect();
        panic!(
            "{what}: {} of {} elements differ beyond atol {atol:e} + rtol {rtol:e}·|want|:\n  {}",
            bad.len(),
            got.len(),
            first.join("\n  ")
        );
    }
}

/// Checks an analytic gradient against central differences of a scalar function.
/// Up to `samples` coordinates of `x` are perturbed by ±eps (in f64 arithmetic on the f32
/// forward), so the check costs 2·samples forward passes.
#[track_caller]
pub fn check_gradient(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    mut f: impl FnMut(&[f32]) -> f64,
    eps: f32,
    tol: f32,
    samples: usize,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length differs from input");
    let mut rng = Rng::new(0xF00D ^ x.len() as u64);
    let coords: Vec<usize> = if x.len() <= samples {
        (0..x.len()).collect()
    } else {
        (0..samples).map(|_| rng.below(x.len())).collect()
    };
    let mut numeric = Vec::with_capacity(coords.len());
    let mut picked = Vec::with_capacity(coords.len());
    let mut probe = x.to_vec();
    for &i in &coords {
        probe[i] = x[i] + eps;
        let up = f(&probe);
        probe[i] = x[i] - eps;
        let down = f(&probe);
        probe[i] = x[i];
        numeric.push(((up - down) / (2.0 * eps as f64)) as f32);
        picked.push(analytic[i]);
    }
    let scale = numeric.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let bad: Vec<String> = coords
        .iter()
        .zip(picked.iter().zip(&numeric))
        .filter(|(_, (a, n))| (*a - *n).abs() > tol * scale)
        .take(8)
        .map(|(i, (a, n))| format!("[{i}] analytic {a:.6} numeric {n:.6}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: gradient differs from finite differences (tol {tol}·{scale:.3}):\n  {}",
        bad.join("\n  ")
    );
}

/// Σ y·r: a scalar whose gradient with respect to y is r, the usual way to turn a
/// backward op into something finite differences can check.
pub fn dot(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}
