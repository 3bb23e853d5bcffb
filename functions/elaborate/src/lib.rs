//! The elaborate function's handler: HTTP request in, Server-Sent Events out.
//!
//! [`router`] is the whole HTTP surface. Lambda serves it through
//! `lambda_http::run_with_streaming_response` (see `main.rs`); the local runner (`hikmah serve`)
//! and the tests serve the very same router over plain HTTP. The domain work (validation,
//! prompt, generation, publish) lives in `shared::elaboration`, which yields domain events; this
//! crate does all of HTTP: routing (`routes`), the identity from Lambda's request context
//! (`identity`), error statuses and bodies (`error`) and Server-Sent Events framing (`sse`).

use std::sync::Arc;

use axum::http::Method;
use axum::routing::{any, delete, get, post, MethodRouter};
use axum::Router;
use shared::aws::AwsConfig;
use shared::config::{
    ConfigError, DbConfig, ElaborateConfig, Env, GenerationLimits, LlmConfig, QueueConfig,
};
use shared::db::{Db, DbError};
use shared::elaboration::{Elaborator, PgNotes};
use shared::llm::LlmError;
use shared::memory::account::MemoryAccount;
use shared::metrics::{MetricsConfig, MetricsEmitter, MetricsSink};
use shared::publish::{Publisher, SqsPublisher};

use routes::{elaborate, method_not_allowed, not_found};

mod error;
mod identity;
mod memory_routes;
mod request_metrics;
mod routes;
mod sse;

/// The streaming route; API Gateway REST may prefix every route with the stage (`/Prod/hikmah/...`).
pub const ROUTE: &str = "/hikmah/elaborate/stream";
/// The memory routes' root: `GET`/`DELETE` here, `GET .../export`, `DELETE .../{note_id}`.
pub const MEMORY_ROUTE: &str = "/hikmah/memory";
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Pool size when `POOL_MAX_SIZE` is unset: an execution environment serves one request at a
/// time, so one connection (the template's connection budget counts on it).
pub const DEFAULT_POOL_SIZE: usize = 1;
/// The `service` dimension of the metrics unless `POWERTOOLS_SERVICE_NAME` says otherwise.
pub const METRICS_SERVICE: &str = "elaborate";

/// Everything a request needs, built once per execution environment (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState {
    elaborator: Elaborator,
    config: Arc<ElaborateConfig>,
    /// The pool behind the notes source, when this state owns one (closed at shutdown).
    db: Option<Db>,
    /// The memory routes' service; without one they answer 404.
    memory: Option<MemoryAccount>,
    /// Writes one EMF line per request.
    metrics: MetricsEmitter,
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
            memory: None,
            metrics: MetricsEmitter::new(MetricsConfig::new(METRICS_SERVICE), MetricsSink::Stdout),
        }
    }

    /// Writes the per-request metrics through `metrics` (by default: standard output, namespace
    /// `hikmah`, service `elaborate`).
    pub fn with_metrics(mut self, metrics: MetricsEmitter) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves the memory routes through `memory`.
    pub fn with_memory(mut self, memory: MemoryAccount) -> Self {
        self.memory = Some(memory);
        self
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
        let metrics = MetricsEmitter::from_env(env, METRICS_SERVICE)?;
        let db_config = DbConfig::from_env(env, DEFAULT_POOL_SIZE)?;
        let db = match Db::connect(&db_config).await {
            Ok(db) => db,
            Err(err) => {
                // Notes only personalise the answer: start anyway, the pool connects on demand.
                tracing::warn!(error = %err, "database unreachable at init; answering without notes until it is back");
                Db::connect_lazy(&db_config).await?
            }
        };
        let limits = GenerationLimits::from_env(env)?;
        let provider = shared::llm::from_config(&llm, &limits, aws).await?;
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
        )
        .with_generation_deadline(limits.total_timeout);
        Ok(Self {
            db: Some(db.clone()),
            ..Self::new(elaborator, config)
                .with_memory(MemoryAccount::postgres(db))
                .with_metrics(metrics)
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

/// The HTTP surface, each route also under a stage prefix, with JSON 404/405:
/// `POST /hikmah/elaborate/stream`, and the memory routes (`GET|DELETE /hikmah/memory`,
/// `GET /hikmah/memory/export`, `DELETE /hikmah/memory/{note_id}`).
pub fn router(state: AppState) -> Router {
    let only = |allow: &'static str| {
        move |method: Method| async move { method_not_allowed(&method, allow) }
    };
    let routes: [(&str, MethodRouter<AppState>); 4] = [
        (ROUTE, post(elaborate).fallback(only("POST"))),
        (
            MEMORY_ROUTE,
            get(memory_routes::list)
                .delete(memory_routes::forget)
                .fallback(only("GET, DELETE")),
        ),
        (
            "/hikmah/memory/export",
            get(memory_routes::export).fallback(only("GET")),
        ),
        (
            "/hikmah/memory/{note_id}",
            delete(memory_routes::delete_note).fallback(only("DELETE")),
        ),
    ];
    let mut router = Router::new();
    for (path, methods) in routes {
        router = router
            .route(&format!("/{{stage}}{path}"), methods.clone())
            .route(path, methods);
    }
    router
        .fallback(any(not_found))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_metrics::count_rejections,
        ))
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
    let app = router(state).layer(axum::middleware::from_fn(routes::close_after_early_error));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
