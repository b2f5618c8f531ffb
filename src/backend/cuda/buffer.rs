//! Device memory from the pool, seen by the kernels' launch code as ordinary `CudaSlice`s:
//! a pool block is wrapped without a driver allocation and handed back to the pool, never
//! to `cuMemFree`, when dropped.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, LaunchArgs, PushKernelArg, ValidAsZeroBits};
use half::f16;

use crate::kernels::Entry;
use crate::memory::cuda_backing::CudaBacking;
use crate::memory::{Allocation, Pool, PoolError, StreamId};
use crate::tensor::DType;

/// The device pool, shared by a device's tensors and scratch.
pub type DevicePool = Arc<Mutex<Pool<CudaBacking>>>;

/// The pool's name for the stream every kernel runs on (the context's default stream).
pub const COMPUTE_STREAM: StreamId = 0;
/// The pool's name for the stream staged host-to-device copies run on.
pub const COPY_STREAM: StreamId = 1;

/// `len` elements of `T` in a block of the device pool.
pub struct PoolSlice<T> {
    slice: ManuallyDrop<CudaSlice<T>>,
    alloc: Allocation,
    pool: DevicePool,
}

impl<T: DeviceRepr + ValidAsZeroBits> PoolSlice<T> {
    /// `len` elements from a block usable on pool stream `on`, seen by cudarc as memory of
    /// `stream` (the compute stream, whose ops take it).
    ///
    /// # Safety
    /// The contents are unset: the caller fills every element before any kernel reads it.
    pub unsafe fn uninit(
        stream: &Arc<CudaStream>,
        pool: &DevicePool,
        len: usize,
        on: StreamId,
    ) -> Result<Self, PoolError> {
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        let alloc = pool.lock().unwrap_or_else(PoisonError::into_inner).alloc(bytes, on)?;
        // SAFETY: the block is mapped on this device and holds at least len·size_of::<T>()
        // bytes; the caller fills it before anyone reads it, and `Drop` leaks the slice
        // back to a pointer instead of freeing it.
        let slice = unsafe { stream.upgrade_device_ptr::<T>(alloc.ptr as u64, len) };
        Ok(PoolSlice { slice: ManuallyDrop::new(slice), alloc, pool: pool.clone() })
    }

    /// `len` zeroed elements for work on the compute stream.
    pub fn zeroed(stream: &Arc<CudaStream>, pool: &DevicePool, len: usize) -> Result<Self, PoolError> {
        // SAFETY: zeroed below, on the stream that will read it, before anything else.
        let mut buf = unsafe { Self::uninit(stream, pool, len, COMPUTE_STREAM) }?;
        if len > 0 {
            stream.memset_zeros(&mut *buf.slice).map_err(|e| {
                PoolError::Backing(crate::memory::BackingError {
                    what: "cuMemsetD8Async",
                    detail: e.to_string(),
                })
            })?;
        }
        Ok(buf)
    }
}

impl<T> PoolSlice<T> {
    /// The block's device address.
    pub fn device_ptr(&self) -> u64 {
        self.alloc.ptr as u64
    }

    /// Moves the block to pool stream `to` once `to` has waited for the work on it so far
    /// (see `Pool::hand_over`).
    pub fn hand_over(&mut self, to: StreamId) -> Result<(), PoolError> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner).hand_over(&mut self.alloc, to)
    }
}

impl<T> Deref for PoolSlice<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.slice
    }
}

impl<T> DerefMut for PoolSlice<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}

// SAFETY: a pool slice is pushed as the CudaSlice it wraps, which outlives the launch
// arguments by the same borrow.
unsafe impl<'a, 'b: 'a, T> PushKernelArg<&'b PoolSlice<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b PoolSlice<T>) -> &mut Self {
        self.arg(&*arg.slice)
    }
}

// SAFETY: as above, mutably.
unsafe impl<'a, 'b: 'a, T> PushKernelArg<&'b mut PoolSlice<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b mut PoolSlice<T>) -> &mut Self {
        self.arg(&mut *arg.slice)
    }
}

impl<T> Drop for PoolSlice<T> {
    fn drop(&mut self) {
        // SAFETY: the slice is taken once, here, and never used again.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        // The pointer is the pool's: leaking the slice keeps cudarc from freeing it.
        let _ = slice.leak();
        // Freeing a block this buffer allocated cannot fail short of a pool bug; a drop
        // has no one to report it to. Work queued on the stream that still reads the
        // block runs before any later use of it on the same stream.
        let _ = self.pool.lock().unwrap_or_else(PoisonError::into_inner).free(self.alloc);
    }
}

impl<T> std::fmt::Debug for PoolSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolSlice({} × {} B at {:#x})", self.slice.len(), std::mem::size_of::<T>(), self.alloc.ptr)
    }
}

/// The storage of a tensor: a pool block of FP32 or FP16 elements.
#[derive(Debug)]
pub enum DeviceBuf {
    F32(PoolSlice<f32>),
    F16(PoolSlice<f16>),
}

impl DeviceBuf {
    pub fn dtype(&self) -> DType {
        match self {
            DeviceBuf::F32(_) => DType::F32,
            DeviceBuf::F16(_) => DType::F16,
        }
    }

    /// The elements as `E`, which must be the buffer's dtype (the op checks saw to it).
    pub fn get<E: DeviceElem>(&self) -> &CudaSlice<E> {
        E::of(self).unwrap_or_else(|| panic!("a {} tensor read as {}", self.dtype(), E::DTYPE))
    }

    pub fn get_mut<E: DeviceElem>(&mut self) -> &mut CudaSlice<E> {
        let dtype = self.dtype();
        E::of_mut(self).unwrap_or_else(|| panic!("a {dtype} tensor written as {}", E::DTYPE))
    }

    /// The FP32 elements (weights, gradients, statistics: FP32 by the op checks).
    pub fn f32s(&self) -> &CudaSlice<f32> {
        self.get::<f32>()
    }

    pub fn f32s_mut(&mut self) -> &mut CudaSlice<f32> {
        self.get_mut::<f32>()
    }
}

/// An element type of device tensors; host functions generic over it launch the entry
/// point of its dtype.
pub trait DeviceElem: DeviceRepr + ValidAsZeroBits + Default + Clone + Unpin + 'static {
    const DTYPE: DType;
    fn of(buf: &DeviceBuf) -> Option<&CudaSlice<Self>>;
    fn of_mut(buf: &mut DeviceBuf) -> Option<&mut CudaSlice<Self>>;
    fn wrap(slice: PoolSlice<Self>) -> DeviceBuf;
    /// `f32` or `f16` of a kernel with both entries.
    fn entry(f32: Entry, f16: Entry) -> Entry {
        match Self::DTYPE {
            DType::F32 => f32,
            DType::F16 => f16,
        }
    }
}

impl DeviceElem for f32 {
    const DTYPE: DType = DType::F32;
    fn of(buf: &DeviceBuf) -> Option<&CudaSlice<f32>> {
        match buf {
            DeviceBuf::F32(s) => Some(s),
            DeviceBuf::F16(_) => None,
        }
    }
    fn of_mut(buf: &mut DeviceBuf) -> Option<&mut CudaSlice<f32>> {
        match buf {
            DeviceBuf::F32(s) => Some(s),
            DeviceBuf::F16(_) => None,
        }
    }
    fn wrap(slice: PoolSlice<f32>) -> DeviceBuf {
        DeviceBuf::F32(slice)
    }
}

impl DeviceElem for f16 {
    const DTYPE: DType = DType::F16;
    fn of(buf: &DeviceBuf) -> Option<&CudaSlice<f16>> {
        match buf {
            DeviceBuf::F16(s) => Some(s),
            DeviceBuf::F32(_) => None,
        }
    }
    fn of_mut(buf: &mut DeviceBuf) -> Option<&mut CudaSlice<f16>> {
        match buf {
            DeviceBuf::F16(s) => Some(s),
            DeviceBuf::F32(_) => None,
        }
    }
    fn wrap(slice: PoolSlice<f16>) -> DeviceBuf {
        DeviceBuf::F16(slice)
    }
}

/// Runs `$body` with the type alias `$E` set to the element type of `$dtype`: one
/// generic launch serves FP32 and FP16 tensors.
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
