//! The elaboration service: prompt from the user's notes, streamed generation, hand-off to the queue.
//!
//! [`Elaborator::spawn`] runs one elaboration in its own task and reports [`StreamEvent`]s on a
//! channel: `Delta*`, then `Done` (after the queue accepted the event) or `Error`. The task never
//! depends on anyone reading the channel, so a client that disconnects stops neither the
//! generation nor the publish. The events are domain values: framing them for a transport
//! (Server-Sent Events, keep-alives) is the HTTP layer's job.

use std::sync::Arc;

use futures::stream::StreamExt;
use tokio::sync::mpsc;

use crate::error_code::ErrorCode;
use crate::events::ElaborationCompleted;
use crate::llm::LlmProvider;
use crate::publish::Publisher;
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

/// Runs elaborations: resources are built once and shared by every request (clone is cheap).
#[derive(Clone)]
pub struct Elaborator {
    provider: Arc<dyn LlmProvider>,
    notes: Arc<dyn NotesSource>,
    publisher: Arc<dyn Publisher>,
    context_notes: usize,
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
        }
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
        while let Some(item) = deltas.next().await {
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
        match self.publisher.publish(&event).await {
            Ok(()) => {
                tracing::info!(event_id = %event.event_id, user_id = %event.user_id, chars, "elaboration published");
                emit(StreamEvent::Done {
                    event_id: event.event_id,
                    chars,
                });
            }
            Err(err) => {
                // The whole event is logged so it can be replayed onto the queue by hand.
                tracing::error!(
                    event_id = %event.event_id,
                    error = %err,
                    event = %event.to_body(),
                    "publishing the completed elaboration failed; replay the logged event"
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
