//! Memory: the pool that owns every byte the engine allocates, and what backs it.

pub mod backing;
pub mod pool;

pub use backing::{Backing, BackingError, EventId, HostBacking, StreamId};
pub use pool::{Allocation, OutOfMemory, Pool, PoolError, PoolEvent, PoolEventKind, PoolStats, rounded_size};
