//! Plain allocations, stream-ordered as cudarc uses them on a device with memory pools
//! (`CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED` = 1): `cuMemAllocAsync` /
//! `cuMemFreeAsync`, done at once. They belong to the current context and are freed
//! with it.
#![allow(non_snake_case)]

use std::ffi::c_void;

use crate::driver::error::CuResult;
use crate::driver::ffi::{require, write_out};
use crate::driver::state::driver;
use crate::driver::stream::current_on;

/// Zero bytes give the null pointer, as the stream-ordered allocator does.
///
/// # Safety
/// `dptr` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut u64, bytesize: usize, h_stream: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(dptr)?;
        let ctx = current_on(&d.objects(), h_stream)?;
        let at = if bytesize == 0 { 0 } else { d.memory_mut().allocate(bytesize as u64, ctx)? };
        // SAFETY: caller contract.
        unsafe { write_out(dptr, at) }
    }))
}

/// Freeing the null pointer does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeAsync(dptr: u64, h_stream: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        current_on(&d.objects(), h_stream)?;
        if dptr == 0 { Ok(()) } else { d.memory_mut().free_allocation(dptr) }
    }))
}
