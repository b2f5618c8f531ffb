//! Page-locked host memory (`cuMemHostAlloc` / `cuMemFreeHost`). Ordinary heap blocks
//! here: copies are synchronous, so there is nothing for page-locking to buy. What the
//! driver checks is kept: the flags, and that a free names a block it handed out.
#![allow(non_snake_case)]

use std::ffi::{c_uint, c_void};

use super::host::HostBuffer;
use crate::driver::context::current;
use crate::driver::error::CuResult;
use crate::driver::ffi::{require, write_out};
use crate::driver::state::driver;

const CU_MEMHOSTALLOC_PORTABLE: c_uint = 0x1;
const CU_MEMHOSTALLOC_DEVICEMAP: c_uint = 0x2;
const CU_MEMHOSTALLOC_WRITECOMBINED: c_uint = 0x4;

/// A block of "page-locked" host memory and the context that made it.
pub struct PinnedHost {
    pub ctx: u64,
    _buf: HostBuffer,
}

/// `bytesize` bytes of host memory; zero bytes is `CUDA_ERROR_INVALID_VALUE`, as in the
/// driver.
///
/// # Safety
/// `pp` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostAlloc(pp: *mut *mut c_void, bytesize: usize, flags: c_uint) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(pp)?;
        let known = CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED;
        if flags & !known != 0 || bytesize == 0 {
            return Err(CuResult::InvalidValue);
        }
        let mut objects = d.objects();
        let ctx = current(&objects)?;
        let buf = HostBuffer::zeroed(bytesize).ok_or(CuResult::OutOfMemory)?;
        let ptr = buf.ptr();
        objects.pinned.insert(ptr.addr() as u64, PinnedHost { ctx, _buf: buf });
        // SAFETY: caller contract.
        unsafe { write_out(pp, ptr.cast::<c_void>()) }
    }))
}

/// Frees a block `cuMemHostAlloc` returned; any other pointer is
/// `CUDA_ERROR_INVALID_VALUE`.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeHost(p: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        d.objects().pinned.remove(&(p.addr() as u64)).map(|_| ()).ok_or(CuResult::InvalidValue)
    }))
}
