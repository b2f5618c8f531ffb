//! Opaque handles (`CUcontext`, `CUmodule`, `CUfunction`, `CUevent`, `CUstream`,
//! `CUmemGenericAllocationHandle`): numbers from one counter with the
//! kind in the top byte, so a handle of the wrong kind or a stale one is never found
//! in a table and the call says `CUDA_ERROR_INVALID_HANDLE` (or its own code) instead
//! of touching freed memory.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Context = 1,
    Module = 2,
    Function = 3,
    Event = 4,
    Physical = 5,
    Stream = 6,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A handle never given out before.
pub fn new_handle(kind: Kind) -> u64 {
    (kind as u64) << 56 | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A handle as the pointer-typed C handle.
pub fn to_ptr(handle: u64) -> *mut c_void {
    std::ptr::without_provenance_mut(handle as usize)
}

/// A pointer-typed C handle back as the number (NULL is 0).
pub fn from_ptr(p: *mut c_void) -> u64 {
    p.addr() as u64
}
