//! Lambda entry point of `memory-consumer`: build everything once, then serve SQS batches.

use std::time::Instant;

use lambda_runtime::{service_fn, LambdaEvent};
use memory_consumer::{function_handler, Consumer};
use shared::config::{DbConfig, DedupConfig, EmbedConfig, Env};
use shared::db::Db;
use shared::embed::Embedder;
use shared::memory::dedup::DedupPolicy;
use shared::telemetry::{self, LogFormat};

/// Default pool size = records processed at once per execution environment. The embedder is
/// CPU-bound, so more would mostly wait; raise POOL_MAX_SIZE with more vCPUs.
const DEFAULT_POOL_SIZE: usize = 4;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    telemetry::init(LogFormat::Json);
    let consumer = init().await.inspect_err(|err| {
        tracing::error!(error = %format!("{err:#}"), "memory-consumer cannot start");
    })?;

    // On SIGTERM (environment shutdown) close the pool, so the server sees clean disconnects
    // instead of connections dropped mid-session.
    let db = consumer.db().clone();
    lambda_runtime::spawn_graceful_shutdown_handler(move || async move {
        db.close();
        tracing::info!("database pool closed; shutting down");
    })
    .await;

    let consumer = &consumer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| {
        function_handler(consumer, event)
    }))
    .await
}

/// Config, pool (with one warm connection) and embedder, each timed, in ONE log line.
async fn init() -> anyhow::Result<Consumer> {
    let started = Instant::now();
    let env = Env::process();
    let db_cfg = DbConfig::from_env(&env, DEFAULT_POOL_SIZE)?;
    let embed_cfg = EmbedConfig::from_env(&env)?;
    let dedup = DedupConfig::from_env(&env)?;
    let config_ms = ms(started);

    let t = Instant::now();
    let db = Db::connect(&db_cfg).await?;
    let db_ms = ms(t);

    let t = Instant::now();
    let embedder = Embedder::load(&embed_cfg)?;
    let embedder_ms = ms(t);

    let consumer = Consumer::postgres(db, embedder, DedupPolicy::from(&dedup));
    tracing::info!(
        config_ms,
        db_ms,
        embedder_ms,
        init_ms = ms(started),
        pool_max_size = db_cfg.pool_max_size,
        concurrency = consumer.concurrency(),
        dedup_threshold = dedup.threshold,
        "memory-consumer initialised"
    );
    Ok(consumer)
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e5).round() / 100.0
}
