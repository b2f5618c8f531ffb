//! Host tensor storage carved from the memory pool, so that CPU training lives under a
//! budget exactly as GPU training does: an allocation past it is an `OutOfMemory`, and
//! the pool's statistics describe the run.
//!
//! Storage is reference-counted (`Arc<HostBuf>`): a layer's output is also what its
//! backward needs, and sharing it costs nothing. Ops that write in place require the
//! tensor to be unshared.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::memory::{Allocation, HostBacking, Pool, PoolError};

pub type SharedPool = Arc<Mutex<Pool<HostBacking>>>;

/// Granule of host pools: the huge-page size, so that a mapping can be backed by one.
const HOST_GRANULE: usize = 2 << 20;

/// A pool over `budget` bytes of host memory.
pub fn host_pool(budget: usize) -> Result<SharedPool, PoolError> {
    let backing = HostBacking::reserve(budget, HOST_GRANULE)?;
    Ok(Arc::new(Mutex::new(Pool::new(backing, budget))))
}

/// The pool shared by every `CpuBackend::default()`: as large as the machine's memory.
pub fn default_pool() -> &'static SharedPool {
    static POOL: OnceLock<SharedPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut sys = sysinfo::System::new().expect("sysinfo supports this platform");
        sys.refresh_memory();
        let total = (sys.total_memory() as usize).max(1 << 30);
        host_pool(total).expect("reserving address space for the host pool")
    })
}

/// `len` f32 elements in a pool block, returned to the pool on drop.
pub struct HostBuf {
    pool: SharedPool,
    alloc: Allocation,
    len: usize,
}

// SAFETY: a HostBuf owns its block exclusively (like a Vec<f32>); the pool it returns the
// block to is behind a mutex.
unsafe impl Send for HostBuf {}
unsafe impl Sync for HostBuf {}

impl HostBuf {
    /// `len` zeros from `pool`.
    pub fn zeroed(pool: &SharedPool, len: usize) -> Result<Self, PoolError> {
        let alloc = pool.lock().unwrap_or_else(PoisonError::into_inner).alloc(len * 4, 0)?;
        let mut buf = HostBuf { pool: pool.clone(), alloc, len };
        buf.fill(0.0);
        Ok(buf)
    }
}

impl Deref for HostBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: the block is mapped read-write, 512-byte aligned, at least len·4 bytes,
        // and owned by this buffer alone until drop.
        unsafe { std::slice::from_raw_parts(self.alloc.ptr as *const f32, self.len) }
    }
}

impl DerefMut for HostBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.alloc.ptr as *mut f32, self.len) }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        // Freeing a block this buffer allocated cannot fail short of a pool bug; a drop
        // has no one to report it to.
        let _ = self.pool.lock().unwrap_or_else(PoisonError::into_inner).free(self.alloc);
    }
}

impl std::fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for HostBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
