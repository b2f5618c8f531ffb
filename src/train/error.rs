//! What can end a training run, an evaluation or a prediction.

use std::path::{Path, PathBuf};

use crate::backend::OpError;
use crate::data::loader::LoaderError;
use crate::model::weights::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // Transparent: the message is the source's, once (an error-chain printer would repeat
    // a source shown in its parent's message).
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Input(String),
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}
