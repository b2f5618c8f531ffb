//! The device as cudarc queries it, the primary context's reference count (its objects
//! go with it), and events (host wall time, DISABLE_TIMING, handles checked). One test:
//! the context's life is process-wide.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use softgpu::driver::context::{
    cuCtxGetCurrent, cuCtxSetCurrent, cuDevicePrimaryCtxRelease_v2, cuDevicePrimaryCtxRetain,
};
use softgpu::driver::device::*;
use softgpu::driver::event::*;
use softgpu::driver::memory::alloc::cuMemAllocAsync;
use softgpu::driver::memory::copy::cuMemsetD8_v2;
use softgpu::driver::stream::cuStreamSynchronize;
use softgpu::driver::{CuResult, DeviceConfig, configure};

#[track_caller]
fn ok(r: CuResult) {
    assert_eq!(r, CuResult::Success);
}

fn attribute(a: u32) -> Result<i32, CuResult> {
    let mut v = 0;
    // SAFETY: `v` receives the value.
    match unsafe { cuDeviceGetAttribute(&mut v, a, 0) } {
        CuResult::Success => Ok(v),
        e => Err(e),
    }
}

fn retain() -> *mut c_void {
    let mut ctx = std::ptr::null_mut();
    // SAFETY: `ctx` receives the handle.
    ok(unsafe { cuDevicePrimaryCtxRetain(&mut ctx, 0) });
    ctx
}

fn event(flags: u32) -> *mut c_void {
    let mut e = std::ptr::null_mut();
    // SAFETY: `e` receives the handle.
    ok(unsafe { cuEventCreate(&mut e, flags) });
    e
}

#[test]
fn device_context_and_events() {
    configure(DeviceConfig { sm_count: 3, memory: 64 << 20, fill: None }).unwrap();
    ok(cuInit(0));

    let mut name = [0 as c_char; 64];
    let mut total = 0usize;
    let mut dev = -1;
    // SAFETY: out-pointers to locals; `name` holds 64 bytes (5 for the short call).
    unsafe {
        ok(cuDeviceGet(&mut dev, 0));
        assert_eq!(cuDeviceGet(&mut dev, 1), CuResult::InvalidDevice);
        ok(cuDeviceGetName(name.as_mut_ptr(), 64, 0));
        assert_eq!(std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap(), "dfengine softgpu");
        ok(cuDeviceGetName(name.as_mut_ptr(), 5, 0));
        assert_eq!(std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap(), "dfen");
        ok(cuDeviceTotalMem_v2(&mut total, 0));
    }
    assert_eq!(total, 64 << 20);
    assert_eq!((attribute(75), attribute(76)), (Ok(8), Ok(0)), "compute capability 8.0");
    assert_eq!(attribute(16), Ok(3), "multiprocessors as configured");
    assert_eq!(attribute(115), Ok(1), "memory pools: cudarc takes the async allocation path");
    assert_eq!(attribute(8), Ok(48 << 10));
    assert_eq!(attribute(9), Err(CuResult::InvalidValue), "an attribute not modelled is not invented");

    // Retain twice, release twice: the second release destroys the context.
    let ctx = retain();
    assert_eq!(retain(), ctx);
    ok(cuCtxSetCurrent(ctx));
    let mut now = std::ptr::null_mut();
    // SAFETY: `now` receives the handle.
    ok(unsafe { cuCtxGetCurrent(&mut now) });
    assert_eq!(now, ctx);

    let (start, end, untimed) = (event(0), event(0), event(2));
    // SAFETY: `now` receives the handle.
    assert_eq!(unsafe { cuEventCreate(&mut now, 4) }, CuResult::NotSupported, "interprocess");
    let mut ms = 0f32;
    // SAFETY: `ms` receives the time.
    assert_eq!(
        unsafe { cuEventElapsedTime_v2(&mut ms, start, end) },
        CuResult::InvalidHandle,
        "not recorded"
    );
    ok(cuEventRecord(start, std::ptr::null_mut()));
    std::thread::sleep(Duration::from_millis(20));
    ok(cuEventRecord(end, std::ptr::null_mut()));
    ok(cuEventRecord(untimed, std::ptr::null_mut()));
    ok(cuEventQuery(end));
    ok(cuEventSynchronize(end));
    // SAFETY: as above.
    unsafe {
        ok(cuEventElapsedTime_v2(&mut ms, start, end));
        assert!((20.0..2000.0).contains(&ms), "{ms} ms of host time");
        assert_eq!(cuEventElapsedTime_v2(&mut ms, start, untimed), CuResult::InvalidHandle, "DISABLE_TIMING");
    }
    ok(cuEventDestroy_v2(untimed));
    assert_eq!(cuEventDestroy_v2(untimed), CuResult::InvalidHandle, "destroyed twice");
    assert_eq!(
        cuEventRecord(start, std::ptr::without_provenance_mut(0x77)),
        CuResult::InvalidHandle,
        "stream"
    );
    ok(cuStreamSynchronize(std::ptr::null_mut()));

    let mut p = 0;
    // SAFETY: `p` receives the address.
    ok(unsafe { cuMemAllocAsync(&mut p, 64, std::ptr::null_mut()) });
    ok(cuDevicePrimaryCtxRelease_v2(0));
    ok(cuEventQuery(start));
    ok(cuDevicePrimaryCtxRelease_v2(0));
    // Destroyed: its events and allocations are gone, and it is no longer current.
    assert_eq!(cuEventQuery(start), CuResult::InvalidHandle);
    assert_eq!(cuStreamSynchronize(std::ptr::null_mut()), CuResult::InvalidContext);
    assert_eq!(cuCtxSetCurrent(ctx), CuResult::InvalidContext);
    assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CuResult::InvalidContext, "released once too often");
    let fresh = retain();
    assert_ne!(fresh, ctx, "a new context under a new handle");
    ok(cuCtxSetCurrent(fresh));
    assert_eq!(cuMemsetD8_v2(p, 0, 64), CuResult::InvalidValue, "the old context's allocation was freed");
    ok(cuDevicePrimaryCtxRelease_v2(0));
}
