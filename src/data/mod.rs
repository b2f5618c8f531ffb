//! Data: the dataset index (more to come: decoding, sampling, cache, loader).

pub mod manifest;
