//! Created streams, waits on events and page-locked host memory: the calls behind
//! dfengine's copy stream and staging ring. Work is synchronous here, so what is tested
//! is the bookkeeping a card's driver also does: handles, flags, and copies from a
//! page-locked block through a created stream.

mod driver_support;

use std::ffi::c_void;

use driver_support::{device, ok};
use softgpu::driver::CuResult;
use softgpu::driver::event::{cuEventCreate, cuEventDestroy_v2, cuEventRecord};
use softgpu::driver::memory::alloc::{cuMemAllocAsync, cuMemFreeAsync};
use softgpu::driver::memory::copy::{cuMemcpyDtoHAsync_v2, cuMemcpyHtoDAsync_v2};
use softgpu::driver::memory::pinned::{cuMemFreeHost, cuMemHostAlloc};
use softgpu::driver::stream::{cuStreamCreate, cuStreamDestroy_v2, cuStreamSynchronize, cuStreamWaitEvent};

const NON_BLOCKING: u32 = 0x1;
const WRITECOMBINED: u32 = 0x4;

fn stream() -> *mut c_void {
    let mut s = std::ptr::null_mut();
    // SAFETY: `s` receives the handle.
    ok(unsafe { cuStreamCreate(&mut s, NON_BLOCKING) });
    s
}

#[test]
fn a_created_stream_copies_from_page_locked_memory_and_orders_by_events() {
    let _d = device();
    let copy = stream();
    let mut host: *mut c_void = std::ptr::null_mut();
    // SAFETY: `host` receives the block's address.
    ok(unsafe { cuMemHostAlloc(&mut host, 4096, WRITECOMBINED) });
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    // SAFETY: the block holds 4096 bytes.
    unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), host.cast::<u8>(), 4096) };
    let mut dev = 0;
    // SAFETY: `dev` receives the address; the copy reads 4096 bytes of `host`.
    unsafe {
        ok(cuMemAllocAsync(&mut dev, 4096, copy));
        ok(cuMemcpyHtoDAsync_v2(dev, host, 4096, copy));
    }
    let mut done = std::ptr::null_mut();
    // SAFETY: `done` receives the handle.
    ok(unsafe { cuEventCreate(&mut done, 0x2) });
    ok(cuEventRecord(done, copy));
    ok(cuStreamWaitEvent(std::ptr::null_mut(), done, 0));
    let mut back = vec![0u8; 4096];
    // SAFETY: `back` holds 4096 bytes.
    ok(unsafe { cuMemcpyDtoHAsync_v2(back.as_mut_ptr().cast(), dev, 4096, std::ptr::null_mut()) });
    assert_eq!(back, pattern);
    assert_eq!(cuStreamWaitEvent(copy, done, 1), CuResult::InvalidValue, "only CU_EVENT_WAIT_DEFAULT");
    ok(cuEventDestroy_v2(done));
    assert_eq!(cuStreamWaitEvent(copy, done, 0), CuResult::InvalidHandle, "a destroyed event");
    ok(cuMemFreeAsync(dev, copy));
    ok(cuStreamSynchronize(copy));
    ok(cuStreamDestroy_v2(copy));
    assert_eq!(cuStreamSynchronize(copy), CuResult::InvalidHandle, "a destroyed stream");
    assert_eq!(cuStreamDestroy_v2(copy), CuResult::InvalidHandle, "destroyed twice");
    assert_eq!(cuStreamDestroy_v2(std::ptr::null_mut()), CuResult::InvalidHandle, "the NULL stream");
    ok(cuMemFreeHost(host));
    assert_eq!(cuMemFreeHost(host), CuResult::InvalidValue, "freed twice");
}

#[test]
fn bad_flags_and_sizes_are_refused() {
    let _d = device();
    let mut s = std::ptr::null_mut();
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: the out-pointers are writable (or NULL, which is refused).
    unsafe {
        assert_eq!(cuStreamCreate(&mut s, 0x2), CuResult::InvalidValue);
        assert_eq!(cuStreamCreate(std::ptr::null_mut(), 0), CuResult::InvalidValue);
        assert_eq!(cuMemHostAlloc(&mut p, 64, 0x8), CuResult::InvalidValue);
        assert_eq!(cuMemHostAlloc(&mut p, 0, 0), CuResult::InvalidValue);
    }
    let mut on_stack = 0u8;
    assert_eq!(cuMemFreeHost((&raw mut on_stack).cast()), CuResult::InvalidValue, "not from cuMemHostAlloc");
}
