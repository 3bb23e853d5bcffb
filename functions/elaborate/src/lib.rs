//! The elaborate function's handler: HTTP request in, Server-Sent Events out.
//!
//! [`router`] is the whole HTTP surface. Lambda serves it through
//! `lambda_http::run_with_streaming_response` (see `main.rs`); the local runner (`hikmah serve`)
//! and the tests serve the very same router over plain HTTP. The domain work (validation,
//! prompt, generation, publish) lives in `shared::elaboration`; this crate adds routing, the
//! identity from Lambda's request context, and HTTP framing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use futures::StreamExt as _;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use serde_json::json;
use shared::config::{ConfigError, DbConfig, ElaborateConfig, Env, LlmConfig, QueueConfig};
use shared::db::{Db, DbError};
use shared::elaboration::{
    resolve_user, sse_stream, ElaborateRequest, Elaborator, PgNotes, RequestError, StreamEvent,
};
use shared::error_code::ErrorCode;
use shared::llm::LlmError;
use shared::publish::SqsPublisher;

/// The one route; API Gateway REST may prefix it with the stage (`/Prod/hikmah/...`).
pub const ROUTE: &str = "/hikmah/elaborate/stream";
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything a request needs, built once per execution environment (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState {
    elaborator: Elaborator,
    config: Arc<ElaborateConfig>,
    /// The pool behind the notes source, when this state owns one (closed at shutdown).
    db: Option<Db>,
}

/// Why the function cannot start; each variant says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A configuration variable is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database pool could not even be built (credentials, URL).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The LLM provider could not be set up.
    #[error(transparent)]
    Llm(#[from] LlmError),
}

impl AppState {
    /// Wires an elaborator (provider, notes, publisher) and the function's settings.
    pub fn new(elaborator: Elaborator, config: ElaborateConfig) -> Self {
        Self {
            elaborator,
            config: Arc::new(config),
            db: None,
        }
    }

    /// Builds everything from the environment: config, a pool of one connection (opened now
    /// when the database is up), the SQS client and the provider client.
    pub async fn from_env(env: &Env) -> Result<Self, InitError> {
        let config = ElaborateConfig::from_env(env)?;
        let llm = LlmConfig::from_env(env)?;
        let queue = QueueConfig::from_env(env)?;
        let db_config = DbConfig::from_env(env, 1)?;
        let db = match Db::connect(&db_config).await {
            Ok(db) => db,
            Err(err) => {
                // Notes only personalise the answer: start anyway, the pool connects on demand.
                tracing::warn!(error = %err, "database unreachable at init; answering without notes until it is back");
                Db::connect_lazy(&db_config).await?
            }
        };
        let provider = shared::llm::from_config(&llm).await?;
        let publisher = SqsPublisher::from_env(queue).await;
        tracing::info!(
            provider = provider.name(),
            model = provider.model(),
            "elaborate ready"
        );
        let elaborator = Elaborator::new(
            provider,
            Arc::new(PgNotes::new(db.clone())),
            Arc::new(publisher),
            config.memory_context_notes,
        );
        Ok(Self {
            db: Some(db),
            ..Self::new(elaborator, config)
        })
    }

    /// The pool built by [`AppState::from_env`], to close at shutdown.
    pub fn db(&self) -> Option<&Db> {
        self.db.as_ref()
    }

    /// The elaborator behind the handler.
    pub fn elaborator(&self) -> &Elaborator {
        &self.elaborator
    }
}

/// The HTTP surface: `POST /hikmah/elaborate/stream` (also under a stage prefix), JSON 404/405.
pub fn router(state: AppState) -> Router {
    let endpoint = || post(elaborate).fallback(method_not_allowed);
    Router::new()
        .route(ROUTE, endpoint())
        .route(&format!("/{{stage}}{ROUTE}"), endpoint())
        .fallback(any(not_found))
        .with_state(state)
}

/// Serves [`router`] over plain HTTP/1.1 on `listener` (the local runner, tests, benchmarks).
///
/// Sets `TCP_NODELAY` on every connection: an event stream is many small writes, and with
/// Nagle's algorithm a delta written while the previous segment awaits its (delayed) ACK is held
/// back for up to 40 ms.
pub async fn serve_http(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    serve_http_until(listener, state, std::future::pending()).await
}

/// [`serve_http`] until `shutdown` completes, then finishes the streams in flight and returns.
pub async fn serve_http_until(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error before streaming: the contract's `{"error": {code, message, field}}`, with the
/// status [`status_of`] its code.
#[derive(Debug)]
struct ApiError {
    code: ErrorCode,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }
}

/// The HTTP status of each error code; no wildcard, so a new code must choose one here.
fn status_of(code: ErrorCode) -> StatusCode {
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "code": self.code, "message": self.message, "field": self.field } });
        let mut response = (status_of(self.code), axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no such route; the endpoint is POST {ROUTE}"),
    )
}

async fn method_not_allowed(method: Method) -> Response {
    let mut response = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed; use POST"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn elaborate(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let authorized = authorizer_identity(&request);
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
    let prefix = match tokio::time::timeout(keepalive, events.recv()).await {
        Ok(Some(StreamEvent::Error { code, message })) => return Err(ApiError::new(code, message)),
        Ok(Some(first)) => first.to_sse(),
        Ok(None) => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the elaboration task ended early",
            ))
        }
        Err(_) => shared::elaboration::KEEPALIVE.to_owned(),
    };
    let body = Body::from_stream(
        sse_stream(Some(prefix), events, keepalive).map(Ok::<_, std::convert::Infallible>),
    );
    Ok(sse_response(body))
}

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

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

/// The caller's identity from Lambda's request context: API Gateway REST authorizer claims
/// (`claims.sub`, or a Lambda authorizer's `principalId`) or IAM caller; HTTP API / Function URL
/// JWT claims `sub` or IAM caller. Plain HTTP (local runner) has none.
fn authorizer_identity(request: &Request) -> Option<String> {
    let non_empty = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
    match request.extensions().request_context_ref()? {
        RequestContext::ApiGatewayV1(ctx) => {
            let fields = &ctx.authorizer.fields;
            fields
                .get("claims")
                .and_then(|c| c.get("sub"))
                .and_then(|s| s.as_str())
                .and_then(non_empty)
                .or_else(|| {
                    fields
                        .get("principalId")
                        .and_then(|s| s.as_str())
                        .and_then(non_empty)
                })
                .or_else(|| ctx.identity.user.as_deref().and_then(non_empty))
        }
        RequestContext::ApiGatewayV2(ctx) => {
            let auth = ctx.authorizer.as_ref()?;
            auth.jwt
                .as_ref()
                .and_then(|jwt| jwt.claims.get("sub"))
                .and_then(|s| non_empty(s))
                .or_else(|| {
                    auth.iam
                        .as_ref()
                        .and_then(|iam| iam.user_id.as_deref())
                        .and_then(non_empty)
                })
        }
        _ => None,
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
            (ErrorCode::Internal, 500),
        ];
        let listed: Vec<ErrorCode> = expected.iter().map(|(code, _)| *code).collect();
        assert_eq!(listed, ErrorCode::ALL, "the table must list every code");
        for (code, status) in expected {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }
}
