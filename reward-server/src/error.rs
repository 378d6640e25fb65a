//! The reward server's error type: what can stop a server from starting or serving. Failures of
//! single requests are `tonic::Status`es made by `grlo_proto::status::Failure`.

/// Why a reward server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RewardServerError {
    /// The configuration is invalid; the message lists every problem.
    #[error("invalid reward server configuration: {0}")]
    Config(String),
    /// The reward model could not be loaded.
    #[error("failed to load reward model {location}: {message}")]
    ModelLoad { location: String, message: String },
    /// The listener or the gRPC transport failed.
    #[error("gRPC server on {address}: {error}")]
    Serve {
        address: String,
        error: tonic::transport::Error,
    },
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    /// A task or thread of the server stopped unexpectedly (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = RewardServerError> = std::result::Result<T, E>;
