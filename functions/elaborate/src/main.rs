//! Lambda entry point of `elaborate`: build everything once, then serve invocations as streams.

use shared::config::Env;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init_lambda();
    // Init once, before the runtime loop: config, pool (one warm connection), SQS and provider
    // clients. A failure here is an init error naming what to fix.
    let state = elaborate::AppState::from_env(&Env::process())
        .await
        .inspect_err(|err| {
            tracing::error!(error = %err, "elaborate cannot start");
        })?;
    // On SIGTERM (environment shutdown) close the pool, so the server sees a clean disconnect.
    if let Some(db) = state.db().cloned() {
        lambda_runtime::spawn_graceful_shutdown_handler(move || async move {
            db.close();
            tracing::info!("database pool closed; shutting down");
        })
        .await;
    }
    lambda_http::run_with_streaming_response(elaborate::router(state)).await
}
