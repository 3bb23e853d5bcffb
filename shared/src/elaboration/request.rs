//! The request contract: a validated [`ElaborateRequest`] and the caller's identity.

use serde_json::Value;

use crate::error_code::ErrorCode;
use crate::types::UserId;

/// Longest `hikmah`, in characters.
pub const MAX_HIKMAH_CHARS: usize = 8000;
/// Longest `question`, in characters.
pub const MAX_QUESTION_CHARS: usize = 2000;

/// A request that passed validation: every field is within the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElaborateRequest {
    /// The body's `user_id`; trusted only as [`resolve_user`] decides.
    pub user_id: Option<UserId>,
    /// The wisdom text to elaborate, 1..=8000 characters (not blank).
    pub hikmah: String,
    /// The optional question, at most 2000 characters; blank counts as absent.
    pub question: Option<String>,
}

/// Why a request is refused before streaming starts; `code` and `field` are stable for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Machine-readable code (`invalid_json`, `missing_field`, `invalid_field`, `unauthenticated`,
    /// `forbidden`).
    pub code: ErrorCode,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<&'static str>,
}

impl RequestError {
    fn field(code: ErrorCode, field: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: Some(field),
        }
    }
}

impl ElaborateRequest {
    /// Parses and validates a JSON body; the error names the first field at fault.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| RequestError {
            code: ErrorCode::InvalidJson,
            message: format!("the body is not valid JSON: {e}"),
            field: None,
        })?;
        let Value::Object(map) = value else {
            return Err(RequestError {
                code: ErrorCode::InvalidJson,
                message: "the body must be a JSON object like {\"hikmah\": \"...\"}".into(),
                field: None,
            });
        };
        let hikmah = match map.get("hikmah") {
            None | Some(Value::Null) => {
                return Err(RequestError::field(
                    ErrorCode::MissingField,
                    "hikmah",
                    "hikmah is required",
                ));
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(RequestError::field(
                    ErrorCode::InvalidField,
                    "hikmah",
                    "hikmah must be a string",
                ))
            }
        };
        if hikmah.trim().is_empty() {
            return Err(RequestError::field(
                ErrorCode::InvalidField,
                "hikmah",
                "hikmah must not be empty",
            ));
        }
        let chars = hikmah.chars().count();
        if chars > MAX_HIKMAH_CHARS {
            return Err(RequestError::field(
                ErrorCode::InvalidField,
                "hikmah",
                format!("hikmah is {chars} characters; at most {MAX_HIKMAH_CHARS} are accepted"),
            ));
        }
        let question = match map.get("question") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let chars = s.chars().count();
                if chars > MAX_QUESTION_CHARS {
                    return Err(RequestError::field(
                        ErrorCode::InvalidField,
                        "question",
                        format!("question is {chars} characters; at most {MAX_QUESTION_CHARS} are accepted"),
                    ));
                }
                Some(s.clone()).filter(|q| !q.trim().is_empty())
            }
            Some(_) => {
                return Err(RequestError::field(
                    ErrorCode::InvalidField,
                    "question",
                    "question must be a string",
                ))
            }
        };
        let user_id = match map.get("user_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(UserId::parse(s).map_err(|e| {
                RequestError::field(ErrorCode::InvalidField, "user_id", e.to_string())
            })?),
            Some(_) => {
                return Err(RequestError::field(
                    ErrorCode::InvalidField,
                    "user_id",
                    "user_id must be a string",
                ))
            }
        };
        Ok(Self {
            user_id,
            hikmah,
            question,
        })
    }
}

/// Decides whose request this is.
///
/// An authorizer identity (API Gateway claims, IAM caller) always wins, and a different request
/// `user_id` (the body's, or the memory routes' query parameter) is refused (403). Without one,
/// the request's `user_id` counts only when `trust_body` (`TRUST_BODY_USER_ID=true`, local
/// development); otherwise the caller is unauthenticated (401).
pub fn resolve_user(
    authorized: Option<&str>,
    body: Option<&UserId>,
    trust_body: bool,
) -> Result<UserId, RequestError> {
    match authorized {
        Some(identity) => {
            let user = UserId::parse(identity).map_err(|_| RequestError {
                code: ErrorCode::Forbidden,
                message: "the authorizer's identity is not a valid user id (1 to 128 of A-Z a-z 0-9 _ . @ : + = , -)"
                    .into(),
                field: None,
            })?;
            match body {
                Some(claimed) if *claimed != user => Err(RequestError::field(
                    ErrorCode::Forbidden,
                    "user_id",
                    "user_id differs from the authenticated identity; omit it or send your own",
                )),
                _ => Ok(user),
            }
        }
        None => match body {
            Some(claimed) if trust_body => Ok(claimed.clone()),
            Some(_) => Err(RequestError::field(
                ErrorCode::Unauthenticated,
                "user_id",
                "no authorizer identity on this request; a user_id in the request (the body's, or \
                 the memory routes' ?user_id=) is accepted only when TRUST_BODY_USER_ID=true \
                 (local development)",
            )),
            None => Err(RequestError::field(
                ErrorCode::Unauthenticated,
                "user_id",
                if trust_body {
                    "no identity: send user_id in the body, or as ?user_id= on the memory routes \
                     (TRUST_BODY_USER_ID=true)"
                } else {
                    "no authorizer identity on this request (API Gateway authorizer or IAM auth required)"
                },
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> (ErrorCode, Option<&'static str>) {
        let e = ElaborateRequest::parse(body.as_bytes()).unwrap_err();
        (e.code, e.field)
    }

    #[test]
    fn a_valid_body_parses_and_a_blank_question_is_absent() -> Result<(), Box<dyn std::error::Error>>
    {
        let r = ElaborateRequest::parse(
            br#"{"user_id":"u-1","hikmah":"Patience.","question":"  ","x":1}"#,
        )?;
        assert_eq!(r.user_id.ok_or("no user_id")?.as_str(), "u-1");
        assert_eq!(r.hikmah, "Patience.");
        assert_eq!(r.question, None);
        Ok(())
    }

    #[test]
    fn each_malformed_field_is_named() {
        assert_eq!(field_of("{"), (ErrorCode::InvalidJson, None));
        assert_eq!(field_of("[1]"), (ErrorCode::InvalidJson, None));
        assert_eq!(field_of("{}"), (ErrorCode::MissingField, Some("hikmah")));
        assert_eq!(
            field_of(r#"{"hikmah":" "}"#),
            (ErrorCode::InvalidField, Some("hikmah"))
        );
        assert_eq!(
            field_of(r#"{"hikmah":5}"#),
            (ErrorCode::InvalidField, Some("hikmah"))
        );
        let long = format!(r#"{{"hikmah":"{}"}}"#, "é".repeat(MAX_HIKMAH_CHARS + 1));
        assert_eq!(field_of(&long), (ErrorCode::InvalidField, Some("hikmah")));
        let long_q = format!(
            r#"{{"hikmah":"h","question":"{}"}}"#,
            "q".repeat(MAX_QUESTION_CHARS + 1)
        );
        assert_eq!(
            field_of(&long_q),
            (ErrorCode::InvalidField, Some("question"))
        );
        assert_eq!(
            field_of(r#"{"hikmah":"h","user_id":"a b"}"#),
            (ErrorCode::InvalidField, Some("user_id"))
        );
        assert_eq!(
            field_of(r#"{"hikmah":"h","user_id":7}"#),
            (ErrorCode::InvalidField, Some("user_id"))
        );
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let body = format!(r#"{{"hikmah":"{}"}}"#, "é".repeat(MAX_HIKMAH_CHARS));
        assert!(ElaborateRequest::parse(body.as_bytes()).is_ok());
    }

    #[test]
    fn identity_rules() -> Result<(), Box<dyn std::error::Error>> {
        let a = UserId::parse("a")?;
        let b = UserId::parse("b")?;
        assert_eq!(resolve_user(Some("a"), None, false)?, a);
        assert_eq!(resolve_user(Some("a"), Some(&a), false)?, a);
        assert_eq!(
            resolve_user(Some("a"), Some(&b), true).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            resolve_user(None, Some(&b), false).unwrap_err().code,
            ErrorCode::Unauthenticated
        );
        assert_eq!(
            resolve_user(None, None, true).unwrap_err().code,
            ErrorCode::Unauthenticated
        );
        assert_eq!(resolve_user(None, Some(&b), true)?, b);
        Ok(())
    }
}
