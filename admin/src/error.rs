//! The one error type of the admin HTTP API, rendered in one place as
//! `{"error":{"message": ..., "type": ...}}`. Internal failures are logged with
//! their detail and shown to the caller only as a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every way an admin API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or fails validation (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials, or a bad internal signature (401).
    #[error("invalid or missing credentials")]
    Unauthorized,
    /// Signed in, but the caller's role or the CSRF check does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts; retry after the given seconds (429).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    /// The request body is larger than the limit, in bytes (413).
    #[error("request body is larger than the {0}-byte limit")]
    PayloadTooLarge(usize),
    /// The addressed object does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The edge is down or refused a push (502).
    #[error("{0}")]
    EdgeSyncFailed(String),
    /// A feature is switched off by configuration (503).
    #[error("{0}")]
    NotConfigured(String),
    /// Anything else; the detail is logged, never returned (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::EdgeSyncFailed(_) => StatusCode::BAD_GATEWAY,
            Self::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::TooManyRequests { .. } => "rate_limit_error",
            Self::PayloadTooLarge(_) => "request_too_large",
            Self::NotFound(_) => "not_found_error",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(_) => "conflict_error",
            Self::EdgeSyncFailed(_) => "edge_sync_error",
            Self::NotConfigured(_) => "not_configured",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self::internal(format_args!("database: {err}"))
    }
}

impl From<sqlx::migrate::MigrateError> for ApiError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Self::internal(format_args!("migration: {err}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(err: serde_json::Error) -> Self {
        Self::internal(format_args!("json: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal server error".to_string()
            }
            other => other.to_string(),
        };
        let body = json!({ "error": { "message": message, "type": self.kind() } });
        let mut response = (status, Json(body)).into_response();
        if let Self::TooManyRequests { retry_after_secs, .. } = &self {
            if let Ok(value) = axum::http::HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
