//! The SQS batch handler: every record applied (or reported failed) on its own, with why.
//!
//! - Each record runs on its own task, up to the pool size at once: a record that panics is a
//!   failed record (its `JoinError` becomes the reason), never a crashed batch.
//! - Records of one user are serialised by the store's advisory lock, not here.
//! - [`handle_batch`] returns a [`BatchReport`] with each record's outcome; the Lambda adapter
//!   ([`crate::lambda`]) turns its failures into `batchItemFailures` (the event source mapping
//!   needs `ReportBatchItemFailures`), so only they are retried and, after `maxReceiveCount`,
//!   dead-lettered.
//! - FIFO queues (event source ARN ending in `.fifo`): records run in order, one at a time; at
//!   the first failure it and every later record are reported, so order within a message group
//!   is kept.
//! - Deadline: a record still running shortly before the invocation's deadline (or past the
//!   consumer's own record timeout) is abandoned and reported as failed, so a database that
//!   stalls without closing its connections fails records instead of timing out the whole
//!   invocation (which would redeliver the successes too).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;
use shared::events::{ElaborationCompleted, EventError};
use shared::memory::service::{ApplyOutcome, Extraction, MemoryService};
use shared::memory::MemoryError;
use shared::metrics::{pascal_case, Metrics};
use tracing::Instrument as _;

use crate::consumer::{ms, Consumer};

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

/// What happened to one record of a batch.
#[derive(Debug)]
pub struct RecordOutcome {
    /// The queue's message id (empty if the record had none).
    pub message_id: String,
    /// What applying it did, or why it failed.
    pub result: Result<ApplyOutcome, RecordError>,
}

/// Every record's outcome, in the batch's order.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// One per record.
    pub records: Vec<RecordOutcome>,
}

impl BatchReport {
    /// The records that failed, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &RecordError)> {
        self.records
            .iter()
            .filter_map(|r| r.result.as_ref().err().map(|e| (r.message_id.as_str(), e)))
    }

    /// Whether every record was applied (or had been before).
    pub fn all_applied(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The batch's metrics (one EMF line): records, failures, notes added and reinforced,
    /// variants kept, duplicates in total and by reason (`DuplicatesExactMatch`, `DuplicatesSemanticMatch`),
    /// redeliveries, events of forgotten users, and each applied record's embed and database time.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        let applied: Vec<&ApplyOutcome> = self
            .records
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .collect();
        let sum = |f: fn(&ApplyOutcome) -> u64| applied.iter().map(|o| f(o)).sum::<u64>();
        m.count("Records", self.records.len() as u64)
            .count("RecordsFailed", self.failures().count() as u64)
            .count("NotesAdded", sum(|o| u64::from(o.notes_added)))
            .count("NotesReinforced", sum(|o| u64::from(o.notes_reinforced)))
            .count("Duplicates", sum(|o| u64::from(o.duplicates)))
            .count("Variants", sum(|o| u64::from(o.variants_added)))
            .count(
                "RecordsAlreadyApplied",
                sum(|o| u64::from(o.already_applied)),
            )
            .count("RecordsForgotten", sum(|o| u64::from(o.forgotten)));
        let extracted = |e: Extraction| applied.iter().filter(|o| o.extraction == e).count() as u64;
        if applied.iter().any(|o| o.extraction != Extraction::Default) {
            m.count("LlmExtractions", extracted(Extraction::Llm))
                .count("LlmExtractionFallbacks", extracted(Extraction::LlmFallback));
        }
        let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
        for o in &applied {
            for (reason, n) in &o.duplicates_by_reason {
                *by_reason.entry(reason).or_default() += u64::from(*n);
            }
        }
        for (reason, n) in by_reason {
            m.count(format!("Duplicates{}", pascal_case(reason)), n);
        }
        // Only records that did the work: a redelivery's zero times would skew the percentiles.
        for o in applied
            .iter()
            .filter(|o| !o.already_applied && !o.forgotten)
        {
            m.millis("EmbedMs", o.embed_time).millis("DbMs", o.db_time);
        }
        m
    }

    /// What Lambda's event source mapping reads (`ReportBatchItemFailures`): the failed ids.
    pub fn to_response(&self) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for (message_id, _) in self.failures() {
            response.add_failure(message_id.to_owned());
        }
        response
    }
}

/// Time kept back before the Lambda deadline to report the batch response (at most; a tenth of
/// the remaining time when that is shorter, so short function timeouts still get work done).
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_millis(1500);

/// Applies a batch and reports each record's outcome.
pub async fn handle_batch(consumer: &Consumer, event: SqsEvent) -> BatchReport {
    handle_batch_until(consumer, event, None).await
}

/// [`handle_batch`] where records still running at `deadline` are abandoned and reported.
pub async fn handle_batch_until(
    consumer: &Consumer,
    event: SqsEvent,
    deadline: Option<tokio::time::Instant>,
) -> BatchReport {
    let started = Instant::now();
    let budget_ms = deadline.map(|d| ms(d.saturating_duration_since(tokio::time::Instant::now())));
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

    let report = BatchReport {
        records: results
            .into_iter()
            .map(|(message_id, result)| RecordOutcome { message_id, result })
            .collect(),
    };
    let (mut added, mut reinforced, mut duplicates, mut redelivered) = (0u64, 0u64, 0u64, 0u64);
    for o in report.records.iter().filter_map(|r| r.result.as_ref().ok()) {
        added += u64::from(o.notes_added);
        reinforced += u64::from(o.notes_reinforced);
        duplicates += u64::from(o.duplicates);
        redelivered += u64::from(o.already_applied);
    }
    let failed = report.failures().count();
    tracing::info!(
        records = total,
        succeeded = total - failed,
        failed,
        fifo,
        notes_added = added,
        notes_reinforced = reinforced,
        duplicates,
        already_applied = redelivered,
        budget_ms,
        duration_ms = ms(started.elapsed()),
        "batch processed"
    );
    consumer.metrics.emit(&report.metrics());
    report
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

/// Parses and applies one record on its own task, inside the record's span (`message_id`,
/// then `event_id` and `user_id` once parsed), so every line logged about it names it.
async fn process_record(
    service: MemoryService,
    record: SqsMessage,
    until: Option<tokio::time::Instant>,
) -> Result<ApplyOutcome, RecordError> {
    let span = tracing::info_span!(
        "record",
        message_id = record.message_id.as_deref().unwrap_or_default(),
        event_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    let result = apply_record(service, record, until)
        .instrument(span.clone())
        .await;
    span.in_scope(|| match &result {
        Ok(o) => tracing::info!(
            already_applied = o.already_applied,
            forgotten = o.forgotten,
            extraction = ?o.extraction,
            candidates = o.candidates,
            notes_added = o.notes_added,
            notes_reinforced = o.notes_reinforced,
            duplicates = o.duplicates,
            embed_ms = ms(o.embed_time),
            judge_calls = o.judge_calls,
            judge_ms = ms(o.judge_time),
            db_ms = ms(o.db_time),
            "record applied"
        ),
        Err(err) => tracing::warn!(error = %err, "record failed; reported for redelivery"),
    });
    result
}

async fn apply_record(
    service: MemoryService,
    record: SqsMessage,
    until: Option<tokio::time::Instant>,
) -> Result<ApplyOutcome, RecordError> {
    let started = tokio::time::Instant::now();
    let event = match record.body.as_deref().map(ElaborationCompleted::parse) {
        Some(Ok(event)) => event,
        Some(Err(err)) => return Err(err.into()),
        None => return Err(RecordError::NoBody),
    };
    let span = tracing::Span::current();
    span.record("event_id", tracing::field::display(&event.event_id));
    span.record("user_id", tracing::field::display(&event.user_id));
    let mut task = tokio::spawn(async move { service.apply(&event).await }.in_current_span());
    let joined = match until {
        None => (&mut task).await,
        Some(until) => match tokio::time::timeout_at(until, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                // Dropping the work rolls its transaction back (or, if COMMIT was already
                // sent, the redelivery finds the processed_events row): safe either way.
                task.abort();
                return Err(RecordError::TimedOut(started.elapsed()));
            }
        },
    };
    match joined {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(err)) => Err(RecordError::Memory(err)),
        Err(join) if join.is_panic() => Err(RecordError::Panicked(shared::error::panic_message(
            &*join.into_panic(),
        ))),
        Err(_) => Err(RecordError::Cancelled),
    }
}
