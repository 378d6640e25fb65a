//! The learner's error type.

use crate::config::ConfigError;
use crate::data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    #[error(transparent)]
    Model(#[from] grlo_model::Error),
    #[error(transparent)]
    Tokenizer(#[from] grlo_model::tokenizer::TokenizerError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Reward(String),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("failed to write {path}: {error}")]
    Write {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// The step in progress was abandoned on request; nothing of it was applied.
    #[error("the training step was interrupted")]
    Interrupted,
}

pub type Result<T, E = LearnerError> = std::result::Result<T, E>;

impl LearnerError {
    pub(crate) fn write(path: impl Into<std::path::PathBuf>, error: std::io::Error) -> Self {
        LearnerError::Write {
            path: path.into(),
            error,
        }
    }
}
