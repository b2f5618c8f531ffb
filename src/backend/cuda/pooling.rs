//! The host side of kernels/pooling.cu: max pool forward and backward, and the mean over
//! groups of rows (global average pool with group = H·W, temporal mean with group = T);
//! each on FP32 or FP16 elements.

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use super::buffer::DeviceElem;
use super::device::{CudaError, Device, check_len, grid_1d};
use crate::backend::params::Pool2dGeom;
use crate::kernels::entries;

/// kernels/pooling.cu's `PoolGeom`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    n: i32,
    h: i32,
    w: i32,
    c: i32,
    window: i32,
    stride: i32,
    pad: i32,
    p: i32,
    q: i32,
}

// SAFETY: plain `repr(C)` integers, laid out as the kernel's struct.
unsafe impl DeviceRepr for PoolGeom {}

impl From<&Pool2dGeom> for PoolGeom {
    fn from(g: &Pool2dGeom) -> Self {
        let i = |v: usize| v as i32;
        PoolGeom {
            n: i(g.n),
            h: i(g.h),
            w: i(g.w),
            c: i(g.c),
            window: i(g.window),
            stride: i(g.stride),
            pad: i(g.pad),
            p: i(g.p),
            q: i(g.q),
        }
    }
}

/// y [N, P, Q, C] = max over each window of x [N, H, W, C].
pub fn max_pool2d_fwd<T: DeviceElem>(
    dev: &Device,
    g: &Pool2dGeom,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    let entry = T::entry(entries::MAX_POOL2D_FWD_F32, entries::MAX_POOL2D_FWD_F16);
    let [xn, yn] = [g.n * g.h * g.w * g.c, g.n * g.p * g.q * g.c];
    check_len(entry, "x", x.len(), xn)?;
    check_len(entry, "y", y.len(), yn)?;
    let kernel = dev.kernel(entry)?;
    let geom = PoolGeom::from(g);
    let mut args = dev.args(&kernel);
    args.arg(x).arg(y).arg(&geom);
    // SAFETY: arguments follow the kernel's signature; lengths checked above.
    unsafe { dev.launch(&kernel, args, grid_1d(yn), || format!("{g:?}")) }
}

/// dx [N, H, W, C]: each cell gets the gradients of the windows it won in the forward.
pub fn max_pool2d_bwd<T: DeviceElem>(
    dev: &Device,
    g: &Pool2dGeom,
    x: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    dx: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    let entry = T::entry(entries::MAX_POOL2D_BWD_F32, entries::MAX_POOL2D_BWD_F16);
    let [xn, yn] = [g.n * g.h * g.w * g.c, g.n * g.p * g.q * g.c];
    check_len(entry, "x", x.len(), xn)?;
    check_len(entry, "dy", dy.len(), yn)?;
    check_len(entry, "dx", dx.len(), xn)?;
    let kernel = dev.kernel(entry)?;
    let geom = PoolGeom::from(g);
    let mut args = dev.args(&kernel);
    args.arg(x).arg(dy).arg(dx).arg(&geom);
    // SAFETY: as above.
    unsafe { dev.launch(&kernel, args, grid_1d(xn), || format!("{g:?}")) }
}

/// y [blocks, C] = mean of each block of `group` rows of x [blocks·group, C].
pub fn mean_rows<T: DeviceElem>(
    dev: &Device,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    blocks: usize,
    group: usize,
    c: usize,
) -> Result<(), CudaError> {
    let entry = T::entry(entries::MEAN_ROWS_F32, entries::MEAN_ROWS_F16);
    check_len(entry, "x", x.len(), blocks * group * c)?;
    check_len(entry, "y", y.len(), blocks * c)?;
    let kernel = dev.kernel(entry)?;
    let (b, gi, ci) = (blocks as i64, group as i32, c as i32);
    let mut args = dev.args(&kernel);
    args.arg(x).arg(y).arg(&b).arg(&gi).arg(&ci);
    // SAFETY: as above.
    unsafe { dev.launch(&kernel, args, grid_1d(blocks * c), || format!("{blocks}×{group} rows of {c}")) }
}

/// dx [blocks·group, C] = dy [blocks, C] / group, repeated over each block's rows.
pub fn mean_rows_bwd<T: DeviceElem>(
    dev: &Device,
    dy: &CudaSlice<T>,
    dx: &mut CudaSlice<T>,
    blocks: usize,
    group: usize,
    c: usize,
) -> Result<(), CudaError> {
    let entry = T::entry(entries::MEAN_ROWS_BWD_F32, entries::MEAN_ROWS_BWD_F16);
    check_len(entry, "dy", dy.len(), blocks * c)?;
    check_len(entry, "dx", dx.len(), blocks * group * c)?;
    let kernel = dev.kernel(entry)?;
    let (b, gi, ci) = (blocks as i64, group as i32, c as i32);
    let mut args = dev.args(&kernel);
    args.arg(dy).arg(dx).arg(&b).arg(&gi).arg(&ci);
    // SAFETY: as above.
    unsafe {
        dev.launch(&kernel, args, grid_1d(blocks * group * c), || format!("{blocks}×{group} rows of {c}"))
    }
}
