//! The primary context and the calling thread's current context.
//!
//! The primary context is reference-counted by `cuDevicePrimaryCtxRetain` /
//! `cuDevicePrimaryCtxRelease_v2`; when the count drops to zero it is destroyed with
//! its modules, functions, events, streams, page-locked host blocks and plain allocations (virtual-memory objects belong
//! to the device and stay), and the next retain creates a new one under a new handle.
//! A thread whose current context was destroyed gets `CUDA_ERROR_INVALID_CONTEXT`.
//!
//! A failed launch is reported by `cuLaunchKernel` and once more by the next
//! synchronisation on the same thread. The real driver makes such errors sticky for the
//! whole context; here one process's test threads share the primary context, and one
//! test's deliberate fault must not fail the others.
#![allow(non_snake_case)]

use std::cell::Cell;
use std::ffi::{c_int, c_void};

use super::device::check_device;
use super::error::{CuOutcome, CuResult};
use super::ffi::{require, write_out};
use super::handle::{Kind, from_ptr, new_handle, to_ptr};
use super::state::{Driver, Objects, driver};

pub struct Primary {
    pub handle: u64,
    refs: u32,
}

thread_local! {
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    static PENDING: Cell<Option<(u64, CuResult)>> = const { Cell::new(None) };
}

/// The calling thread's current context, if it is alive.
pub fn current(objects: &Objects) -> CuOutcome<u64> {
    let ctx = CURRENT.get();
    match &objects.primary {
        Some(p) if ctx != 0 && p.handle == ctx => Ok(ctx),
        _ => Err(CuResult::InvalidContext),
    }
}

/// Remembers a launch failure for the next synchronisation on this thread.
pub fn set_pending(ctx: u64, error: CuResult) {
    PENDING.set(Some((ctx, error)));
}

/// The failure left by a launch on this thread in context `ctx`, reported once.
pub fn take_pending(ctx: u64) -> CuOutcome {
    match PENDING.take() {
        Some((c, error)) if c == ctx => Err(error),
        _ => Ok(()),
    }
}

fn destroy(d: &Driver, objects: &mut Objects, ctx: u64) {
    objects.modules.retain(|_, m| m.ctx != ctx);
    objects.functions.retain(|_, f| f.ctx != ctx);
    objects.events.retain(|_, e| e.ctx != ctx);
    objects.streams.retain(|_, c| *c != ctx);
    objects.pinned.retain(|_, p| p.ctx != ctx);
    d.memory_mut().free_context(ctx);
}

/// # Safety
/// `pctx` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut *mut c_void, dev: c_int) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(pctx)?;
        check_device(dev)?;
        let mut objects = d.objects();
        let primary =
            objects.primary.get_or_insert_with(|| Primary { handle: new_handle(Kind::Context), refs: 0 });
        primary.refs += 1;
        // SAFETY: caller contract.
        unsafe { write_out(pctx, to_ptr(primary.handle)) }
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: c_int) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        check_device(dev)?;
        let mut objects = d.objects();
        let primary = objects.primary.as_mut().ok_or(CuResult::InvalidContext)?;
        primary.refs -= 1;
        if primary.refs == 0 {
            let ctx = primary.handle;
            objects.primary = None;
            destroy(d, &mut objects, ctx);
        }
        Ok(())
    }))
}

/// Writes the current context (NULL when none), as the driver does even for a
/// context destroyed since.
///
/// # Safety
/// `pctx` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|_| {
        // SAFETY: caller contract.
        unsafe { write_out(pctx, to_ptr(CURRENT.get())) }
    }))
}

/// Makes `ctx` current on this thread (NULL: none).
#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSetCurrent(ctx: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let handle = from_ptr(ctx);
        if handle != 0 && d.objects().primary.as_ref().is_none_or(|p| p.handle != handle) {
            return Err(CuResult::InvalidContext);
        }
        CURRENT.set(handle);
        Ok(())
    }))
}
