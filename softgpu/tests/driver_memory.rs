//! Plain allocations (cuMemAllocAsync / cuMemFreeAsync) and what copies and kernel
//! accesses outside them say: the nearest allocation and how far off the access is.

mod driver_support;

use driver_support::{device, ok};
use softgpu::driver::context::cuCtxSetCurrent;
use softgpu::driver::memory::alloc::{cuMemAllocAsync, cuMemFreeAsync};
use softgpu::driver::memory::copy::{cuMemcpyDtoHAsync_v2, cuMemcpyHtoDAsync_v2, cuMemsetD8Async};
use softgpu::driver::state::instance;
use softgpu::driver::{CuResult, last_diagnostic};
use softgpu::exec::GlobalMemory;

const NULL_STREAM: *mut std::ffi::c_void = std::ptr::null_mut();

fn alloc(bytes: usize) -> u64 {
    let mut p = 0;
    // SAFETY: `p` receives the address.
    ok(unsafe { cuMemAllocAsync(&mut p, bytes, NULL_STREAM) });
    p
}

#[test]
fn allocations_are_aligned_counted_and_freed_once() {
    let _d = device();
    let before = instance().unwrap().memory().used();
    let (a, b) = (alloc(1000), alloc(3));
    assert!(a != 0 && b != 0 && a % 256 == 0 && b % 256 == 0);
    assert_eq!(instance().unwrap().memory().used() - before, 1003);
    ok(cuMemFreeAsync(a, NULL_STREAM));
    assert_eq!(cuMemFreeAsync(a, NULL_STREAM), CuResult::InvalidValue, "freed twice");
    assert_eq!(cuMemFreeAsync(b + 1, NULL_STREAM), CuResult::InvalidValue, "not the start");
    ok(cuMemFreeAsync(b, NULL_STREAM));
    assert_eq!(instance().unwrap().memory().used(), before);
    assert_eq!(alloc(0), 0, "zero bytes: the null pointer");
    ok(cuMemFreeAsync(0, NULL_STREAM));
    let mut p = 0;
    let other_stream = std::ptr::without_provenance_mut(0x1234);
    // SAFETY: `p` receives the address.
    assert_eq!(unsafe { cuMemAllocAsync(&mut p, 8, other_stream) }, CuResult::InvalidHandle);
}

#[test]
fn copies_and_accesses_outside_an_allocation_name_the_nearest() {
    let _d = device();
    let a = alloc(100);
    let data = [7u8; 112];
    // SAFETY: `data` holds 112 bytes.
    unsafe {
        ok(cuMemcpyHtoDAsync_v2(a, data.as_ptr().cast(), 100, NULL_STREAM));
        assert_eq!(cuMemcpyHtoDAsync_v2(a, data.as_ptr().cast(), 101, NULL_STREAM), CuResult::InvalidValue);
    }
    let why = last_diagnostic().unwrap();
    assert!(why.contains("runs 1 bytes past the end of allocation"), "{why}");
    let mem = instance().unwrap().memory();
    let fault = mem.resolve(a + 112, 4).unwrap_err();
    assert!(
        fault.reason.contains(&format!("nearest allocation {a:#x}+100 bytes ends 12 bytes below")),
        "{fault}"
    );
    assert!(mem.resolve(a + 96, 4).is_ok());
    assert!(mem.resolve(a + 98, 4).unwrap_err().reason.contains("runs 2 bytes past the end"));
    assert_eq!(mem.resolve(0, 4).unwrap_err().reason, "null device pointer");
    drop(mem);
    ok(cuMemFreeAsync(a, NULL_STREAM));
    let fault = instance().unwrap().memory().resolve(a, 4).unwrap_err();
    assert!(fault.reason.starts_with("unmapped"), "a freed allocation's address stays unmapped: {fault}");
    let mut back = [0u8; 4];
    // SAFETY: `back` holds 4 bytes.
    let r = unsafe { cuMemcpyDtoHAsync_v2(back.as_mut_ptr().cast(), a, 4, NULL_STREAM) };
    assert_eq!(r, CuResult::InvalidValue);
}

#[test]
fn memory_calls_need_a_current_context() {
    let _d = device();
    let a = alloc(16);
    ok(cuCtxSetCurrent(std::ptr::null_mut()));
    assert_eq!(cuMemsetD8Async(a, 0, 16, NULL_STREAM), CuResult::InvalidContext);
    let mut p = 0;
    // SAFETY: `p` receives the address.
    assert_eq!(unsafe { cuMemAllocAsync(&mut p, 8, NULL_STREAM) }, CuResult::InvalidContext);
    assert_eq!(cuCtxSetCurrent(std::ptr::without_provenance_mut(0x99)), CuResult::InvalidContext);
    drop(_d);
    let _d = device();
    ok(cuMemFreeAsync(a, NULL_STREAM));
}
