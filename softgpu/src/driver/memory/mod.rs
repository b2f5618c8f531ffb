//! Device memory: one address space of host memory, reached through the virtual memory
//! API (`vmm`), plain allocations (`alloc`) and copies and memsets (`copy`); page-locked
//! host memory (`pinned`).

mod address_space;
pub mod alloc;
pub mod copy;
mod host;
pub mod pinned;
pub mod vmm;

pub use address_space::{ALLOC_ALIGN, Access, AddressSpace, GRANULARITY};
