//! The elaborate function's metrics: one EMF line per request (see `shared::metrics`).
//!
//! - A request answered with an error before streaming (any route): `RejectedRequests` = 1 and
//!   `Rejected<Code>` = 1, e.g. `RejectedInvalidField`. One metric per code rather than a `code`
//!   dimension keeps the line exactly Powertools' shape (one dimension set, `service`), keeps
//!   alarms on a code a plain metric alarm, and the codes are a closed set (`ErrorCode`), so the
//!   metric count is bounded.
//! - A stream: `FirstDeltaMs` (request received → first delta ready to send, when there was
//!   one), `StreamMs` (request received → the stream's last event), `PublishFailures` (1 when the
//!   queue refused the completed elaboration, else 0) and `StreamErrors` (1 when the stream
//!   ended with an in-band error of any code). Emitted when the elaboration ends, whether or not
//!   the client is still reading.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use shared::elaboration::StreamEvent;
use shared::error_code::ErrorCode;
use shared::metrics::{pascal_case, Metrics, MetricsEmitter};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::AppState;

/// Middleware: counts every error response before streaming by its code (the code is in the
/// response's extensions, put there by `ApiError`).
pub(crate) async fn count_rejections(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        state.metrics.emit(&rejected(*code));
    }
    response
}

/// The metrics of a request refused with `code`.
pub(crate) fn rejected(code: ErrorCode) -> Metrics {
    let mut m = Metrics::new();
    m.count("RejectedRequests", 1)
        .count(format!("Rejected{}", pascal_case(code.as_str())), 1);
    m
}

/// Forwards the elaboration's events (after `first`, already taken by the handler) to the
/// returned channel, measuring the stream; emits its metrics when the stream ends. Runs in its
/// own task, so a client that leaves does not stop the measurement.
pub(crate) fn observe(
    first: Option<&StreamEvent>,
    mut events: mpsc::UnboundedReceiver<StreamEvent>,
    started: Instant,
    emitter: MetricsEmitter,
) -> mpsc::UnboundedReceiver<StreamEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = StreamMetrics::new(started);
    let first_was_terminal = first.is_some_and(|e| {
        stream.saw(e);
        e.is_terminal()
    });
    if first_was_terminal {
        emitter.emit(&stream.finish());
        return rx;
    }
    tokio::spawn(
        async move {
            while let Some(event) = events.recv().await {
                stream.saw(&event);
                let terminal = event.is_terminal();
                // The client may be gone: keep measuring until the elaboration ends.
                let _ = tx.send(event);
                if terminal {
                    break;
                }
            }
            emitter.emit(&stream.finish());
        }
        .in_current_span(),
    );
    rx
}

/// What one stream did, accumulated event by event.
struct StreamMetrics {
    started: Instant,
    first_delta: Option<std::time::Duration>,
    error: Option<ErrorCode>,
}

impl StreamMetrics {
    fn new(started: Instant) -> Self {
        Self {
            started,
            first_delta: None,
            error: None,
        }
    }

    fn saw(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Delta(_) if self.first_delta.is_none() => {
                self.first_delta = Some(self.started.elapsed());
            }
            StreamEvent::Error { code, .. } => self.error = Some(*code),
            _ => {}
        }
    }

    fn finish(self) -> Metrics {
        let mut m = Metrics::new();
        if let Some(first) = self.first_delta {
            m.millis("FirstDeltaMs", first);
        }
        m.millis("StreamMs", self.started.elapsed())
            .count(
                "PublishFailures",
                u64::from(self.error == Some(ErrorCode::PublishFailed)),
            )
            .count("StreamErrors", u64::from(self.error.is_some()));
        m
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use shared::metrics::{MetricsConfig, MetricsSink};

    use super::*;

    #[test]
    fn a_rejection_counts_in_total_and_by_code() {
        let m = rejected(ErrorCode::InvalidField);
        assert_eq!(m.values("RejectedRequests"), Some(&[1.0][..]));
        assert_eq!(m.values("RejectedInvalidField"), Some(&[1.0][..]));
    }

    #[tokio::test]
    async fn a_stream_is_measured_and_emitted_once_even_when_nobody_reads_it(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let emitter = MetricsEmitter::new(
            MetricsConfig::new("elaborate"),
            MetricsSink::Memory(lines.clone()),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let first = StreamEvent::Delta("a".into());
        let forwarded = observe(Some(&first), rx, Instant::now(), emitter);
        drop(forwarded); // the client left
        tx.send(StreamEvent::Delta("b".into()))?;
        tx.send(StreamEvent::Error {
            code: ErrorCode::PublishFailed,
            message: "m".into(),
        })?;
        for _ in 0..100 {
            if !lines.lock().map_err(|_| "poisoned")?.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let lines = lines.lock().map_err(|_| "poisoned")?.clone();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0])?;
        assert_eq!(v["PublishFailures"], 1.0);
        assert_eq!(v["StreamErrors"], 1.0);
        assert!(v["FirstDeltaMs"].as_f64().ok_or("first delta")? >= 0.0);
        assert!(
            v["StreamMs"].as_f64().ok_or("stream")? >= v["FirstDeltaMs"].as_f64().unwrap_or(0.0)
        );
        Ok(())
    }
}
