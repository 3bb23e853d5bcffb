//! The memory routes (design.md, "Memory routes"): a user reads, exports and erases their own
//! memory. Thin handlers: resolve the caller with the elaborate route's identity rules, parse the
//! query or path, call `shared::memory::account`, map its errors.
//!
//! - `GET /hikmah/memory?limit=&cursor=` → `{"notes": [...], "next_cursor": ...}`, newest first;
//! - `GET /hikmah/memory/export` → every note as JSON lines (`application/x-ndjson`);
//! - `DELETE /hikmah/memory/{note_id}` → `{"deleted": {"notes": 1}}`, or 404;
//! - `DELETE /hikmah/memory` → `{"deleted": {"notes": N, "processed_events": M}, "forgotten_at": ...}`.
//!
//! The caller is the authorizer's identity; with none, the `user_id` query parameter counts only
//! where `TRUST_BODY_USER_ID` is on (local development), exactly as the body's `user_id` does for
//! the elaborate route. A query `user_id` that differs from the identity is refused (403).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::elaboration::resolve_user;
use shared::error_code::ErrorCode;
use shared::memory::account::{MemoryAccount, PageRequest};
use shared::types::{NoteId, UserId};

use crate::error::ApiError;
use crate::identity::authorizer_identity;
use crate::AppState;

/// `GET /hikmah/memory`: one page of the caller's notes, newest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (user, account) = caller(&state, &request)?;
    let query = query_pairs(&request);
    let page = PageRequest::parse(
        query.get("limit").map(String::as_str),
        query.get("cursor").map(String::as_str),
    )?;
    let page = account.list(&user, page).await?;
    Ok(private(axum::Json(page).into_response()))
}

/// `GET /hikmah/memory/export`: every note of the caller, one JSON object per line.
pub(crate) async fn export(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (user, account) = caller(&state, &request)?;
    let notes = account.export(&user).await?;
    let mut body = String::new();
    for note in &notes {
        // A note is plain strings, numbers and timestamps: serialising it cannot fail.
        body.push_str(&serde_json::to_string(note).unwrap_or_default());
        body.push('\n');
    }
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(private(response))
}

/// `DELETE /hikmah/memory/{note_id}`: one of the caller's notes; another user's is a 404.
pub(crate) async fn delete_note(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (user, account) = caller(&state, &request)?;
    let raw = params.get("note_id").map(String::as_str).unwrap_or("");
    let note = raw
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(NoteId)
        .ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidField,
                "note_id",
                format!("note_id must be a note's numeric id (got {raw:?})"),
            )
        })?;
    account.delete_note(&user, note).await?;
    Ok(private(
        axum::Json(json!({ "deleted": { "notes": 1 } })).into_response(),
    ))
}

/// `DELETE /hikmah/memory`: everything about the caller; answers how much was deleted.
pub(crate) async fn forget(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (user, account) = caller(&state, &request)?;
    let forgotten = account.forget(&user).await?;
    let body = json!({
        "deleted": {
            "notes": forgotten.notes,
            "processed_events": forgotten.processed_events,
        },
        "forgotten_at": forgotten.forgotten_at,
    });
    Ok(private((StatusCode::OK, axum::Json(body)).into_response()))
}

/// Whose memory this request is about, and the service to reach it.
fn caller<'s>(
    state: &'s AppState,
    request: &Request,
) -> Result<(UserId, &'s MemoryAccount), ApiError> {
    if let Some(db) = state.db() {
        shared::lambda::begin_invocation(db);
    }
    let account = state.memory.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "this instance serves no memory routes (it has no memory store)",
        )
    })?;
    let authorized = authorizer_identity(request)?;
    let claimed = query_pairs(request)
        .get("user_id")
        .map(|raw| {
            UserId::parse(raw)
                .map_err(|e| ApiError::field(ErrorCode::InvalidField, "user_id", e.to_string()))
        })
        .transpose()?;
    let user = resolve_user(
        authorized.as_deref(),
        claimed.as_ref(),
        state.config.trust_body_user_id,
    )?;
    Ok((user, account))
}

/// The query string's parameters, percent-decoded (the last of a repeated name wins).
fn query_pairs(request: &Request) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Personal data: never cached by a browser or a proxy.
fn private(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
