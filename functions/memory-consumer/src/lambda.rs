//! The Lambda adapter: the runtime's invocation in, `SqsBatchResponse` out.

use std::time::SystemTime;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;

use crate::handler::{handle_batch_until, DEADLINE_MARGIN};
use crate::Consumer;

/// The function's handler (`lambda_runtime::run(service_fn(|e| function_handler(&consumer, e)))`).
/// It never fails as a whole: failures are per record, in the response.
pub async fn function_handler(
    consumer: &Consumer,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let dropped_connections = shared::lambda::begin_invocation(consumer.db());
    // The runtime's deadline is wall-clock milliseconds; keep a margin to send the response.
    // A deadline that is not in the future is not a real one (cargo-lambda's emulator sends the
    // function timeout, 600000, instead of an epoch time): run without one rather than fail
    // every record at once.
    let remaining = event
        .context
        .deadline()
        .duration_since(SystemTime::now())
        .ok()
        .filter(|r| !r.is_zero());
    if remaining.is_none() {
        tracing::warn!(
            deadline_epoch_ms = event.context.deadline,
            "the invocation deadline is not in the future; records run without it"
        );
    }
    tracing::debug!(dropped_connections, "invocation started");
    let deadline = remaining
        .map(|r| tokio::time::Instant::now() + r.saturating_sub(DEADLINE_MARGIN.min(r / 10)));
    Ok(handle_batch_until(consumer, event.payload, deadline)
        .await
        .to_response())
}
