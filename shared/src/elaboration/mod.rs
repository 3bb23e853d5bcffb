//! The elaboration service: prompt from the user's notes, streamed generation, hand-off to the queue.
//!
//! [`Elaborator::spawn`] runs one elaboration in its own task and reports [`StreamEvent`]s on a
//! channel: `Delta*`, then `Done` (after the queue accepted the event) or `Error`. The task never
//! depends on anyone reading the channel, so a client that disconnects stops neither the
//! generation nor the publish. The events are domain values: framing them for a transport
//! (Server-Sent Events, keep-alives) is the HTTP layer's job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::StreamExt;
use tokio::sync::mpsc;

use crate::error_code::ErrorCode;
use crate::events::ElaborationCompleted;
use crate::llm::LlmProvider;
use crate::publish::{PublishError, Publisher};
use crate::types::{EventId, UserId};

pub mod notes;
pub mod prompt;
pub mod request;

pub use notes::{NoNotes, NotesSource, PgNotes};
pub use request::{resolve_user, ElaborateRequest, RequestError};

/// One event of the stream contract (design.md, "Stream").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A piece of the answer, as the provider produced it.
    Delta(String),
    /// The elaboration is complete and its event is on the queue.
    Done {
        /// The published event's id.
        event_id: EventId,
        /// Length of the whole elaboration, in characters.
        chars: usize,
    },
    /// Generation or publishing failed; nothing follows.
    Error {
        /// Machine-readable code (`provider_error`, `provider_timeout`, `publish_failed`).
        code: ErrorCode,
        /// What happened.
        message: String,
    },
}

impl StreamEvent {
    /// Whether this event ends the stream.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::Delta(_))
    }
}

/// How long a completed elaboration may spend being handed to the queue, retries included,
/// unless [`Elaborator::with_publish_budget`] says otherwise.
pub const DEFAULT_PUBLISH_BUDGET: Duration = Duration::from_secs(10);

/// Pause before the first retry of a publish; it doubles after each failure.
const PUBLISH_FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Runs elaborations: resources are built once and shared by every request (clone is cheap).
#[derive(Clone)]
pub struct Elaborator {
    provider: Arc<dyn LlmProvider>,
    notes: Arc<dyn NotesSource>,
    publisher: Arc<dyn Publisher>,
    context_notes: usize,
    publish_budget: Duration,
    generation_deadline: Duration,
    /// Completed elaborations that could not be published, since start. The hook for the
    /// `PublishFailed` metric: each failure is also one log line with `error_code="publish_failed"`.
    publish_failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for Elaborator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elaborator")
            .field("provider", &self.provider.name())
            .field("model", &self.provider.model())
            .field("context_notes", &self.context_notes)
            .finish_non_exhaustive()
    }
}

impl Elaborator {
    /// Wires a provider, a notes source and a publisher; `context_notes` is `MEMORY_CONTEXT_NOTES`.
    pub fn new(
        provider: Arc<dyn LlmProvider>,
        notes: Arc<dyn NotesSource>,
        publisher: Arc<dyn Publisher>,
        context_notes: usize,
    ) -> Self {
        Self {
            provider,
            notes,
            publisher,
            context_notes,
            publish_budget: DEFAULT_PUBLISH_BUDGET,
            generation_deadline: crate::config::GenerationLimits::default().total_timeout,
            publish_failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Retries a failed publish (with a doubling pause) until `budget` has passed since the
    /// first attempt; keep it well inside the function's timeout.
    pub fn with_publish_budget(mut self, budget: Duration) -> Self {
        self.publish_budget = budget;
        self
    }

    /// Ends a generation still running after `deadline` (`LLM_TOTAL_TIMEOUT_MS`) with a
    /// `provider_timeout` error, well before the function's own timeout would cut it silently.
    pub fn with_generation_deadline(mut self, deadline: Duration) -> Self {
        self.generation_deadline = deadline;
        self
    }

    /// How many completed elaborations could not be published since start (all clones count).
    pub fn publish_failures(&self) -> u64 {
        self.publish_failures.load(Ordering::Relaxed)
    }

    /// The provider in use.
    pub fn provider(&self) -> &dyn LlmProvider {
        self.provider.as_ref()
    }

    /// Starts one elaboration in its own task; its events arrive on the returned channel. The
    /// task runs to the end (publish included) even when the receiver is dropped.
    pub fn spawn(
        &self,
        user: UserId,
        request: ElaborateRequest,
    ) -> mpsc::UnboundedReceiver<StreamEvent> {
        // Unbounded: an answer is a few kilobytes, and a slow reader must never stall generation
        // (the provider would hit its idle timeout) nor block the publish.
        let (tx, rx) = mpsc::unbounded_channel();
        let this = self.clone();
        // The task's lines carry the request's span (Lambda's requestId) like the handler's.
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            this.run(user, request, tx).await
        }));
        rx
    }

    async fn run(
        self,
        user: UserId,
        request: ElaborateRequest,
        tx: mpsc::UnboundedSender<StreamEvent>,
    ) {
        // A send fails only when the client has gone: keep going, the publish still matters.
        let emit = |event: StreamEvent| {
            let _ = tx.send(event);
        };
        let notes = self.read_notes(&user).await;
        let prompt = prompt::build(&request, &notes);
        let mut deltas = self.provider.stream(prompt);
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + self.generation_deadline;
        loop {
            let item = match tokio::time::timeout_at(deadline, deltas.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => Err(crate::llm::LlmError::TotalTimeout {
                    provider: self.provider.name(),
                    after: self.generation_deadline,
                }),
            };
            match item {
                Ok(delta) => {
                    text.push_str(&delta);
                    emit(StreamEvent::Delta(delta));
                }
                Err(err) => {
                    tracing::warn!(user_id = %user, provider = self.provider.name(), error = %err, "generation failed");
                    emit(StreamEvent::Error {
                        code: err.code(),
                        message: err.to_string(),
                    });
                    return;
                }
            }
        }
        if text.trim().is_empty() {
            let message = format!("{} returned no text", self.provider.name());
            tracing::warn!(user_id = %user, "{message}");
            emit(StreamEvent::Error {
                code: ErrorCode::ProviderError,
                message,
            });
            return;
        }
        let chars = text.chars().count();
        let event = ElaborationCompleted::new(
            user,
            request.hikmah,
            request.question,
            text,
            self.provider.model().to_owned(),
        );
        match self.publish(&event).await {
            Ok(attempts) => {
                tracing::info!(event_id = %event.event_id, user_id = %event.user_id, chars, attempts, "elaboration published");
                emit(StreamEvent::Done {
                    event_id: event.event_id,
                    chars,
                });
            }
            Err((attempts, err)) => {
                self.publish_failures.fetch_add(1, Ordering::Relaxed);
                // Stable fields for alarms and metrics; never the user's text (the client is told
                // and may send the request again).
                tracing::error!(
                    error_code = "publish_failed",
                    event_id = %event.event_id,
                    attempts,
                    publish_failures_total = self.publish_failures(),
                    error = %err,
                    "publishing the completed elaboration failed"
                );
                emit(StreamEvent::Error {
                    code: ErrorCode::PublishFailed,
                    message: format!(
                        "the elaboration could not be handed to the memory queue: {err}"
                    ),
                });
            }
        }
    }

    /// Publishes `event`, retrying failures within the publish budget; returns the attempts made.
    async fn publish(&self, event: &ElaborationCompleted) -> Result<u32, (u32, PublishError)> {
        let deadline = tokio::time::Instant::now() + self.publish_budget;
        let mut pause = PUBLISH_FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = match tokio::time::timeout(left, self.publisher.publish(event)).await {
                Ok(result) => result,
                Err(_) => Err(PublishError::Other(format!(
                    "no answer from the queue within the publish budget of {:?}",
                    self.publish_budget
                ))),
            };
            match result {
                Ok(()) => return Ok(attempts),
                Err(err) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left <= pause {
                        return Err((attempts, err));
                    }
                    tracing::warn!(event_id = %event.event_id, attempts, error = %err, ?pause, "publish failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }

    async fn read_notes(&self, user: &UserId) -> Vec<String> {
        if self.context_notes == 0 {
            return Vec::new();
        }
        match self.notes.top_notes(user, self.context_notes).await {
            Ok(notes) => notes,
            Err(err) => {
                // Personalisation is a bonus: answer without it rather than fail the request.
                tracing::warn!(user_id = %user, error = %err, "reading memory notes failed; answering without them");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;
    use crate::llm::offline::OfflineProvider;

    /// Fails the first `failures` publishes, then accepts.
    struct Flaky {
        failures: u32,
        calls: Mutex<u32>,
    }

    impl Publisher for Flaky {
        fn publish<'a>(
            &'a self,
            _event: &'a ElaborationCompleted,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            Box::pin(async move {
                let mut calls = self
                    .calls
                    .lock()
                    .map_err(|e| PublishError::Other(e.to_string()))?;
                *calls += 1;
                if *calls <= self.failures {
                    Err(PublishError::Other("queue throttled".into()))
                } else {
                    Ok(())
                }
            })
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn elaborate(
        publisher: Arc<Flaky>,
        budget: Duration,
    ) -> Result<(Vec<StreamEvent>, Elaborator), Box<dyn std::error::Error>> {
        let elaborator = Elaborator::new(
            Arc::new(OfflineProvider::new(Duration::ZERO)),
            Arc::new(NoNotes),
            publisher,
            0,
        )
        .with_publish_budget(budget);
        let request = ElaborateRequest::parse(
            br#"{"hikmah": "SECRET-HIKMAH patience", "question": "SECRET-QUESTION"}"#,
        )?;
        let mut rx = elaborator.spawn(UserId::parse("u-1")?, request);
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        Ok((events, elaborator))
    }

    #[tokio::test]
    async fn a_publish_that_fails_twice_is_retried_within_the_budget_and_ends_in_done(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let publisher = Arc::new(Flaky {
            failures: 2,
            calls: Mutex::new(0),
        });
        let (events, elaborator) = elaborate(publisher.clone(), Duration::from_secs(5)).await?;
        assert!(
            matches!(events.last(), Some(StreamEvent::Done { .. })),
            "{events:?}"
        );
        assert_eq!(*publisher.calls.lock().map_err(|e| e.to_string())?, 3);
        assert_eq!(elaborator.publish_failures(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_publish_failure_is_counted_and_logged_with_stable_fields_and_no_user_text(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let publisher = Arc::new(Flaky {
            failures: u32::MAX,
            calls: Mutex::new(0),
        });
        let (events, elaborator) = elaborate(publisher, Duration::from_millis(500)).await?;
        assert!(
            matches!(
                events.last(),
                Some(StreamEvent::Error {
                    code: ErrorCode::PublishFailed,
                    ..
                })
            ),
            "{events:?}"
        );
        assert_eq!(elaborator.publish_failures(), 1);
        let logs = String::from_utf8(captured.0.lock().map_err(|e| e.to_string())?.clone())?;
        let failure = logs
            .lines()
            .find(|l| l.contains("\"error_code\":\"publish_failed\""))
            .ok_or_else(|| format!("no publish_failed line in:\n{logs}"))?;
        assert!(failure.contains("\"event_id\""), "{failure}");
        assert!(
            !logs.contains("SECRET-") && !logs.contains("patience"),
            "user text in the logs:\n{logs}"
        );
        Ok(())
    }
}
