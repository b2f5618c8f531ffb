//! The process-wide driver: the device's configuration, the objects created through
//! the API, and device memory. cudarc and nvml-wrapper reach it through the same
//! library, so NVML sees the memory the driver hands out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::context::Primary;
use super::device::DeviceConfig;
use super::error::{CuOutcome, CuResult};
use super::event::Event;
use super::memory::AddressSpace;
use super::memory::pinned::PinnedHost;
use super::module::{Function, LoadedModule};

/// Everything but memory, behind one lock (taken before the memory lock when both are).
#[derive(Default)]
pub struct Objects {
    pub primary: Option<Primary>,
    pub modules: HashMap<u64, LoadedModule>,
    pub functions: HashMap<u64, Function>,
    pub events: HashMap<u64, Event>,
    /// Streams made by `cuStreamCreate`, with their contexts.
    pub streams: HashMap<u64, u64>,
    /// Page-locked host blocks by address.
    pub pinned: HashMap<u64, PinnedHost>,
}

pub struct Driver {
    pub config: DeviceConfig,
    initialized: AtomicBool,
    objects: Mutex<Objects>,
    memory: RwLock<AddressSpace>,
}

static CONFIG: OnceLock<Result<DeviceConfig, String>> = OnceLock::new();
static DRIVER: OnceLock<Driver> = OnceLock::new();

/// Sets the device to present instead of reading `SOFTGPU_SM_COUNT` / `SOFTGPU_MEMORY`
/// (for tests, which need a small device). Only before the device is first used, or
/// with the configuration already in force.
pub fn configure(config: DeviceConfig) -> Result<(), String> {
    match CONFIG.get_or_init(|| Ok(config.clone())) {
        Ok(c) if *c == config => Ok(()),
        Ok(c) => Err(format!("softgpu: the device is already configured as {c:?}, not {config:?}")),
        Err(e) => Err(e.clone()),
    }
}

/// The driver state, built on first use from the configuration (or the environment).
pub fn instance() -> Result<&'static Driver, String> {
    let config = CONFIG.get_or_init(DeviceConfig::from_env).clone()?;
    Ok(DRIVER.get_or_init(|| Driver {
        memory: RwLock::new(AddressSpace::new(config.memory, config.fill)),
        config,
        initialized: AtomicBool::new(false),
        objects: Mutex::new(Objects::default()),
    }))
}

/// The driver, once `cuInit` has succeeded; `CUDA_ERROR_NOT_INITIALIZED` before.
pub fn driver() -> CuOutcome<&'static Driver> {
    DRIVER.get().filter(|d| d.initialized.load(Ordering::Acquire)).ok_or(CuResult::NotInitialized)
}

impl Driver {
    pub fn mark_initialized(&self) {
        self.initialized.store(true, Ordering::Release);
    }

    // A panic while holding a lock (a bug here) leaves plain bookkeeping behind; the
    // other threads keep using it rather than aborting across the C boundary.
    pub fn objects(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn memory(&self) -> RwLockReadGuard<'_, AddressSpace> {
        self.memory.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn memory_mut(&self) -> RwLockWriteGuard<'_, AddressSpace> {
        self.memory.write().unwrap_or_else(PoisonError::into_inner)
    }
}
