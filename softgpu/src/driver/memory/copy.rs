//! Copies and memsets, synchronous whatever their name says (cudarc relies on
//! device-to-host copies into pageable memory being complete on return). Device ranges
//! are checked like a kernel's accesses; one outside mapped, accessible memory is
//! `CUDA_ERROR_INVALID_VALUE`, with the reason (the nearest mapping) on stderr.
#![allow(non_snake_case)]

use std::ffi::{c_uchar, c_void};

use super::AddressSpace;
use crate::driver::diagnostic::report;
use crate::driver::error::{CuOutcome, CuResult};
use crate::driver::state::driver;
use crate::driver::stream::current_on;
use crate::exec::MemFault;

/// Runs `body` on device memory after the checks every copy shares; a fault is
/// reported under `call`'s name.
fn device_op(
    call: &str,
    stream: *mut c_void,
    body: impl FnOnce(&AddressSpace) -> Result<(), MemFault>,
) -> CuOutcome {
    let d = driver()?;
    current_on(&d.objects(), stream)?;
    body(&d.memory()).map_err(|fault| {
        report(format!("{call}: {fault}"));
        CuResult::InvalidValue
    })
}

/// # Safety
/// `host` must be valid for reading `n` bytes.
unsafe fn to_device(mem: &AddressSpace, dst: u64, host: *const u8, n: usize) -> Result<(), MemFault> {
    let mut done = 0;
    for (ptr, len) in mem.pieces(dst, n)? {
        // SAFETY: `ptr` spans `len` bytes of device memory; `host` has n ≥ done + len.
        unsafe { std::ptr::copy(host.add(done), ptr, len) };
        done += len;
    }
    Ok(())
}

/// # Safety
/// `host` must be valid for writing `n` bytes.
unsafe fn to_host(mem: &AddressSpace, host: *mut u8, src: u64, n: usize) -> Result<(), MemFault> {
    let mut done = 0;
    for (ptr, len) in mem.pieces(src, n)? {
        // SAFETY: as in `to_device`, the other way round.
        unsafe { std::ptr::copy(ptr, host.add(done), len) };
        done += len;
    }
    Ok(())
}

fn host_ok(p: *const c_void, n: usize) -> CuOutcome {
    if p.is_null() && n > 0 { Err(CuResult::InvalidValue) } else { Ok(()) }
}

/// # Safety
/// `src_host` must be valid for reading `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst_device: u64,
    src_host: *const c_void,
    n: usize,
    h_stream: *mut c_void,
) -> CuResult {
    CuResult::of(host_ok(src_host, n).and_then(|_| {
        device_op("cuMemcpyHtoDAsync_v2", h_stream, |mem| {
            // SAFETY: caller contract.
            unsafe { to_device(mem, dst_device, src_host.cast(), n) }
        })
    }))
}

/// # Safety
/// `dst_host` must be valid for writing `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst_host: *mut c_void,
    src_device: u64,
    n: usize,
    h_stream: *mut c_void,
) -> CuResult {
    CuResult::of(host_ok(dst_host, n).and_then(|_| {
        device_op("cuMemcpyDtoHAsync_v2", h_stream, |mem| {
            // SAFETY: caller contract.
            unsafe { to_host(mem, dst_host.cast(), src_device, n) }
        })
    }))
}

/// # Safety
/// `dst_host` must be valid for writing `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst_host: *mut c_void, src_device: u64, n: usize) -> CuResult {
    CuResult::of(host_ok(dst_host, n).and_then(|_| {
        device_op("cuMemcpyDtoH_v2", std::ptr::null_mut(), |mem| {
            // SAFETY: caller contract.
            unsafe { to_host(mem, dst_host.cast(), src_device, n) }
        })
    }))
}

/// Through a host buffer, so overlapping ranges copy as `memmove` would.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyDtoDAsync_v2(
    dst_device: u64,
    src_device: u64,
    n: usize,
    h_stream: *mut c_void,
) -> CuResult {
    CuResult::of(device_op("cuMemcpyDtoDAsync_v2", h_stream, |mem| {
        let mut staging = vec![0u8; n];
        // SAFETY: `staging` holds n bytes.
        unsafe {
            to_host(mem, staging.as_mut_ptr(), src_device, n)?;
            to_device(mem, dst_device, staging.as_ptr(), n)
        }
    }))
}

fn memset(mem: &AddressSpace, dst: u64, value: u8, n: usize) -> Result<(), MemFault> {
    for (ptr, len) in mem.pieces(dst, n)? {
        // SAFETY: `ptr` spans `len` bytes of device memory.
        unsafe { std::ptr::write_bytes(ptr, value, len) };
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemsetD8_v2(dst_device: u64, uc: c_uchar, n: usize) -> CuResult {
    CuResult::of(device_op("cuMemsetD8_v2", std::ptr::null_mut(), |mem| memset(mem, dst_device, uc, n)))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemsetD8Async(dst_device: u64, uc: c_uchar, n: usize, h_stream: *mut c_void) -> CuResult {
    CuResult::of(device_op("cuMemsetD8Async", h_stream, |mem| memset(mem, dst_device, uc, n)))
}
