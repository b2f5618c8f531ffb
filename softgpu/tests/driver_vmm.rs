//! The virtual memory API end to end on the extern functions: reserve, create, map,
//! access denied until cuMemSetAccess, copies across adjacent mappings, the driver's
//! rules for unmap / release / free, and out-of-memory past the device's size.

mod driver_support;

use driver_support::{DEVICE_MEMORY, MIB, device, ok};
use softgpu::driver::CuResult;
use softgpu::driver::last_diagnostic;
use softgpu::driver::memory::copy::{
    cuMemcpyDtoDAsync_v2, cuMemcpyDtoH_v2, cuMemcpyHtoDAsync_v2, cuMemsetD8_v2,
};
use softgpu::driver::memory::vmm::*;
use softgpu::driver::state::instance;
use softgpu::exec::GlobalMemory;

const G: usize = 2 * MIB;

fn prop() -> CUmemAllocationProp {
    CUmemAllocationProp {
        type_: CU_MEM_ALLOCATION_TYPE_PINNED,
        requested_handle_types: 0,
        location: CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: 0 },
        win32_handle_meta_data: std::ptr::null_mut(),
        alloc_flags: CUmemAllocFlags {
            compression_type: 0,
            gpu_direct_rdma_capable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

fn rw() -> CUmemAccessDesc {
    CUmemAccessDesc {
        location: CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: 0 },
        flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    }
}

fn create(size: usize) -> Result<u64, CuResult> {
    let mut h = 0;
    // SAFETY: `h` and `prop()` outlive the call.
    match unsafe { cuMemCreate(&mut h, size, &prop(), 0) } {
        CuResult::Success => Ok(h),
        e => Err(e),
    }
}

fn reserve(size: usize) -> u64 {
    let mut base = 0;
    // SAFETY: `base` receives the address.
    ok(unsafe { cuMemAddressReserve(&mut base, size, 0, 0, 0) });
    base
}

fn used() -> u64 {
    instance().unwrap().memory().used()
}

#[test]
fn the_abi_layouts_are_cuda_13s() {
    assert_eq!(size_of::<CUmemAllocationProp>(), 32);
    assert_eq!(std::mem::offset_of!(CUmemAllocationProp, location), 8);
    assert_eq!(std::mem::offset_of!(CUmemAllocationProp, alloc_flags), 24);
    assert_eq!(size_of::<CUmemAccessDesc>(), 12);
}

#[test]
fn granularity_is_2_mib_for_pinned_device_memory_only() {
    let _d = device();
    let mut g = 0usize;
    // SAFETY: pointers to locals.
    unsafe {
        ok(cuMemGetAllocationGranularity(&mut g, &prop(), 1));
        assert_eq!(g, G);
        let mut bad = prop();
        bad.location.id = 1;
        assert_eq!(cuMemGetAllocationGranularity(&mut g, &bad, 0), CuResult::InvalidDevice);
        bad = prop();
        bad.requested_handle_types = 1;
        assert_eq!(cuMemGetAllocationGranularity(&mut g, &bad, 0), CuResult::NotSupported);
        assert_eq!(cuMemGetAllocationGranularity(&mut g, std::ptr::null(), 0), CuResult::InvalidValue);
    }
}

#[test]
fn lifecycle_follows_the_drivers_rules() {
    let _d = device();
    let before = used();
    let base = reserve(4 * G);
    assert_eq!(base % G as u64, 0);
    let (a, b) = (create(G).unwrap(), create(G).unwrap());
    assert_eq!(used() - before, 2 * G as u64, "physical memory counts at cuMemCreate");

    // Mapping: granular, inside the reservation, over nothing mapped.
    assert_eq!(cuMemMap(base + 1, G, 0, a, 0), CuResult::InvalidValue);
    assert_eq!(cuMemMap(base + 4 * G as u64, G, 0, a, 0), CuResult::InvalidValue, "past the reservation");
    assert_eq!(cuMemMap(base, 2 * G, 0, a, 0), CuResult::InvalidValue, "larger than the handle");
    assert_eq!(cuMemMap(base, G, 0, a, 1), CuResult::InvalidValue, "flags");
    ok(cuMemMap(base, G, 0, a, 0));
    assert_eq!(cuMemMap(base, G, 0, b, 0), CuResult::InvalidValue, "over a mapping");
    ok(cuMemMap(base + G as u64, G, 0, b, 0));

    // No access until cuMemSetAccess, for copies and kernels alike.
    assert_eq!(cuMemsetD8_v2(base, 1, 16), CuResult::InvalidValue);
    let why = last_diagnostic().unwrap();
    assert!(why.contains("cuMemsetD8_v2") && why.contains("cuMemSetAccess"), "{why}");
    assert!(instance().unwrap().memory().resolve(base, 4).is_err());
    // SAFETY: `rw()` outlives the call.
    unsafe {
        assert_eq!(cuMemSetAccess(base, 3 * G, &rw(), 1), CuResult::InvalidValue, "not all mapped");
        ok(cuMemSetAccess(base, 2 * G, &rw(), 1));
    }
    assert!(instance().unwrap().memory().resolve(base + 8, 4).is_ok());

    // A copy across the two mappings, back and forth and device to device.
    let data: Vec<u8> = (0..G).map(|i| (i * 7 % 251) as u8).collect();
    let start = base + (G - 2048) as u64;
    let mut back = vec![0u8; data.len()];
    // SAFETY: host buffers of data.len() bytes.
    unsafe {
        ok(cuMemcpyHtoDAsync_v2(start, data.as_ptr().cast(), data.len(), std::ptr::null_mut()));
        ok(cuMemcpyDtoDAsync_v2(base, start, data.len(), std::ptr::null_mut()));
        ok(cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), base, back.len()));
    }
    assert!(back == data, "data did not survive HtoD, DtoD and DtoH");
    // A kernel access may not straddle two mappings (each lives in its own memory).
    assert!(instance().unwrap().memory().resolve(base + G as u64 - 2, 4).is_err());

    // Unmap takes one whole mapping; release while mapped keeps the memory.
    assert_eq!(cuMemUnmap(base, 2 * G), CuResult::InvalidValue);
    assert_eq!(cuMemUnmap(base + 4096, G - 4096), CuResult::InvalidValue);
    ok(cuMemRelease(a));
    assert_eq!(cuMemRelease(a), CuResult::InvalidValue, "released twice");
    assert_eq!(used() - before, 2 * G as u64, "released but still mapped");
    // SAFETY: `back` holds 16 bytes.
    unsafe { ok(cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), base, 16)) };
    assert_eq!(back[..16], data[..16]);
    assert_eq!(cuMemAddressFree(base, 4 * G), CuResult::InvalidValue, "still mapped");
    ok(cuMemUnmap(base, G));
    assert_eq!(used() - before, G as u64, "released and unmapped: freed");
    // SAFETY: `back` holds 16 bytes.
    assert_eq!(unsafe { cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), base, 16) }, CuResult::InvalidValue);
    let why = last_diagnostic().unwrap();
    assert!(why.contains("reserved") && why.contains("nearest mapping"), "{why}");

    // Remapping a freed handle fails; a fresh mapping starts without access.
    assert_eq!(cuMemMap(base, G, 0, a, 0), CuResult::InvalidValue);
    ok(cuMemUnmap(base + G as u64, G));
    ok(cuMemMap(base, G, 0, b, 0));
    assert_eq!(cuMemsetD8_v2(base, 0, 1), CuResult::InvalidValue);
    ok(cuMemUnmap(base, G));
    assert_eq!(used() - before, G as u64, "unmapped but not released");
    ok(cuMemRelease(b));
    assert_eq!(used(), before);
    assert_eq!(cuMemAddressFree(base, 2 * G), CuResult::InvalidValue, "only whole reservations");
    ok(cuMemAddressFree(base, 4 * G));
    assert_eq!(cuMemAddressFree(base, 4 * G), CuResult::InvalidValue, "freed twice");
}

#[test]
fn creating_past_the_device_memory_is_out_of_memory() {
    let _d = device();
    let free = DEVICE_MEMORY - used() as usize;
    let handles: Vec<u64> = (0..free / G).map(|_| create(G).unwrap()).collect();
    assert_eq!(create(G), Err(CuResult::OutOfMemory));
    assert_eq!(create(G + 1), Err(CuResult::InvalidValue), "not a multiple of the granularity");
    handles.into_iter().for_each(|h| ok(cuMemRelease(h)));
    let h = create(G).expect("memory is back after release");
    ok(cuMemRelease(h));
}

#[test]
fn read_only_access_is_refused_rather_than_unenforced() {
    let _d = device();
    let base = reserve(G);
    let h = create(G).unwrap();
    ok(cuMemMap(base, G, 0, h, 0));
    let mut desc = rw();
    desc.flags = 1;
    // SAFETY: `desc` outlives the call.
    assert_eq!(unsafe { cuMemSetAccess(base, G, &desc, 1) }, CuResult::NotSupported);
    ok(cuMemUnmap(base, G));
    ok(cuMemRelease(h));
    ok(cuMemAddressFree(base, G));
}
