//! Lambda entry point of `memory-consumer`: build everything once, then serve SQS batches.

use lambda_runtime::{service_fn, LambdaEvent};
use memory_consumer::lambda::function_handler;
use memory_consumer::Consumer;
use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init_lambda();
    let consumer = Consumer::from_env(&Env::process())
        .await
        .inspect_err(|err| {
            tracing::error!(error = %err, "memory-consumer cannot start");
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
