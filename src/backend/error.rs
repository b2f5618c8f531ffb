/// An op that could not run. Shape errors name the op and the shapes involved, so that a
/// mistake in model code points at the layer, not at a kernel.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
}

pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> OpError {
    OpError::Shape { op, detail: detail.into() }
}
