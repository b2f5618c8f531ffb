//! `CUresult`: the codes this driver returns, with the real driver's names and
//! descriptions, and `cuGetErrorName` / `cuGetErrorString` for them.
#![allow(non_snake_case)]

use std::ffi::{CStr, c_char};

/// The subset of the driver's `CUresult` (`cudaError_enum`, values from `cuda.h`) that
/// some call here can return. A C enum is an `unsigned int`, hence `repr(u32)`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CuResult {
    Success = 0,
    InvalidValue = 1,
    OutOfMemory = 2,
    NotInitialized = 3,
    InvalidDevice = 101,
    InvalidImage = 200,
    InvalidContext = 201,
    InvalidPtx = 218,
    InvalidHandle = 400,
    NotFound = 500,
    LaunchFailed = 719,
    NotSupported = 801,
}

/// What an internal step yields: a value, or the code the entry point returns.
pub type CuOutcome<T = ()> = Result<T, CuResult>;

impl CuResult {
    /// Every code above, for lookups by number and for tests.
    pub const ALL: [CuResult; 12] = [
        CuResult::Success,
        CuResult::InvalidValue,
        CuResult::OutOfMemory,
        CuResult::NotInitialized,
        CuResult::InvalidDevice,
        CuResult::InvalidImage,
        CuResult::InvalidContext,
        CuResult::InvalidPtx,
        CuResult::InvalidHandle,
        CuResult::NotFound,
        CuResult::LaunchFailed,
        CuResult::NotSupported,
    ];

    /// The code of an entry point whose body returned `outcome`.
    pub fn of(outcome: CuOutcome) -> CuResult {
        outcome.err().unwrap_or(CuResult::Success)
    }

    pub fn from_code(code: u32) -> Option<CuResult> {
        CuResult::ALL.into_iter().find(|r| *r as u32 == code)
    }

    /// `cuGetErrorName`'s answer: the enumerator's name.
    pub fn name(self) -> &'static CStr {
        match self {
            CuResult::Success => c"CUDA_SUCCESS",
            CuResult::InvalidValue => c"CUDA_ERROR_INVALID_VALUE",
            CuResult::OutOfMemory => c"CUDA_ERROR_OUT_OF_MEMORY",
            CuResult::NotInitialized => c"CUDA_ERROR_NOT_INITIALIZED",
            CuResult::InvalidDevice => c"CUDA_ERROR_INVALID_DEVICE",
            CuResult::InvalidImage => c"CUDA_ERROR_INVALID_IMAGE",
            CuResult::InvalidContext => c"CUDA_ERROR_INVALID_CONTEXT",
            CuResult::InvalidPtx => c"CUDA_ERROR_INVALID_PTX",
            CuResult::InvalidHandle => c"CUDA_ERROR_INVALID_HANDLE",
            CuResult::NotFound => c"CUDA_ERROR_NOT_FOUND",
            CuResult::LaunchFailed => c"CUDA_ERROR_LAUNCH_FAILED",
            CuResult::NotSupported => c"CUDA_ERROR_NOT_SUPPORTED",
        }
    }

    /// `cuGetErrorString`'s answer: the real driver's description of the code.
    pub fn description(self) -> &'static CStr {
        match self {
            CuResult::Success => c"no error",
            CuResult::InvalidValue => c"invalid argument",
            CuResult::OutOfMemory => c"out of memory",
            CuResult::NotInitialized => c"initialization error",
            CuResult::InvalidDevice => c"invalid device ordinal",
            CuResult::InvalidImage => c"device kernel image is invalid",
            CuResult::InvalidContext => c"invalid device context",
            CuResult::InvalidPtx => c"a PTX JIT compilation failed",
            CuResult::InvalidHandle => c"invalid resource handle",
            CuResult::NotFound => c"named symbol not found",
            CuResult::LaunchFailed => c"unspecified launch failure",
            CuResult::NotSupported => c"operation not supported",
        }
    }
}

/// Writes the static string for `error` to `*out`; an unknown code leaves NULL there
/// and is `CUDA_ERROR_INVALID_VALUE`, as in the driver.
unsafe fn lookup(error: u32, out: *mut *const c_char, text: fn(CuResult) -> &'static CStr) -> CuResult {
    if out.is_null() {
        return CuResult::InvalidValue;
    }
    let found = CuResult::from_code(error);
    // SAFETY: `out` is non-null and the caller's contract makes it writable.
    unsafe { *out = found.map_or(std::ptr::null(), |r| text(r).as_ptr()) };
    if found.is_some() { CuResult::Success } else { CuResult::InvalidValue }
}

/// # Safety
/// `p_str` must be NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(error: u32, p_str: *mut *const c_char) -> CuResult {
    // SAFETY: forwarded caller contract.
    unsafe { lookup(error, p_str, CuResult::description) }
}

/// # Safety
/// `p_str` must be NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(error: u32, p_str: *mut *const c_char) -> CuResult {
    // SAFETY: forwarded caller contract.
    unsafe { lookup(error, p_str, CuResult::name) }
}
