//! The interpreter on small test kernels (tests/ptx/interp.cu): results against plain
//! Rust, and the checks that must fire.

mod exec_support;

use exec_support::{Arg, TestMemory, interp_module, pack};
use softgpu::exec::{Checks, LaunchConfig, launch, launch_with_checks, launch_with_stats};

fn cfg(grid: u32, block: u32, dynamic_shared: u32) -> LaunchConfig {
    LaunchConfig { grid: [grid, 1, 1], block: [block, 1, 1], dynamic_shared }
}

#[test]
fn vec_add_matches_cpu_with_a_ragged_tail() {
    let module = interp_module();
    let k = module.kernel("vec_add_f32").expect("vec_add_f32");
    let n = 1000;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..n).map(|i| 3.0 - i as f32).collect();
    let mut mem = TestMemory::new();
    let (pa, pb, pc) = (mem.alloc_f32(&a), mem.alloc_f32(&b), mem.alloc_f32(&vec![0.0; n]));
    let params = pack(k, &[Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(pc), Arg::I32(n as i32)]);
    let stats = launch_with_stats(k, &cfg(8, 128, 0), &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    let c = mem.f32s(pc);
    for i in 0..n {
        assert_eq!(c[i], a[i] + b[i], "c[{i}]");
    }
    assert!(stats.lane_instructions > 0);
}

#[test]
fn divergent_paths_reconverge_before_the_barrier() {
    let module = interp_module();
    let k = module.kernel("diverge_i32").expect("diverge_i32");
    let n = 128usize;
    let input: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 101).collect();
    let mut mem = TestMemory::new();
    let (pin, pout) = (mem.alloc_i32(&input), mem.alloc_i32(&vec![0; n]));
    let params = pack(k, &[Arg::Ptr(pin), Arg::Ptr(pout)]);
    launch(k, &cfg(1, n as u32, 0), &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    let value = |x: i32| match x % 3 {
        0 => x * 2,
        1 => (0..x % 7).map(|k| k * x).sum(),
        _ => -x,
    };
    let out = mem.i32s(pout);
    for t in 0..n {
        assert_eq!(out[t], value(input[t]) + value(input[(t + 1) % n]), "out[{t}]");
    }
}

#[test]
fn block_reduction_with_barriers() {
    let module = interp_module();
    let k = module.kernel("block_sum_f32").expect("block_sum_f32");
    let (blocks, threads) = (5usize, 256usize);
    let input: Vec<f32> = (0..blocks * threads).map(|i| (i % 17) as f32 - 8.0).collect();
    let mut mem = TestMemory::new();
    let (pin, pout) = (mem.alloc_f32(&input), mem.alloc_f32(&vec![0.0; blocks]));
    let params = pack(k, &[Arg::Ptr(pin), Arg::Ptr(pout)]);
    launch(k, &cfg(blocks as u32, threads as u32, 0), &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    let out = mem.f32s(pout);
    for b in 0..blocks {
        // Small integers: every summation order is exact.
        let want: f32 = input[b * threads..(b + 1) * threads].iter().sum();
        assert_eq!(out[b], want, "block {b}");
    }
}

#[test]
fn out_of_bounds_store_names_kernel_thread_and_line() {
    let module = interp_module();
    let k = module.kernel("vec_add_f32").expect("vec_add_f32");
    let mut mem = TestMemory::new();
    let (pa, pb) = (mem.alloc_f32(&[1.0; 64]), mem.alloc_f32(&[2.0; 64]));
    let pc = mem.alloc_f32(&[0.0; 40]);
    // n = 64 but c holds 40: thread 40 stores past the end.
    let params = pack(k, &[Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(pc), Arg::I32(64)]);
    let err = launch(k, &cfg(1, 64, 0), &params, &mem).expect_err("out-of-bounds store");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.block, Some([0, 0, 0]));
    assert_eq!(err.thread, Some([40, 0, 0]), "{msg}");
    let site = err.site.as_ref().expect("a PTX site");
    assert!(site.instruction.starts_with("st.global.f32"), "{msg}");
    assert!(site.source.as_deref().is_some_and(|s| s.ends_with("interp.cu:8")), "{msg}");
    assert!(msg.contains(&format!("global store of 4 bytes at {:#x}", pc + 160)), "{msg}");
    assert!(msg.contains("past the end of allocation"), "{msg}");
}

#[test]
fn missing_cp_async_wait_reads_unwritten_or_stale_shared_memory() {
    let module = interp_module();
    let k = module.kernel("cp_async_copy").expect("cp_async_copy");
    let threads = 64usize;
    let input: Vec<f32> = (0..threads * 4).map(|i| i as f32).collect();
    let run = |wait: i32, checks: &Checks| {
        let mut mem = TestMemory::new();
        let (pin, pout) = (mem.alloc_f32(&input), mem.alloc_f32(&vec![0.0; threads * 4]));
        let params = pack(k, &[Arg::Ptr(pin), Arg::Ptr(pout), Arg::I32(wait)]);
        launch_with_checks(k, &cfg(1, threads as u32, (threads * 16) as u32), &params, &mem, checks)
            .map(|_| mem.f32s(pout))
    };
    let want: Vec<f32> = (0..threads * 4).map(|i| input[(i + 4) % (threads * 4)]).collect();
    let checked = Checks::default();
    let waited = run(1, &checked).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(waited, want, "with cp.async.wait_group 0");
    // Without the wait no copy lands: the shared reads find bytes no thread wrote.
    let err = run(0, &checked).expect_err("unwritten shared memory");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.thread, Some([0, 0, 0]), "{msg}");
    assert!(err.site.as_ref().is_some_and(|s| s.instruction.starts_with("ld.shared.v4.u32")), "{msg}");
    assert!(msg.contains("shared load of 16 bytes at 0x10 reads byte 0x10, which no thread"), "{msg}");
    assert!(msg.contains("— shared window of 0x400 bytes (0 static + 1024 dynamic)"), "{msg}");
    // With that check off, the reads see what was there before the copies: every value stale.
    let unchecked = Checks { shared_unwritten: false, shared_races: false, ..Checks::default() };
    let stale = run(0, &unchecked).unwrap_or_else(|e| panic!("{e}"));
    let mismatches = stale.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(mismatches, threads * 4, "without the wait every value must be stale: {:?}", &stale[..8]);
}

#[test]
fn read_of_unwritten_shared_memory_names_the_offset() {
    let module = interp_module();
    let k = module.kernel("shared_unwritten").expect("shared_unwritten");
    let run = |skip: i32| {
        let mut mem = TestMemory::new();
        let pout = mem.alloc_f32(&[0.0; 128]);
        launch(k, &cfg(1, 128, 0), &pack(k, &[Arg::Ptr(pout), Arg::I32(skip)]), &mem).map(|_| mem.f32s(pout))
    };
    let all = run(-1).unwrap_or_else(|e| panic!("every word written: {e}"));
    assert_eq!(all[127], 0.0);
    assert_eq!(all[4], 5.0);
    let err = run(37).expect_err("thread 36 reads s[37], never written");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.block, Some([0, 0, 0]));
    assert_eq!(err.thread, Some([36, 0, 0]), "{msg}");
    let site = err.site.as_ref().expect("a PTX site");
    assert!(site.instruction.starts_with("ld.shared.f32"), "{msg}");
    assert!(site.source.as_deref().is_some_and(|s| s.contains("interp.cu:")), "{msg}");
    assert!(
        msg.contains("shared load of 4 bytes at 0x94 reads byte 0x94, which no thread of this block"),
        "{msg}"
    );
    assert!(msg.contains("— shared window of 0x200 bytes (512 static + 0 dynamic)"), "{msg}");
}

#[test]
fn shared_race_across_a_missing_barrier_names_both_accesses() {
    let module = interp_module();
    let k = module.kernel("shared_mirror").expect("shared_mirror");
    let run = |sync: i32| {
        let mut mem = TestMemory::new();
        let pout = mem.alloc_f32(&[0.0; 64]);
        launch(k, &cfg(1, 64, 0), &pack(k, &[Arg::Ptr(pout), Arg::I32(sync)]), &mem).map(|_| mem.f32s(pout))
    };
    let synced = run(1).unwrap_or_else(|e| panic!("with the barrier: {e}"));
    let want: Vec<f32> = (0..64).map(|t| 2.0 * (63 - t) as f32).collect();
    assert_eq!(synced, want);
    // Warp 0 runs first and reads words 32..63 (written before the first barrier); then
    // warp 1 overwrites them in the same barrier interval.
    let err = run(0).expect_err("race");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.thread, Some([32, 0, 0]), "{msg}");
    assert!(err.site.as_ref().is_some_and(|s| s.instruction.starts_with("st.shared.f32")), "{msg}");
    assert!(
        msg.contains(
            "shared-memory race: shared store of 4 bytes at 0x80 by warp 1 overwrites the 4 bytes at 0x80, \
             which warp 0 read in the same barrier interval (no bar.sync between the two); the read: \
             thread (31,0,0), PTX line"
        ),
        "{msg}"
    );
    assert!(msg.contains("`ld.shared.f32"), "{msg}");
}

#[test]
fn watchdog_stops_an_endless_loop() {
    let module = interp_module();
    let k = module.kernel("spin_until").expect("spin_until");
    let checks = Checks { max_lane_instructions: 1_000_000, ..Checks::default() };
    let run = |flag: i32| {
        let mut mem = TestMemory::new();
        let (pflag, pout) = (mem.alloc_i32(&[flag]), mem.alloc_i32(&[0; 64]));
        launch_with_checks(k, &cfg(2, 64, 0), &pack(k, &[Arg::Ptr(pflag), Arg::Ptr(pout)]), &mem, &checks)
    };
    run(1).unwrap_or_else(|e| panic!("flag set: {e}"));
    let err = run(0).expect_err("endless loop");
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.block, Some([0, 0, 0]), "{msg}");
    assert!(err.site.as_ref().is_some_and(|s| s.instruction.starts_with("@%p2 bra")), "{msg}");
    assert!(msg.contains("watchdog: the launch ran past SOFTGPU_MAX_LANE_INSTRUCTIONS = 1000000"), "{msg}");
}

#[test]
fn watchdog_counts_every_block() {
    let module = interp_module();
    let k = module.kernel("vec_add_f32").expect("vec_add_f32");
    let n = 1024;
    let mut mem = TestMemory::new();
    let (pa, pb, pc) =
        (mem.alloc_f32(&vec![1.0; n]), mem.alloc_f32(&vec![2.0; n]), mem.alloc_f32(&vec![0.0; n]));
    let params = pack(k, &[Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(pc), Arg::I32(n as i32)]);
    let stats = launch_with_stats(k, &cfg(8, 128, 0), &params, &mem).unwrap_or_else(|e| panic!("{e}"));
    // No loop: the budget is checked as blocks finish.
    let checks = Checks { max_lane_instructions: stats.lane_instructions - 1, ..Checks::default() };
    let err = launch_with_checks(k, &cfg(8, 128, 0), &params, &mem, &checks).expect_err("over budget");
    assert!(err.to_string().contains("watchdog"), "{err}");
    let checks = Checks { max_lane_instructions: stats.lane_instructions, ..Checks::default() };
    launch_with_checks(k, &cfg(8, 128, 0), &params, &mem, &checks).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn divergent_barrier_is_an_error() {
    let module = interp_module();
    let k = module.kernel("divergent_barrier").expect("divergent_barrier");
    let mut mem = TestMemory::new();
    let pout = mem.alloc_f32(&[0.0; 128]);
    let params = pack(k, &[Arg::Ptr(pout)]);
    let err = launch(k, &cfg(1, 128, 0), &params, &mem).expect_err("divergent bar.sync");
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("bar.sync 0 in a divergent block"), "{msg}");
    assert!(err.site.as_ref().is_some_and(|s| s.instruction.starts_with("bar.sync")), "{msg}");
}

/// Threads below `active` run an ldmatrix.x4 over rows at 16·tid in the dynamic window.
const LDMATRIX_PTX: &str = r#"
.version 9.0
.target sm_80
.address_size 64
.extern .shared .align 16 .b8 tile[];

.visible .entry ldmatrix_rows(
	.param .u32 ldmatrix_rows_param_0
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<8>;

	ld.param.u32 	%r7, [ldmatrix_rows_param_0];
	mov.u32 	%r1, %tid.x;
	setp.lt.u32 	%p1, %r1, %r7;
	@!%p1 bra 	$L__end;
	shl.b32 	%r2, %r1, 4;
	mov.u32 	%r3, tile;
	add.s32 	%r2, %r2, %r3;
	ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r3,%r4,%r5,%r6}, [%r2];
$L__end:
	ret;
}
"#;

fn run_ldmatrix(active: u32, dynamic_shared: u32) -> Result<(), softgpu::exec::LaunchError> {
    let module = softgpu::ptx::parse(LDMATRIX_PTX).unwrap_or_else(|e| panic!("{e}"));
    let k = module.kernel("ldmatrix_rows").expect("ldmatrix_rows");
    let params = active.to_le_bytes();
    // The rows are never written: these tests are about the warp and the window.
    let checks = Checks { shared_unwritten: false, ..Checks::default() };
    launch_with_checks(k, &cfg(1, 32, dynamic_shared), &params, &TestMemory::new(), &checks).map(|_| ())
}

#[test]
fn ldmatrix_by_a_partial_warp_is_an_error() {
    run_ldmatrix(32, 512).unwrap_or_else(|e| panic!("full warp: {e}"));
    let err = run_ldmatrix(16, 512).expect_err("partial warp");
    let msg = err.to_string();
    assert!(msg.contains("ldmatrix reached by a partial warp"), "{msg}");
    assert!(msg.contains("PTX line 21"), "{msg}");
}

#[test]
fn shared_out_of_bounds_names_the_window() {
    let err = run_ldmatrix(32, 256).expect_err("rows past the window");
    let msg = err.to_string();
    assert_eq!(err.thread, Some([16, 0, 0]), "{msg}");
    assert!(msg.contains("outside the shared window of 0x100 bytes (0 static + 256 dynamic)"), "{msg}");
}
