//! Data: the dataset index, frame sampling, the quality filter and face crops (more to
//! come: decoding, cache, loader).

pub mod faces;
pub mod manifest;
pub mod quality;
pub mod sampling;
