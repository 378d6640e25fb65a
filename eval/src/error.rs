//! The crate's errors.

/// Why evaluation could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: an unknown benchmark, a malformed data or responses file, a bad id.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
