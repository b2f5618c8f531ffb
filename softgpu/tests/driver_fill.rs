//! `SOFTGPU_FILL`: new device memory holds the configured byte rather than zeros (its
//! own binary: the device's configuration is process-wide).

use softgpu::driver::context::{cuCtxSetCurrent, cuDevicePrimaryCtxRetain};
use softgpu::driver::device::cuInit;
use softgpu::driver::memory::alloc::cuMemAllocAsync;
use softgpu::driver::memory::copy::cuMemcpyDtoHAsync_v2;
use softgpu::driver::{CuResult, DeviceConfig, configure};

#[test]
fn new_memory_holds_the_fill_byte() {
    configure(DeviceConfig { sm_count: 1, memory: 8 << 20, fill: Some(0xff) }).unwrap();
    assert_eq!(cuInit(0), CuResult::Success);
    let mut ctx = std::ptr::null_mut();
    // SAFETY: `ctx` receives the handle.
    assert_eq!(unsafe { cuDevicePrimaryCtxRetain(&mut ctx, 0) }, CuResult::Success);
    assert_eq!(cuCtxSetCurrent(ctx), CuResult::Success);
    let (mut p, stream) = (0, std::ptr::null_mut());
    // SAFETY: `p` receives the address.
    assert_eq!(unsafe { cuMemAllocAsync(&mut p, 4096, stream) }, CuResult::Success);
    let mut host = vec![0f32; 1024];
    // SAFETY: `host` holds the 4096 bytes copied.
    assert_eq!(unsafe { cuMemcpyDtoHAsync_v2(host.as_mut_ptr().cast(), p, 4096, stream) }, CuResult::Success);
    assert!(host.iter().all(|v| v.to_bits() == u32::MAX && v.is_nan()), "every float a NaN");
}
