//! Lambda entry point of `elaborate`: build everything once, then serve invocations as streams.

use shared::config::Env;
use shared::telemetry::{self, LogFormat};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    telemetry::init(LogFormat::Json);
    // Init once, before the runtime loop: config, pool (one warm connection), SQS and provider
    // clients. A failure here is an init error naming what to fix.
    let state = elaborate::AppState::from_env(&Env::process())
        .await
        .inspect_err(|err| {
            tracing::error!(error = %err, "elaborate cannot start");
        })?;
    lambda_http::run_with_streaming_response(elaborate::router(state)).await
}
