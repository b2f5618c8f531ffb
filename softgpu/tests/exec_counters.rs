//! The per-launch counters on kernels whose counts are known by hand (tests/ptx/counters.cu):
//! sectors per global request, shared-memory wavefronts of conflicting and conflict-free
//! st.shared / ld.shared and ldmatrix layouts, and the tensor-core work of one mma.sync.

mod exec_support;

use exec_support::{Arg, TestMemory, pack};
use softgpu::exec::counters::MACS_PER_MMA;
use softgpu::exec::{Counters, LaunchConfig, launch_with_counters};
use softgpu::ptx::{self, Module};

fn module() -> Module {
    ptx::parse(include_str!("ptx/counters.ptx")).unwrap_or_else(|e| panic!("tests/ptx/counters.ptx: {e}"))
}

fn run(name: &str, mem: &TestMemory, args: &[Arg], cfg: LaunchConfig) -> Counters {
    let module = module();
    let k = module.kernel(name).unwrap_or_else(|| panic!("{name} in counters.ptx"));
    launch_with_counters(k, &cfg, &pack(k, args), mem).unwrap_or_else(|e| panic!("{e}"))
}

fn one_warp(dynamic_shared: u32) -> LaunchConfig {
    LaunchConfig { grid: [1, 1, 1], block: [32, 1, 1], dynamic_shared }
}

/// y[i] = x[i·stride] over `warps` full warps; returns the counters and checks the copy.
fn strided_copy(stride: usize, warps: usize) -> Counters {
    let n = 32 * warps;
    let x: Vec<f32> = (0..(n * stride).max(1)).map(|i| i as f32).collect();
    let mut mem = TestMemory::new();
    let (px, py) = (mem.alloc_f32(&x), mem.alloc_f32(&vec![f32::NAN; n]));
    let args = [Arg::Ptr(px), Arg::Ptr(py), Arg::I32(n as i32), Arg::I32(stride as i32)];
    let cfg = LaunchConfig { grid: [(n / 128) as u32, 1, 1], block: [128, 1, 1], dynamic_shared: 0 };
    let c = run("copy_strided_f32", &mem, &args, cfg);
    let y = mem.f32s(py);
    assert!((0..n).all(|i| y[i] == (i * stride) as f32), "the copy itself");
    c
}

#[test]
fn coalesced_copy_moves_4_sectors_per_128_byte_request() {
    let c = strided_copy(1, 32);
    for (what, t) in [("load", c.global_load), ("store", c.global_store)] {
        assert_eq!((t.requests, t.sectors, t.bytes), (32, 128, 4096), "{what}");
        assert_eq!(t.sectors_per_request(), 4.0, "{what}");
        assert_eq!(t.efficiency(), 1.0, "{what}");
    }
    assert_eq!((c.mma, c.bar_sync, c.cp_async.requests), (0, 0, 0));
    assert_eq!(c.shared().requests, 0);
    assert_eq!(c.grid, [8, 1, 1]);
}

#[test]
fn stride_32_copy_touches_a_sector_per_lane() {
    let c = strided_copy(32, 8);
    let t = c.global_load;
    assert_eq!((t.requests, t.sectors, t.bytes), (8, 256, 1024));
    assert_eq!(t.sectors_per_request(), 32.0);
    assert_eq!(t.efficiency(), 0.125);
    assert_eq!(c.global_store.sectors_per_request(), 4.0, "the stores stay coalesced");
}

#[test]
fn footprint_counts_each_sector_once_per_launch() {
    let c = strided_copy(1, 32);
    assert_eq!((c.footprint.read_sectors, c.footprint.written_sectors), (128, 128));
    assert_eq!(c.footprint.bytes(), 8192, "4 KiB read, 4 KiB written");
    let c = strided_copy(32, 8);
    assert_eq!(c.footprint.read_sectors, 256, "every strided lane its own sector");
    // Every lane of every warp reads x[0]: 32 requests of one sector each, one sector in all.
    let c = strided_copy(0, 32);
    assert_eq!((c.global_load.sectors, c.footprint.read_sectors), (32, 1));
    assert_eq!(c.footprint.written_sectors, 128);
}

fn shared_stride(stride: usize) -> Counters {
    let mut mem = TestMemory::new();
    let out = mem.alloc_f32(&[f32::NAN; 32]);
    let c = run(
        "shared_stride_f32",
        &mem,
        &[Arg::Ptr(out), Arg::I32(stride as i32)],
        one_warp(32 * stride as u32 * 4),
    );
    let y = mem.f32s(out);
    assert!((0..32).all(|t| y[t] == ((t + 1) % 32) as f32), "the read-back itself");
    c
}

#[test]
fn shared_stride_32_words_is_a_32_way_conflict() {
    let c = shared_stride(32);
    for (what, t) in [("st.shared", c.shared_store), ("ld.shared", c.shared_load)] {
        assert_eq!((t.requests, t.wavefronts, t.minimum), (1, 32, 1), "{what}");
        assert_eq!(t.conflict_ratio(), 32.0, "{what}");
    }
    assert_eq!(c.bar_sync, 1);
}

#[test]
fn shared_stride_1_and_33_are_conflict_free() {
    for stride in [1, 33] {
        let c = shared_stride(stride);
        for (what, t) in [("st.shared", c.shared_store), ("ld.shared", c.shared_load)] {
            assert_eq!((t.requests, t.wavefronts, t.minimum), (1, 1, 1), "{what}, stride {stride}");
        }
    }
}

/// ldmatrix.x4 over 8 rows `row_bytes` apart with the given swizzle (counters.cu).
fn ldmatrix(row_bytes: usize, swizzle: i32) -> Counters {
    let mut mem = TestMemory::new();
    let out = mem.alloc_i32(&[0; 128]);
    let args = [Arg::Ptr(out), Arg::I32(row_bytes as i32), Arg::I32(swizzle)];
    let c = run("ldmatrix_layout", &mem, &args, one_warp(8 * row_bytes as u32));
    // Lane l's register j holds the b16 pair at row l/4, columns 2(l%4), 2(l%4)+1 of
    // matrix j; the fill wrote word i = i, so that pair is the word of its address.
    let got = mem.i32s(out);
    for lane in 0..32 {
        for j in 0..4 {
            let row = lane / 4;
            let mut chunk = j;
            if swizzle == 1 {
                chunk ^= (row >> 1) & 3;
            }
            if swizzle == 2 {
                chunk ^= row & 7;
            }
            let word = (row * row_bytes + chunk * 16) / 4 + lane % 4;
            assert_eq!(got[4 * lane + j], word as i32, "lane {lane} register {j}");
        }
    }
    c
}

#[test]
fn ldmatrix_wavefronts_of_conflicting_and_swizzled_layouts() {
    // 128-byte rows, no swizzle: each matrix's 8 rows share banks 4j..4j+3 (8-way).
    let t = ldmatrix(128, 0).ldmatrix;
    assert_eq!((t.requests, t.wavefronts, t.minimum), (1, 32, 4));
    // 64-byte rows, no swizzle: rows 2 apart share banks (4-way).
    let t = ldmatrix(64, 0).ldmatrix;
    assert_eq!((t.wavefronts, t.minimum), (16, 4));
    // The two swizzles of kernels/mma.cuh: one wavefront per matrix.
    for (row_bytes, swizzle) in [(64, 1), (128, 2)] {
        let t = ldmatrix(row_bytes, swizzle).ldmatrix;
        assert_eq!((t.wavefronts, t.minimum), (4, 4), "{row_bytes}-byte rows, swizzle {swizzle}");
        assert_eq!(t.conflict_ratio(), 1.0);
    }
}

#[test]
fn one_mma_tile_is_2048_macs() {
    let mut mem = TestMemory::new();
    let a = mem.alloc_i32(&[0x3c00_3c00; 128]); // f16 pairs of 1.0
    let b = mem.alloc_i32(&[0x3c00_3c00; 64]);
    let d = mem.alloc_f32(&[f32::NAN; 128]);
    let c = run("mma_tile", &mem, &[Arg::Ptr(a), Arg::Ptr(b), Arg::Ptr(d)], one_warp(0));
    assert!(mem.f32s(d).iter().all(|&v| v == 16.0), "Σ over k of 1·1");
    assert_eq!((c.mma, c.mma_macs()), (1, MACS_PER_MMA));
    assert_eq!(MACS_PER_MMA, 16 * 8 * 16);
    assert_eq!(c.instructions.collective, 1, "the mma is the only collective");
    // A fragment: 4 loads of 4 bytes at 16-byte lane stride (512 bytes: 16 sectors each);
    // B: 2 loads at 8-byte stride (256 bytes: 8 sectors each).
    let t = c.global_load;
    assert_eq!((t.requests, t.sectors, t.bytes), (6, 4 * 16 + 2 * 8, 6 * 128));
    // Occupancy only from registers given, never guessed.
    assert_eq!(c.occupancy, None);
    let with = c.clone().with_registers(40);
    let occ = with.occupancy.expect("registers given");
    assert_eq!((occ.blocks_per_sm, occ.warps_per_sm), (32, 32), "32-thread blocks: the 32-block cap");
    let json = with.to_json();
    assert!(json.starts_with(r#"{"kernel":"mma_tile","grid":[1, 1, 1],"block":[32, 1, 1]"#), "{json}");
    assert!(json.contains(r#""mma":1,"mma_macs":2048"#) && json.contains(r#""blocks_per_sm":32"#), "{json}");
    assert!(c.to_json().ends_with(r#""occupancy":null}"#));
}
