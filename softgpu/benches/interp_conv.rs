//! Interpreter speed on the yardstick: `conv2d_fwd_implicit_f16_128x64` on
//! ResNet-18 layer1 (N = 2, 56×56×64 → 64, 3×3, stride 1, pad 1: grid 1×49, 128 threads),
//! target ≤ 1 s on 2 cores. Prints wall time and lane-instructions per second; needs
//! target/ptx-ref/conv.ptx (see softgpu/tests/ptx/README.md).

#[path = "../tests/exec_support/mod.rs"]
mod exec_support;

use std::time::Instant;

use exec_support::{Arg, TestMemory, pack, reference_module};
use half::f16;
use softgpu::exec::{LaunchConfig, launch_with_stats};

const TARGET_SECONDS: f64 = 1.0;

fn main() {
    let Some(module) = reference_module("conv.ptx") else { return };
    let Some(k) = module.kernel("conv2d_fwd_implicit_f16_128x64") else {
        println!("conv.ptx has no conv2d_fwd_implicit_f16_128x64");
        return;
    };
    let (n, h, w, c, kout, r, s) = (2usize, 56usize, 56usize, 64usize, 64usize, 3usize, 3usize);
    let (p, q) = (56usize, 56usize);
    let x: Vec<f16> = (0..n * h * w * c).map(|i| f16::from_f32((i % 13) as f32 * 0.125 - 0.75)).collect();
    let wt: Vec<f16> =
        (0..kout * r * s * c).map(|i| f16::from_f32((i % 7) as f32 * 0.0625 - 0.1875)).collect();
    let mut mem = TestMemory::new();
    let (px, pw) = (mem.alloc_f16(&x), mem.alloc_f16(&wt));
    let m = n * p * q;
    let py = mem.alloc_f32(&vec![0.0; m * kout]);
    let mut args = vec![Arg::Ptr(px), Arg::Ptr(pw), Arg::Ptr(py)];
    args.extend([n, h, w, c, kout, r, s, p, q, 1, 1, 1, 1].map(|v| Arg::I32(v as i32)));
    args.extend([Arg::F32(1.0), Arg::F32(0.0), Arg::I32(0), Arg::Ptr(0), Arg::I32(0)]);
    let params = pack(k, &args);
    let cfg =
        LaunchConfig { grid: [1, m.div_ceil(128) as u32, 1], block: [128, 1, 1], dynamic_shared: 36 * 1024 };
    let cores = std::thread::available_parallelism().map_or(1, |v| v.get());
    for run in 0..3 {
        let start = Instant::now();
        let stats = match launch_with_stats(k, &cfg, &params, &mem) {
            Ok(s) => s,
            Err(e) => {
                println!("launch failed: {e}");
                return;
            }
        };
        let secs = start.elapsed().as_secs_f64();
        println!(
            "run {run}: {:.3} s on {cores} cores, {:.1} M lane-instructions, {:.0} M lane-instructions/s \
             (target: ≤ {TARGET_SECONDS} s on 2 cores)",
            secs,
            stats.lane_instructions as f64 / 1e6,
            stats.lane_instructions as f64 / secs / 1e6
        );
    }
}
