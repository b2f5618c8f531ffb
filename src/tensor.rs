//! Tensors: a shape and the storage of one backend.
//!
//! Activations are NHWC (channels innermost, so that a pixel's channels are one
//! contiguous run — the layout tensor-core convolution wants); convolution weights are
//! KRSC for the same reason; linear weights are `[out, in]` like torchvision's.

use std::fmt;

/// Dimensions, outermost first.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// The dimensions as a fixed-size array, or `None` when the rank differs.
    pub fn as_array<const R: usize>(&self) -> Option<[usize; R]> {
        self.0.as_slice().try_into().ok()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", dims.join("×"))
    }
}

impl<const R: usize> From<[usize; R]> for Shape {
    fn from(dims: [usize; R]) -> Self {
        Shape(dims.to_vec())
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
}

/// A tensor whose elements live in a backend's storage `S` (host memory for the CPU
/// backend, a pool block for CUDA).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<S> {
    shape: Shape,
    storage: S,
}

impl<S> Tensor<S> {
    /// Pairs a shape with storage; the backend checks that the storage holds
    /// `shape.numel()` elements before calling this.
    pub fn from_parts(shape: Shape, storage: S) -> Self {
        Tensor { shape, storage }
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    pub fn storage(&self) -> &S {
        &self.storage
    }
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }
}
