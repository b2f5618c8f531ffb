//! The virtual memory API, with the driver's rules: sizes, addresses and offsets are
//! multiples of the granularity; a mapping lies inside one reservation and over nothing
//! mapped; it is inaccessible until `cuMemSetAccess`; `cuMemUnmap` takes one whole
//! mapping; physical memory is freed once released and unmapped; a reservation is freed
//! whole and empty. These calls need no current context, as in the driver.
#![allow(non_snake_case)]

use std::ffi::{c_int, c_uint, c_ulonglong, c_void};

use super::{Access, GRANULARITY};
use crate::driver::error::{CuOutcome, CuResult};
use crate::driver::ffi::{read_in, require, write_out};
use crate::driver::state::driver;

/// `CUmemLocation` (CUDA 13.0 layout).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUmemLocation {
    pub type_: c_uint,
    pub id: c_int,
}

/// `CUmemAllocationProp::allocFlags`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUmemAllocFlags {
    pub compression_type: u8,
    pub gpu_direct_rdma_capable: u8,
    pub usage: u16,
    pub reserved: [u8; 4],
}

/// `CUmemAllocationProp` (CUDA 13.0 layout: 32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAllocationProp {
    pub type_: c_uint,
    pub requested_handle_types: c_uint,
    pub location: CUmemLocation,
    pub win32_handle_meta_data: *mut c_void,
    pub alloc_flags: CUmemAllocFlags,
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUmemAccessDesc {
    pub location: CUmemLocation,
    pub flags: c_uint,
}

pub const CU_MEM_ALLOCATION_TYPE_PINNED: c_uint = 1;
const CU_MEM_ALLOCATION_TYPE_MANAGED: c_uint = 2;
pub const CU_MEM_LOCATION_TYPE_DEVICE: c_uint = 1;
pub const CU_MEM_ACCESS_FLAGS_PROT_NONE: c_uint = 0;
const CU_MEM_ACCESS_FLAGS_PROT_READ: c_uint = 1;
pub const CU_MEM_ACCESS_FLAGS_PROT_READWRITE: c_uint = 3;
const CU_MEM_ALLOC_GRANULARITY_RECOMMENDED: c_uint = 1;

fn check_location(location: CUmemLocation) -> CuOutcome {
    if location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(CuResult::InvalidValue);
    }
    if location.id != 0 {
        return Err(CuResult::InvalidDevice);
    }
    Ok(())
}

/// Pinned device memory on device 0, without export handles or compression.
fn check_prop(prop: &CUmemAllocationProp) -> CuOutcome {
    match prop.type_ {
        CU_MEM_ALLOCATION_TYPE_PINNED => {}
        CU_MEM_ALLOCATION_TYPE_MANAGED => return Err(CuResult::NotSupported),
        _ => return Err(CuResult::InvalidValue),
    }
    check_location(prop.location)?;
    if prop.requested_handle_types != 0 || prop.alloc_flags.compression_type != 0 {
        return Err(CuResult::NotSupported);
    }
    Ok(())
}

/// # Safety
/// `granularity` NULL or writable; `prop` NULL or readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const CUmemAllocationProp,
    option: c_uint,
) -> CuResult {
    CuResult::of(driver().and_then(|_| {
        require(granularity)?;
        // SAFETY: caller contract.
        check_prop(&unsafe { read_in(prop) }?)?;
        if option > CU_MEM_ALLOC_GRANULARITY_RECOMMENDED {
            return Err(CuResult::InvalidValue);
        }
        // SAFETY: caller contract.
        unsafe { write_out(granularity, GRANULARITY as usize) }
    }))
}

/// The address hint `addr` is a hint, and not taken.
///
/// # Safety
/// `ptr` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut u64,
    size: usize,
    alignment: usize,
    _addr: u64,
    flags: c_ulonglong,
) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(ptr)?;
        if flags != 0 {
            return Err(CuResult::InvalidValue);
        }
        let at = d.memory_mut().reserve(size as u64, alignment as u64)?;
        // SAFETY: caller contract.
        unsafe { write_out(ptr, at) }
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemAddressFree(ptr: u64, size: usize) -> CuResult {
    CuResult::of(driver().and_then(|d| d.memory_mut().free_reservation(ptr, size as u64)))
}

/// Past the device's memory: `CUDA_ERROR_OUT_OF_MEMORY`.
///
/// # Safety
/// `handle` NULL or writable; `prop` NULL or readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut u64,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: c_ulonglong,
) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(handle)?;
        // SAFETY: caller contract.
        check_prop(&unsafe { read_in(prop) }?)?;
        if flags != 0 {
            return Err(CuResult::InvalidValue);
        }
        let h = d.memory_mut().create(size as u64)?;
        // SAFETY: caller contract.
        unsafe { write_out(handle, h) }
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemRelease(handle: u64) -> CuResult {
    CuResult::of(driver().and_then(|d| d.memory_mut().release(handle)))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemMap(
    ptr: u64,
    size: usize,
    offset: usize,
    handle: u64,
    flags: c_ulonglong,
) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        if flags != 0 {
            return Err(CuResult::InvalidValue);
        }
        d.memory_mut().map(ptr, size as u64, offset as u64, handle)
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemUnmap(ptr: u64, size: usize) -> CuResult {
    CuResult::of(driver().and_then(|d| d.memory_mut().unmap(ptr, size as u64)))
}

/// Read-write or no access for device 0. Read-only is `CUDA_ERROR_NOT_SUPPORTED`: a
/// kernel's accesses are checked for mapping, not for direction.
///
/// # Safety
/// `desc` NULL or `count` readable descriptors.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: u64,
    size: usize,
    desc: *const CUmemAccessDesc,
    count: usize,
) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(desc)?;
        if count == 0 {
            return Err(CuResult::InvalidValue);
        }
        // SAFETY: `count` descriptors by the caller's contract.
        let descs = unsafe { std::slice::from_raw_parts(desc, count) };
        let mut access = Access::None;
        for desc in descs {
            check_location(desc.location)?;
            access = match desc.flags {
                CU_MEM_ACCESS_FLAGS_PROT_NONE => Access::None,
                CU_MEM_ACCESS_FLAGS_PROT_READWRITE => Access::ReadWrite,
                CU_MEM_ACCESS_FLAGS_PROT_READ => return Err(CuResult::NotSupported),
                _ => return Err(CuResult::InvalidValue),
            };
        }
        d.memory_mut().set_access(ptr, size as u64, access)
    }))
}
