//! The launch layer of the CUDA backend: one context and compute stream per device (and
//! a copy stream when uploads are staged), each PTX module loaded once and cached,
//! kernels looked up by name, and one place that turns a driver error into an error
//! saying which kernel, with which shapes, failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchArgs,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::buffer::{COMPUTE_STREAM, COPY_STREAM, DevicePool, PoolSlice};
use super::ledger::Ledger;
use super::probe::{GpuProbe, probe};
use super::staging::{STAGED_MIN, Staging};
use crate::kernels::{Entry, KernelModule};
use crate::memory::cuda_backing::CudaBacking;
use crate::memory::{Pool, PoolError};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable GPU or no kernels in this build; the reason is the probe's.
    #[error("no CUDA device: {0}")]
    Unavailable(String),
    #[error("CUDA device {ordinal}: {source}")]
    Device { ordinal: u32, source: DriverError },
    #[error("loading kernels/{module}.cu: {source}")]
    Module { module: &'static str, source: DriverError },
    #[error("kernel {kernel} not in kernels/{}.cu: {source}", kernel.module.name())]
    Missing { kernel: Entry, source: DriverError },
    #[error("kernel {kernel} ({shapes}): {source}")]
    Launch { kernel: Entry, shapes: String, source: DriverError },
    /// A copy between host and device failed.
    #[error("copy {what}: {source}")]
    Copy { what: &'static str, source: DriverError },
    /// An error raised asynchronously by the work before a synchronisation.
    #[error("{after} (at synchronize): {source}")]
    Synchronize { after: &'static str, source: DriverError },
    /// Arguments a kernel cannot take (checked before launching).
    #[error("kernel {kernel}: {detail}")]
    Arguments { kernel: Entry, detail: String },
    /// The pool could not give an op its memory (an out-of-memory under the budget, or a
    /// driver mapping failure).
    #[error("device memory: {0}")]
    Memory(#[from] PoolError),
}

impl From<CudaError> for crate::backend::OpError {
    fn from(e: CudaError) -> Self {
        match e {
            // Out of memory under the budget stays one, for the governor to act on.
            CudaError::Memory(pool) => pool.into(),
            other => crate::backend::OpError::Cuda(Box::new(other)),
        }
    }
}

/// The device pointer an absent optional tensor is passed as: the kernels test for 0.
static NULL_POINTER: u64 = 0;

/// Pushes an optional tensor argument: its pointer, or a null pointer for `None`.
pub fn push_optional<'a, T>(args: &mut LaunchArgs<'a>, v: Option<&'a CudaSlice<T>>) {
    match v {
        Some(t) => args.arg(t),
        None => args.arg(&NULL_POINTER),
    };
}

/// A buffer `what` must hold at least `need` elements for `kernel`.
pub fn check_len(kernel: Entry, what: &str, have: usize, need: usize) -> Result<(), CudaError> {
    if have < need {
        return Err(CudaError::Arguments {
            kernel,
            detail: format!("{what} holds {have} elements, needs {need}"),
        });
    }
    Ok(())
}

/// Every buffer in `lens` (what, holds, needs) must hold what it needs.
pub fn check_lens(kernel: Entry, lens: &[(&str, usize, usize)]) -> Result<(), CudaError> {
    lens.iter().try_for_each(|(what, have, need)| check_len(kernel, what, *have, *need))
}

/// The launch of an element-wise kernel over `items` work items (float4 vectors or
/// elements) with a grid-stride loop: 256-thread blocks, as many as the items need up to
/// a fixed cap of a few waves on any current GPU (more only adds scheduling overhead).
pub fn grid_1d(items: usize) -> LaunchConfig {
    const THREADS: usize = 256;
    const MAX_BLOCKS: usize = 4096;
    LaunchConfig {
        grid_dim: (items.div_ceil(THREADS).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A GPU with its compute stream, the pool that owns its memory, the kernels loaded so
/// far, and the staging ring when uploads go through page-locked memory.
pub struct Device {
    pub ordinal: u32,
    /// Streaming multiprocessors: the tile table sizes grids and splits by it.
    pub sm_count: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pool: DevicePool,
    staging: Option<Staging>,
    modules: Mutex<HashMap<KernelModule, Arc<CudaModule>>>,
    ledger: Ledger,
}

/// A kernel entry point, ready to launch.
#[derive(Clone)]
pub struct Kernel {
    pub entry: Entry,
    function: CudaFunction,
}

impl Device {
    /// Device `ordinal`, after the probe says a driver, the device and kernels are there.
    /// Its pool reserves address space for the whole device memory and maps it as used;
    /// `set_budget` on the pool caps it. `pinned`: uploads are staged through page-locked
    /// memory on a copy stream (`staging`).
    pub fn open(ordinal: u32, pinned: bool) -> Result<Self, CudaError> {
        if let GpuProbe::Unavailable(why) = probe() {
            return Err(CudaError::Unavailable(why));
        }
        let ctx =
            CudaContext::new(ordinal as usize).map_err(|source| CudaError::Device { ordinal, source })?;
        // Kernels run on one stream, whose order alone keeps pool blocks safe to reuse, so
        // cudarc's per-slice events would only cost an event pair per tensor. The copy
        // stream orders itself against it by explicit events (`staging`) and takes its
        // blocks from the pool under the cross-stream rule.
        // SAFETY: the only slices used on a second stream are the staged uploads, whose
        // ordering `Staging::copy` and the pool's hand-over provide.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let device_err = |source| CudaError::Device { ordinal, source };
        let total = ctx.total_mem().map_err(device_err)?;
        let mut backing = CudaBacking::reserve(ctx.clone(), total).map_err(PoolError::from)?;
        let staging = if pinned {
            let copy = ctx.new_stream().map_err(device_err)?;
            backing = backing.with_stream(COPY_STREAM, copy.clone());
            Some(Staging::new(copy))
        } else {
            None
        };
        let pool = Arc::new(Mutex::new(Pool::new(backing, total)));
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(device_err)? as usize;
        Ok(Device {
            ordinal,
            sm_count,
            ctx,
            stream,
            pool,
            staging,
            modules: Mutex::new(HashMap::new()),
            ledger: Ledger::default(),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn pool(&self) -> &DevicePool {
        &self.pool
    }

    /// Which op launched which kernels (`ledger`).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// `len` zeroed elements from the pool, returned when dropped: for `zeros`, a flag a
    /// kernel sets only when it finds a non-finite value, and the small per-channel
    /// scratch of the statistics (where a memset costs nothing worth counting). Results
    /// and large scratch that kernels write whole take `alloc_uninit`.
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<PoolSlice<T>, CudaError> {
        self.ledger.zeroed(len * std::mem::size_of::<T>());
        Ok(PoolSlice::zeroed(&self.stream, &self.pool, len)?)
    }

    /// `len` elements as the pool's block left them, for a result or scratch the op's
    /// kernels write whole: no memset, whose pass over the block moves as many bytes as
    /// writing the result does (benches/step_traffic.rs: a fifth of a ResNet-18 step's
    /// traffic went to zeroing blocks that kernels then overwrote).
    ///
    /// # Safety
    /// The kernels queued next write every element before any kernel or copy reads it.
    pub unsafe fn alloc_uninit<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<PoolSlice<T>, CudaError> {
        // SAFETY: the caller's contract.
        Ok(unsafe { PoolSlice::uninit(&self.stream, &self.pool, len, COMPUTE_STREAM) }?)
    }

    /// `data` copied into a new block of the pool, ready for the compute stream: through
    /// the staging ring on the copy stream when uploads are staged and `data` is large
    /// enough to gain, else queued on the compute stream from `data` itself.
    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(&self, data: &[T]) -> Result<PoolSlice<T>, CudaError> {
        let bytes = std::mem::size_of_val(data);
        match &self.staging {
            Some(staging) if bytes >= STAGED_MIN => {
                // SAFETY: the copy below fills every element before the compute stream,
                // which waits for it, reads any.
                let mut buf =
                    unsafe { PoolSlice::<T>::uninit(&self.stream, &self.pool, data.len(), COPY_STREAM) }?;
                // SAFETY: `DeviceRepr` types are plain values copied to the device
                // byte for byte; the view covers exactly `data`'s bytes.
                let raw = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), bytes) };
                staging
                    .copy(raw, buf.device_ptr(), &self.stream)
                    .map_err(|source| CudaError::Copy { what: "to the device (staged)", source })?;
                buf.hand_over(COMPUTE_STREAM)?;
                Ok(buf)
            }
            _ => {
                // SAFETY: the copy below, on the stream that reads it, fills every element.
                let mut buf =
                    unsafe { PoolSlice::<T>::uninit(&self.stream, &self.pool, data.len(), COMPUTE_STREAM) }?;
                if !data.is_empty() {
                    self.stream
                        .memcpy_htod(data, &mut *buf)
                        .map_err(|source| CudaError::Copy { what: "to the device", source })?;
                }
                Ok(buf)
            }
        }
    }

    /// Page-locked host bytes held for staged uploads (0 without staging).
    pub fn staged_bytes(&self) -> usize {
        self.staging.as_ref().map_or(0, Staging::staged_bytes)
    }

    /// The elements of `buf`, after the work queued before on the stream.
    pub fn download<T: DeviceRepr + Default + Clone>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream.clone_dtoh(buf).map_err(|source| CudaError::Copy { what: "to the host", source })
    }

    /// The kernel of `entry`; its module's PTX is loaded (JIT-compiled by the driver) on
    /// first use only.
    pub fn kernel(&self, entry: Entry) -> Result<Kernel, CudaError> {
        let module = entry.module;
        let loaded = {
            let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
            match modules.get(&module) {
                Some(m) => m.clone(),
                None => {
                    let ptx = module
                        .ptx()
                        .ok_or_else(|| CudaError::Unavailable(crate::kernels::NO_KERNELS_HELP.to_string()))?;
                    let m = self
                        .ctx
                        .load_module(Ptx::from_src(ptx))
                        .map_err(|source| CudaError::Module { module: module.name(), source })?;
                    modules.insert(module, m.clone());
                    m
                }
            }
        };
        let function = loaded
            .load_function(entry.name)
            .map_err(|source| CudaError::Missing { kernel: entry, source })?;
        Ok(Kernel { entry, function })
    }

    /// A launch of `kernel` on this device's stream: push the arguments, then `launch`.
    pub fn args<'a>(&'a self, kernel: &'a Kernel) -> LaunchArgs<'a> {
        self.stream.launch_builder(&kernel.function)
    }

    /// Launches with the arguments pushed; a failure names the kernel and `shapes()`.
    ///
    /// # Safety
    /// The arguments must match the kernel's signature, and every buffer must hold the
    /// elements the grid touches.
    pub unsafe fn launch(
        &self,
        kernel: &Kernel,
        mut args: LaunchArgs<'_>,
        cfg: LaunchConfig,
        shapes: impl FnOnce() -> String,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller's contract.
        unsafe { args.launch(cfg) }.map_err(|source| CudaError::Launch {
            kernel: kernel.entry,
            shapes: shapes(),
            source,
        })?;
        self.ledger.launched();
        Ok(())
    }

    /// Waits for the stream; an error a kernel raised asynchronously surfaces here, named
    /// by `after` (what was running).
    pub fn synchronize(&self, after: &'static str) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(|source| CudaError::Synchronize { after, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_follows_the_probe() {
        match (probe(), Device::open(0, false)) {
            (GpuProbe::Unavailable(why), Err(CudaError::Unavailable(said))) => assert_eq!(why, said),
            (GpuProbe::Ready(_), Ok(dev)) => {
                let k =
                    dev.kernel(crate::kernels::entries::GEMM_TC_F16_128X128).expect("the GEMM kernel loads");
                assert_eq!(k.entry.name, "gemm_tc_f16_128x128");
                assert!(dev.sm_count > 0);
                let absent = Entry { module: KernelModule::Gemm, name: "no_such_kernel" };
                let missing = dev.kernel(absent).err().expect("an error");
                assert!(missing.to_string().contains("no_such_kernel"), "{missing}");
            }
            (p, d) => panic!("probe {p:?} but open gave {:?}", d.err()),
        }
    }
}
