//! The NVML subset nvml-wrapper 0.13 calls on dfengine's paths (the memory monitor and
//! the pool's tests), in the same library as the driver so it reports the same device:
//! memory used is the physical and plain allocations made through the driver.
//! Utilisation is reported as 0: the interpreter keeps no busy-time record.
#![allow(non_snake_case)]

use std::ffi::{c_char, c_uint, c_ulonglong, c_void};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::driver::state::instance;

pub const NVML_SUCCESS: c_uint = 0;
pub const NVML_ERROR_UNINITIALIZED: c_uint = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: c_uint = 2;
pub const NVML_ERROR_INSUFFICIENT_SIZE: c_uint = 7;
pub const NVML_ERROR_DRIVER_NOT_LOADED: c_uint = 9;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: c_uint = 25;

/// The driver version string.
pub const DRIVER_VERSION: &str = "softgpu 0.1 (CUDA 13.0 API)";

/// `nvmlDevice_t` of device 0: any non-null value would do; this one is no address.
const DEVICE: usize = 0x50f7_9000;

/// `nvmlMemory_v2_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlMemoryV2 {
    pub version: c_uint,
    pub total: c_ulonglong,
    pub reserved: c_ulonglong,
    pub free: c_ulonglong,
    pub used: c_ulonglong,
}

/// `NVML_STRUCT_VERSION(Memory, 2)`.
pub const NVML_MEMORY_V2: c_uint = (size_of::<NvmlMemoryV2>() as c_uint) | (2 << 24);

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlUtilization {
    pub gpu: c_uint,
    pub memory: c_uint,
}

/// `nvmlInit_v2` calls not yet matched by `nvmlShutdown`.
static INITS: AtomicU32 = AtomicU32::new(0);

fn initialised() -> Result<(), c_uint> {
    if INITS.load(Ordering::Acquire) > 0 { Ok(()) } else { Err(NVML_ERROR_UNINITIALIZED) }
}

fn check_device(device: *mut c_void) -> Result<(), c_uint> {
    initialised()?;
    if device.addr() == DEVICE { Ok(()) } else { Err(NVML_ERROR_INVALID_ARGUMENT) }
}

fn code(r: Result<(), c_uint>) -> c_uint {
    r.err().unwrap_or(NVML_SUCCESS)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> c_uint {
    match instance() {
        Ok(_) => {
            INITS.fetch_add(1, Ordering::AcqRel);
            NVML_SUCCESS
        }
        Err(why) => {
            eprintln!("softgpu: nvmlInit_v2: {why}");
            NVML_ERROR_DRIVER_NOT_LOADED
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> c_uint {
    let dropped = INITS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    if dropped.is_ok() { NVML_SUCCESS } else { NVML_ERROR_UNINITIALIZED }
}

/// # Safety
/// `version` NULL or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> c_uint {
    code(initialised().and_then(|_| {
        if version.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        if (length as usize) <= DRIVER_VERSION.len() {
            return Err(NVML_ERROR_INSUFFICIENT_SIZE);
        }
        // SAFETY: `version` holds `length` > len bytes by the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(
                DRIVER_VERSION.as_ptr().cast::<c_char>(),
                version,
                DRIVER_VERSION.len(),
            );
            version.add(DRIVER_VERSION.len()).write(0);
        }
        Ok(())
    }))
}

/// # Safety
/// `device` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut *mut c_void) -> c_uint {
    code(initialised().and_then(|_| {
        if index != 0 || device.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { device.write(std::ptr::without_provenance_mut(DEVICE)) };
        Ok(())
    }))
}

/// Total, used (physical and plain allocations) and free device memory.
///
/// # Safety
/// `memory` NULL or valid for reading and writing an `nvmlMemory_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: *mut c_void,
    memory: *mut NvmlMemoryV2,
) -> c_uint {
    code(check_device(device).and_then(|_| {
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null and readable by the caller's contract.
        if unsafe { (*memory).version } != NVML_MEMORY_V2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let driver = instance().map_err(|_| NVML_ERROR_DRIVER_NOT_LOADED)?;
        let (total, used) = {
            let mem = driver.memory();
            (mem.total(), mem.used())
        };
        let info = NvmlMemoryV2 { version: NVML_MEMORY_V2, total, reserved: 0, free: total - used, used };
        // SAFETY: writable by the caller's contract.
        unsafe { memory.write(info) };
        Ok(())
    }))
}

/// # Safety
/// `utilization` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: *mut c_void,
    utilization: *mut NvmlUtilization,
) -> c_uint {
    code(check_device(device).and_then(|_| {
        if utilization.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { utilization.write(NvmlUtilization::default()) };
        Ok(())
    }))
}
