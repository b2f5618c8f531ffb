//! Streams. Every call runs to completion before it returns, so a stream is only a
//! name for "the current context's queue": NULL, `CU_STREAM_LEGACY` and
//! `CU_STREAM_PER_THREAD`. dfengine creates no streams, so `cuStreamCreate` is absent
//! and any other handle is `CUDA_ERROR_INVALID_HANDLE`.
#![allow(non_snake_case)]

use std::ffi::c_void;

use super::context::{current, take_pending};
use super::error::{CuOutcome, CuResult};
use super::handle::from_ptr;
use super::state::driver;

const CU_STREAM_LEGACY: u64 = 0x1;
const CU_STREAM_PER_THREAD: u64 = 0x2;

pub fn check_stream(stream: *mut c_void) -> CuOutcome {
    match from_ptr(stream) {
        0 | CU_STREAM_LEGACY | CU_STREAM_PER_THREAD => Ok(()),
        _ => Err(CuResult::InvalidHandle),
    }
}

/// Returns at once (all work is done), with the error of a failed launch on this
/// thread since the last synchronisation.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamSynchronize(stream: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let ctx = current(&d.objects())?;
        check_stream(stream)?;
        take_pending(ctx)
    }))
}
