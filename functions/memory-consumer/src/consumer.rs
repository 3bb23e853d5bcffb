//! The consumer's composition root: everything a batch needs, built once per execution
//! environment and shared by every invocation.

use std::time::{Duration, Instant};

use shared::config::{ConfigError, DbConfig, DedupConfig, EmbedConfig, Env};
use shared::db::{Db, DbError};
use shared::embed::{EmbedError, Embedder};
use shared::memory::dedup::DedupPolicy;
use shared::memory::service::MemoryService;

/// Pool size when `POOL_MAX_SIZE` is unset = records processed at once per execution
/// environment. The embedder is CPU-bound, so more would mostly wait; raise it with more vCPUs.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Why the consumer cannot start; each variant says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A configuration variable is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database is unreachable or the credentials are wrong.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The model files or ONNX Runtime could not be loaded.
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// How long each part of init took (logged once, printed by `hikmah bench consumer`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InitTimings {
    /// Reading the configuration.
    pub config: Duration,
    /// Building the pool and opening its warm connection (alongside the embedder's load).
    pub db: Duration,
    /// Loading the model and tokenizer (alongside the pool's warm connection).
    pub embedder: Duration,
    /// All of init.
    pub total: Duration,
}

/// Everything the handler needs (cheap to clone).
#[derive(Debug, Clone)]
pub struct Consumer {
    pub(crate) service: MemoryService,
    pub(crate) db: Db,
    pub(crate) concurrency: usize,
    pub(crate) record_timeout: Option<Duration>,
    init: InitTimings,
}

impl Consumer {
    /// The composition root, used by Lambda's `main`, `hikmah serve` and `hikmah bench
    /// consumer`: config, a pool with one warm connection, the embedder, the PostgreSQL store.
    pub async fn from_env(env: &Env) -> Result<Self, InitError> {
        let started = Instant::now();
        let db_cfg = DbConfig::from_env(env, DEFAULT_POOL_SIZE)?;
        let embed_cfg = EmbedConfig::from_env(env)?;
        let dedup = DedupConfig::from_env(env)?;
        let config = started.elapsed();

        // The pool's warm connection (network round trips) and the embedder (CPU: reading the
        // model and building the session) do not depend on each other: build them at once, so
        // cold init costs the longer of the two, not their sum.
        let embedder_task = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            Embedder::load(&embed_cfg).map(|e| (e, t.elapsed()))
        });
        let t = Instant::now();
        let db = Db::connect(&db_cfg).await;
        let db_time = t.elapsed();
        let loaded = embedder_task
            .await
            .map_err(|e| EmbedError::Task(e.to_string()))?;
        let db = db?;
        let (embedder, embedder_time) = loaded?;

        let mut consumer = Self::postgres(db, embedder, DedupPolicy::from(&dedup));
        consumer.init = InitTimings {
            config,
            db: db_time,
            embedder: embedder_time,
            total: started.elapsed(),
        };
        tracing::info!(
            config_ms = ms(config),
            db_ms = ms(db_time),
            embedder_ms = ms(embedder_time),
            init_ms = ms(consumer.init.total),
            pool_max_size = db_cfg.pool_max_size,
            concurrency = consumer.concurrency,
            dedup_threshold = dedup.threshold,
            "memory-consumer initialised"
        );
        Ok(consumer)
    }

    /// A consumer applying records through `service`, at most `concurrency` at once
    /// (`db` is the pool behind the service: its aged connections are dropped per invocation).
    pub fn new(service: MemoryService, db: Db, concurrency: usize) -> Self {
        Self {
            service,
            db,
            concurrency: concurrency.max(1),
            record_timeout: None,
            init: InitTimings::default(),
        }
    }

    /// The production wiring from built parts: default extractor, real embedder, PostgreSQL
    /// store; concurrency = the pool's size (more records in flight would only wait).
    pub fn postgres(db: Db, embedder: Embedder, policy: DedupPolicy) -> Self {
        let concurrency = db.pool().status().max_size;
        Self::new(
            MemoryService::postgres(db.clone(), embedder, policy),
            db,
            concurrency,
        )
    }

    /// Fails a record that takes longer than `timeout` (besides the invocation's deadline).
    pub fn with_record_timeout(mut self, timeout: Duration) -> Self {
        self.record_timeout = Some(timeout);
        self
    }

    /// Records processed at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The memory service records are applied through.
    pub fn service(&self) -> &MemoryService {
        &self.service
    }

    /// The pool.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// How long [`Consumer::from_env`] took, part by part (zero when built from parts).
    pub fn init_timings(&self) -> InitTimings {
        self.init
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}
