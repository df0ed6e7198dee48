//! One mapping from an error's kind to a gRPC code and an HTTP status.

use tonic::{Code, Status};

/// The kinds of failure a gateway service reports to its callers.
///
/// Each layer keeps its own `thiserror` enum and tells which kind each variant
/// is through [`ServiceError`]; the kind alone decides the gRPC code and the
/// HTTP status, so the two can never disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or fails validation; retrying it will not help.
    InvalidArgument,
    /// The addressed resource does not exist.
    NotFound,
    /// The resource (or a unique key of it) exists already.
    AlreadyExists,
    /// A concurrent change won (optimistic concurrency); re-read and retry.
    Conflict,
    /// A dependency (Redis, Kafka) is unavailable; retry later.
    Unavailable,
    /// A bug or an unexpected state on our side.
    Internal,
}

impl ErrorKind {
    /// The gRPC status code for this kind.
    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::Conflict => Code::Aborted,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    /// The HTTP status code for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::NotFound => 404,
            Self::AlreadyExists | Self::Conflict => 409,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// A short, stable, lowercase label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// An error that a service returns to its gRPC or HTTP callers.
pub trait ServiceError: std::error::Error {
    /// Which kind of failure this is.
    fn error_kind(&self) -> ErrorKind;
}

/// Converts a service error into a `tonic::Status`.
///
/// The message of client-facing kinds is the error's `Display` text. Internal
/// and unavailable errors carry a generic message instead, so that internal
/// details (addresses, Redis replies) do not leak to callers; log them where
/// they happen.
pub fn status_from_error<E: ServiceError + ?Sized>(error: &E) -> Status {
    let kind = error.error_kind();
    let message = match kind {
        ErrorKind::Internal => "internal error".to_owned(),
        ErrorKind::Unavailable => "service temporarily unavailable, retry later".to_owned(),
        _ => error.to_string(),
    };
    Status::new(kind.grpc_code(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum SampleError {
        #[error("as2_from: must not be empty")]
        Invalid,
        #[error("redis at 10.0.0.1 refused the connection")]
        Down,
    }

    impl ServiceError for SampleError {
        fn error_kind(&self) -> ErrorKind {
            match self {
                Self::Invalid => ErrorKind::InvalidArgument,
                Self::Down => ErrorKind::Unavailable,
            }
        }
    }

    #[test]
    fn client_errors_keep_their_message() {
        let status = status_from_error(&SampleError::Invalid);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "as2_from: must not be empty");
    }

    #[test]
    fn server_errors_hide_their_details() {
        let status = status_from_error(&SampleError::Down);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.1"));
    }

    #[test]
    fn grpc_and_http_codes_agree() {
        assert_eq!(ErrorKind::NotFound.http_status(), 404);
        assert_eq!(ErrorKind::Conflict.grpc_code(), Code::Aborted);
        assert_eq!(ErrorKind::AlreadyExists.http_status(), 409);
    }
}
