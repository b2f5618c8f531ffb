//! Host memory standing in for device memory: one zeroed heap block per physical
//! allocation (`cuMemCreate`) or plain allocation (`cuMemAllocAsync`).

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// A zeroed block of host memory, freed on drop.
///
/// The alignment is 16 bytes (the widest PTX access, `ld.global.v4.b32`): the allocator
/// then takes the `calloc` path, whose large blocks are fresh zero pages that cost
/// nothing until touched, so a 16 GiB device does not need 16 GiB of RAM. The real
/// driver does not zero new memory; code that reads memory it never wrote sees zeros
/// here and garbage on a card, unless `SOFTGPU_FILL` fills it (`AddressSpace::take`).
pub struct HostBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

const ALIGN: usize = 16;

impl HostBuffer {
    /// `size` zeroed bytes, or `None` when the host cannot provide them.
    pub fn zeroed(size: usize) -> Option<HostBuffer> {
        let layout = Layout::from_size_align(size.max(ALIGN), ALIGN).ok()?;
        // SAFETY: the layout's size is non-zero.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })?;
        Some(HostBuffer { ptr, layout })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout, freed once here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: the buffer owns its block exclusively, like a `Box<[u8]>`; what is written
// through pointers into it is the device program's business, as on a GPU.
unsafe impl Send for HostBuffer {}
// SAFETY: as above; `&HostBuffer` only hands out the address.
unsafe impl Sync for HostBuffer {}
