//! cuGetErrorName / cuGetErrorString: a static string for every code the driver
//! returns (cudarc's DriverError prints through them), and the driver's answer for a
//! code it does not know.

use std::ffi::CStr;

use softgpu::driver::CuResult;
use softgpu::driver::error::{cuGetErrorName, cuGetErrorString};

fn text(f: unsafe extern "C" fn(u32, *mut *const std::ffi::c_char) -> CuResult, code: u32) -> Option<String> {
    let mut p = std::ptr::null();
    // SAFETY: `p` receives a static string or NULL.
    let r = unsafe { f(code, &mut p) };
    assert_eq!(r == CuResult::Success, !p.is_null());
    // SAFETY: non-null results are static NUL-terminated strings.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string())
}

#[test]
fn every_returned_code_has_a_name_and_a_description() {
    for r in CuResult::ALL {
        let name = text(cuGetErrorName, r as u32).unwrap();
        let description = text(cuGetErrorString, r as u32).unwrap();
        assert!(name.starts_with("CUDA_"), "{name}");
        assert!(!description.is_empty() && description != name);
    }
    assert_eq!(text(cuGetErrorName, 2).unwrap(), "CUDA_ERROR_OUT_OF_MEMORY");
    assert_eq!(text(cuGetErrorString, 218).unwrap(), "a PTX JIT compilation failed");
    assert_eq!(text(cuGetErrorString, 719).unwrap(), "unspecified launch failure");
}

#[test]
fn an_unknown_code_is_invalid_value_and_null() {
    assert_eq!(text(cuGetErrorName, 12345), None);
    let mut p = std::ptr::null();
    // SAFETY: `p` receives NULL.
    assert_eq!(unsafe { cuGetErrorString(12345, &mut p) }, CuResult::InvalidValue);
    // SAFETY: a NULL out-pointer is checked, not written.
    assert_eq!(unsafe { cuGetErrorName(0, std::ptr::null_mut()) }, CuResult::InvalidValue);
}
