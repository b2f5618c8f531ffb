//! The pool on host memory: random alloc/free/trim/grow sequences keep every invariant
//! (no overlap, alignment, consistent statistics, budget never passed, one block after
//! freeing everything, trim returns every free granule), the cross-stream reuse rule
//! holds, and running out of budget is a typed error with the figures.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use dfengine::memory::{
    Allocation, Backing, BackingError, EventId, HostBacking, Pool, PoolError, PoolEventKind, StreamId,
    rounded_size,
};
use proptest::prelude::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Host memory whose events complete only when the test says so.
struct ScriptedEvents {
    host: HostBacking,
    done: Rc<RefCell<HashSet<EventId>>>,
    next: EventId,
}

impl Backing for ScriptedEvents {
    fn granule(&self) -> usize {
        self.host.granule()
    }
    fn capacity(&self) -> usize {
        self.host.capacity()
    }
    fn base(&self) -> usize {
        self.host.base()
    }
    fn map(&mut self, first: usize, count: usize) -> Result<(), BackingError> {
        self.host.map(first, count)
    }
    fn unmap(&mut self, first: usize, count: usize) -> Result<(), BackingError> {
        self.host.unmap(first, count)
    }
    fn record_event(&mut self, _stream: StreamId) -> Result<EventId, BackingError> {
        self.next += 1;
        Ok(self.next)
    }
    fn event_done(&mut self, event: EventId) -> Result<bool, BackingError> {
        Ok(self.done.borrow().contains(&event))
    }
    fn forget_event(&mut self, _event: EventId) {}
}

fn host_pool(capacity: usize, granule: usize, budget: usize) -> Pool<HostBacking> {
    Pool::new(HostBacking::reserve(capacity, granule).unwrap(), budget)
}

/// Fills an allocation's first and last bytes with a tag, to be checked at free: an
/// overlapping allocation would overwrite it, an unmapped one would fault.
fn stamp(a: &Allocation, tag: u8) {
    // SAFETY: the pool mapped [ptr, ptr + size) for this allocation alone.
    unsafe {
        *(a.ptr as *mut u8) = tag;
        *((a.ptr + a.size - 1) as *mut u8) = tag;
    }
}

fn stamp_intact(a: &Allocation, tag: u8) -> bool {
    // SAFETY: as in `stamp`; the allocation is still live.
    unsafe { *(a.ptr as *const u8) == tag && *((a.ptr + a.size - 1) as *const u8) == tag }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize),
    Free(usize),
    Trim(usize),
    Grow(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop_oneof![1usize..4 * KIB, 4 * KIB..512 * KIB, 512 * KIB..3 * MIB].prop_map(Op::Alloc),
        4 => any::<usize>().prop_map(Op::Free),
        1 => (0usize..24 * MIB).prop_map(Op::Trim),
        1 => (0usize..8 * MIB).prop_map(Op::Grow),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_sequences_keep_every_invariant(ops in prop::collection::vec(op(), 1..200)) {
        let (granule, budget) = (256 * KIB, 12 * MIB);
        let mut pool = host_pool(32 * MIB, granule, budget);
        let mut live: Vec<(Allocation, u8)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let tag = (step % 251) as u8 + 1;
            match op {
                Op::Alloc(bytes) => match pool.alloc(bytes, 0) {
                    Ok(a) => {
                        prop_assert!(a.size >= bytes && a.size == rounded_size(bytes));
                        prop_assert_eq!(a.ptr % 256, 0, "allocation not 256-byte aligned");
                        stamp(&a, tag);
                        live.push((a, tag));
                    }
                    Err(PoolError::OutOfMemory(oom)) => {
                        prop_assert_eq!(oom.budget, budget);
                        prop_assert_eq!(oom.allocated, live.iter().map(|(a, _)| a.size).sum::<usize>());
                        // After the retry's trim, reserved memory is at most the granules the live
                        // blocks touch (size + 2 partial granules each), and the free tail of the
                        // range needs at most the request + 2 granules: a refusal is only allowed
                        // when those cannot fit the budget together.
                        let bound = oom.allocated + rounded_size(bytes) + 2 * (live.len() + 1) * granule;
                        prop_assert!(bound > budget, "refused {bytes} B with {oom:?}");
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                },
                Op::Free(pick) if !live.is_empty() => {
                    let (a, tag) = live.swap_remove(pick % live.len());
                    prop_assert!(stamp_intact(&a, tag), "allocation at {} was overwritten", a.offset);
                    pool.free(a).unwrap();
                }
                Op::Free(_) => {}
                Op::Trim(target) => { pool.trim(target).unwrap(); }
                Op::Grow(bytes) => { pool.grow(bytes).unwrap(); }
            }
            let s = pool.stats();
            prop_assert_eq!(s.allocated_bytes, live.iter().map(|(a, _)| a.size).sum::<usize>());
            prop_assert_eq!(s.active, live.len());
            prop_assert!(s.reserved_bytes <= budget, "reserved {} past the budget", s.reserved_bytes);
            prop_assert!(s.peak_reserved_bytes <= budget);
            prop_assert!(s.reserved_bytes + granule * live.len() >= s.allocated_bytes);
            let mut spans: Vec<(usize, usize)> = live.iter().map(|(a, _)| (a.offset, a.offset + a.size)).collect();
            spans.sort_unstable();
            prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlapping allocations: {spans:?}");
            let frag = s.fragmentation();
            prop_assert!((0.0..=1.0).contains(&frag));
        }
        for (a, tag) in live.drain(..) {
            prop_assert!(stamp_intact(&a, tag));
            pool.free(a).unwrap();
        }
        let s = pool.stats();
        prop_assert_eq!(s.allocated_bytes, 0);
        prop_assert_eq!(s.inactive_split, 1, "freeing everything must coalesce into one block");
        pool.trim(0).unwrap();
        prop_assert_eq!(pool.stats().reserved_bytes, 0, "trim(0) must return every free granule");
    }
}

#[test]
fn budget_is_hard_and_oom_carries_the_figures() {
    let mut pool = host_pool(16 * MIB, MIB, 4 * MIB);
    let a = pool.alloc(3 * MIB, 0).unwrap();
    let err = pool.alloc(2 * MIB, 0).unwrap_err();
    let PoolError::OutOfMemory(oom) = &err else { panic!("expected OutOfMemory, got {err}") };
    assert_eq!((oom.requested, oom.allocated, oom.budget), (2 * MIB, 3 * MIB, 4 * MIB));
    assert!(oom.reserved <= 4 * MIB);
    let text = err.to_string();
    for part in ["requested 2.00 MiB", "allocated 3.00 MiB", "budget 4.00 MiB", "largest free block"] {
        assert!(text.contains(part), "{text}");
    }
    assert_eq!(pool.stats().num_ooms, 1);
    let kinds: Vec<PoolEventKind> = pool.timeline().map(|e| e.kind).collect();
    // The retry's trim found no free granule to give back, so it left no entry.
    assert_eq!(kinds, [PoolEventKind::Map, PoolEventKind::Alloc, PoolEventKind::Oom]);
    let last = pool.timeline().last().unwrap();
    assert_eq!((last.bytes, last.allocated_after), (2 * MIB, 3 * MIB));
    pool.free(a).unwrap();
    pool.alloc(2 * MIB, 0).expect("fits once the first block is freed");
}

#[test]
fn budget_pressure_unmaps_free_granules_and_retries() {
    let mut pool = host_pool(16 * MIB, MIB, 4 * MIB);
    let blocks: Vec<Allocation> = (0..4).map(|_| pool.alloc(MIB, 0).unwrap()).collect();
    assert_eq!(pool.stats().reserved_bytes, 4 * MIB);
    pool.free(blocks[1]).unwrap();
    pool.free(blocks[3]).unwrap();
    // 2 MiB fits nowhere mapped; only giving back the free granule in the middle makes
    // room under the budget for the tail to grow.
    let big = pool.alloc(2 * MIB, 0).unwrap();
    let s = pool.stats();
    assert_eq!(s.num_alloc_retries, 1);
    assert!(s.reserved_bytes <= 4 * MIB);
    assert_eq!(big.offset, 3 * MIB);
}

#[test]
fn a_handed_over_block_is_freed_on_its_new_stream() {
    let done = Rc::new(RefCell::new(HashSet::new()));
    let backing =
        ScriptedEvents { host: HostBacking::reserve(8 * MIB, MIB).unwrap(), done: done.clone(), next: 0 };
    let mut pool = Pool::new(backing, 8 * MIB);
    // The copy stream (1) fills a block, the compute stream (0) waits and reads it.
    let mut staged = pool.alloc(64 * KIB, 1).unwrap();
    let guard = pool.alloc(64 * KIB, 1).unwrap(); // keeps `staged` from merging with the tail
    pool.hand_over(&mut staged, 0).unwrap();
    assert_eq!(staged.stream, 0);
    pool.free(staged).unwrap();
    let next_copy = pool.alloc(64 * KIB, 1).unwrap();
    assert_ne!(next_copy.offset, staged.offset, "the copy stream took a block compute may still read");
    let compute = pool.alloc(64 * KIB, 0).unwrap();
    assert_eq!(compute.offset, staged.offset, "the compute stream reuses it at once");
    let stale = Allocation { offset: compute.offset + 512, ..compute };
    assert!(matches!(pool.hand_over(&mut stale.clone(), 1), Err(PoolError::NotAllocated(_))));
    for a in [next_copy, compute, guard] {
        pool.free(a).unwrap();
    }
}

#[test]
fn freed_blocks_cross_streams_only_after_their_event() {
    let done = Rc::new(RefCell::new(HashSet::new()));
    let backing =
        ScriptedEvents { host: HostBacking::reserve(8 * MIB, MIB).unwrap(), done: done.clone(), next: 0 };
    let mut pool = Pool::new(backing, 8 * MIB);
    let a = pool.alloc(64 * KIB, 1).unwrap();
    let guard = pool.alloc(64 * KIB, 1).unwrap(); // keeps `a` from merging with the tail
    pool.free(a).unwrap();
    let same = pool.alloc(64 * KIB, 1).unwrap();
    assert_eq!(same.offset, a.offset, "the freeing stream reuses its block at once");
    pool.free(same).unwrap();
    let other = pool.alloc(64 * KIB, 2).unwrap();
    assert_ne!(other.offset, a.offset, "stream 2 took a block stream 1 may still be using");
    done.borrow_mut().extend(1..=16);
    pool.free(other).unwrap();
    let later = pool.alloc(64 * KIB, 2).unwrap();
    assert_eq!(later.offset, a.offset, "once the event completed, stream 2 may reuse the block");
    pool.free(guard).unwrap();
}

#[test]
fn trim_and_grow_move_reserved_memory_within_the_budget() {
    let mut pool = host_pool(32 * MIB, MIB, 8 * MIB);
    assert_eq!(pool.grow(5 * MIB).unwrap(), 5 * MIB);
    assert_eq!(pool.stats().reserved_bytes, 5 * MIB);
    assert_eq!(pool.grow(100 * MIB).unwrap(), 3 * MIB, "grow stops at the budget");
    let a = pool.alloc(MIB + 1, 0).unwrap();
    assert_eq!(pool.stats().num_device_alloc, 8, "the allocation used pre-mapped granules");
    let freed = pool.trim(0).unwrap();
    assert_eq!(freed, 8 * MIB - 2 * MIB, "every granule but the two the live block touches");
    pool.free(a).unwrap();
    pool.set_budget(MIB).unwrap();
    assert_eq!(pool.stats().reserved_bytes, MIB, "lowering the budget trims down to it");
    assert!(pool.alloc(2 * MIB, 0).is_err(), "a lowered budget holds");
}

#[test]
fn freeing_twice_is_an_error_not_corruption() {
    let mut pool = host_pool(4 * MIB, MIB, 4 * MIB);
    let a = pool.alloc(1000, 0).unwrap();
    pool.free(a).unwrap();
    assert!(matches!(pool.free(a), Err(PoolError::NotAllocated(_))));
}

#[test]
fn cpu_backend_tensors_live_in_its_budgeted_pool() {
    use dfengine::backend::OpError;
    use dfengine::backend::cpu::CpuBackend;
    use dfengine::backend::ops::Backend;
    use dfengine::tensor::Shape;

    let b = CpuBackend::with_budget(8 * MIB).unwrap();
    let x = b.tensor(Shape::from([1, 64, 64, 16]), &vec![0.5; 64 * 64 * 16]).unwrap();
    let w = b.tensor(Shape::from([16, 3, 3, 16]), &vec![0.01; 16 * 9 * 16]).unwrap();
    let y = b.conv2d_fwd(&x, &w, [1, 1], [1, 1]).unwrap();
    let s = b.pool_stats();
    assert_eq!(s.active, 3, "x, w and y each hold a block");
    assert!(s.allocated_bytes >= 3 * 64 * 64 * 16 * 4 / 2);
    drop(y);
    assert_eq!(b.pool_stats().active, 2, "a dropped tensor returns its block");

    // 4 MiB more fits nowhere in 8 MiB next to the 256 KiB tensors and the 4 MiB one.
    let big = b.zeros(Shape::from([MIB])).unwrap();
    match b.zeros(Shape::from([2 * MIB])) {
        Err(OpError::OutOfMemory(oom)) => {
            assert_eq!((oom.requested, oom.budget), (8 * MIB, 8 * MIB));
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    drop(big);

    let mut shared = x.clone();
    let err = b.add_assign(&mut shared, &x).unwrap_err().to_string();
    assert!(err.contains("add: y is shared"), "{err}");
}
