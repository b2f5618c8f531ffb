//! The pool: every byte of device memory the engine uses comes from here.
//!
//! One virtual range, reserved once at the size of the card's usable memory; physical
//! granules are mapped into it on demand and unmapped on trim, so reserved memory can grow
//! and shrink without moving any live allocation. Inside the range, blocks are handed out
//! best-fit (smallest free block that fits, lowest address on ties), split, and coalesced
//! with free neighbours on free. The blocks always partition the whole range, so a free
//! block may span mapped and unmapped granules; allocating from it maps what it lacks.
//!
//! Streams: a block freed on stream S is reusable on S at once (S's later work is ordered
//! after the earlier use), and on another stream only once the event recorded at the free
//! has completed. A block filled on one stream and then used on another is handed over
//! (`hand_over`) once the second waits for the first, and is freed on the second.
//!
//! The budget is hard: mapping that would push reserved memory past it first unmaps free
//! granules elsewhere and retries (`num_alloc_retries`), then fails with `OutOfMemory`
//! carrying the figures. The driver is never asked for memory beyond the budget.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use super::backing::{Backing, BackingError, EventId, StreamId};
use crate::config::format_bytes;

/// Every block starts on a multiple of this (and so is 256-byte aligned, as vectorised
/// kernels need).
pub const BLOCK_ALIGN: usize = 512;
/// Requests of at least this size are rounded to `LARGE_ROUND` instead of `BLOCK_ALIGN`,
/// so that big tensors do not leave slivers between them; waste stays under 1/16.
const LARGE: usize = 1 << 20;
const LARGE_ROUND: usize = 64 << 10;
/// Events kept in the timeline ring.
const TIMELINE_CAPACITY: usize = 8192;

/// The size a request occupies in the pool.
pub fn rounded_size(bytes: usize) -> usize {
    let unit = if bytes >= LARGE { LARGE_ROUND } else { BLOCK_ALIGN };
    bytes.max(1).div_ceil(unit) * unit
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct OutOfMemory {
    pub requested: usize,
    pub allocated: usize,
    pub reserved: usize,
    pub budget: usize,
    pub largest_free: usize,
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of memory in the pool: requested {}, allocated {}, reserved {}, budget {}, largest free block {}",
            format_bytes(self.requested as u64),
            format_bytes(self.allocated as u64),
            format_bytes(self.reserved as u64),
            format_bytes(self.budget as u64),
            format_bytes(self.largest_free as u64)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    OutOfMemory(#[from] OutOfMemory),
    #[error(transparent)]
    Backing(#[from] BackingError),
    #[error("free of offset {0}, which is not an allocated block")]
    NotAllocated(usize),
}

/// A live allocation: `size` bytes at `ptr` (= base + `offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub offset: usize,
    pub size: usize,
    pub ptr: usize,
    pub stream: StreamId,
}

/// Counters with PyTorch's names where the meaning is the same.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PoolStats {
    pub allocated_bytes: usize,
    pub peak_allocated_bytes: usize,
    pub reserved_bytes: usize,
    pub peak_reserved_bytes: usize,
    pub budget_bytes: usize,
    /// Blocks in use.
    pub active: usize,
    /// Free blocks, and the mapped bytes they hold.
    pub inactive_split: usize,
    pub inactive_split_bytes: usize,
    pub largest_free_bytes: usize,
    pub num_allocs: u64,
    pub num_frees: u64,
    pub num_alloc_retries: u64,
    pub num_ooms: u64,
    /// Driver map / unmap calls.
    pub num_device_alloc: u64,
    pub num_device_free: u64,
}

impl PoolStats {
    /// 1 − largest free block / all free mapped bytes: 0 when the free memory is one
    /// piece, near 1 when it is shattered.
    pub fn fragmentation(&self) -> f64 {
        if self.inactive_split_bytes == 0 {
            0.0
        } else {
            1.0 - self.largest_free_bytes.min(self.inactive_split_bytes) as f64
                / self.inactive_split_bytes as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEventKind {
    Alloc,
    Free,
    Map,
    Unmap,
    Trim,
    Oom,
}

/// One entry of the timeline: what happened, how many bytes, and the totals after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolEvent {
    pub seq: u64,
    pub kind: PoolEventKind,
    pub bytes: usize,
    pub allocated_after: usize,
    pub reserved_after: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Used {
        stream: StreamId,
    },
    /// Events recorded when parts of this block were freed, with their streams.
    Free {
        pending: Vec<(StreamId, EventId)>,
    },
}

#[derive(Debug, Clone)]
struct Block {
    size: usize,
    state: State,
}

pub struct Pool<B: Backing> {
    backing: B,
    budget: usize,
    blocks: BTreeMap<usize, Block>,
    free_by_size: BTreeSet<(usize, usize)>,
    mapped: Vec<bool>,
    mapped_count: usize,
    stats: PoolStats,
    timeline: VecDeque<PoolEvent>,
    seq: u64,
}

impl<B: Backing> Pool<B> {
    /// A pool over `backing` that will never hold more than `budget` bytes mapped.
    pub fn new(backing: B, budget: usize) -> Self {
        let capacity = backing.capacity();
        let granules = capacity / backing.granule();
        let mut pool = Pool {
            backing,
            budget: budget.min(capacity),
            blocks: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            mapped: vec![false; granules],
            mapped_count: 0,
            stats: PoolStats::default(),
            timeline: VecDeque::new(),
            seq: 0,
        };
        pool.insert_free(0, capacity, Vec::new());
        pool
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Changes the budget (the governor lowers it under pressure). Memory already
    /// reserved above a lowered budget is trimmed as far as free granules allow.
    pub fn set_budget(&mut self, budget: usize) -> Result<(), PoolError> {
        self.budget = budget.min(self.backing.capacity());
        if self.reserved() > self.budget {
            self.trim(self.budget)?;
        }
        Ok(())
    }

    pub fn granule(&self) -> usize {
        self.backing.granule()
    }

    pub fn reserved(&self) -> usize {
        self.mapped_count * self.backing.granule()
    }

    pub fn stats(&self) -> PoolStats {
        let mut s = self.stats.clone();
        s.reserved_bytes = self.reserved();
        s.budget_bytes = self.budget;
        s.active = self.blocks.values().filter(|b| matches!(b.state, State::Used { .. })).count();
        s.inactive_split = self.free_by_size.len();
        let mapped_free: Vec<usize> =
            self.free_by_size.iter().map(|&(size, off)| self.mapped_bytes(off, size)).collect();
        s.inactive_split_bytes = mapped_free.iter().sum();
        s.largest_free_bytes = mapped_free.into_iter().max().unwrap_or(0);
        s
    }

    /// Starts the peaks over from what is held now (PyTorch's `reset_peak_memory_stats`):
    /// the next `stats()` says the peaks since this call.
    pub fn reset_peaks(&mut self) {
        self.stats.peak_allocated_bytes = self.stats.allocated_bytes;
        self.stats.peak_reserved_bytes = self.reserved();
    }

    /// The most recent events, oldest first.
    pub fn timeline(&self) -> impl Iterator<Item = &PoolEvent> {
        self.timeline.iter()
    }

    /// `bytes` for work on `stream`.
    pub fn alloc(&mut self, bytes: usize, stream: StreamId) -> Result<Allocation, PoolError> {
        let size = rounded_size(bytes);
        let found = match self.find(size, stream)? {
            Some(found) => Some(found),
            None => {
                // Free granules held elsewhere may be what stands between this request
                // and the budget: give them back and look again.
                self.stats.num_alloc_retries += 1;
                self.trim(0)?;
                self.find(size, stream)?
            }
        };
        let Some(offset) = found else {
            self.stats.num_ooms += 1;
            let stats = self.stats();
            self.log(PoolEventKind::Oom, bytes);
            return Err(OutOfMemory {
                requested: bytes,
                allocated: stats.allocated_bytes,
                reserved: stats.reserved_bytes,
                budget: self.budget,
                largest_free: stats.largest_free_bytes,
            }
            .into());
        };
        let block = self.remove_free(offset);
        let State::Free { pending } = block.state else { unreachable!("free index holds a used block") };
        // `find` settled the block: what is still pending was freed on this same stream.
        if block.size > size {
            self.insert_free(offset + size, block.size - size, pending);
        } else {
            pending.into_iter().for_each(|(_, e)| self.backing.forget_event(e));
        }
        self.map_range(offset, size)?;
        self.blocks.insert(offset, Block { size, state: State::Used { stream } });
        self.stats.allocated_bytes += size;
        self.stats.peak_allocated_bytes = self.stats.peak_allocated_bytes.max(self.stats.allocated_bytes);
        self.stats.num_allocs += 1;
        self.log(PoolEventKind::Alloc, size);
        Ok(Allocation { offset, size, ptr: self.backing.base() + offset, stream })
    }

    /// Moves live block `a` to `stream`: its last use is now there (a copy stream filled
    /// it, the compute stream waited for the copy and reads it), so its free is recorded
    /// on `stream` — reusable there at once, elsewhere after that stream's event.
    pub fn hand_over(&mut self, a: &mut Allocation, stream: StreamId) -> Result<(), PoolError> {
        match self.blocks.get_mut(&a.offset) {
            Some(Block { state: State::Used { stream: s }, size }) if *size == a.size => *s = stream,
            _ => return Err(PoolError::NotAllocated(a.offset)),
        }
        a.stream = stream;
        Ok(())
    }

    /// Returns `a` to the pool. Work queued on its stream may still use it: an event
    /// recorded now guards its reuse from other streams.
    pub fn free(&mut self, a: Allocation) -> Result<(), PoolError> {
        let stream = match self.blocks.get(&a.offset) {
            Some(Block { state: State::Used { stream }, size }) if *size == a.size => *stream,
            _ => return Err(PoolError::NotAllocated(a.offset)),
        };
        let event = self.backing.record_event(stream)?;
        self.blocks.remove(&a.offset);
        self.stats.allocated_bytes -= a.size;
        self.stats.num_frees += 1;
        let (mut start, mut size, mut pending) = (a.offset, a.size, vec![(stream, event)]);
        if let Some((&prev, b)) = self.blocks.range(..start).next_back()
            && matches!(b.state, State::Free { .. })
            && prev + b.size == start
        {
            let b = self.remove_free(prev);
            if let State::Free { pending: p } = b.state {
                pending.extend(p);
            }
            start = prev;
            size += b.size;
        }
        if let Some(b) = self.blocks.get(&(start + size))
            && matches!(b.state, State::Free { .. })
        {
            let b = self.remove_free(start + size);
            if let State::Free { pending: p } = b.state {
                pending.extend(p);
            }
            size += b.size;
        }
        self.insert_free(start, size, pending);
        self.log(PoolEventKind::Free, a.size);
        Ok(())
    }

    /// Unmaps free granules (whose last use has finished) until at most `target` bytes are
    /// reserved, from the top of the range down. Returns the bytes given back.
    pub fn trim(&mut self, target: usize) -> Result<usize, PoolError> {
        let before = self.reserved();
        let g = self.backing.granule();
        let candidates: Vec<(usize, usize)> =
            self.free_by_size.iter().map(|&(size, off)| (off, size)).collect();
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for (off, size) in candidates {
            if self.idle(off)? {
                // Only granules lying wholly inside the free block: the others are shared
                // with a live neighbour.
                let (first, end) = (off.div_ceil(g), (off + size) / g);
                if end > first {
                    ranges.push((first, end));
                }
            }
        }
        ranges.sort_unstable_by(|a, b| b.cmp(a));
        let mut reserved = before;
        'outer: for (first, end) in ranges {
            for i in (first..end).rev() {
                if reserved <= target {
                    break 'outer;
                }
                if self.mapped[i] {
                    self.backing.unmap(i, 1)?;
                    self.mapped[i] = false;
                    self.mapped_count -= 1;
                    self.stats.num_device_free += 1;
                    reserved -= g;
                }
            }
        }
        let freed = before - reserved;
        if freed > 0 {
            self.log(PoolEventKind::Trim, freed);
        }
        Ok(freed)
    }

    /// Maps free granules ahead of need, lowest first, up to `bytes` more or the budget.
    pub fn grow(&mut self, bytes: usize) -> Result<usize, PoolError> {
        let g = self.backing.granule();
        let want = bytes.min(self.budget.saturating_sub(self.reserved())) / g;
        let free: Vec<(usize, usize)> = self.free_by_size.iter().map(|&(size, off)| (off, size)).collect();
        let mut spots: Vec<usize> = Vec::new();
        for (off, size) in free {
            spots.extend((off.div_ceil(g)..(off + size) / g).filter(|&i| !self.mapped[i]));
        }
        spots.sort_unstable();
        for &i in spots.iter().take(want) {
            self.map_granules(i, 1)?;
        }
        Ok(spots.len().min(want) * g)
    }

    /// The best-fit free block usable on `stream` whose missing granules fit the budget.
    fn find(&mut self, size: usize, stream: StreamId) -> Result<Option<usize>, PoolError> {
        let headroom = self.budget.saturating_sub(self.reserved());
        let mut cursor = (size, 0);
        while let Some(&(block_size, off)) = self.free_by_size.range(cursor..).next() {
            if self.usable_on(off, stream)? && self.unmapped_bytes(off, size) <= headroom {
                return Ok(Some(off));
            }
            cursor = (block_size, off + 1);
        }
        Ok(None)
    }

    /// A free block is usable on `stream` when every free recorded on another stream has
    /// completed. Completed events are dropped as they are found.
    fn usable_on(&mut self, off: usize, stream: StreamId) -> Result<bool, PoolError> {
        self.settle(off, Some(stream))
    }

    /// No pending work at all on the free block at `off`.
    fn idle(&mut self, off: usize) -> Result<bool, PoolError> {
        self.settle(off, None)
    }

    fn settle(&mut self, off: usize, stream: Option<StreamId>) -> Result<bool, PoolError> {
        let pending = match &mut self.blocks.get_mut(&off).expect("block exists").state {
            State::Free { pending } => std::mem::take(pending),
            State::Used { .. } => return Ok(false),
        };
        let mut kept = Vec::new();
        let mut ok = true;
        for (s, e) in pending {
            if self.backing.event_done(e)? {
                self.backing.forget_event(e);
            } else {
                ok &= Some(s) == stream;
                kept.push((s, e));
            }
        }
        if let State::Free { pending } = &mut self.blocks.get_mut(&off).expect("block exists").state {
            *pending = kept;
        }
        Ok(ok)
    }

    fn granule_span(&self, off: usize, size: usize) -> std::ops::Range<usize> {
        let g = self.backing.granule();
        off / g..(off + size).div_ceil(g)
    }

    fn unmapped_bytes(&self, off: usize, size: usize) -> usize {
        self.granule_span(off, size).filter(|&i| !self.mapped[i]).count() * self.backing.granule()
    }

    /// Bytes of [off, off + size) that lie in mapped granules.
    fn mapped_bytes(&self, off: usize, size: usize) -> usize {
        let g = self.backing.granule();
        self.granule_span(off, size)
            .filter(|&i| self.mapped[i])
            .map(|i| (off + size).min((i + 1) * g) - off.max(i * g))
            .sum()
    }

    /// Maps the unmapped granules under [off, off + size), one driver call per run.
    fn map_range(&mut self, off: usize, size: usize) -> Result<(), PoolError> {
        let span = self.granule_span(off, size);
        let mut i = span.start;
        while i < span.end {
            if self.mapped[i] {
                i += 1;
                continue;
            }
            let run = (i..span.end).take_while(|&j| !self.mapped[j]).count();
            self.map_granules(i, run)?;
            i += run;
        }
        Ok(())
    }

    fn map_granules(&mut self, first: usize, count: usize) -> Result<(), PoolError> {
        self.backing.map(first, count)?;
        self.mapped[first..first + count].iter_mut().for_each(|m| *m = true);
        self.mapped_count += count;
        self.stats.num_device_alloc += 1;
        self.stats.peak_reserved_bytes = self.stats.peak_reserved_bytes.max(self.reserved());
        self.log(PoolEventKind::Map, count * self.backing.granule());
        Ok(())
    }

    fn insert_free(&mut self, off: usize, size: usize, pending: Vec<(StreamId, EventId)>) {
        self.blocks.insert(off, Block { size, state: State::Free { pending } });
        self.free_by_size.insert((size, off));
    }

    fn remove_free(&mut self, off: usize) -> Block {
        let block = self.blocks.remove(&off).expect("free block exists");
        self.free_by_size.remove(&(block.size, off));
        block
    }

    fn log(&mut self, kind: PoolEventKind, bytes: usize) {
        if self.timeline.len() == TIMELINE_CAPACITY {
            self.timeline.pop_front();
        }
        self.seq += 1;
        let reserved = self.reserved();
        self.timeline.push_back(PoolEvent {
            seq: self.seq,
            kind,
            bytes,
            allocated_after: self.stats.allocated_bytes,
            reserved_after: reserved,
        });
    }
}

impl<B: Backing> Drop for Pool<B> {
    fn drop(&mut self) {
        for i in 0..self.mapped.len() {
            if self.mapped[i] {
                // Nothing useful can be done with a failure while dropping: the backing's
                // own drop releases the whole range regardless.
                let _ = self.backing.unmap(i, 1);
            }
        }
    }
}
