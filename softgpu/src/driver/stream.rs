//! Streams. Every call runs to completion before it returns, so a stream is only a
//! name for the current context's queue: NULL, `CU_STREAM_LEGACY`,
//! `CU_STREAM_PER_THREAD`, or a stream made by `cuStreamCreate` (dfengine's copy
//! stream). Waiting on an event is then a check of the handles: the work it stands for
//! is done. What the card adds, copies running beside kernels, is absent; so is a
//! missing wait's race, which only a card shows.
#![allow(non_snake_case)]

use std::ffi::{c_uint, c_void};

use super::context::{current, take_pending};
use super::error::{CuOutcome, CuResult};
use super::ffi::{require, write_out};
use super::handle::{Kind, from_ptr, new_handle, to_ptr};
use super::state::{Objects, driver};

const CU_STREAM_LEGACY: u64 = 0x1;
const CU_STREAM_PER_THREAD: u64 = 0x2;
const CU_STREAM_NON_BLOCKING: c_uint = 0x1;

/// The current context, once `stream` is known as one of its queues: a built-in name,
/// or a stream it created (`CUDA_ERROR_INVALID_HANDLE` otherwise, a destroyed one
/// included).
pub fn current_on(objects: &Objects, stream: *mut c_void) -> CuOutcome<u64> {
    let ctx = current(objects)?;
    match from_ptr(stream) {
        0 | CU_STREAM_LEGACY | CU_STREAM_PER_THREAD => Ok(ctx),
        handle => match objects.streams.get(&handle) {
            Some(&owner) if owner == ctx => Ok(ctx),
            _ => Err(CuResult::InvalidHandle),
        },
    }
}

/// A new stream of the current context; `flags` is `CU_STREAM_DEFAULT` or
/// `CU_STREAM_NON_BLOCKING` (the same thing here: nothing is ever in flight).
///
/// # Safety
/// `ph_stream` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(ph_stream: *mut *mut c_void, flags: c_uint) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(ph_stream)?;
        if flags & !CU_STREAM_NON_BLOCKING != 0 {
            return Err(CuResult::InvalidValue);
        }
        let mut objects = d.objects();
        let ctx = current(&objects)?;
        let handle = new_handle(Kind::Stream);
        objects.streams.insert(handle, ctx);
        // SAFETY: caller contract.
        unsafe { write_out(ph_stream, to_ptr(handle)) }
    }))
}

/// Destroys a stream `cuStreamCreate` made; the built-in names cannot be destroyed.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamDestroy_v2(h_stream: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        d.objects().streams.remove(&from_ptr(h_stream)).map(|_| ()).ok_or(CuResult::InvalidHandle)
    }))
}

/// Makes `h_stream`'s later work wait for `h_event`: both handles are checked, and the
/// event's work is already done.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamWaitEvent(h_stream: *mut c_void, h_event: *mut c_void, flags: c_uint) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let objects = d.objects();
        let ctx = current_on(&objects, h_stream)?;
        // CU_EVENT_WAIT_DEFAULT is the only flag outside graphs.
        if flags != 0 {
            return Err(CuResult::InvalidValue);
        }
        match objects.events.get(&from_ptr(h_event)) {
            Some(e) if e.ctx == ctx => Ok(()),
            _ => Err(CuResult::InvalidHandle),
        }
    }))
}

/// Returns at once (all work is done), with the error of a failed launch on this
/// thread since the last synchronisation.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamSynchronize(stream: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let ctx = current_on(&d.objects(), stream)?;
        take_pending(ctx)
    }))
}
