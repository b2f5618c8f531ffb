//! Host tensor storage carved from the memory pool, so that CPU training lives under a
//! budget exactly as GPU training does: an allocation past it is an `OutOfMemory`, and
//! the pool's statistics describe the run.
//!
//! Storage is reference-counted (`Arc<HostBuf>`): a layer's output is also what its
//! backward needs, and sharing it costs nothing. Ops that write in place require the
//! tensor to be unshared.
//!
//! A buffer holds FP32 or FP16 elements, as the CUDA backend's do, so that a run plans
//! and measures the same footprint on either; arithmetic is FP32 (`Elem` widens on load
//! and rounds to nearest even on store, as the kernels' `__half2float` / `__float2half_rn`).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::memory::{Allocation, HostBacking, Pool, PoolError};
use crate::tensor::DType;

/// An element type a host buffer stores: loaded as f32, stored from f32.
pub trait Elem: Copy + Send + Sync + PartialOrd + 'static {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// The elements as f32: borrowed when they are, else widened (`half`'s slice
    /// conversion) into a new vector.
    fn widen(x: &[Self]) -> Cow<'_, [f32]>;
    /// Runs `f` on an f32 view of `out`: `out` itself when it is f32, else scratch that is
    /// then rounded into `out`.
    fn through_f32(out: &mut [Self], f: impl FnOnce(&mut [f32]));
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn widen(x: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(x)
    }
    fn through_f32(out: &mut [f32], f: impl FnOnce(&mut [f32])) {
        f(out)
    }
}

impl Elem for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn widen(x: &[f16]) -> Cow<'_, [f32]> {
        let mut wide = vec![0.0; x.len()];
        x.convert_to_f32_slice(&mut wide);
        Cow::Owned(wide)
    }
    fn through_f32(out: &mut [f16], f: impl FnOnce(&mut [f32])) {
        let mut wide = vec![0.0; out.len()];
        f(&mut wide);
        out.convert_from_f32_slice(&wide);
    }
}

/// Runs `$body` with the type alias `$E` set to the element type of `$dtype`: one
/// generic op body serves FP32 and FP16 tensors.
macro_rules! with_elem {
    ($dtype:expr, $E:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $E = f32;
                $body
            }
            $crate::tensor::DType::F16 => {
                type $E = half::f16;
                $body
            }
        }
    };
}
pub(crate) use with_elem;

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

/// `len` elements of `dtype` in a pool block, returned to the pool on drop.
pub struct HostBuf {
    pool: SharedPool,
    alloc: Allocation,
    len: usize,
    dtype: DType,
}

// SAFETY: a HostBuf owns its block exclusively (like a Vec<f32>); the pool it returns the
// block to is behind a mutex.
unsafe impl Send for HostBuf {}
unsafe impl Sync for HostBuf {}

impl HostBuf {
    /// `len` zeros of `dtype` from `pool`.
    pub fn zeroed(pool: &SharedPool, len: usize, dtype: DType) -> Result<Self, PoolError> {
        let buf = Self::for_overwrite(pool, len, dtype)?;
        // SAFETY: the block is mapped read-write and holds at least len elements of dtype.
        unsafe { std::ptr::write_bytes(buf.alloc.ptr as *mut u8, 0, len * dtype.size()) };
        Ok(buf)
    }

    /// `len` elements of `dtype` from `pool` holding what the block last held, for an
    /// output that its op writes whole: zeroing it first was a pass over memory per op
    /// (2.5% of a CPU training step). The values are stale, never undefined: a block is
    /// mapped memory that the OS handed out zeroed or an earlier buffer wrote, and every
    /// bit pattern is a valid f32 and f16.
    pub fn for_overwrite(pool: &SharedPool, len: usize, dtype: DType) -> Result<Self, PoolError> {
        let alloc = pool.lock().unwrap_or_else(PoisonError::into_inner).alloc(len * dtype.size(), 0)?;
        Ok(HostBuf { pool: pool.clone(), alloc, len, dtype })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The elements as `E`, which must be the buffer's dtype (the op checks saw to it).
    pub fn get<E: Elem>(&self) -> &[E] {
        assert_eq!(E::DTYPE, self.dtype, "a {} buffer read as {}", self.dtype, E::DTYPE);
        // SAFETY: the block is mapped read-write, 512-byte aligned, at least len elements
        // of E (its dtype, asserted), and owned by this buffer alone until drop.
        unsafe { std::slice::from_raw_parts(self.alloc.ptr as *const E, self.len) }
    }

    pub fn get_mut<E: Elem>(&mut self) -> &mut [E] {
        assert_eq!(E::DTYPE, self.dtype, "a {} buffer written as {}", self.dtype, E::DTYPE);
        // SAFETY: as in `get`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.alloc.ptr as *mut E, self.len) }
    }

    /// The FP32 elements (weights, gradients, statistics: FP32 by the op checks).
    pub fn f32s(&self) -> &[f32] {
        self.get::<f32>()
    }

    pub fn f32s_mut(&mut self) -> &mut [f32] {
        self.get_mut::<f32>()
    }

    /// The elements as f32: borrowed from an FP32 buffer, widened from an FP16 one.
    pub fn widened(&self) -> Cow<'_, [f32]> {
        with_elem!(self.dtype, E => E::widen(self.get::<E>()))
    }

    /// The elements widened to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.widened().into_owned()
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
        write!(f, "{} ", self.dtype)?;
        f.debug_list().entries(self.to_f32_vec()).finish()
    }
}

impl PartialEq for HostBuf {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype && self.to_f32_vec() == other.to_f32_vec()
    }
}
