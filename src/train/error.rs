//! What can end a training run, an evaluation or a prediction.

use std::path::{Path, PathBuf};

use crate::backend::OpError;
use crate::data::loader::LoaderError;
use crate::model::weights::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("{0}")]
    Weights(#[from] WeightsError),
    #[error("{0}")]
    Loader(#[from] LoaderError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Input(String),
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}
