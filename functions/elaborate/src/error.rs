//! Errors before streaming: the contract's JSON error body and the HTTP status of each code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::elaboration::RequestError;
use shared::error_code::ErrorCode;
use shared::memory::account::AccountError;

/// An error before streaming: the contract's `{"error": {code, message, field}}`, with the
/// status [`status_of`] its code.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An error about one request field (a body field, a query parameter or a path segment).
    pub(crate) fn field(code: ErrorCode, field: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: Some(field),
        }
    }
}

/// The HTTP status of each error code; no wildcard, so a new code must choose one here.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson | ErrorCode::MissingField | ErrorCode::InvalidField => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::ProviderError => StatusCode::BAD_GATEWAY,
        ErrorCode::ProviderTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::MemoryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::PublishFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            field: e.field,
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let message = e.to_string();
        match e {
            AccountError::InvalidLimit => Self::field(ErrorCode::InvalidField, "limit", message),
            AccountError::InvalidCursor => Self::field(ErrorCode::InvalidField, "cursor", message),
            AccountError::NoteNotFound(_) => Self::field(ErrorCode::NotFound, "note_id", message),
            AccountError::Db(err) => {
                tracing::warn!(error = %err, "memory route failed on the database");
                Self::new(
                    ErrorCode::MemoryUnavailable,
                    "the memory store is unavailable; retry later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "code": self.code, "message": self.message, "field": self.field } });
        let mut response = (status_of(self.code), axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // For the per-request metrics, which count rejected requests by code.
        response.extensions_mut().insert(self.code);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        let expected = [
            (ErrorCode::InvalidJson, 400),
            (ErrorCode::MissingField, 400),
            (ErrorCode::InvalidField, 400),
            (ErrorCode::Unauthenticated, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::MethodNotAllowed, 405),
            (ErrorCode::BodyTooLarge, 413),
            (ErrorCode::UnsupportedMediaType, 415),
            (ErrorCode::ProviderError, 502),
            (ErrorCode::ProviderTimeout, 504),
            (ErrorCode::PublishFailed, 500),
            (ErrorCode::MemoryUnavailable, 503),
            (ErrorCode::Internal, 500),
        ];
        let listed: Vec<ErrorCode> = expected.iter().map(|(code, _)| *code).collect();
        assert_eq!(listed, ErrorCode::ALL, "the table must list every code");
        for (code, status) in expected {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }
}
