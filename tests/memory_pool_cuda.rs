//! The pool on device memory (CUDA virtual memory API): mapped memory is usable, grow
//! and trim are visible in NVML, random alloc/free keeps the invariants, and host-side
//! alloc/free latency is printed. Each test finds its device through `common::gpu_info`
//! (skips with the reason without a GPU, fails under `DFENGINE_REQUIRE_GPU=1`).
#![cfg(feature = "cuda")]

mod common;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use cudarc::driver::CudaContext;
use cudarc::driver::sys;
use dfengine::memory::cuda_backing::CudaBacking;
use dfengine::memory::monitor::{MemorySource, SystemSource};
use dfengine::memory::{Allocation, Pool};

const MIB: usize = 1 << 20;

/// The tests of this file one at a time: NVML's "used" is the whole device's, so another
/// test mapping memory while `grow_and_trim_show_in_nvml_cuda` reads it would move it.
fn serial() -> MutexGuard<'static, ()> {
    static DEVICE_MEMORY: Mutex<()> = Mutex::new(());
    DEVICE_MEMORY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn device_pool(budget: usize) -> Option<Pool<CudaBacking>> {
    let info = common::gpu_info()?;
    let ctx = CudaContext::new(0).unwrap_or_else(|e| panic!("a context on {info}: {e}"));
    Some(Pool::new(CudaBacking::reserve(ctx, budget).expect("reserve device address space"), budget))
}

#[test]
fn mapped_device_memory_holds_data_cuda() {
    let _serial = serial();
    let Some(mut pool) = device_pool(256 * MIB) else { return };
    let a = pool.alloc(3 * MIB + 17, 0).unwrap();
    let mut back = vec![0u8; a.size];
    // SAFETY: the allocation is mapped and read-write on this device; `back` holds a.size bytes.
    unsafe {
        assert_eq!(sys::cuMemsetD8_v2(a.ptr as u64, 0xA5, a.size), sys::CUresult::CUDA_SUCCESS);
        assert_eq!(
            sys::cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), a.ptr as u64, a.size),
            sys::CUresult::CUDA_SUCCESS
        );
    }
    assert!(back.iter().all(|&b| b == 0xA5), "device memory did not hold the pattern");
    pool.free(a).unwrap();
}

#[test]
fn grow_and_trim_show_in_nvml_cuda() {
    let _serial = serial();
    let Some(mut pool) = device_pool(2048 * MIB) else { return };
    let mut nvml = SystemSource::new(Some(0));
    let used = |s: &mut SystemSource| s.sample(0.0).gpu.expect("NVML reading on a GPU machine").used as i64;
    let before = used(&mut nvml);
    let grown = pool.grow(1024 * MIB).unwrap();
    let after_grow = used(&mut nvml);
    assert!(
        after_grow - before >= (grown as i64) * 9 / 10,
        "grew {grown} B but NVML moved {} B",
        after_grow - before
    );
    let freed = pool.trim(0).unwrap();
    let after_trim = used(&mut nvml);
    assert_eq!(freed, grown);
    assert!(
        after_grow - after_trim >= (freed as i64) * 9 / 10,
        "trimmed {freed} B but NVML moved {} B",
        after_grow - after_trim
    );
    eprintln!("NVML used: {before} → {after_grow} (grow {grown}) → {after_trim} (trim)");
}

#[test]
fn random_device_alloc_free_keeps_invariants_and_is_fast_cuda() {
    let _serial = serial();
    let Some(mut pool) = device_pool(1024 * MIB) else { return };
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut live: Vec<Allocation> = Vec::new();
    let (mut alloc_ns, mut free_ns) = (Vec::new(), Vec::new());
    for i in 0..20_000 {
        if live.len() < 64 && next() % 3 != 0 {
            let bytes = 1 + ((next() % (8 * MIB as u64)) >> (next() % 8)) as usize;
            let t = Instant::now();
            let a = pool.alloc(bytes, 0).unwrap();
            if i > 2000 {
                alloc_ns.push(t.elapsed().as_nanos() as u64);
            }
            assert_eq!(a.ptr % 256, 0);
            live.push(a);
        } else if !live.is_empty() {
            let a = live.swap_remove((next() % live.len() as u64) as usize);
            let t = Instant::now();
            pool.free(a).unwrap();
            if i > 2000 {
                free_ns.push(t.elapsed().as_nanos() as u64);
            }
        }
        let mut spans: Vec<(usize, usize)> = live.iter().map(|a| (a.offset, a.offset + a.size)).collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        assert_eq!(pool.stats().allocated_bytes, live.iter().map(|a| a.size).sum::<usize>());
    }
    live.drain(..).for_each(|a| pool.free(a).unwrap());
    assert_eq!(pool.stats().inactive_split, 1);
    alloc_ns.sort_unstable();
    free_ns.sort_unstable();
    let p = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    eprintln!(
        "device pool steady state: alloc p50 {:.2} µs p99 {:.2} µs, free p50 {:.2} µs p99 {:.2} µs",
        p(&alloc_ns, 0.5),
        p(&alloc_ns, 0.99),
        p(&free_ns, 0.5),
        p(&free_ns, 0.99)
    );
}
