//! Device memory behind the pool, through CUDA's virtual memory API: one
//! `cuMemAddressReserve` for the whole range, then per granule a `cuMemCreate` physical
//! allocation mapped with `cuMemMap` and opened with `cuMemSetAccess`; unmapping releases
//! the granule's physical memory back to the driver (visible in NVML at once).
//!
//! One physical handle per granule keeps trim exact: `cuMemUnmap` must cover whole
//! mappings, so a multi-granule handle could only be returned whole. Events are
//! `cuEventCreate(DISABLE_TIMING)` recorded on the freeing stream; the backing keeps every
//! stream it may record on alive.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{CudaContext, CudaStream};

use super::backing::{Backing, BackingError, EventId, StreamId};

fn check(what: &'static str, rc: CUresult) -> Result<(), BackingError> {
    if rc == CUresult::CUDA_SUCCESS { Ok(()) } else { Err(BackingError { what, detail: format!("{rc:?}") }) }
}

pub struct CudaBacking {
    ctx: Arc<CudaContext>,
    base: sys::CUdeviceptr,
    capacity: usize,
    granule: usize,
    prop: sys::CUmemAllocationProp,
    handles: Vec<Option<sys::CUmemGenericAllocationHandle>>,
    streams: HashMap<StreamId, Arc<CudaStream>>,
    events: HashMap<EventId, sys::CUevent>,
    next_event: EventId,
}

// SAFETY: the raw handles are owned by this value alone and used only with its context
// bound to the calling thread.
unsafe impl Send for CudaBacking {}

impl CudaBacking {
    /// Reserves `capacity` bytes of device address space on `ctx`'s device, rounded up to
    /// the recommended granularity. Stream 0 is the context's default stream.
    pub fn reserve(ctx: Arc<CudaContext>, capacity: usize) -> Result<Self, BackingError> {
        ctx.bind_to_thread().map_err(|e| BackingError { what: "cuda bind", detail: e.to_string() })?;
        // SAFETY: a plain C struct for which all-zero is a valid (empty) value; the
        // fields that matter are set below.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = ctx.ordinal() as i32;
        let mut granule = 0usize;
        // SAFETY: `granule` and `prop` are valid for the call's duration.
        check("cuMemGetAllocationGranularity", unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granule,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
            )
        })?;
        let capacity = capacity.max(granule).div_ceil(granule) * granule;
        let mut base: sys::CUdeviceptr = 0;
        // SAFETY: reserves address space only; `base` receives the start.
        check("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut base, capacity, granule, 0, 0)
        })?;
        let streams = HashMap::from([(0, ctx.default_stream())]);
        Ok(CudaBacking {
            ctx,
            base,
            capacity,
            granule,
            prop,
            handles: vec![None; capacity / granule],
            streams,
            events: HashMap::new(),
            next_event: 0,
        })
    }

    /// Registers `stream` as pool stream `id`, so blocks freed on it are guarded by its events.
    pub fn with_stream(mut self, id: StreamId, stream: Arc<CudaStream>) -> Self {
        self.streams.insert(id, stream);
        self
    }

    fn bind(&self) -> Result<(), BackingError> {
        self.ctx.bind_to_thread().map_err(|e| BackingError { what: "cuda bind", detail: e.to_string() })
    }
}

impl Backing for CudaBacking {
    fn granule(&self) -> usize {
        self.granule
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn base(&self) -> usize {
        self.base as usize
    }

    fn map(&mut self, first: usize, count: usize) -> Result<(), BackingError> {
        self.bind()?;
        for i in first..first + count {
            let mut handle: sys::CUmemGenericAllocationHandle = 0;
            let at = self.base + (i * self.granule) as sys::CUdeviceptr;
            // SAFETY: `prop` describes this device; `handle` receives the allocation.
            check("cuMemCreate", unsafe { sys::cuMemCreate(&mut handle, self.granule, &self.prop, 0) })?;
            // SAFETY: `at` is a granule of the reserved range that holds no mapping (the
            // pool maps each granule once until it unmaps it).
            if let Err(e) = check("cuMemMap", unsafe { sys::cuMemMap(at, self.granule, 0, handle, 0) }) {
                // SAFETY: `handle` was just created and is mapped nowhere.
                unsafe { sys::cuMemRelease(handle) };
                return Err(e);
            }
            self.handles[i] = Some(handle);
        }
        let desc = sys::CUmemAccessDesc {
            location: self.prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        let at = self.base + (first * self.granule) as sys::CUdeviceptr;
        // SAFETY: the range was mapped just above; `desc` outlives the call.
        check("cuMemSetAccess", unsafe { sys::cuMemSetAccess(at, count * self.granule, &desc, 1) })
    }

    fn unmap(&mut self, first: usize, count: usize) -> Result<(), BackingError> {
        self.bind()?;
        for i in first..first + count {
            if let Some(handle) = self.handles[i].take() {
                let at = self.base + (i * self.granule) as sys::CUdeviceptr;
                // SAFETY: `at` holds exactly the mapping of `handle`, made in `map`; the pool
                // unmaps only granules whose last use has completed.
                check("cuMemUnmap", unsafe { sys::cuMemUnmap(at, self.granule) })?;
                // SAFETY: the handle is no longer mapped.
                check("cuMemRelease", unsafe { sys::cuMemRelease(handle) })?;
            }
        }
        Ok(())
    }

    fn record_event(&mut self, stream: StreamId) -> Result<EventId, BackingError> {
        self.bind()?;
        let cu_stream = self.streams.get(&stream).map(|s| s.cu_stream()).ok_or(BackingError {
            what: "cuEventRecord",
            detail: format!("stream {stream} was never registered with the pool"),
        })?;
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: `event` receives a new event handle.
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut event, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)
        })?;
        // SAFETY: both handles are live; the stream belongs to this context.
        check("cuEventRecord", unsafe { sys::cuEventRecord(event, cu_stream) })?;
        self.next_event += 1;
        self.events.insert(self.next_event, event);
        Ok(self.next_event)
    }

    fn event_done(&mut self, event: EventId) -> Result<bool, BackingError> {
        let Some(&e) = self.events.get(&event) else { return Ok(true) };
        self.bind()?;
        // SAFETY: `e` is a live event created by `record_event`.
        match unsafe { sys::cuEventQuery(e) } {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            rc => check("cuEventQuery", rc).map(|_| false),
        }
    }

    fn forget_event(&mut self, event: EventId) {
        if let Some(e) = self.events.remove(&event) {
            // SAFETY: `e` was created by `record_event` and is dropped from the map here,
            // so it is destroyed once.
            unsafe { sys::cuEventDestroy_v2(e) };
        }
    }
}

impl Drop for CudaBacking {
    fn drop(&mut self) {
        if self.bind().is_err() {
            return;
        }
        let events: Vec<EventId> = self.events.keys().copied().collect();
        events.into_iter().for_each(|e| self.forget_event(e));
        let _ = self.unmap(0, self.handles.len());
        // SAFETY: frees the reservation made in `reserve`; every granule is unmapped.
        unsafe { sys::cuMemAddressFree(self.base, self.capacity) };
    }
}
