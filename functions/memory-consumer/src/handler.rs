//! The SQS batch handler: every record applied (or reported failed) on its own.
//!
//! - Each record runs on its own task, up to the pool size at once: a record that panics is a
//!   failed record (its `JoinError` becomes the reason), never a crashed batch.
//! - Records of one user are serialised by the store's advisory lock, not here.
//! - A failed record's `messageId` goes into `batchItemFailures` (the event source mapping needs
//!   `ReportBatchItemFailures`), so only it is retried and, after `maxReceiveCount`, dead-lettered.
//! - FIFO queues (event source ARN ending in `.fifo`): records run in order, one at a time; at
//!   the first failure it and every later record are reported, so order within a message group
//!   is kept.
//! - Deadline: a record still running shortly before the invocation's deadline (or past the
//!   consumer's own record timeout) is abandoned and reported as failed, so a database that
//!   stalls without closing its connections fails records instead of timing out the whole
//!   invocation (which would redeliver the successes too).

use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use lambda_runtime::LambdaEvent;
use shared::db::Db;
use shared::embed::Embedder;
use shared::events::{ElaborationCompleted, EventError};
use shared::memory::dedup::DedupPolicy;
use shared::memory::service::{ApplyOutcome, MemoryService};
use shared::memory::MemoryError;

/// Why one record failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The message has no body.
    #[error("the message has no body")]
    NoBody,
    /// The body is not a usable event (malformed, or an unknown version).
    #[error(transparent)]
    Event(#[from] EventError),
    /// The memory could not be updated (database, embedder).
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Processing the record panicked.
    #[error("processing panicked: {0}")]
    Panicked(String),
    /// The record's task was cancelled (the runtime is shutting down).
    #[error("processing was cancelled")]
    Cancelled,
    /// The record did not finish before the invocation's deadline or the record timeout.
    #[error("not finished within {0:?} (invocation deadline or record timeout)")]
    TimedOut(Duration),
    /// An earlier record of this FIFO batch failed, so this one was not attempted.
    #[error("not attempted: an earlier record of this FIFO batch failed")]
    SkippedAfterFifoFailure,
}

/// Everything the handler needs, built once at init and shared by every invocation.
#[derive(Debug, Clone)]
pub struct Consumer {
    service: MemoryService,
    db: Db,
    concurrency: usize,
    record_timeout: Option<Duration>,
}

/// Time kept back before the Lambda deadline to report the batch response (at most; a tenth of
/// the remaining time when that is shorter, so short function timeouts still get work done).
const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);

impl Consumer {
    /// A consumer applying records through `service`, at most `concurrency` at once
    /// (`db` is the pool behind the service: its stale connections are dropped per invocation).
    pub fn new(service: MemoryService, db: Db, concurrency: usize) -> Self {
        Self {
            service,
            db,
            concurrency: concurrency.max(1),
            record_timeout: None,
        }
    }

    /// Fails a record that takes longer than `timeout` (besides the invocation's deadline).
    pub fn with_record_timeout(mut self, timeout: Duration) -> Self {
        self.record_timeout = Some(timeout);
        self
    }

    /// The production wiring: default extractor, real embedder, PostgreSQL store; concurrency =
    /// the pool's size (more records in flight would only wait for a connection).
    pub fn postgres(db: Db, embedder: Embedder, policy: DedupPolicy) -> Self {
        let concurrency = db.pool().status().max_size;
        Self::new(
            MemoryService::postgres(db.clone(), embedder, policy),
            db,
            concurrency,
        )
    }

    /// Records processed at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The pool.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// The Lambda handler (`lambda_runtime::run(service_fn(|e| function_handler(&consumer, e)))`).
/// It never fails as a whole: failures are per record, in the response.
pub async fn function_handler(
    consumer: &Consumer,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
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
    let deadline = remaining
        .map(|r| tokio::time::Instant::now() + r.saturating_sub(DEADLINE_MARGIN.min(r / 10)));
    Ok(handle_batch_until(consumer, event.payload, deadline).await)
}

/// Applies a batch and returns the message ids of the records that failed.
pub async fn handle_batch(consumer: &Consumer, event: SqsEvent) -> SqsBatchResponse {
    handle_batch_until(consumer, event, None).await
}

/// [`handle_batch`] where records still running at `deadline` are abandoned and reported.
pub async fn handle_batch_until(
    consumer: &Consumer,
    event: SqsEvent,
    deadline: Option<tokio::time::Instant>,
) -> SqsBatchResponse {
    let started = Instant::now();
    let budget_ms = deadline.map(|d| ms(d.saturating_duration_since(tokio::time::Instant::now())));
    // Connections older than POOL_MAX_AGE_SECS may have been closed while we were frozen.
    let dropped_connections = consumer.db.start_invocation();
    let records = event.records;
    let total = records.len();
    let fifo = records.iter().any(|r| {
        r.event_source_arn
            .as_deref()
            .is_some_and(|arn| arn.ends_with(".fifo"))
    });

    let mut results: Vec<(String, Result<ApplyOutcome, RecordError>)> = Vec::with_capacity(total);
    if fifo {
        let mut failed = false;
        for record in records {
            let message_id = record.message_id.clone().unwrap_or_default();
            if failed {
                results.push((message_id, Err(RecordError::SkippedAfterFifoFailure)));
                continue;
            }
            let result =
                process_record(consumer.service.clone(), record, limit(consumer, deadline)).await;
            failed = result.is_err();
            results.push((message_id, result));
        }
    } else {
        let mut indexed: Vec<(usize, String, Result<ApplyOutcome, RecordError>)> =
            futures::stream::iter(records.into_iter().enumerate())
                .map(|(index, record)| {
                    let service = consumer.service.clone();
                    async move {
                        let message_id = record.message_id.clone().unwrap_or_default();
                        (
                            index,
                            message_id,
                            process_record(service, record, limit(consumer, deadline)).await,
                        )
                    }
                })
                .buffer_unordered(consumer.concurrency)
                .collect()
                .await;
        indexed.sort_by_key(|(index, _, _)| *index);
        results.extend(indexed.into_iter().map(|(_, id, r)| (id, r)));
    }

    let mut response = SqsBatchResponse::default();
    let (mut added, mut reinforced, mut duplicates, mut redelivered) = (0u64, 0u64, 0u64, 0u64);
    for (message_id, result) in results {
        match result {
            Ok(o) => {
                added += u64::from(o.notes_added);
                reinforced += u64::from(o.notes_reinforced);
                duplicates += u64::from(o.duplicates);
                redelivered += u64::from(o.already_applied);
            }
            Err(_) => response.add_failure(message_id),
        }
    }
    let failed = response.batch_item_failures.len();
    tracing::info!(
        records = total,
        succeeded = total - failed,
        failed,
        fifo,
        notes_added = added,
        notes_reinforced = reinforced,
        duplicates,
        already_applied = redelivered,
        dropped_connections,
        budget_ms,
        duration_ms = ms(started.elapsed()),
        "batch processed"
    );
    response
}

/// The instant a record starting now must finish by.
fn limit(
    consumer: &Consumer,
    deadline: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    let own = consumer
        .record_timeout
        .map(|t| tokio::time::Instant::now() + t);
    match (own, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses and applies one record on its own task, logging its outcome.
async fn process_record(
    service: MemoryService,
    record: SqsMessage,
    until: Option<tokio::time::Instant>,
) -> Result<ApplyOutcome, RecordError> {
    let started = tokio::time::Instant::now();
    let message_id = record.message_id.unwrap_or_default();
    let event = match record.body.as_deref().map(ElaborationCompleted::parse) {
        Some(Ok(event)) => event,
        Some(Err(err)) => return Err(log_failure(&message_id, None, err.into())),
        None => return Err(log_failure(&message_id, None, RecordError::NoBody)),
    };
    let ids = (event.event_id.to_string(), event.user_id.to_string());
    let mut task = tokio::spawn(async move { service.apply(&event).await });
    let joined = match until {
        None => (&mut task).await,
        Some(until) => match tokio::time::timeout_at(until, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                // Dropping the work rolls its transaction back (or, if COMMIT was already
                // sent, the redelivery finds the processed_events row): safe either way.
                task.abort();
                return Err(log_failure(
                    &message_id,
                    Some(&ids),
                    RecordError::TimedOut(started.elapsed()),
                ));
            }
        },
    };
    let result = match joined {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(err)) => Err(RecordError::Memory(err)),
        Err(join) if join.is_panic() => {
            Err(RecordError::Panicked(panic_message(join.into_panic())))
        }
        Err(_) => Err(RecordError::Cancelled),
    };
    match result {
        Ok(o) => {
            tracing::info!(
                message_id,
                event_id = %o.event_id,
                user_id = %o.user_id,
                already_applied = o.already_applied,
                candidates = o.candidates,
                notes_added = o.notes_added,
                notes_reinforced = o.notes_reinforced,
                duplicates = o.duplicates,
                embed_ms = ms(o.embed_time),
                db_ms = ms(o.db_time),
                "record applied"
            );
            Ok(o)
        }
        Err(err) => Err(log_failure(&message_id, Some(&ids), err)),
    }
}

fn log_failure(message_id: &str, ids: Option<&(String, String)>, err: RecordError) -> RecordError {
    let (event_id, user_id) = ids
        .map(|(e, u)| (e.as_str(), u.as_str()))
        .unwrap_or_default();
    tracing::warn!(message_id, event_id, user_id, error = %err, "record failed; reported for redelivery");
    err
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}
