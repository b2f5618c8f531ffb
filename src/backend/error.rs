use crate::memory::{OutOfMemory, PoolError};

/// An op that could not run. Shape and dtype errors name the op and the tensors involved,
/// so that a mistake in model code points at the layer, not at a kernel; device errors
/// keep their type (`OpError::Cuda`), so a caller can tell a failed launch from a driver
/// fault without parsing a message.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// An argument of the wrong element type (e.g. an FP16 activation where the op keeps
    /// FP32, or a weight whose dtype differs from its input's).
    #[error("{op}: {detail}")]
    DType { op: &'static str, detail: String },
    /// The backend's pool could not give an op its output under the budget.
    #[error(transparent)]
    OutOfMemory(#[from] OutOfMemory),
    /// The pool failed otherwise (a mapping the system refused, a pool bug).
    #[error("memory: {0}")]
    Memory(#[source] PoolError),
    /// A kernel, copy or driver call failed (the error names the kernel and shapes).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(Box<crate::backend::cuda::device::CudaError>),
}

impl From<PoolError> for OpError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::OutOfMemory(oom) => OpError::OutOfMemory(oom),
            other => OpError::Memory(other),
        }
    }
}

pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> OpError {
    OpError::Shape { op, detail: detail.into() }
}

pub(crate) fn dtype_err(op: &'static str, detail: impl Into<String>) -> OpError {
    OpError::DType { op, detail: detail.into() }
}
