//! Events. Work is done when a call returns, so an event is complete as soon as it is
//! recorded; its time is the host's clock at `cuEventRecord`. `cuEventElapsedTime_v2`
//! therefore measures host wall time of the interpreter between two records: it says
//! nothing about how long the work would take on a real card.
#![allow(non_snake_case)]

use std::ffi::{c_uint, c_void};
use std::time::Instant;

use super::context::{current, take_pending};
use super::error::{CuOutcome, CuResult};
use super::ffi::{require, write_out};
use super::handle::{Kind, from_ptr, new_handle, to_ptr};
use super::state::{Objects, driver};
use super::stream::current_on;

const CU_EVENT_BLOCKING_SYNC: c_uint = 0x1;
const CU_EVENT_DISABLE_TIMING: c_uint = 0x2;
const CU_EVENT_INTERPROCESS: c_uint = 0x4;

pub struct Event {
    pub ctx: u64,
    timing: bool,
    recorded: Option<Instant>,
}

fn event(objects: &mut Objects, e: *mut c_void) -> CuOutcome<&mut Event> {
    objects.events.get_mut(&from_ptr(e)).ok_or(CuResult::InvalidHandle)
}

/// # Safety
/// `ph_event` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(ph_event: *mut *mut c_void, flags: c_uint) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(ph_event)?;
        if flags & !(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS) != 0 {
            return Err(CuResult::InvalidValue);
        }
        if flags & CU_EVENT_INTERPROCESS != 0 {
            return Err(CuResult::NotSupported);
        }
        let mut objects = d.objects();
        let ctx = current(&objects)?;
        let handle = new_handle(Kind::Event);
        let timing = flags & CU_EVENT_DISABLE_TIMING == 0;
        objects.events.insert(handle, Event { ctx, timing, recorded: None });
        // SAFETY: caller contract.
        unsafe { write_out(ph_event, to_ptr(handle)) }
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventRecord(h_event: *mut c_void, stream: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let mut objects = d.objects();
        let ctx = current_on(&objects, stream)?;
        let e = event(&mut objects, h_event)?;
        if e.ctx != ctx {
            return Err(CuResult::InvalidHandle);
        }
        e.recorded = Some(Instant::now());
        Ok(())
    }))
}

/// Complete, always: nothing runs after a call returns.
#[unsafe(no_mangle)]
pub extern "C" fn cuEventQuery(h_event: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| event(&mut d.objects(), h_event).map(|_| ())))
}

/// Returns at once, with the error of a failed launch on this thread since the last
/// synchronisation.
#[unsafe(no_mangle)]
pub extern "C" fn cuEventSynchronize(h_event: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let ctx = event(&mut d.objects(), h_event)?.ctx;
        take_pending(ctx)
    }))
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventDestroy_v2(h_event: *mut c_void) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        d.objects().events.remove(&from_ptr(h_event)).map(|_| ()).ok_or(CuResult::InvalidHandle)
    }))
}

/// Milliseconds of host time between the records of `h_start` and `h_end`; both must be
/// recorded and created without `CU_EVENT_DISABLE_TIMING` (else
/// `CUDA_ERROR_INVALID_HANDLE`, as in the driver).
///
/// # Safety
/// `p_milliseconds` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    p_milliseconds: *mut f32,
    h_start: *mut c_void,
    h_end: *mut c_void,
) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        require(p_milliseconds)?;
        let mut objects = d.objects();
        let mut stamp = |e| -> CuOutcome<Instant> {
            let e = event(&mut objects, e)?;
            e.recorded.filter(|_| e.timing).ok_or(CuResult::InvalidHandle)
        };
        let (start, end) = (stamp(h_start)?, stamp(h_end)?);
        let ms = match end.checked_duration_since(start) {
            Some(ahead) => ahead.as_secs_f64() * 1e3,
            None => -(start.duration_since(end).as_secs_f64() * 1e3),
        };
        // SAFETY: caller contract.
        unsafe { write_out(p_milliseconds, ms as f32) }
    }))
}
