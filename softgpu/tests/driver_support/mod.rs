//! Shared by the driver tests: a small device (so out-of-memory is cheap to reach), the
//! primary context current on the calling thread, and one test at a time per binary
//! (they share the process-wide device and count its memory).
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::{CStr, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use softgpu::driver::context::{cuCtxSetCurrent, cuDevicePrimaryCtxRetain};
use softgpu::driver::device::cuInit;
use softgpu::driver::error::cuGetErrorName;
use softgpu::driver::{CuResult, DeviceConfig, configure};

pub const MIB: usize = 1 << 20;
/// The test device's memory: 16 granules.
pub const DEVICE_MEMORY: usize = 32 * MIB;

static SERIAL: Mutex<()> = Mutex::new(());
static CONTEXT: OnceLock<usize> = OnceLock::new();

/// Panics with the code's name unless it is `CUDA_SUCCESS`.
#[track_caller]
pub fn ok(r: CuResult) {
    assert_eq!(r, CuResult::Success, "{}", name(r));
}

pub fn name(r: CuResult) -> String {
    let mut p = std::ptr::null();
    // SAFETY: `p` receives a static string.
    unsafe { cuGetErrorName(r as u32, &mut p) };
    // SAFETY: a NUL-terminated static string for every CuResult.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Initialises the 32 MiB, 2-SM test device once, makes the primary context (retained
/// for the whole process) current here, and holds the test lock.
pub fn device() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    configure(DeviceConfig { sm_count: 2, memory: DEVICE_MEMORY as u64, fill: None })
        .expect("configure the test device");
    ok(cuInit(0));
    let ctx = *CONTEXT.get_or_init(|| {
        let mut ctx: *mut c_void = std::ptr::null_mut();
        // SAFETY: `ctx` receives the handle.
        ok(unsafe { cuDevicePrimaryCtxRetain(&mut ctx, 0) });
        ctx.addr()
    });
    ok(cuCtxSetCurrent(std::ptr::without_provenance_mut(ctx)));
    guard
}
