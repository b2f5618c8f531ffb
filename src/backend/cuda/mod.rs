//! The CUDA backend: finding out, without crashing, whether a usable GPU and a kernel
//! set are present (`probe`); the launch layer (`device`: context, stream, cached PTX
//! modules, errors naming kernel and shapes), device memory from the pool (`buffer`) and
//! uploads staged through page-locked memory on a copy stream (`staging`), and which op
//! launched which kernels (`ledger`);
//! the host side of each kernel file (`conv`, `gemm`, `norm`, `pooling`, `eltwise`,
//! `activation`, `loss`, `optim`, `preprocess`), with the tile table of the tensor-core
//! kernels (`tiles`); and the `Backend` those make (`backend`).

#[cfg(feature = "cuda")]
pub mod activation;
#[cfg(feature = "cuda")]
pub mod backend;
#[cfg(feature = "cuda")]
pub mod buffer;
#[cfg(feature = "cuda")]
pub mod conv;
#[cfg(feature = "cuda")]
pub mod device;
#[cfg(feature = "cuda")]
pub mod eltwise;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod ledger;
#[cfg(feature = "cuda")]
pub mod loss;
#[cfg(feature = "cuda")]
pub mod norm;
#[cfg(feature = "cuda")]
pub mod optim;
#[cfg(feature = "cuda")]
pub mod pooling;
#[cfg(feature = "cuda")]
pub mod preprocess;
mod probe;
#[cfg(feature = "cuda")]
pub mod staging;
#[cfg(feature = "cuda")]
pub mod tiles;

pub use probe::{GpuInfo, GpuProbe, probe};
