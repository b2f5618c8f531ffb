//! The device's address space: reservations (`cuMemAddressReserve`), physical
//! allocations (`cuMemCreate`), the mappings between them (`cuMemMap`, opened by
//! `cuMemSetAccess`) and plain allocations (`cuMemAllocAsync`), with the bookkeeping of
//! the device memory they use. Every access — a kernel's load or store, a copy, a
//! memset — goes through `resolve` or `pieces`, which check it and name the nearest
//! mapping or allocation when it is not allowed.
//!
//! Addresses are handed out by a bump pointer and never reused, with an unmapped gap
//! after each reservation and allocation: a stale pointer or an overrun lands in
//! unmapped space instead of in someone else's memory.

use std::collections::{BTreeMap, HashMap};

use super::host::HostBuffer;
use crate::driver::error::{CuOutcome, CuResult};
use crate::driver::handle::{Kind, new_handle};
use crate::exec::{GlobalMemory, MemFault};

/// `cuMemGetAllocationGranularity`, minimum and recommended alike: the 2 MiB of a
/// current NVIDIA GPU. Sizes, addresses and offsets of the virtual memory API are
/// multiples of it.
pub const GRANULARITY: u64 = 2 << 20;
/// Alignment of plain allocations, as `cuMemAlloc` documents (and more than any access).
pub const ALLOC_ALIGN: u64 = 256;
/// Where the address space starts: far from host heap and `mmap` addresses, so a host
/// pointer passed as a device pointer is unmapped.
const BASE: u64 = 0x3000_0000_0000;

/// Whether a mapping may be accessed. `PROT_READ` is refused at `cuMemSetAccess`:
/// kernels' accesses do not say whether they read or write, so it could not be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    None,
    ReadWrite,
}

/// The host address backing a region. It points into a `HostBuffer` that outlives the
/// region (the region's own buffer, or a physical allocation, which is kept while it is
/// mapped).
#[derive(Debug, Clone, Copy)]
struct HostPtr(*mut u8);

// SAFETY: only an address; it is dereferenced by whoever holds the address space's lock,
// under the rules of `GlobalMemory::resolve`.
unsafe impl Send for HostPtr {}
// SAFETY: as above.
unsafe impl Sync for HostPtr {}

enum RegionKind {
    /// A piece of a physical allocation, mapped by `cuMemMap`.
    Mapping { handle: u64, access: Access },
    /// A plain allocation of context `ctx`, owning its memory.
    Allocation { ctx: u64, _buffer: HostBuffer },
}

struct Region {
    size: u64,
    host: HostPtr,
    kind: RegionKind,
}

impl Region {
    fn what(&self) -> &'static str {
        match self.kind {
            RegionKind::Mapping { .. } => "mapping",
            RegionKind::Allocation { .. } => "allocation",
        }
    }

    fn accessible(&self) -> bool {
        !matches!(self.kind, RegionKind::Mapping { access: Access::None, .. })
    }
}

struct Physical {
    buffer: HostBuffer,
    size: u64,
    mappings: usize,
    released: bool,
}

/// All device memory of the one device.
pub struct AddressSpace {
    total: u64,
    /// What new allocations hold (`DeviceConfig::fill`); None: zeros.
    fill: Option<u8>,
    used: u64,
    next_va: u64,
    reservations: BTreeMap<u64, u64>,
    regions: BTreeMap<u64, Region>,
    physical: HashMap<u64, Physical>,
}

fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn granular(x: u64) -> bool {
    x % GRANULARITY == 0
}

impl AddressSpace {
    /// An empty address space over `total` bytes of device memory, new allocations
    /// holding `fill` in every byte (None: zeros).
    pub fn new(total: u64, fill: Option<u8>) -> AddressSpace {
        AddressSpace {
            total,
            fill,
            used: 0,
            next_va: BASE,
            reservations: BTreeMap::new(),
            regions: BTreeMap::new(),
            physical: HashMap::new(),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes of device memory held by physical and plain allocations.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Takes `size` bytes of device memory, as host memory.
    fn take(&mut self, size: u64) -> CuOutcome<HostBuffer> {
        if size > self.total - self.used {
            return Err(CuResult::OutOfMemory);
        }
        let buffer = usize::try_from(size).ok().and_then(HostBuffer::zeroed).ok_or(CuResult::OutOfMemory)?;
        if let Some(byte) = self.fill {
            // SAFETY: the buffer holds `size` bytes, owned here.
            unsafe { std::ptr::write_bytes(buffer.ptr(), byte, size as usize) };
        }
        self.used += size;
        Ok(buffer)
    }

    /// A fresh address range of `size` bytes aligned to `align`, followed by a gap of
    /// `gap` unmapped bytes.
    fn fresh_range(&mut self, size: u64, align: u64, gap: u64) -> u64 {
        let at = align_up(self.next_va, align);
        self.next_va = at + size + gap;
        at
    }

    /// `cuMemAddressReserve`: `size` bytes of address space, aligned to `align` (0: the
    /// granularity).
    pub fn reserve(&mut self, size: u64, align: u64) -> CuOutcome<u64> {
        if size == 0 || !granular(size) || (align != 0 && !align.is_power_of_two()) {
            return Err(CuResult::InvalidValue);
        }
        let at = self.fresh_range(size, align.max(GRANULARITY), GRANULARITY);
        self.reservations.insert(at, size);
        Ok(at)
    }

    /// `cuMemAddressFree`: the whole of one reservation, with nothing mapped in it.
    pub fn free_reservation(&mut self, at: u64, size: u64) -> CuOutcome {
        if self.reservations.get(&at) != Some(&size) || self.regions.range(at..at + size).next().is_some() {
            return Err(CuResult::InvalidValue);
        }
        self.reservations.remove(&at);
        Ok(())
    }

    /// `cuMemCreate`: a physical allocation of `size` bytes, counted against the device.
    pub fn create(&mut self, size: u64) -> CuOutcome<u64> {
        if size == 0 || !granular(size) {
            return Err(CuResult::InvalidValue);
        }
        let buffer = self.take(size)?;
        let handle = new_handle(Kind::Physical);
        self.physical.insert(handle, Physical { buffer, size, mappings: 0, released: false });
        Ok(handle)
    }

    /// Frees physical allocation `handle` once it is released and mapped nowhere.
    fn settle(&mut self, handle: u64) {
        if let Some(p) = self.physical.get(&handle)
            && p.released
            && p.mappings == 0
        {
            self.used -= p.size;
            self.physical.remove(&handle);
        }
    }

    /// `cuMemRelease`: the memory goes when its last mapping does.
    pub fn release(&mut self, handle: u64) -> CuOutcome {
        match self.physical.get_mut(&handle) {
            Some(p) if !p.released => p.released = true,
            _ => return Err(CuResult::InvalidValue),
        }
        self.settle(handle);
        Ok(())
    }

    /// `cuMemMap`: `size` bytes of `handle` from `offset` at `at`, inside one reservation
    /// and over nothing mapped. The mapping starts with no access.
    pub fn map(&mut self, at: u64, size: u64, offset: u64, handle: u64) -> CuOutcome {
        let end = at.checked_add(size).ok_or(CuResult::InvalidValue)?;
        let phys = match self.physical.get(&handle) {
            Some(p) if !p.released => p,
            _ => return Err(CuResult::InvalidValue),
        };
        let inside_reservation =
            self.reservations.range(..=at).next_back().is_some_and(|(&start, &len)| end <= start + len);
        let overlaps = self.regions.range(..end).next_back().is_some_and(|(&start, r)| start + r.size > at);
        if size == 0
            || ![at, size, offset].into_iter().all(granular)
            || offset.checked_add(size).is_none_or(|e| e > phys.size)
            || !inside_reservation
            || overlaps
        {
            return Err(CuResult::InvalidValue);
        }
        // SAFETY: offset + size ≤ the buffer's size, checked above.
        let host = HostPtr(unsafe { phys.buffer.ptr().add(offset as usize) });
        self.regions
            .insert(at, Region { size, host, kind: RegionKind::Mapping { handle, access: Access::None } });
        if let Some(p) = self.physical.get_mut(&handle) {
            p.mappings += 1;
        }
        Ok(())
    }

    /// `cuMemUnmap`: exactly one whole mapping (the driver cannot unmap part of one).
    pub fn unmap(&mut self, at: u64, size: u64) -> CuOutcome {
        let handle = match self.regions.get(&at) {
            Some(Region { size: s, kind: RegionKind::Mapping { handle, .. }, .. }) if *s == size => *handle,
            _ => return Err(CuResult::InvalidValue),
        };
        self.regions.remove(&at);
        if let Some(p) = self.physical.get_mut(&handle) {
            p.mappings -= 1;
        }
        self.settle(handle);
        Ok(())
    }

    /// `cuMemSetAccess`: `[at, at + size)` must be covered exactly by whole mappings.
    pub fn set_access(&mut self, at: u64, size: u64, access: Access) -> CuOutcome {
        let end = at.checked_add(size).ok_or(CuResult::InvalidValue)?;
        let mut cursor = at;
        for (&start, region) in self.regions.range(at..end) {
            if start != cursor || !matches!(region.kind, RegionKind::Mapping { .. }) {
                return Err(CuResult::InvalidValue);
            }
            cursor = start + region.size;
        }
        if size == 0 || cursor != end {
            return Err(CuResult::InvalidValue);
        }
        for region in self.regions.range_mut(at..end).map(|(_, r)| r) {
            if let RegionKind::Mapping { access: a, .. } = &mut region.kind {
                *a = access;
            }
        }
        Ok(())
    }

    /// A plain allocation of `size` (> 0) bytes for context `ctx`, 256-byte aligned.
    /// Accesses are checked against `size` itself, not a rounded size.
    pub fn allocate(&mut self, size: u64, ctx: u64) -> CuOutcome<u64> {
        let buffer = self.take(size)?;
        let host = HostPtr(buffer.ptr());
        let at = self.fresh_range(size, ALLOC_ALIGN, ALLOC_ALIGN);
        self.regions.insert(at, Region { size, host, kind: RegionKind::Allocation { ctx, _buffer: buffer } });
        Ok(at)
    }

    /// Frees the plain allocation that starts at `at`.
    pub fn free_allocation(&mut self, at: u64) -> CuOutcome {
        match self.regions.get(&at) {
            Some(Region { kind: RegionKind::Allocation { .. }, size, .. }) => {
                self.used -= size;
                self.regions.remove(&at);
                Ok(())
            }
            _ => Err(CuResult::InvalidValue),
        }
    }

    /// Frees every plain allocation of context `ctx` (the context was destroyed).
    pub fn free_context(&mut self, ctx: u64) {
        let owned: Vec<u64> = self
            .regions
            .iter()
            .filter(|(_, r)| matches!(r.kind, RegionKind::Allocation { ctx: c, .. } if c == ctx))
            .map(|(&at, _)| at)
            .collect();
        owned.into_iter().for_each(|at| {
            let _ = self.free_allocation(at);
        });
    }

    /// The region holding `addr`, with its start.
    fn region_at(&self, addr: u64) -> Option<(u64, &Region)> {
        self.regions
            .range(..=addr)
            .next_back()
            .filter(|(start, r)| addr - *start < r.size)
            .map(|(&s, r)| (s, r))
    }

    /// Host spans for `len` bytes at `addr`, for copies and memsets: the range must lie
    /// in one plain allocation, or in adjacent access-enabled mappings.
    pub fn pieces(&self, addr: u64, len: usize) -> Result<Vec<(*mut u8, usize)>, MemFault> {
        let mut spans = Vec::new();
        let (mut at, mut left) = (addr, len as u64);
        while left > 0 {
            let Some((start, region)) = self.region_at(at).filter(|(_, r)| r.accessible()) else {
                return Err(self.fault(at, left as usize));
            };
            let take = left.min(start + region.size - at);
            let crosses_allocation = matches!(region.kind, RegionKind::Allocation { .. }) && take < left;
            if crosses_allocation
                || (!spans.is_empty() && matches!(region.kind, RegionKind::Allocation { .. }))
            {
                return Err(self.fault(at, left as usize));
            }
            // SAFETY: `at - start + take ≤ region.size`, inside the region's host buffer.
            spans.push((unsafe { region.host.0.add((at - start) as usize) }, take as usize));
            at += take;
            left -= take;
        }
        Ok(spans)
    }

    /// Why `len` bytes at `addr` cannot be accessed, naming the nearest region.
    pub fn fault(&self, addr: u64, len: usize) -> MemFault {
        let reason = if addr == 0 {
            "null device pointer".to_string()
        } else if let Some((start, region)) = self.region_at(addr) {
            if !region.accessible() {
                format!(
                    "mapping {start:#x}+{} bytes has no access: cuMemSetAccess was not called for it",
                    region.size
                )
            } else {
                let over = (addr + len as u64).saturating_sub(start + region.size);
                format!(
                    "runs {over} bytes past the end of {} {start:#x}+{} bytes",
                    region.what(),
                    region.size
                )
            }
        } else {
            let reserved = self
                .reservations
                .range(..=addr)
                .next_back()
                .filter(|(s, n)| addr - **s < **n)
                .map(|(s, n)| format!("reserved ({s:#x}+{n} bytes) but not mapped"));
            format!("{}; {}", reserved.unwrap_or_else(|| "unmapped".to_string()), self.nearest(addr))
        };
        MemFault { addr, len, reason }
    }

    /// The region closest to `addr`, which lies in none.
    fn nearest(&self, addr: u64) -> String {
        let below = self.regions.range(..addr).next_back().map(|(&s, r)| (addr - (s + r.size), s, r));
        let above = self.regions.range(addr..).next().map(|(&s, r)| (s - addr, s, r));
        match (below, above) {
            (Some((d, s, r)), above) if above.is_none_or(|(a, _, _)| d <= a) => {
                format!("nearest {} {s:#x}+{} bytes ends {d} bytes below", r.what(), r.size)
            }
            (_, Some((d, s, r))) => {
                format!("nearest {} {s:#x}+{} bytes starts {d} bytes above", r.what(), r.size)
            }
            _ => "no memory is allocated or mapped".to_string(),
        }
    }
}

impl GlobalMemory for AddressSpace {
    fn resolve(&self, addr: u64, len: usize) -> Result<*mut u8, MemFault> {
        match self.region_at(addr) {
            Some((start, region)) if region.accessible() && addr + len as u64 <= start + region.size => {
                // SAFETY: the range lies inside the region, hence inside its host buffer.
                Ok(unsafe { region.host.0.add((addr - start) as usize) })
            }
            _ => Err(self.fault(addr, len)),
        }
    }
}
