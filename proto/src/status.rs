//! One mapping from kinds of failure to gRPC status codes, shared by every service, so a client
//! can act on the code: retry on UNAVAILABLE / RESOURCE_EXHAUSTED, fix the request on
//! INVALID_ARGUMENT, look elsewhere on NOT_FOUND.

use tonic::{Code, Status};

/// What went wrong, as far as a caller is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The request is malformed or asks for something impossible.
    InvalidArgument,
    /// The thing asked about does not exist.
    NotFound,
    /// The request conflicts with the current state (a task leased to another worker, a
    /// finished job).
    FailedPrecondition,
    /// The service is busy: retry later.
    Busy,
    /// A peer or resource is away: retry later.
    Unavailable,
    /// A bug or an unexpected failure; the details go to the log, not to the caller.
    Internal,
}

impl Failure {
    pub fn code(self) -> Code {
        match self {
            Failure::InvalidArgument => Code::InvalidArgument,
            Failure::NotFound => Code::NotFound,
            Failure::FailedPrecondition => Code::FailedPrecondition,
            Failure::Busy => Code::ResourceExhausted,
            Failure::Unavailable => Code::Unavailable,
            Failure::Internal => Code::Internal,
        }
    }

    /// A status carrying `message` (internal failures say only that they happened).
    pub fn status(self, message: impl Into<String>) -> Status {
        match self {
            Failure::Internal => {
                tracing::error!(message = %message.into(), "internal error");
                Status::internal("internal error (see the server's log)")
            }
            other => Status::new(other.code(), message),
        }
    }
}

/// Whether a client should try the call again later.
pub fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_stay_on_the_server() {
        let status = Failure::Internal.status("database file /x is corrupt");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/x"));
        let status = Failure::InvalidArgument.status("items[3].style is \"mdoel\"");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("items[3]"));
        assert!(is_retryable(&Failure::Busy.status("queue full")));
        assert!(!is_retryable(&Failure::NotFound.status("no job x")));
    }
}
