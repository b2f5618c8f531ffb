//! Probing for a usable GPU before any CUDA call. cudarc panics when libcuda cannot be
//! loaded, so the library's presence is checked first; every failure after that becomes
//! a reason string that the CLI prints before falling back to the CPU.

use std::fmt;

use crate::config::format_bytes;
use crate::kernels::{NO_KERNELS_HELP, built_with_kernels};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: u32,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_bytes: u64,
}

impl fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = self.compute_capability;
        write!(
            f,
            "cuda:{} {} (sm_{major}{minor}, {})",
            self.ordinal,
            self.name,
            format_bytes(self.total_bytes)
        )
    }
}

/// What the machine offers for the CUDA backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuProbe {
    Ready(Vec<GpuInfo>),
    /// No usable GPU, and why (no driver, no device, no kernels in this build, ...).
    Unavailable(String),
}

/// Looks for a driver, devices and kernels. Never panics.
pub fn probe() -> GpuProbe {
    if !built_with_kernels() {
        return GpuProbe::Unavailable(NO_KERNELS_HELP.to_string());
    }
    probe_driver()
}

#[cfg(not(feature = "cuda"))]
fn probe_driver() -> GpuProbe {
    GpuProbe::Unavailable("this dfengine was built without the `cuda` feature".to_string())
}

#[cfg(feature = "cuda")]
fn probe_driver() -> GpuProbe {
    use cudarc::driver::{result, sys};

    // SAFETY: only tries to dlopen libcuda and drops the handle; no CUDA call is made.
    if !unsafe { sys::is_culib_present() } {
        return GpuProbe::Unavailable("no CUDA driver (libcuda) found on this machine".to_string());
    }
    let devices = (|| -> Result<Vec<GpuInfo>, result::DriverError> {
        result::init()?;
        let count = result::device::get_count()?;
        (0..count)
            .map(|ordinal| {
                let dev = result::device::get(ordinal)?;
                let attr = |a| {
                    // SAFETY: `dev` is a valid device handle from cuDeviceGet just above.
                    unsafe { result::device::get_attribute(dev, a) }
                };
                let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
                let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
                Ok(GpuInfo {
                    ordinal: ordinal as u32,
                    name: result::device::get_name(dev)?,
                    compute_capability: (major, minor),
                    // SAFETY: as above.
                    total_bytes: unsafe { result::device::total_mem(dev) }? as u64,
                })
            })
            .collect()
    })();
    match devices {
        Ok(list) if list.is_empty() => GpuProbe::Unavailable("the CUDA driver reports no device".to_string()),
        Ok(list) => GpuProbe::Ready(list),
        Err(e) => GpuProbe::Unavailable(format!("the CUDA driver failed to initialise: {e}")),
    }
}
