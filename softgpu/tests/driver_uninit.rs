//! Before cuInit every call is CUDA_ERROR_NOT_INITIALIZED (its own binary: the state is
//! process-wide); a bad SOFTGPU_* value would fail cuInit, a good one succeeds.

use softgpu::driver::CuResult;
use softgpu::driver::context::cuCtxSetCurrent;
use softgpu::driver::device::{cuDeviceGetCount, cuInit, parse_size};
use softgpu::driver::memory::vmm::cuMemRelease;

#[test]
fn calls_before_cu_init_are_not_initialized() {
    let mut n = 0;
    // SAFETY: `n` receives the count.
    assert_eq!(unsafe { cuDeviceGetCount(&mut n) }, CuResult::NotInitialized);
    assert_eq!(cuMemRelease(1), CuResult::NotInitialized);
    assert_eq!(cuCtxSetCurrent(std::ptr::null_mut()), CuResult::NotInitialized);
    assert_eq!(cuInit(1), CuResult::InvalidValue, "flags must be 0");
    assert_eq!(cuInit(0), CuResult::Success);
    // SAFETY: as above.
    assert_eq!(unsafe { cuDeviceGetCount(&mut n) }, CuResult::Success);
    assert_eq!(n, 1);
}

#[test]
fn memory_sizes_parse_with_binary_suffixes() {
    assert_eq!(parse_size("16GiB"), Ok(16 << 30));
    assert_eq!(parse_size(" 512 MiB "), Ok(512 << 20));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("16GB").unwrap_err().contains("unknown unit `GB`"));
    assert!(parse_size("0").is_err() && parse_size("MiB").is_err() && parse_size("99999999999GiB").is_err());
}
