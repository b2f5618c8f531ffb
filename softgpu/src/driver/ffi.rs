//! Checked access to the raw pointers the C API hands in: a NULL where the driver
//! requires a pointer is `CUDA_ERROR_INVALID_VALUE`, never a crash.

use std::ffi::{CStr, c_char};

use super::error::{CuOutcome, CuResult};

/// Stores `value` in `*out`.
///
/// # Safety
/// `out` must be NULL or valid for writing a `T`.
pub unsafe fn write_out<T>(out: *mut T, value: T) -> CuOutcome {
    if out.is_null() {
        return Err(CuResult::InvalidValue);
    }
    // SAFETY: non-null, and writable by the caller's contract.
    unsafe { out.write(value) };
    Ok(())
}

/// Fails unless `out` is non-NULL: for checking every out-pointer before acting.
pub fn require<T>(out: *const T) -> CuOutcome {
    if out.is_null() { Err(CuResult::InvalidValue) } else { Ok(()) }
}

/// Reads `*p`.
///
/// # Safety
/// `p` must be NULL or valid for reading a `T`.
pub unsafe fn read_in<T: Copy>(p: *const T) -> CuOutcome<T> {
    require(p)?;
    // SAFETY: non-null, and readable by the caller's contract.
    Ok(unsafe { p.read() })
}

/// The NUL-terminated string at `p`.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that outlives `'a`.
pub unsafe fn c_str<'a>(p: *const c_char) -> CuOutcome<&'a CStr> {
    require(p)?;
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    Ok(unsafe { CStr::from_ptr(p) })
}
