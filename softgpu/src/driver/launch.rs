//! `cuLaunchKernel`: checks the shape against the device's limits, packs the
//! parameters into the kernel's `.param` layout and runs the grid on the interpreter
//! (counted when `SOFTGPU_COUNTERS` is set, see `counters`), holding device memory
//! read-locked so nothing is unmapped under the kernel.
#![allow(non_snake_case)]

use std::ffi::{c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::context::set_pending;
use super::counters;
use super::device::{MAX_BLOCK_DIM, MAX_GRID_DIM, MAX_SHARED_PER_BLOCK, MAX_THREADS_PER_BLOCK};
use super::diagnostic::report;
use super::error::{CuOutcome, CuResult};
use super::handle::from_ptr;
use super::state::driver;
use super::stream::current_on;
use crate::exec::LaunchConfig;
use crate::ptx::Kernel;

fn check_shape(cfg: &LaunchConfig) -> CuOutcome {
    let within = |dims: [u32; 3], max: [u32; 3]| dims.iter().zip(max).all(|(&d, m)| d > 0 && d <= m);
    let threads = cfg.block.iter().map(|&d| d as u64).product::<u64>();
    if !within(cfg.grid, MAX_GRID_DIM)
        || !within(cfg.block, MAX_BLOCK_DIM)
        || threads > MAX_THREADS_PER_BLOCK as u64
        || cfg.dynamic_shared > MAX_SHARED_PER_BLOCK
    {
        return Err(CuResult::InvalidValue);
    }
    Ok(())
}

/// The packed parameter buffer: `params[i]` points to the value of the kernel's i-th
/// parameter, `size` bytes copied to its `offset`.
///
/// # Safety
/// `params` must hold one readable pointer per kernel parameter, each to at least the
/// parameter's size in bytes (the driver's own contract).
unsafe fn marshal(kernel: &Kernel, params: *mut *mut c_void) -> CuOutcome<Vec<u8>> {
    let mut buf = vec![0u8; kernel.param_bytes()];
    if kernel.params().is_empty() {
        return Ok(buf);
    }
    if params.is_null() {
        return Err(CuResult::InvalidValue);
    }
    for (i, slot) in kernel.params().iter().enumerate() {
        // SAFETY: one pointer per parameter, by the caller's contract.
        let value = unsafe { *params.add(i) };
        let dst = buf.get_mut(slot.offset..slot.offset + slot.size).ok_or(CuResult::InvalidImage)?;
        if value.is_null() {
            return Err(CuResult::InvalidValue);
        }
        // SAFETY: `value` points to `slot.size` readable bytes by the caller's contract;
        // `dst` is exactly that long and a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(value.cast::<u8>(), dst.as_mut_ptr(), slot.size) };
    }
    Ok(buf)
}

/// # Safety
/// `kernel_params` must satisfy the driver's contract for the kernel `f` (see
/// `marshal`); device pointers among them are checked at every access.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature
pub unsafe extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_mem_bytes: c_uint,
    h_stream: *mut c_void,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    CuResult::of(driver().and_then(|d| {
        let (ctx, function) = {
            let objects = d.objects();
            let ctx = current_on(&objects, h_stream)?;
            let function = objects.functions.get(&from_ptr(f)).ok_or(CuResult::InvalidHandle)?;
            if function.ctx != ctx {
                return Err(CuResult::InvalidContext);
            }
            (ctx, (function.module.clone(), function.name.clone()))
        };
        // `extra` (packed-buffer launches) is not used by cudarc.
        if !extra.is_null() {
            return Err(CuResult::InvalidValue);
        }
        let cfg = LaunchConfig {
            grid: [grid_x, grid_y, grid_z],
            block: [block_x, block_y, block_z],
            dynamic_shared: shared_mem_bytes,
        };
        check_shape(&cfg)?;
        let (module, name) = function;
        let kernel = module.kernel(&name).ok_or(CuResult::InvalidHandle)?;
        // SAFETY: caller contract.
        let params = unsafe { marshal(kernel, kernel_params) }?;
        let memory = d.memory();
        let run = || counters::launch(kernel, &cfg, &params, &*memory).map_err(|e| e.to_string());
        let failure = match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("cuLaunchKernel: {e}"),
            Err(_) => format!("cuLaunchKernel: kernel `{name}`: the interpreter panicked (a softgpu bug)"),
        };
        report(failure);
        set_pending(ctx, CuResult::LaunchFailed);
        Err(CuResult::LaunchFailed)
    }))
}
