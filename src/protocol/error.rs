//! Error codes shared by both protocols.

use serde::{Deserialize, Serialize};

/// What kind of failure an [`RpcError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    NotFound,
    AlreadyExists,
    BadRequest,
    BadVersion,
    Unauthorized,
    UnknownMethod,
    Busy,
    OperationFailed,
}

impl ErrorCode {
    /// Wire name, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadVersion => "bad_version",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::Busy => "busy",
            ErrorCode::OperationFailed => "operation_failed",
        }
    }

    /// Short label the CLI prints before the message.
    pub fn label(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not found",
            ErrorCode::AlreadyExists => "already exists",
            ErrorCode::BadRequest => "invalid request",
            ErrorCode::BadVersion => "version mismatch",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownMethod => "unknown method",
            ErrorCode::Busy => "busy",
            ErrorCode::OperationFailed => "failed",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", code.label())]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    /// The operation that failed; empty before one was assigned.
    pub request_id: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            request_id: String::new(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::NotFound, message)
    }
    pub fn bad_request(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::BadRequest, message)
    }
    pub fn failed(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorCode::OperationFailed, message)
    }
    pub fn with_request(mut self, request_id: &str) -> RpcError {
        if self.request_id.is_empty() {
            self.request_id = request_id.to_string();
        }
        self
    }
}
