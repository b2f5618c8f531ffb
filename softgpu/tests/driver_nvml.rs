//! NVML reports the driver's device: memory used moves with cuMemCreate / cuMemRelease;
//! init and shutdown are counted; the struct version is checked.

mod driver_support;

use std::ffi::{CStr, c_char, c_void};

use driver_support::{DEVICE_MEMORY, MIB, device, ok};
use softgpu::driver::memory::vmm::{CUmemAllocationProp, cuMemCreate, cuMemRelease};
use softgpu::nvml::*;

fn memory(dev: *mut c_void) -> NvmlMemoryV2 {
    let mut m = NvmlMemoryV2 { version: NVML_MEMORY_V2, ..Default::default() };
    // SAFETY: `m` is a versioned nvmlMemory_v2_t.
    assert_eq!(unsafe { nvmlDeviceGetMemoryInfo_v2(dev, &mut m) }, NVML_SUCCESS);
    m
}

#[test]
fn nvml_sees_the_drivers_memory() {
    let _d = device();
    assert_eq!(nvmlInit_v2(), NVML_SUCCESS);
    let mut dev = std::ptr::null_mut();
    let mut version = [0 as c_char; 80];
    let mut util = NvmlUtilization { gpu: 7, memory: 7 };
    // SAFETY: out-pointers to locals; `version` holds 80 bytes.
    unsafe {
        assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut dev), NVML_SUCCESS);
        assert_eq!(nvmlDeviceGetHandleByIndex_v2(1, &mut dev), NVML_ERROR_INVALID_ARGUMENT);
        assert_eq!(nvmlSystemGetDriverVersion(version.as_mut_ptr(), 80), NVML_SUCCESS);
        assert_eq!(CStr::from_ptr(version.as_ptr()).to_str().unwrap(), DRIVER_VERSION);
        assert_eq!(nvmlSystemGetDriverVersion(version.as_mut_ptr(), 8), NVML_ERROR_INSUFFICIENT_SIZE);
        assert_eq!(nvmlDeviceGetUtilizationRates(dev, &mut util), NVML_SUCCESS);
    }
    assert_eq!((util.gpu, util.memory), (0, 0));

    let before = memory(dev);
    assert_eq!(before.total, DEVICE_MEMORY as u64);
    assert_eq!(before.free + before.used, before.total);
    // SAFETY: a zeroed prop is then filled as the pool fills it.
    let mut prop: CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = 1;
    prop.location.type_ = 1;
    let mut h = 0;
    // SAFETY: `h` and `prop` outlive the call.
    ok(unsafe { cuMemCreate(&mut h, 4 * MIB, &prop, 0) });
    assert_eq!(memory(dev).used - before.used, 4 * MIB as u64);
    ok(cuMemRelease(h));
    assert_eq!(memory(dev).used, before.used);

    let mut stale = NvmlMemoryV2 { version: 1, ..Default::default() };
    // SAFETY: as in `memory`.
    assert_eq!(unsafe { nvmlDeviceGetMemoryInfo_v2(dev, &mut stale) }, NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    assert_eq!(nvmlShutdown(), NVML_SUCCESS);
    // SAFETY: as in `memory`.
    assert_eq!(unsafe { nvmlDeviceGetMemoryInfo_v2(dev, &mut stale) }, NVML_ERROR_UNINITIALIZED);
    assert_eq!(nvmlShutdown(), NVML_ERROR_UNINITIALIZED, "shut down once too often");
}
