//! The machine-readable error codes clients see (design.md, "Contracts").
//!
//! One enum for every code on the wire: errors before streaming (`{"error": {"code": ...}}`),
//! in-band `event: error` codes and provider failures. The strings are a contract: a variant's
//! snake_case name is what clients match on, so renaming one is a breaking change. Which HTTP
//! status a code gets is the HTTP layer's business, not this module's.

use std::fmt;

use serde::Serialize;

/// A stable error code, serialised as its snake_case string (`invalid_json`, `provider_error`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not JSON, or not a JSON object.
    InvalidJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong type, is blank or is too long.
    InvalidField,
    /// The request carries no identity that may be trusted.
    Unauthenticated,
    /// The identity is not allowed to act for the requested user.
    Forbidden,
    /// No route has this path.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The body exceeds the size limit.
    BodyTooLarge,
    /// The content type is not `application/json`.
    UnsupportedMediaType,
    /// The LLM provider failed, broke its protocol or returned no text.
    ProviderError,
    /// The LLM provider sent nothing for longer than the idle timeout.
    ProviderTimeout,
    /// The completed elaboration could not be handed to the memory queue.
    PublishFailed,
    /// The memory store (database) could not be reached or failed; retrying later may succeed.
    MemoryUnavailable,
    /// A fault of this service, not of the request.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (for tables and tests).
    pub const ALL: [ErrorCode; 14] = [
        Self::InvalidJson,
        Self::MissingField,
        Self::InvalidField,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::BodyTooLarge,
        Self::UnsupportedMediaType,
        Self::ProviderError,
        Self::ProviderTimeout,
        Self::PublishFailed,
        Self::MemoryUnavailable,
        Self::Internal,
    ];

    /// The code as it appears on the wire (the same string serde writes).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTooLarge => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ProviderError => "provider_error",
            Self::ProviderTimeout => "provider_timeout",
            Self::PublishFailed => "publish_failed",
            Self::MemoryUnavailable => "memory_unavailable",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with a wire string, so a client-side check reads `assert_eq!(code, "forbidden")`.
impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Compares with a wire string (see the `str` impl).
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire contract: each code and the exact string clients see.
    const WIRE: [(ErrorCode, &str); 14] = [
        (ErrorCode::InvalidJson, "invalid_json"),
        (ErrorCode::MissingField, "missing_field"),
        (ErrorCode::InvalidField, "invalid_field"),
        (ErrorCode::Unauthenticated, "unauthenticated"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::MethodNotAllowed, "method_not_allowed"),
        (ErrorCode::BodyTooLarge, "body_too_large"),
        (ErrorCode::UnsupportedMediaType, "unsupported_media_type"),
        (ErrorCode::ProviderError, "provider_error"),
        (ErrorCode::ProviderTimeout, "provider_timeout"),
        (ErrorCode::PublishFailed, "publish_failed"),
        (ErrorCode::MemoryUnavailable, "memory_unavailable"),
        (ErrorCode::Internal, "internal"),
    ];

    #[test]
    fn every_code_serialises_to_its_wire_string() -> Result<(), serde_json::Error> {
        for (code, wire) in WIRE {
            assert_eq!(serde_json::to_value(code)?, serde_json::json!(wire));
            assert_eq!(code.as_str(), wire);
            assert_eq!(code.to_string(), wire);
            assert_eq!(code, wire);
        }
        Ok(())
    }

    #[test]
    fn the_table_and_all_list_every_code_once() {
        // A new variant fails to compile here until it is added to both tables.
        let _exhaustive = |code: ErrorCode| match code {
            ErrorCode::InvalidJson
            | ErrorCode::MissingField
            | ErrorCode::InvalidField
            | ErrorCode::Unauthenticated
            | ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::BodyTooLarge
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::ProviderError
            | ErrorCode::ProviderTimeout
            | ErrorCode::PublishFailed
            | ErrorCode::MemoryUnavailable
            | ErrorCode::Internal => (),
        };
        let table: Vec<ErrorCode> = WIRE.iter().map(|(code, _)| *code).collect();
        assert_eq!(table, ErrorCode::ALL);
        let unique: std::collections::HashSet<&str> = WIRE.iter().map(|(_, s)| *s).collect();
        assert_eq!(unique.len(), WIRE.len());
    }
}
