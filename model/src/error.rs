//! The error type of the model crate.
//!
//! Every message is lower-case, has no trailing period, and names what was wrong and where
//! (the file, the tensor, the config key, the prompt), so that a person can act on it.

use std::path::PathBuf;

use crate::tokenizer::TokenizerError;

/// Everything that can go wrong while loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("failed to write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("invalid JSON in {path}: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },

    #[error("invalid model config {path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("unsupported model in {path}: {message}")]
    Unsupported { path: PathBuf, message: String },

    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights { dir: PathBuf },

    #[error("corrupt safetensors file {path}: {message}")]
    CorruptWeights { path: PathBuf, message: String },

    #[error("missing tensor {tensor} (looked in {location})")]
    MissingTensor { tensor: String, location: String },

    #[error("tensor {tensor} in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        tensor: String,
        path: PathBuf,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("tensor {tensor} in {path} has dtype {dtype}, expected bf16, f16 or f32")]
    UnsupportedDtype {
        tensor: String,
        path: PathBuf,
        dtype: String,
    },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("object store {location}: {message}")]
    Store { location: String, message: String },

    /// A published file that is missing, or whose size or SHA-256 differs from its manifest.
    #[error("object store {location}: {file} failed verification: {message}")]
    Verification {
        location: String,
        file: String,
        message: String,
    },

    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The model crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn read(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Read {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Write {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.into(),
            message: message.into(),
        }
    }
}
