use crate::memory::{OutOfMemory, PoolError};

/// An op that could not run. Shape errors name the op and the shapes involved, so that a
/// mistake in model code points at the layer, not at a kernel.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// The backend's pool could not give an op its output under the budget.
    #[error(transparent)]
    OutOfMemory(#[from] OutOfMemory),
    #[error("memory: {0}")]
    Memory(String),
    /// A kernel or driver call failed (the message names the kernel and shapes).
    #[error("{0}")]
    Device(String),
}

impl From<PoolError> for OpError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::OutOfMemory(oom) => OpError::OutOfMemory(oom),
            other => OpError::Memory(other.to_string()),
        }
    }
}

pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> OpError {
    OpError::Shape { op, detail: detail.into() }
}
