//! Real kernels of `kernels/*.cu` (their nvcc output in target/ptx-ref) on the interpreter,
//! against plain Rust references. Sizes are small and ragged: the tile edges, the
//! grid-stride tails and the zero-filled cp.async chunks all run.

mod exec_support;

use exec_support::{Arg, TestMemory, pack, reference_module};
use half::f16;
use softgpu::exec::{LaunchConfig, launch};

fn close(got: f32, want: f64, atol: f64, rtol: f64) -> bool {
    (got as f64 - want).abs() <= atol + rtol * want.abs()
}

/// Inputs in [-1, 1) from a fixed integer hash, exactly representable in f16.
fn pseudo_f16(n: usize, seed: u32) -> Vec<f16> {
    (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503)) >> 16;
            f16::from_f32((h % 2048) as f32 / 1024.0 - 1.0)
        })
        .collect()
}

#[test]
fn relu_fwd_f32_matches_cpu() {
    let Some(module) = reference_module("eltwise.ptx") else { return };
    let k = module.kernel("relu_fwd_f32").expect("relu_fwd_f32");
    // 1001 = 250 float4s and a tail of 1, over a grid smaller than the data.
    let n = 1001;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) * 0.25).collect();
    let mut mem = TestMemory::new();
    let (px, py) = (mem.alloc_f32(&x), mem.alloc_f32(&vec![f32::NAN; n]));
    let params = pack(k, &[Arg::Ptr(px), Arg::Ptr(py), Arg::I64(n as i64)]);
    let cfg = LaunchConfig { grid: [2, 1, 1], block: [64, 1, 1], dynamic_shared: 0 };
    launch(k, &cfg, &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    let y = mem.f32s(py);
    for i in 0..n {
        assert_eq!(y[i], x[i].max(0.0), "y[{i}]");
    }
}

#[test]
fn gemm_tc_f16_128x64_matches_cpu_on_ragged_shapes() {
    let Some(module) = reference_module("gemm.ptx") else { return };
    let k = module.kernel("gemm_tc_f16_128x64").expect("gemm_tc_f16_128x64");
    // M and N ragged against the 128×64 tile, K a multiple of 8 but not of 32.
    let (m, n, kk) = (150usize, 70usize, 40usize);
    let a = pseudo_f16(m * kk, 1);
    let b = pseudo_f16(n * kk, 2);
    let mut mem = TestMemory::new();
    let (pa, pb) = (mem.alloc_f16(&a), mem.alloc_f16(&b));
    let pc = mem.alloc_f32(&vec![f32::NAN; m * n]);
    let params = pack(
        k,
        &[
            Arg::I32(m as i32),
            Arg::I32(n as i32),
            Arg::I32(kk as i32),
            Arg::F32(1.0),
            Arg::Ptr(pa),
            Arg::I32(kk as i32),
            Arg::Ptr(pb),
            Arg::I32(kk as i32),
            Arg::F32(0.0),
            Arg::Ptr(pc),
            Arg::I32(n as i32),
            Arg::I32(0),
            Arg::Ptr(0),
            Arg::I32(0),
        ],
    );
    let cfg = LaunchConfig {
        grid: [n.div_ceil(64) as u32, m.div_ceil(128) as u32, 1],
        block: [128, 1, 1],
        dynamic_shared: 36 * 1024,
    };
    launch(k, &cfg, &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    let c = mem.f32s(pc);
    let mut bad = Vec::new();
    for i in 0..m {
        for j in 0..n {
            let want: f64 = (0..kk).map(|p| a[i * kk + p].to_f64() * b[j * kk + p].to_f64()).sum();
            if !close(c[i * n + j], want, 1e-4, 1e-4) {
                bad.push((i, j, c[i * n + j], want));
            }
        }
    }
    assert!(bad.is_empty(), "{} mismatches, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
}

/// `conv2d_fwd_implicit_f16_128x64` (NHWC x, KRSC w, f32 NPQK y) against a direct
/// convolution, stride 2 and an odd spatial size so windows hang over every edge.
#[test]
fn conv2d_fwd_implicit_f16_128x64_matches_cpu() {
    let Some(module) = reference_module("conv.ptx") else { return };
    let k = module.kernel("conv2d_fwd_implicit_f16_128x64").expect("conv kernel");
    let (nb, h, w, c, kout, r, s) = (2usize, 9usize, 11usize, 16usize, 24usize, 3usize, 3usize);
    let (stride, pad) = (2usize, 1usize);
    let (p, q) = ((h + 2 * pad - r) / stride + 1, (w + 2 * pad - s) / stride + 1);
    let x = pseudo_f16(nb * h * w * c, 3);
    let wt = pseudo_f16(kout * r * s * c, 4);
    let mut mem = TestMemory::new();
    let (px, pw) = (mem.alloc_f16(&x), mem.alloc_f16(&wt));
    let m = nb * p * q;
    let py = mem.alloc_f32(&vec![f32::NAN; m * kout]);
    let geom = [nb, h, w, c, kout, r, s, p, q, stride, stride, pad, pad].map(|v| Arg::I32(v as i32));
    let mut args = vec![Arg::Ptr(px), Arg::Ptr(pw), Arg::Ptr(py)];
    args.extend(geom);
    args.extend([Arg::F32(1.0), Arg::F32(0.0), Arg::I32(0), Arg::Ptr(0), Arg::I32(0)]);
    let params = pack(k, &args);
    let cfg = LaunchConfig {
        grid: [kout.div_ceil(64) as u32, m.div_ceil(128) as u32, 1],
        block: [128, 1, 1],
        dynamic_shared: 36 * 1024,
    };
    launch(k, &cfg, &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    let y = mem.f32s(py);
    let mut bad = Vec::new();
    for n_ in 0..nb {
        for oh in 0..p {
            for ow in 0..q {
                for ko in 0..kout {
                    let mut want = 0f64;
                    for rr in 0..r {
                        for ss in 0..s {
                            let (ih, iw) = (
                                (oh * stride + rr) as isize - pad as isize,
                                (ow * stride + ss) as isize - pad as isize,
                            );
                            if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                continue;
                            }
                            for ci in 0..c {
                                let xv = x[((n_ * h + ih as usize) * w + iw as usize) * c + ci].to_f64();
                                let wv = wt[((ko * r + rr) * s + ss) * c + ci].to_f64();
                                want += xv * wv;
                            }
                        }
                    }
                    let at = ((n_ * p + oh) * q + ow) * kout + ko;
                    if !close(y[at], want, 1e-4, 1e-4) {
                        bad.push((at, y[at], want));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "{} mismatches, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
}
