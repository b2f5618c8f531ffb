//! What the pool sits on: a reserved virtual range whose granules can be mapped to
//! physical memory and unmapped again, plus events that say when a stream's work is done.
//!
//! `HostBacking` does this for host memory with mmap/mprotect/madvise — the same shape
//! as CUDA's cuMemAddressReserve/cuMemMap — so the pool's logic is exercised, memory and
//! all, on machines without a GPU.

use std::ptr::NonNull;

/// A stream the pool's users order their work on (the CPU backend uses one, `0`).
pub type StreamId = u64;
/// An event recorded on a stream; done once the work queued before it has finished.
pub type EventId = u64;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct BackingError {
    pub what: &'static str,
    pub detail: String,
}

pub trait Backing {
    /// Bytes per mapping unit (2 MiB on current CUDA devices).
    fn granule(&self) -> usize;
    /// Bytes of the reserved virtual range; a multiple of `granule()`.
    fn capacity(&self) -> usize;
    /// Address of byte 0 of the range.
    fn base(&self) -> usize;
    /// Backs granules `first..first + count` with physical memory.
    fn map(&mut self, first: usize, count: usize) -> Result<(), BackingError>;
    /// Returns granules `first..first + count` to the system; their contents are lost.
    fn unmap(&mut self, first: usize, count: usize) -> Result<(), BackingError>;
    fn record_event(&mut self, stream: StreamId) -> Result<EventId, BackingError>;
    fn event_done(&mut self, event: EventId) -> Result<bool, BackingError>;
    /// The pool no longer needs `event`.
    fn forget_event(&mut self, event: EventId);
}

/// Host memory: a PROT_NONE reservation whose granules become readable and writable when
/// mapped, and are given back with MADV_DONTNEED when unmapped. Host work is synchronous,
/// so every event is done as soon as it is recorded.
pub struct HostBacking {
    base: NonNull<u8>,
    capacity: usize,
    granule: usize,
    next_event: EventId,
}

// SAFETY: the reservation is owned by this value alone; the raw pointer is an address,
// not shared state.
unsafe impl Send for HostBacking {}

impl HostBacking {
    /// Reserves `capacity` bytes (rounded up to `granule`, itself rounded to the page size)
    /// of address space; no memory is committed until `map`.
    pub fn reserve(capacity: usize, granule: usize) -> Result<Self, BackingError> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let granule = granule.max(page).div_ceil(page) * page;
        let capacity = capacity.max(granule).div_ceil(granule) * granule;
        // SAFETY: an anonymous private PROT_NONE mapping at an address of the kernel's
        // choice; the result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BackingError {
                what: "host reserve",
                detail: format!("mmap of {capacity} bytes failed: {}", std::io::Error::last_os_error()),
            });
        }
        let base = NonNull::new(ptr.cast()).expect("mmap succeeded with a null address");
        Ok(HostBacking { base, capacity, granule, next_event: 0 })
    }

    fn protect(
        &self,
        first: usize,
        count: usize,
        prot: libc::c_int,
        what: &'static str,
    ) -> Result<(), BackingError> {
        if (first + count) * self.granule > self.capacity {
            return Err(BackingError {
                what,
                detail: format!("granules {first}+{count} beyond the reservation"),
            });
        }
        // SAFETY: the range lies inside the reservation made in `reserve` (checked above).
        let rc = unsafe {
            libc::mprotect(self.base.as_ptr().add(first * self.granule).cast(), count * self.granule, prot)
        };
        if rc != 0 {
            return Err(BackingError { what, detail: std::io::Error::last_os_error().to_string() });
        }
        Ok(())
    }
}

impl Backing for HostBacking {
    fn granule(&self) -> usize {
        self.granule
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn base(&self) -> usize {
        self.base.as_ptr() as usize
    }
    fn map(&mut self, first: usize, count: usize) -> Result<(), BackingError> {
        self.protect(first, count, libc::PROT_READ | libc::PROT_WRITE, "host map")
    }
    fn unmap(&mut self, first: usize, count: usize) -> Result<(), BackingError> {
        self.protect(first, count, libc::PROT_NONE, "host unmap")?;
        // SAFETY: inside the reservation (`protect` just checked the same range).
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(first * self.granule).cast(),
                count * self.granule,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(BackingError {
                what: "host unmap",
                detail: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(())
    }
    fn record_event(&mut self, _stream: StreamId) -> Result<EventId, BackingError> {
        self.next_event += 1;
        Ok(self.next_event)
    }
    fn event_done(&mut self, _event: EventId) -> Result<bool, BackingError> {
        Ok(true)
    }
    fn forget_event(&mut self, _event: EventId) {}
}

impl Drop for HostBacking {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the reservation made in `reserve`; nothing handed out by
        // the pool outlives the pool that owns this backing.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.capacity);
        }
    }
}
