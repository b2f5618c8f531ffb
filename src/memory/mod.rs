//! Memory: the pool that owns every byte the engine allocates and what backs it, the
//! readings of GPU and host memory, and the governor that acts on them.

pub mod backing;
#[cfg(feature = "cuda")]
pub mod cuda_backing;
pub mod governor;
pub mod manager;
pub mod monitor;
pub mod plot;
pub mod pool;
pub mod sample;

pub use backing::{Backing, BackingError, EventId, HostBacking, StreamId};
pub use pool::{Allocation, OutOfMemory, Pool, PoolError, PoolEvent, PoolEventKind, PoolStats, rounded_size};
