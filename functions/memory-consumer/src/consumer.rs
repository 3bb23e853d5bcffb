//! The consumer's composition root: everything a batch needs, built once per execution
//! environment and shared by every invocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::aws::AwsConfig;
use shared::config::{
    ConfigError, DbConfig, DedupConfig, EmbedConfig, Env, ExtractorConfig, ExtractorKind,
    GenerationLimits, JudgeConfig, LlmConfig,
};
use shared::db::{Db, DbError};
use shared::embed::{EmbedError, Embedder};
use shared::llm::LlmError;
use shared::memory::dedup::DedupPolicy;
use shared::memory::extract::DefaultExtractor;
use shared::memory::judge::Judge;
use shared::memory::llm_extract::LlmExtractor;
use shared::memory::service::MemoryService;
use shared::metrics::{MetricsConfig, MetricsEmitter, MetricsSink};

use crate::fault::{Fault, PanicOnMarker, FAULT_INJECTION_VAR};

/// Pool size when `POOL_MAX_SIZE` is unset = records processed at once per execution
/// environment. The embedder is CPU-bound, so more would mostly wait; raise it with more vCPUs.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// The `service` dimension of the consumer's metrics unless `POWERTOOLS_SERVICE_NAME` says otherwise.
pub const METRICS_SERVICE: &str = "memory-consumer";

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
    /// An LLM provider (`NOTE_EXTRACTOR=llm`, `DEDUP_JUDGE=llm`) could not be set up.
    #[error(transparent)]
    Llm(#[from] LlmError),
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
    /// Writes one EMF line per batch.
    pub(crate) metrics: MetricsEmitter,
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
        let metrics = MetricsEmitter::from_env(env, METRICS_SERVICE)?;
        let extractor = ExtractorConfig::from_env(env)?;
        // The provider only when NOTE_EXTRACTOR=llm asks for one.
        let llm = match extractor.kind {
            ExtractorKind::Default => None,
            ExtractorKind::Llm => Some(LlmConfig::from_env(env)?),
        };
        if llm == Some(LlmConfig::Offline) {
            return Err(ConfigError::Invalid {
                name: "NOTE_EXTRACTOR",
                value: "llm".into(),
                reason: "it needs a real provider: set LLM_PROVIDER=openai (with OPENAI_API_KEY) or bedrock".into(),
            }
            .into());
        }
        let judge = JudgeConfig::from_env(env)?;
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

        let concurrency = db.pool().status().max_size;
        let policy = DedupPolicy::from(&dedup);
        // One AWS configuration and one set of generation limits for every provider built here.
        let aws = AwsConfig::new();
        let limits = GenerationLimits::from_env(env)?;
        let mut service =
            MemoryService::postgres_with_variants(db.clone(), embedder, policy, dedup.variants_max);
        if let Some(Fault::PanicOn(marker)) = Fault::from_env(env)? {
            tracing::warn!(
                %marker,
                "{FAULT_INJECTION_VAR} is set: records containing the marker will panic (test hook)"
            );
            service = service.with_extractor(Arc::new(PanicOnMarker {
                marker,
                inner: Arc::new(DefaultExtractor),
            }));
        }
        // DEDUP_JUDGE=llm: the provider is built only then.
        if let Some(judge) = &judge {
            let judge = Judge::from_config(judge, &limits, &aws).await?;
            service = service.with_judge(judge, policy);
        }
        let mut consumer = Self::new(service, db, concurrency).with_metrics(metrics);
        if let Some(llm) = &llm {
            let provider = shared::llm::from_config(llm, &limits, &aws).await?;
            let extractor = LlmExtractor::new(provider, extractor.timeout);
            consumer.service = consumer.service.clone().with_llm_extractor(extractor);
        }
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
            note_extractor = ?extractor.kind,
            dedup_judge = if judge.is_some() { "llm" } else { "rules" },
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
            metrics: MetricsEmitter::new(MetricsConfig::new(METRICS_SERVICE), MetricsSink::Stdout),
            init: InitTimings::default(),
        }
    }

    /// Writes the per-batch metrics through `metrics` (by default: standard output, namespace
    /// `hikmah`, service `memory-consumer`).
    pub fn with_metrics(mut self, metrics: MetricsEmitter) -> Self {
        self.metrics = metrics;
        self
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
