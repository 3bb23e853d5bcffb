//! The route handlers: request in, JSON error or event stream out.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use shared::elaboration::{resolve_user, ElaborateRequest, StreamEvent};
use shared::error_code::ErrorCode;

use crate::error::ApiError;
use crate::identity::authorizer_identity;
use crate::request_metrics;
use crate::sse::{sse_response, sse_stream, to_sse, KEEPALIVE};
use crate::{AppState, MAX_BODY_BYTES, MEMORY_ROUTE, ROUTE};

/// Plain HTTP only (the local runner): an error answered to a request that carried a body may
/// leave that body unread (a 413, a 415, a 404 for a POST), and then the server cannot reuse the
/// connection and closes it. Saying `Connection: close` in the response lets a keep-alive client
/// know, instead of sending its next request into a closing socket ("server disconnected").
pub(crate) async fn close_after_early_error(
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let mut response = next.run(request).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Any other path: a JSON 404 naming the routes.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no such route; the routes are POST {ROUTE}, GET|DELETE {MEMORY_ROUTE}, \
             GET {MEMORY_ROUTE}/export and DELETE {MEMORY_ROUTE}/{{note_id}}"
        ),
    )
}

/// A route with a method it does not serve: a JSON 405 with `Allow: <allow>`.
pub(crate) fn method_not_allowed(method: &Method, allow: &'static str) -> Response {
    let mut response = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed; use {allow}"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// `POST` on the endpoint: validate, resolve the user, then stream the elaboration's events.
pub(crate) async fn elaborate(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    if let Some(db) = state.db() {
        shared::lambda::begin_invocation(db);
    }
    let authorized = authorizer_identity(&request)?;
    let (parts, body) = request.into_parts();
    check_content_type(&parts.headers)?;
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the body exceeds {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    let input = ElaborateRequest::parse(&bytes)?;
    let user = resolve_user(
        authorized.as_deref(),
        input.user_id.as_ref(),
        state.config.trust_body_user_id,
    )?;

    let keepalive = state.config.keepalive;
    let mut events = state.elaborator.spawn(user, input);
    // Hold the status until the first event (bounded by the keep-alive interval), so a provider
    // that fails at once (bad key, server down) is a proper 5xx JSON error, not a 200 stream.
    let first = match tokio::time::timeout(keepalive, events.recv()).await {
        Ok(Some(StreamEvent::Error { code, message })) => return Err(ApiError::new(code, message)),
        Ok(Some(first)) => Some(first),
        Ok(None) => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the elaboration task ended early",
            ))
        }
        Err(_) => None,
    };
    let prefix = first.as_ref().map_or_else(|| KEEPALIVE.to_owned(), to_sse);
    let events = request_metrics::observe(first.as_ref(), events, started, state.metrics.clone());
    let body = Body::from_stream(
        sse_stream(Some(prefix), events, keepalive).map(Ok::<_, std::convert::Infallible>),
    );
    Ok(sse_response(body))
}

/// Accepts `application/json` with any parameters (`; charset=utf-8`), case-insensitively.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" {
        Ok(())
    } else {
        let shown = if value.is_empty() { "none" } else { value };
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("content-type must be application/json (got {shown})"),
        ))
    }
}
