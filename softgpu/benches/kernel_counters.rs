//! Kernel counters of dfengine's kernels on the software GPU: the tensor-core GEMM, the
//! three convolution passes at ResNet-18 layer shapes, and ReLU / residual add / AdamW on
//! 1 M elements. Every figure is an exact count from the interpreter (softgpu/src/exec/
//! counters.rs), not a timing; time is measured on a real GPU (.gpu/run.sh).
//!
//! Columns, each against its yardstick:
//! - MACs useful/issued: the op's multiply-accumulates (M·N·K; a convolution's
//!   N·P·Q·K·R·S·C with the op's own C) over 2048 per `mma.sync` issued.
//! - glob eff: bytes the lanes used over 32 × sectors, all global loads, stores and
//!   cp.async; sect/req: sectors per warp-level request (4 is a coalesced 4-byte access,
//!   16 a coalesced 16-byte one).
//! - smem wf/min: shared-memory wavefronts over the conflict-free minimum (1.00: no bank
//!   conflicts), over ld/st.shared, ldmatrix and cp.async writes.
//! - moved/min: 32 × sectors of every global request over the op's minimum bytes (each
//!   input read once, each output written once). No cache is modelled, so this is the
//!   traffic the L1/L2 sees, an upper bound on DRAM traffic.
//! - zero fill: bytes cp.async zero-filled (padding, ragged edges, stride-2 phases) over
//!   all bytes it wrote to shared memory.
//! - occupancy: sm_80 warps per SM / 64, from ptxas's registers in the report
//!   `scripts/check-ptx.py --report target/ptxas-report.txt` writes (CI runs it first), or
//!   the one `SOFTGPU_REGISTERS=<path>` names; "?" without a report.
//!
//! Shapes: batch 1, channel counts and windows of ResNet-18, spatial sizes of the 224²
//! network except the stem, whose input is cut to 56² (÷4 per side) so that its input
//! gradient runs in seconds. Tiles follow backend/cuda/tiles.rs at full size: 128×64 for
//! 64 output channels, else 128×128 (weight gradient: 64×128 for 64 channels), and the
//! weight gradient's split-K from its plan for a 132-SM device. Needs target/ptx-ref (see
//! softgpu/tests/ptx/README.md).

#[path = "../tests/exec_support/mod.rs"]
mod exec_support;

use std::time::Instant;

use exec_support::{Arg, TestMemory, pack, reference_module};
use half::f16;
use softgpu::exec::{Counters, LaunchConfig, RegisterTable, launch_with_counters};
use softgpu::ptx::Module;

/// The device the tile table plans for (H100/H200).
const SM_COUNT: usize = 132;
/// backend/cuda/conv.rs WGRAD_WORKSPACE.
const WGRAD_WORKSPACE: usize = 64 << 20;

fn pseudo_f16(n: usize, seed: u32) -> Vec<f16> {
    (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503)) >> 16;
            f16::from_f32((h % 2048) as f32 / 1024.0 - 1.0)
        })
        .collect()
}

/// One row of the table: a kernel launch (or a pass of several) and its op's yardsticks.
struct Row {
    case: String,
    counters: Counters,
    useful_macs: u64,
    min_bytes: u64,
}

struct Report {
    registers: Option<RegisterTable>,
    rows: Vec<Row>,
}

impl Report {
    fn run(
        &mut self,
        module: &Module,
        kernel: &str,
        mem: &TestMemory,
        args: &[Arg],
        cfg: LaunchConfig,
    ) -> Counters {
        let k = module.kernel(kernel).unwrap_or_else(|| panic!("no kernel {kernel}"));
        let c = launch_with_counters(k, &cfg, &pack(k, args), mem).unwrap_or_else(|e| panic!("{e}"));
        match self.registers.as_ref().and_then(|t| t.registers(kernel)) {
            Some((regs, _)) => c.with_registers(regs),
            None => c,
        }
    }

    fn push(&mut self, case: String, counters: Counters, useful_macs: u64, min_bytes: u64) {
        self.rows.push(Row { case, counters, useful_macs, min_bytes });
    }

    fn print(&self) {
        println!(
            "{:<26} {:<33} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>11}",
            "case",
            "kernel",
            "MACs u/i",
            "glob eff",
            "sect/req",
            "smem wf",
            "moved/min",
            "zero fill",
            "occupancy"
        );
        println!("{}", "-".repeat(129));
        for r in &self.rows {
            let c = &r.counters;
            let g = c.global();
            let macs = fixed(r.useful_macs as f64 / c.mma_macs() as f64, 3);
            let fill = c.cp_async_zero_fill_bytes;
            let fill = fixed(fill as f64 / (c.cp_async.bytes + fill) as f64, 2);
            let occ = match c.occupancy {
                Some(o) => format!("{:.2} {}", o.fraction(), limiter_tag(o.limiter)),
                None => "?".to_string(),
            };
            println!(
                "{:<26} {:<33} {:>8} {:>8.3} {:>8.2} {:>7} {:>9.2} {:>9} {:>11}",
                r.case,
                c.kernel,
                macs,
                g.efficiency(),
                g.sectors_per_request(),
                fixed(c.shared().conflict_ratio(), 2),
                g.sector_bytes() as f64 / r.min_bytes as f64,
                fill,
                occ
            );
        }
    }

    /// Global efficiency and sectors per request by kind, shared wavefronts by kind, and
    /// the instruction mix: where the summary's figures come from.
    fn print_detail(&self) {
        println!(
            "{:<26} {:>14} {:>14} {:>14} {:>9} {:>9} {:>10} {:>6} {:>6}",
            "case",
            "ld eff (s/r)",
            "st eff (s/r)",
            "cp.async (s/r)",
            "ldmatrix",
            "ld/st.sh",
            "warp inst",
            "int %",
            "mma %"
        );
        println!("{}", "-".repeat(118));
        let kind = |t: &softgpu::exec::counters::GlobalTraffic| {
            if t.requests == 0 {
                "-".to_string()
            } else {
                format!("{:.3} ({:.1})", t.efficiency(), t.sectors_per_request())
            }
        };
        for r in &self.rows {
            let c = &r.counters;
            let mut ldst = c.shared_load;
            ldst.add(&c.shared_store);
            let total = c.instructions.total() as f64;
            println!(
                "{:<26} {:>14} {:>14} {:>14} {:>9} {:>9} {:>9.2}M {:>6.1} {:>6.1}",
                r.case,
                kind(&c.global_load),
                kind(&c.global_store),
                kind(&c.cp_async),
                fixed(c.ldmatrix.conflict_ratio(), 2),
                fixed(ldst.conflict_ratio(), 2),
                total / 1e6,
                100.0 * c.instructions.integer as f64 / total,
                100.0 * c.mma as f64 / total
            );
        }
    }
}

/// `v` with `digits` decimals, or "-" where the ratio has no denominator.
fn fixed(v: f64, digits: usize) -> String {
    if v.is_finite() { format!("{v:.digits$}") } else { "-".to_string() }
}

fn limiter_tag(l: softgpu::exec::occupancy::Limiter) -> &'static str {
    use softgpu::exec::occupancy::Limiter;
    match l {
        Limiter::Threads => "(thr)",
        Limiter::Blocks => "(blk)",
        Limiter::Registers => "(reg)",
        Limiter::SharedMemory => "(smem)",
    }
}

/// A convolution layer: NHWC input, KRSC filter. `c` is the channel count the kernels
/// see (the stem's 3 padded to 8), `c_op` the op's own.
struct Conv {
    name: &'static str,
    shape: &'static str,
    h: usize,
    w: usize,
    c: usize,
    c_op: usize,
    k: usize,
    r: usize,
    stride: usize,
    pad: usize,
}

impl Conv {
    fn p(&self) -> usize {
        (self.h + 2 * self.pad - self.r) / self.stride + 1
    }
    fn q(&self) -> usize {
        (self.w + 2 * self.pad - self.r) / self.stride + 1
    }
    fn geom(&self) -> Vec<Arg> {
        let (s, p, q) = (self.r, self.p(), self.q());
        [1, self.h, self.w, self.c, self.k, self.r, s, p, q, self.stride, self.stride, self.pad, self.pad]
            .map(|v| Arg::I32(v as i32))
            .into()
    }
    fn macs(&self) -> u64 {
        (self.p() * self.q() * self.k * self.r * self.r * self.c_op) as u64
    }
    /// Bytes of x some window reads (a 1×1 stride-2 layer reads a quarter of x).
    fn x_bytes(&self) -> u64 {
        let touched = |size: usize, out: usize| {
            (0..size)
                .filter(|&i| {
                    (0..out).any(|o| {
                        (0..self.r).any(|t| (o * self.stride + t) as isize - self.pad as isize == i as isize)
                    })
                })
                .count()
        };
        (touched(self.h, self.p()) * touched(self.w, self.q()) * self.c_op * 2) as u64
    }
    fn w_bytes(&self) -> u64 {
        (self.k * self.r * self.r * self.c_op * 2) as u64
    }
    fn y_pixels(&self) -> u64 {
        (self.p() * self.q()) as u64
    }
}

/// A block tile of kernels/mma.cuh, as backend/cuda/tiles.rs launches it.
struct Tile {
    bm: usize,
    bn: usize,
}

impl Tile {
    fn suffix(&self) -> String {
        format!("{}x{}", self.bm, self.bn)
    }
    /// C [m, n] in BM × BN tiles, `z` deep; 32 threads per 64×32 warp tile, 3 stages of
    /// (BM + BN) rows of 32 halves.
    fn launch(&self, m: usize, n: usize, z: usize) -> LaunchConfig {
        LaunchConfig {
            grid: [n.div_ceil(self.bn) as u32, m.div_ceil(self.bm) as u32, z as u32],
            block: [(self.bm * self.bn / 2048 * 32) as u32, 1, 1],
            dynamic_shared: (3 * (self.bm + self.bn) * 32 * 2) as u32,
        }
    }
}

/// 64 output columns take the half-width tile, wider ones the 128×128 default.
fn tile_n64(n: usize) -> Tile {
    Tile { bm: 128, bn: if n <= 64 { 64 } else { 128 } }
}

/// backend/cuda/tiles.rs plan_wgrad: (splits, tiles per split).
fn wgrad_plan(m: usize, n: usize, pixels: usize, t: &Tile, blocks_per_sm: usize) -> (usize, usize) {
    let k_tiles = pixels.div_ceil(32).max(1);
    let out_tiles = m.div_ceil(t.bm) * n.div_ceil(t.bn);
    let by_occupancy = (2 * blocks_per_sm * SM_COUNT).div_ceil(out_tiles);
    let by_length = (k_tiles / 8).max(1);
    let by_memory = (WGRAD_WORKSPACE / (m * n * 4).max(1)).max(1);
    let wanted = by_occupancy.min(by_length).min(by_memory).max(1);
    let per_split = k_tiles.div_ceil(wanted);
    (k_tiles.div_ceil(per_split), per_split)
}

fn grid_1d(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid: [items.div_ceil(256).clamp(1, 4096) as u32, 1, 1],
        block: [256, 1, 1],
        dynamic_shared: 0,
    }
}

fn conv_passes(report: &mut Report, module: &Module, l: &Conv) {
    let (p, q) = (l.p(), l.q());
    let mut mem = TestMemory::new();
    let x = mem.alloc_f16(&pseudo_f16(l.h * l.w * l.c, 1));
    let w = mem.alloc_f16(&pseudo_f16(l.k * l.r * l.r * l.c, 2));
    let wt = mem.alloc_f16(&pseudo_f16(l.k * l.r * l.r * l.c, 3));
    let dy = mem.alloc_f16(&pseudo_f16(p * q * l.k, 4));
    let y = mem.alloc_f32(&vec![0.0; p * q * l.k]);
    let dx = mem.alloc_f32(&vec![0.0; l.h * l.w * l.c]);
    let macs = l.macs();

    // Forward: y [P·Q, K] = A · wᵀ.
    let t = tile_n64(l.k);
    let mut args = vec![Arg::Ptr(x), Arg::Ptr(w), Arg::Ptr(y)];
    args.extend(l.geom());
    args.extend([Arg::F32(1.0), Arg::F32(0.0), Arg::I32(0), Arg::Ptr(0), Arg::I32(0)]);
    let kernel = format!("conv2d_fwd_implicit_f16_{}", t.suffix());
    let c = report.run(module, &kernel, &mem, &args, t.launch(p * q, l.k, 1));
    let min = l.x_bytes() + l.w_bytes() + l.y_pixels() * l.k as u64 * 4;
    report.push(format!("{} fwd", l.name), c, macs, min);

    // Input gradient: dx [H·W, C] = A · w'ᵀ, one launch per stride phase over its rows
    // (backend/cuda/conv.rs `conv2d_dgrad`), the phases' counts summed.
    let t = tile_n64(l.c);
    let kernel = format!("conv2d_dgrad_implicit_f16_{}", t.suffix());
    let positions = |phase: usize, n: usize| {
        let first = (phase + l.stride - l.pad % l.stride) % l.stride;
        if first < n { (n - first).div_ceil(l.stride) } else { 0 }
    };
    let mut c: Option<Counters> = None;
    for (ph, pw) in (0..l.stride).flat_map(|ph| (0..l.stride).map(move |pw| (ph, pw))) {
        let rows = positions(ph, l.h) * positions(pw, l.w);
        if rows == 0 {
            continue;
        }
        let mut args = vec![Arg::Ptr(dy), Arg::Ptr(wt), Arg::Ptr(dx)];
        args.extend(l.geom());
        args.extend([Arg::I32(ph as i32), Arg::I32(pw as i32), Arg::F32(1.0), Arg::F32(0.0), Arg::I32(0)]);
        let phase = report.run(module, &kernel, &mem, &args, t.launch(rows, l.c, 1));
        match c.as_mut() {
            Some(c) => c.add(&phase),
            None => c = Some(phase),
        }
    }
    let c = c.expect("phase (0, 0) has rows");
    let min = l.y_pixels() * l.k as u64 * 2 + l.w_bytes() + (l.h * l.w * l.c_op * 4) as u64;
    let phases = if l.stride > 1 { format!(", {} phases", l.stride * l.stride) } else { String::new() };
    report.push(format!("{} dgrad{phases}", l.name), c, macs, min);

    // Weight gradient: dw [K, R·S·C] = dyᵀ · A, split over pixels, then the split sum.
    let (t, per_sm) = if l.k <= 64 { (Tile { bm: 64, bn: 128 }, 4) } else { (Tile { bm: 128, bn: 128 }, 2) };
    let nn = l.r * l.r * l.c;
    let (splits, per_split) = wgrad_plan(l.k, nn, p * q, &t, per_sm);
    let ws = mem.alloc_f32(&vec![0.0; splits * l.k * nn]);
    let dw = mem.alloc_f32(&vec![0.0; l.k * l.r * l.r * l.c_op]);
    let mut args = vec![Arg::Ptr(x), Arg::Ptr(dy), Arg::Ptr(ws)];
    args.extend(l.geom());
    args.extend([Arg::I32(per_split as i32), Arg::F32(1.0), Arg::F32(0.0)]);
    let kernel = format!("conv2d_wgrad_implicit_f16_{}", t.suffix());
    let mut c = report.run(module, &kernel, &mem, &args, t.launch(l.k, nn, splits));
    let krs = l.k * l.r * l.r;
    let args = [
        Arg::Ptr(ws),
        Arg::Ptr(dw),
        Arg::I32(splits as i32),
        Arg::I64(krs as i64),
        Arg::I32(l.c as i32),
        Arg::I32(l.c_op as i32),
        Arg::F32(1.0),
        Arg::F32(0.0),
    ];
    let reduce = report.run(module, "conv2d_wgrad_reduce_f32", &mem, &args, grid_1d(krs * l.c_op));
    c.add(&reduce);
    let min = l.x_bytes() + l.y_pixels() * l.k as u64 * 2 + (krs * l.c_op * 4) as u64;
    report.push(format!("{} wgrad {splits}sp+sum", l.name), c, macs, min);
}

fn gemm(report: &mut Report, module: &Module, case: &str, m: usize, n: usize, k: usize) {
    let mut mem = TestMemory::new();
    let a = mem.alloc_f16(&pseudo_f16(m * k, 5));
    let b = mem.alloc_f16(&pseudo_f16(n * k, 6));
    let c_out = mem.alloc_f32(&vec![0.0; m * n]);
    let t = tile_n64(n);
    let args = [
        Arg::I32(m as i32),
        Arg::I32(n as i32),
        Arg::I32(k as i32),
        Arg::F32(1.0),
        Arg::Ptr(a),
        Arg::I32(k as i32),
        Arg::Ptr(b),
        Arg::I32(k as i32),
        Arg::F32(0.0),
        Arg::Ptr(c_out),
        Arg::I32(n as i32),
        Arg::I32(0),
        Arg::Ptr(0),
        Arg::I32(0),
    ];
    let c = report.run(module, &format!("gemm_tc_f16_{}", t.suffix()), &mem, &args, t.launch(m, n, 1));
    report.push(case.to_string(), c, (m * n * k) as u64, ((m * k + n * k) * 2 + m * n * 4) as u64);
}

fn main() {
    let (Some(conv), Some(gemm_ptx), Some(eltwise), Some(optim)) = (
        reference_module("conv.ptx"),
        reference_module("gemm.ptx"),
        reference_module("eltwise.ptx"),
        reference_module("optim.ptx"),
    ) else {
        return;
    };
    let default_report = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ptxas-report.txt");
    let report = std::env::var_os("SOFTGPU_REGISTERS")
        .map(std::path::PathBuf::from)
        .or_else(|| default_report.exists().then_some(default_report));
    let registers = match report {
        None => None,
        Some(p) => match RegisterTable::load(&p) {
            Ok(t) => Some(t),
            Err(e) => {
                println!("SOFTGPU_REGISTERS: {e} (an absolute path: benches run in softgpu/)");
                return;
            }
        },
    };
    println!(
        "Kernel counters on the software GPU: exact counts of instructions and memory accesses, not timings."
    );
    println!(
        "Batch 1, ResNet-18 channels and windows, 224² spatial sizes (stem input cut to 56²); occupancy {}.",
        if registers.is_some() {
            "from SOFTGPU_REGISTERS (sm_80 limits)"
        } else {
            "unknown (set SOFTGPU_REGISTERS)"
        }
    );
    println!("Layers (batch 1; wgrad: split-K kernel + split sum, counted together):");
    let mut report = Report { registers, rows: Vec::new() };
    let start = Instant::now();

    gemm(&mut report, &gemm_ptx, "GEMM 1568×128×576", 1568, 128, 576);
    gemm(&mut report, &gemm_ptx, "GEMM fc 16×1×512", 16, 1, 512);
    let layers = [
        Conv {
            name: "stem",
            shape: "7×7/2, 3 (padded to 8) → 64, 56² input (224² cut ÷4)",
            h: 56,
            w: 56,
            c: 8,
            c_op: 3,
            k: 64,
            r: 7,
            stride: 2,
            pad: 3,
        },
        Conv {
            name: "layer1",
            shape: "3×3/1, 64 → 64, 56²",
            h: 56,
            w: 56,
            c: 64,
            c_op: 64,
            k: 64,
            r: 3,
            stride: 1,
            pad: 1,
        },
        Conv {
            name: "layer2.0",
            shape: "3×3/2, 64 → 128, 56² → 28²",
            h: 56,
            w: 56,
            c: 64,
            c_op: 64,
            k: 128,
            r: 3,
            stride: 2,
            pad: 1,
        },
        Conv {
            name: "layer2.0 ds",
            shape: "1×1/2 downsample, 64 → 128, 56² → 28²",
            h: 56,
            w: 56,
            c: 64,
            c_op: 64,
            k: 128,
            r: 1,
            stride: 2,
            pad: 0,
        },
        Conv {
            name: "layer3",
            shape: "3×3/1, 256 → 256, 14²",
            h: 14,
            w: 14,
            c: 256,
            c_op: 256,
            k: 256,
            r: 3,
            stride: 1,
            pad: 1,
        },
        Conv {
            name: "layer4",
            shape: "3×3/1, 512 → 512, 7²",
            h: 7,
            w: 7,
            c: 512,
            c_op: 512,
            k: 512,
            r: 3,
            stride: 1,
            pad: 1,
        },
    ];
    for l in &layers {
        conv_passes(&mut report, &conv, l);
    }

    let n = 1 << 20;
    let mut mem = TestMemory::new();
    let vals: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.25 - 2.0).collect();
    let (x, y) = (mem.alloc_f32(&vals), mem.alloc_f32(&vals));
    let args = [Arg::Ptr(x), Arg::Ptr(y), Arg::I64(n as i64)];
    let c = report.run(&eltwise, "relu_fwd_f32", &mem, &args, grid_1d(n / 4));
    report.push("relu 1M f32".into(), c, 0, 8 * n as u64);
    let c = report.run(&eltwise, "add_assign_f32", &mem, &args, grid_1d(n / 4));
    report.push("add 1M f32".into(), c, 0, 12 * n as u64);
    let (m, v) = (mem.alloc_f32(&vec![0.0; n]), mem.alloc_f32(&vec![0.0; n]));
    let args = [
        Arg::Ptr(x),
        Arg::Ptr(y),
        Arg::Ptr(m),
        Arg::Ptr(v),
        Arg::I64(n as i64),
        Arg::F32(0.9),
        Arg::F32(0.999),
        Arg::F32(1e-8),
        Arg::F32(1.0 - 1e-5),
        Arg::F32(1e-3),
        Arg::F64(0.0316),
    ];
    let c = report.run(&optim, "adamw_step_f32", &mem, &args, grid_1d(n));
    report.push("adamw 1M f32".into(), c, 0, 28 * n as u64);

    for l in &layers {
        println!("  {:<16} {}", l.name, l.shape);
    }
    println!();
    report.print();
    println!();
    report.print_detail();
    println!();
    println!("(counted in {:.1} s on the interpreter)", start.elapsed().as_secs_f64());
}
