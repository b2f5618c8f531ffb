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
    /// The largest f32 that `from_f32` rounds to zero: a value is stored positive exactly
    /// when it is above this.
    const LARGEST_ROUNDED_TO_ZERO: f32;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// `x` as f32: itself when it is f32, else widened into `scratch` (of its length) by
    /// `half`'s slice conversion (F16C eight at a time where the CPU has it), which
    /// vectorises where converting element by element does not.
    fn as_f32<'a>(x: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
    /// Runs `f` on an f32 view of `out` to fill it: `out` itself when it is f32, else
    /// `scratch` (of its length), then rounded into `out` as `from_f32` rounds, eight at
    /// a time.
    fn write_f32(out: &mut [Self], scratch: &mut [f32], f: impl FnOnce(&mut [f32]));
    /// `write_f32` for `f` that also reads `out`: an FP16 `out` is widened into
    /// `scratch` first.
    fn update_f32(out: &mut [Self], scratch: &mut [f32], f: impl FnOnce(&mut [f32]));
    /// The elements as f32: borrowed when they are, else widened (`half`'s slice
    /// conversion) into a new vector.
    fn widen(x: &[Self]) -> Cow<'_, [f32]>;
    /// Runs `f` on an f32 view of `out`: `out` itself when it is f32, else scratch that is
    /// then rounded into `out`.
    fn through_f32(out: &mut [Self], f: impl FnOnce(&mut [f32]));
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
    const LARGEST_ROUNDED_TO_ZERO: f32 = 0.0;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn as_f32<'a>(x: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        x
    }
    fn write_f32(out: &mut [f32], _: &mut [f32], f: impl FnOnce(&mut [f32])) {
        f(out)
    }
    fn update_f32(out: &mut [f32], _: &mut [f32], f: impl FnOnce(&mut [f32])) {
        f(out)
    }
    fn widen(x: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(x)
    }
    fn through_f32(out: &mut [f32], f: impl FnOnce(&mut [f32])) {
        f(out)
    }
}

/// f16 → f32, exactly, in a few integer and float operations the compiler inlines and
/// vectorises. `half`'s scalar conversion calls a function per element (its F16C path
/// behind a run-time check), which made FP16 training on the CPU spend about a tenth of
/// its time converting (perf of the ResNet-18 step). The exponent and mantissa move to
/// f32's positions and a multiplication by 2¹¹² rebiases the exponent, which is exact for
/// normal and subnormal halves alike; infinities and NaNs keep an all-ones exponent, a
/// NaN quietened as F16C does.
#[inline]
fn f16_to_f32(h: f16) -> f32 {
    let bits = h.to_bits() as u32;
    let sign = (bits & 0x8000) << 16;
    let magnitude = bits & 0x7fff;
    let scaled = f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000);
    let special =
        f32::from_bits(0x7f80_0000 | (magnitude << 13) | if magnitude > 0x7c00 { 0x0040_0000 } else { 0 });
    f32::from_bits((if magnitude >= 0x7c00 { special } else { scaled }).to_bits() | sign)
}

/// f32 → f16, rounded to nearest even (as `half` and the GPU's `__float2half_rn`), in
/// inlined integer and float operations, for the reason `f16_to_f32` gives. Normal
/// results rebias the exponent and round by adding 0xfff plus the kept mantissa's lowest
/// bit; subnormal ones let the FPU round by adding 0.5 (whose ulp is f16's smallest
/// subnormal); overflow gives infinity and a NaN keeps its payload's top bits, quietened.
#[inline]
fn f32_to_f16(v: f32) -> f16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let u = bits & 0x7fff_ffff;
    let special = if u > 0x7f80_0000 { 0x7e00 | ((u >> 13) & 0x03ff) as u16 } else { 0x7c00 };
    let half_ulp = f32::from_bits(126 << 23);
    let subnormal = (f32::from_bits(u) + half_ulp).to_bits().wrapping_sub(half_ulp.to_bits()) as u16;
    let normal = (u.wrapping_add(0xc800_0fff).wrapping_add((u >> 13) & 1) >> 13) as u16;
    let magnitude = if u >= 143 << 23 {
        special
    } else if u < 113 << 23 {
        subnormal
    } else {
        normal
    };
    f16::from_bits(magnitude | sign)
}

impl Elem for f16 {
    const DTYPE: DType = DType::F16;
    /// 2⁻²⁵, half the smallest subnormal: the tie rounds to even, zero.
    const LARGEST_ROUNDED_TO_ZERO: f32 = f32::from_bits(0x3300_0000);
    fn to_f32(self) -> f32 {
        f16_to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f32_to_f16(v)
    }
    fn as_f32<'a>(x: &'a [f16], scratch: &'a mut [f32]) -> &'a [f32] {
        x.convert_to_f32_slice(scratch);
        scratch
    }
    fn write_f32(out: &mut [f16], scratch: &mut [f32], f: impl FnOnce(&mut [f32])) {
        f(scratch);
        out.convert_from_f32_slice(scratch);
    }
    fn update_f32(out: &mut [f16], scratch: &mut [f32], f: impl FnOnce(&mut [f32])) {
        out.convert_to_f32_slice(scratch);
        Self::write_f32(out, scratch, f);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_is_halfs_bit_for_bit_on_every_value() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            assert_eq!(f16_to_f32(h).to_bits(), h.to_f32().to_bits(), "f16 bits {bits:#06x}");
        }
    }

    #[test]
    fn f16_rounding_is_halfs_bit_for_bit() {
        let same = |f: f32| {
            assert_eq!(
                f32_to_f16(f).to_bits(),
                f16::from_f32(f).to_bits(),
                "f32 {f:e} ({:#010x})",
                f.to_bits()
            );
        };
        // Every half exactly, the midpoints to its neighbour (ties to even) and one f32 ulp
        // either side of them, both signs: every rounding decision there is.
        for bits in 0..0x7c00u16 {
            let (lo, hi) = (f16::from_bits(bits).to_f32() as f64, f16::from_bits(bits + 1).to_f32() as f64);
            let mid = ((lo + hi) / 2.0) as f32;
            for f in [lo as f32, mid, f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1)] {
                same(f);
                same(-f);
            }
        }
        // A sweep of every kind of f32: zero, subnormals, overflow to infinity, infinities
        // and NaNs with payloads.
        for bits in (0..=u32::MAX).step_by(65_537).chain([0x7f80_0000, 0x7f80_0001, 0x7fc0_1234, 0xffbf_ffff])
        {
            same(f32::from_bits(bits));
        }
    }

    #[test]
    fn slice_conversions_are_the_scalar_ones_bit_for_bit() {
        let halves: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut scratch = vec![0.0f32; halves.len()];
        let wide = f16::as_f32(&halves, &mut scratch);
        assert!(halves.iter().zip(wide).all(|(h, w)| f16_to_f32(*h).to_bits() == w.to_bits()));
        // Every kind of f32 (as `f16_rounding_is_halfs_bit_for_bit` sweeps them), NaNs
        // with payloads among them.
        let floats: Vec<f32> = (0..=u32::MAX).step_by(4_099).map(f32::from_bits).collect();
        let (mut narrow, mut scratch) = (vec![f16::ZERO; floats.len()], vec![0.0f32; floats.len()]);
        f16::write_f32(&mut narrow, &mut scratch, |out| out.copy_from_slice(&floats));
        assert!(floats.iter().zip(&narrow).all(|(f, h)| f32_to_f16(*f).to_bits() == h.to_bits()));
    }

    #[test]
    fn values_above_the_largest_rounded_to_zero_are_stored_positive() {
        let t = <f16 as Elem>::LARGEST_ROUNDED_TO_ZERO;
        assert_eq!(f32_to_f16(t).to_bits(), 0);
        assert!(f32_to_f16(f32::from_bits(t.to_bits() + 1)).to_f32() > 0.0);
        assert_eq!(<f32 as Elem>::LARGEST_ROUNDED_TO_ZERO.to_bits(), 0);
    }
}
