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
use shared::aws::AwsConfig;
use shared::config::{ConfigError, DbConfig, ElaborateConfig, Env, LlmConfig, QueueConfig};
use shared::db::{Db, DbError};
use shared::elaboration::{
    resolve_user, sse_stream, ElaborateRequest, Elaborator, PgNotes, RequestError, StreamEvent,
};
use shared::llm::LlmError;
use shared::publish::{Publisher, SqsPublisher};

/// The one route; API Gateway REST may prefix it with the stage (`/Prod/hikmah/...`).
pub const ROUTE: &str = "/hikmah/elaborate/stream";
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Pool size when `POOL_MAX_SIZE` is unset: an execution environment serves one request at a
/// time, so one connection (the template's connection budget counts on it).
pub const DEFAULT_POOL_SIZE: usize = 1;

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

    /// The Lambda wiring: [`AppState::build`] publishing to the SQS queue `MEMORY_QUEUE_URL`.
    pub async fn from_env(env: &Env) -> Result<Self, InitError> {
        let queue = QueueConfig::from_env(env)?;
        let aws = AwsConfig::new();
        let publisher = SqsPublisher::from_aws(&aws, queue).await;
        Self::build(env, &aws, Arc::new(publisher)).await
    }

    /// The composition root (Lambda's `main` through [`AppState::from_env`], `hikmah serve`, the
    /// benchmarks): config, a pool (one connection opened now when the database is up) and the
    /// provider from `env`, publishing through `publisher`. `aws` is loaded only if the provider
    /// needs it, and then shared with whatever else uses it.
    pub async fn build(
        env: &Env,
        aws: &AwsConfig,
        publisher: Arc<dyn Publisher>,
    ) -> Result<Self, InitError> {
        let config = ElaborateConfig::from_env(env)?;
        let llm = LlmConfig::from_env(env)?;
        let db_config = DbConfig::from_env(env, DEFAULT_POOL_SIZE)?;
        let db = match Db::connect(&db_config).await {
            Ok(db) => db,
            Err(err) => {
                // Notes only personalise the answer: start anyway, the pool connects on demand.
                tracing::warn!(error = %err, "database unreachable at init; answering without notes until it is back");
                Db::connect_lazy(&db_config).await?
            }
        };
        let provider = shared::llm::from_config(&llm, aws).await?;
        tracing::info!(
            provider = provider.name(),
            model = provider.model(),
            "elaborate ready"
        );
        let elaborator = Elaborator::new(
            provider,
            Arc::new(PgNotes::new(db.clone())),
            publisher,
            config.memory_context_notes,
        );
        Ok(Self {
            db: Some(db),
            ..Self::new(elaborator, config)
        })
    }

    /// The pool built by [`AppState::build`], to close at shutdown.
    pub fn db(&self) -> Option<&Db> {
        self.db.as_ref()
    }

    /// The model the provider runs (as recorded in queue messages).
    pub fn model(&self) -> &str {
        self.elaborator.provider().model()
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

/// An error before streaming: status plus the contract's `{"error": {code, message, field}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let status = match e.code {
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
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
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such route; the endpoint is POST {ROUTE}"),
    )
}

async fn method_not_allowed(method: Method) -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
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
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
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
        Ok(Some(StreamEvent::Error { code, message })) => {
            return Err(upstream_error(code, message))
        }
        Ok(Some(first)) => first.to_sse(),
        Ok(None) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
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

fn upstream_error(code: &'static str, message: String) -> ApiError {
    let status = match code {
        "provider_timeout" => StatusCode::GATEWAY_TIMEOUT,
        "provider_error" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, code, message)
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
        Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: format!("content-type must be application/json (got {shown})"),
            field: None,
        })
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
