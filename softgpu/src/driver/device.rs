//! The one device: "dfengine softgpu", compute capability 8.0, its multiprocessor count
//! and memory from the environment; `cuInit` and the `cuDevice*` queries.
#![allow(non_snake_case)]

use std::ffi::{c_char, c_int, c_uint};

use super::error::{CuOutcome, CuResult};
use super::ffi::{require, write_out};
use super::state::{driver, instance};

pub const NAME: &str = "dfengine softgpu";
pub const COMPUTE_CAPABILITY: (i32, i32) = (8, 0);
pub const WARP_SIZE: u32 = 32;
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;
pub const MAX_BLOCK_DIM: [u32; 3] = [1024, 1024, 64];
pub const MAX_GRID_DIM: [u32; 3] = [i32::MAX as u32, 65535, 65535];
/// Shared memory a block may use without `cuFuncSetAttribute(
/// MAX_DYNAMIC_SHARED_SIZE_BYTES)`: 48 KiB on every CUDA GPU. dfengine never raises it,
/// so neither does this driver: a launch asking for more fails as on a card.
pub const MAX_SHARED_PER_BLOCK: u32 = 48 << 10;

const DEFAULT_SM_COUNT: u32 = 8;
const DEFAULT_MEMORY: u64 = 16 << 30;
pub const SM_COUNT_VAR: &str = "SOFTGPU_SM_COUNT";
pub const MEMORY_VAR: &str = "SOFTGPU_MEMORY";
pub const FILL_VAR: &str = "SOFTGPU_FILL";

/// The device presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub sm_count: u32,
    /// Device memory in bytes; physical and plain allocations beyond it fail with
    /// `CUDA_ERROR_OUT_OF_MEMORY`.
    pub memory: u64,
    /// The byte new device memory holds (None: zeros). A card gives whatever was there;
    /// 255 makes every FP32 and FP16 element a NaN, so a result that reads memory nothing
    /// wrote shows it instead of passing on zeros.
    pub fill: Option<u8>,
}

impl DeviceConfig {
    /// From `SOFTGPU_SM_COUNT` (default 8), `SOFTGPU_MEMORY` (bytes, or with a KiB /
    /// MiB / GiB suffix; default 16 GiB) and `SOFTGPU_FILL` (a byte, 0–255; default none:
    /// zeroed memory).
    pub fn from_env() -> Result<DeviceConfig, String> {
        let read = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
        let sm_count = match read(SM_COUNT_VAR) {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{SM_COUNT_VAR}={v}: expected a positive whole number"))?,
            None => DEFAULT_SM_COUNT,
        };
        let memory = match read(MEMORY_VAR) {
            Some(v) => parse_size(&v).map_err(|e| format!("{MEMORY_VAR}={v}: {e}"))?,
            None => DEFAULT_MEMORY,
        };
        let fill = match read(FILL_VAR) {
            Some(v) => Some(
                v.trim()
                    .parse::<u8>()
                    .map_err(|_| format!("{FILL_VAR}={v}: expected a byte value, 0 to 255"))?,
            ),
            None => None,
        };
        Ok(DeviceConfig { sm_count, memory, fill })
    }
}

/// `"1073741824"`, `"512MiB"`, `"16 GiB"` → bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => return Err(format!("unknown unit `{other}` (use bytes, KiB, MiB or GiB)")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| "expected a positive size such as 17179869184 or 16GiB".to_string())
}

/// The only valid ordinal is 0.
pub fn check_device(dev: c_int) -> CuOutcome {
    if dev == 0 { Ok(()) } else { Err(CuResult::InvalidDevice) }
}

/// `CUdevice_attribute` values answered; any other is `CUDA_ERROR_INVALID_VALUE` rather
/// than a number this driver would not stand behind.
fn attribute(attrib: c_uint, sm_count: u32) -> CuOutcome<i32> {
    let value = match attrib {
        1 => MAX_THREADS_PER_BLOCK,
        2..=4 => MAX_BLOCK_DIM[attrib as usize - 2],
        5..=7 => MAX_GRID_DIM[attrib as usize - 5],
        8 => MAX_SHARED_PER_BLOCK,
        10 => WARP_SIZE,
        16 => sm_count,
        75 => COMPUTE_CAPABILITY.0 as u32,
        76 => COMPUTE_CAPABILITY.1 as u32,
        // VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED: cuMemCreate / cuMemMap and friends.
        102 => 1,
        // MEMORY_POOLS_SUPPORTED, as on an A100: cudarc then allocates with
        // cuMemAllocAsync / cuMemFreeAsync, the path it takes on the real card.
        115 => 1,
        _ => return Err(CuResult::InvalidValue),
    };
    Ok(value as i32)
}

/// Reads the device's configuration (a bad `SOFTGPU_*` value is printed and fails).
#[unsafe(no_mangle)]
pub extern "C" fn cuInit(flags: c_uint) -> CuResult {
    if flags != 0 {
        return CuResult::InvalidValue;
    }
    match instance() {
        Ok(d) => {
            d.mark_initialized();
            CuResult::Success
        }
        Err(why) => {
            eprintln!("softgpu: cuInit: {why}");
            CuResult::InvalidValue
        }
    }
}

/// # Safety
/// `count` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CuResult {
    CuResult::of(driver().and_then(|_| {
        // SAFETY: caller contract.
        unsafe { write_out(count, 1) }
    }))
}

/// # Safety
/// `device` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(device: *mut c_int, ordinal: c_int) -> CuResult {
    CuResult::of(driver().and_then(|_| {
        require(device)?;
        check_device(ordinal)?;
        // SAFETY: caller contract.
        unsafe { write_out(device, ordinal) }
    }))
}

/// # Safety
/// `pi` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(pi: *mut c_int, attrib: c_uint, dev: c_int) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(pi)?;
        check_device(dev)?;
        let value = attribute(attrib, d.config.sm_count)?;
        // SAFETY: caller contract.
        unsafe { write_out(pi, value) }
    }))
}

/// Writes the name, truncated to `len - 1` bytes and NUL-terminated.
///
/// # Safety
/// `name` must be NULL or valid for writing `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) -> CuResult {
    CuResult::of(driver().and_then(|_| {
        require(name)?;
        check_device(dev)?;
        let room = usize::try_from(len).ok().filter(|&n| n > 0).ok_or(CuResult::InvalidValue)?;
        let n = NAME.len().min(room - 1);
        // SAFETY: `name` holds `len` ≥ n + 1 bytes by the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(NAME.as_ptr().cast::<c_char>(), name, n);
            name.add(n).write(0);
        }
        Ok(())
    }))
}

/// # Safety
/// `bytes` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(bytes)?;
        check_device(dev)?;
        // SAFETY: caller contract.
        unsafe { write_out(bytes, d.config.memory as usize) }
    }))
}
