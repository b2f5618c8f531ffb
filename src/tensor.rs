//! Tensors: a shape and the storage of one backend.
//!
//! Activations are NHWC (channels innermost, so that a pixel's channels are one
//! contiguous run — the layout tensor-core convolution wants); convolution weights are
//! KRSC for the same reason; linear weights are `[out, in]` like torchvision's.
//!
//! Every tensor carries its element type: under mixed precision activations and their
//! gradients are FP16, while master weights, their gradients, optimizer state, batch-norm
//! statistics and the loss stay FP32. Arithmetic is FP32 (or wider) on every backend.

use std::fmt;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
    /// The type activations are stored in: FP16 under `mixed_precision`, else FP32.
    pub fn activations(mixed_precision: bool) -> Self {
        if mixed_precision { DType::F16 } else { DType::F32 }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        })
    }
}

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
    dtype: DType,
    storage: S,
}

impl<S> Tensor<S> {
    /// Pairs a shape with storage; the backend makes sure that the storage holds
    /// `shape.numel()` elements of `dtype` before calling this.
    pub fn from_parts(shape: Shape, dtype: DType, storage: S) -> Self {
        Tensor { shape, dtype, storage }
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The bytes of its elements.
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
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
