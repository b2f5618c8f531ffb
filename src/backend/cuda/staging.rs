//! Staged host-to-device copies (`[dataloader] pin_memory = true`): a ring of page-locked
//! host slots and a second stream for the copies.
//!
//! Without it an upload is queued on the compute stream from pageable memory: the driver
//! stages the bytes itself, and the DMA waits behind every kernel queued before it. With
//! it, the bytes go into the next page-locked slot, the copy runs on the copy stream, and
//! the compute stream waits for it by an event — so the next micro-batch's frames cross
//! the bus while the kernels queued before them (the previous micro-batch's backward, the
//! optimizer step) run. The device block is taken from the pool for the copy stream
//! (reusable there only once the compute stream's earlier use of it is done) and handed
//! over to the compute stream after the wait, so its free is ordered there.
//!
//! Two slots: a slot is refilled only after its previous copy has completed, so while one
//! is copying the host fills the other. Each grows to the largest upload it has carried
//! (the micro-batch's stored frames, or the largest weight tensor at load) and stays:
//! the pinned bytes are `staged_bytes()`. Uploads under `STAGED_MIN` (crop tables,
//! scalars) go straight to the compute stream: their cost is the call, not the bus.

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream, DriverError, PinnedHostSlice};

/// Uploads smaller than this are not staged.
pub const STAGED_MIN: usize = 64 << 10;
const SLOTS: usize = 2;

/// The copy stream and its ring of page-locked slots.
pub struct Staging {
    stream: Arc<CudaStream>,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    slots: [Slot; SLOTS],
    next: usize,
}

#[derive(Default)]
struct Slot {
    host: Option<PinnedHostSlice<u8>>,
    /// Recorded after the slot's last copy: the slot may be refilled once it completes.
    copied: Option<CudaEvent>,
}

impl Staging {
    /// Staging on `stream`, a stream of the device's context other than the compute stream.
    pub fn new(stream: Arc<CudaStream>) -> Self {
        Staging { stream, ring: Mutex::new(Ring::default()) }
    }

    /// Copies `bytes` to device address `dst` through the next slot on the copy stream,
    /// and makes `compute` wait for the copy. `dst` must hold `bytes.len()` bytes that no
    /// work queued on `compute` before this call still uses.
    pub fn copy(&self, bytes: &[u8], dst: u64, compute: &CudaStream) -> Result<(), DriverError> {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let i = ring.next;
        ring.next = (i + 1) % SLOTS;
        let slot = &mut ring.slots[i];
        // The copy that last read this slot must be done before it is overwritten.
        if let Some(copied) = slot.copied.take() {
            copied.synchronize()?;
        }
        if slot.host.as_ref().is_none_or(|h| h.len() < bytes.len()) {
            // The smaller block is freed before the larger one is pinned.
            slot.host = None;
            // SAFETY: the slot's bytes are written below before the copy reads them.
            slot.host = Some(unsafe { self.stream.context().alloc_pinned::<u8>(bytes.len()) }?);
        }
        let Some(host) = slot.host.as_mut() else { unreachable!("the slot was pinned above") };
        let staged = &mut host.as_mut_slice()?[..bytes.len()];
        staged.copy_from_slice(bytes);
        // SAFETY: `staged` is page-locked and stays untouched until `copied` completes
        // (checked before the slot's next fill); `dst` holds `bytes.len()` bytes by the
        // caller's contract.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, staged, self.stream.cu_stream()) }?;
        let copied = self.stream.record_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))?;
        compute.wait(&copied)?;
        slot.copied = Some(copied);
        Ok(())
    }

    /// Page-locked host bytes the ring holds now.
    pub fn staged_bytes(&self) -> usize {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.slots.iter().filter_map(|s| s.host.as_ref()).map(PinnedHostSlice::num_bytes).sum()
    }
}
