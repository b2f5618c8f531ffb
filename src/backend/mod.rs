//! Compute backends. The CPU backend is the reference for every op; the CUDA backend
//! runs the kernels in `kernels/`.

pub mod cuda;
