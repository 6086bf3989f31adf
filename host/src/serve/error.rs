//! API errors and their JSON form: `{"error": {"code": …, "message": …}}`, with `field` for an
//! invalid spec.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error returned to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The execution spec is invalid; `field` is its path, such as `limits.timeout_seconds`.
    #[error("invalid spec field `{field}`: {message}")]
    InvalidSpec {
        /// Path of the field; empty for the whole document.
        field: String,
        /// The problem.
        message: String,
    },
    /// The uploaded package does not match its sha256.
    #[error("{0}")]
    InvalidPackage(String),
    /// The request carries no valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// No execution has the id.
    #[error("no execution `{0}`")]
    ExecutionNotFound(String),
    /// No route matches the path.
    #[error("no route for {method} {path}; see GET /v1/openapi.json")]
    RouteNotFound {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The route exists, but not for this method.
    #[error("{method} is not allowed on {path}; see GET /v1/openapi.json")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The request conflicts with the execution's state.
    #[error("{0}")]
    Conflict(String),
    /// The body, a part of it, or the package is larger than its limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body's content type is not accepted.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The client sent nothing for too long.
    #[error("{0}")]
    RequestTimeout(String),
    /// The host runs as many executions as it may.
    #[error("{0}")]
    TooManyRequests(String),
    /// The host is shutting down and accepts no new executions.
    #[error("the host is shutting down and accepts no new executions; retry against the next host process")]
    ShuttingDown,
    /// The backend failed.
    #[error("{0}")]
    Backend(String),
    /// The host failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Returns the HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::InvalidSpec { .. } | ApiError::InvalidPackage(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::ExecutionNotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Backend(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidSpec { .. } => "invalid_spec",
            ApiError::InvalidPackage(_) => "invalid_package",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::ExecutionNotFound(_) | ApiError::RouteNotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Backend(_) => "backend_error",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else {
            // The message may quote client input, such as a spec value; it is not logged.
            tracing::debug!(code = self.code(), status = status.as_u16(), "request rejected");
        }
        let mut error = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        if let ApiError::InvalidSpec { field, .. } = &self {
            error["field"] = field.clone().into();
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Maps a multipart error of axum to an API error.
pub fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("the request body is larger than its limit: {}", error.body_text()))
    } else {
        ApiError::InvalidRequest(format!("invalid multipart body: {}", error.body_text()))
    }
}
