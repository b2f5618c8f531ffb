//! Compute backends behind one op set (`ops::Backend`). The CPU backend is the reference
//! for every op; the CUDA backend runs the kernels in `kernels/`.

mod check;
pub mod cpu;
pub mod cuda;
mod error;
pub mod ops;
pub mod params;

pub use error::OpError;
