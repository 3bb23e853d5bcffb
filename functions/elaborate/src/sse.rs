//! Server-Sent Events framing of the elaboration's [`StreamEvent`]s (design.md, "Stream").
//!
//! `shared::elaboration` reports domain events; this module turns them into `text/event-stream`
//! bytes with keep-alive comments, and gives the response its streaming headers.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures::stream::Stream;
use serde_json::json;
use shared::elaboration::StreamEvent;
use tokio::sync::mpsc;

/// The comment sent when nothing else was sent for the keep-alive interval.
pub(crate) const KEEPALIVE: &str = ": keep-alive\n\n";

/// The event in `text/event-stream` framing (JSON data is always a single line).
pub(crate) fn to_sse(event: &StreamEvent) -> String {
    let (name, data) = match event {
        StreamEvent::Delta(text) => ("delta", json!({ "text": text })),
        StreamEvent::Done { event_id, chars } => {
            ("done", json!({ "event_id": event_id, "chars": chars }))
        }
        StreamEvent::Error { code, message } => {
            ("error", json!({ "code": code, "message": message }))
        }
    };
    format!("event: {name}\ndata: {data}\n\n")
}

/// The response body: `prefix` (an event already received, or a keep-alive), then every event
/// from `events` as it arrives, with a keep-alive comment after each `keepalive` of silence.
/// It ends after the first terminal event, or when the producer is gone.
pub(crate) fn sse_stream(
    prefix: Option<String>,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    keepalive: Duration,
) -> impl Stream<Item = Bytes> + Send + 'static {
    struct State {
        prefix: Option<String>,
        events: mpsc::UnboundedReceiver<StreamEvent>,
        ended: bool,
    }
    futures::stream::unfold(
        State {
            prefix,
            events,
            ended: false,
        },
        move |mut s| async move {
            if let Some(first) = s.prefix.take() {
                return Some((Bytes::from(first), s));
            }
            if s.ended {
                return None;
            }
            match tokio::time::timeout(keepalive, s.events.recv()).await {
                Err(_) => Some((Bytes::from_static(KEEPALIVE.as_bytes()), s)),
                Ok(None) => None,
                Ok(Some(event)) => {
                    s.ended = event.is_terminal();
                    Some((Bytes::from(to_sse(&event)), s))
                }
            }
        },
    )
}

/// A `200` response streaming `body` as `text/event-stream`, uncached and unbuffered.
pub(crate) fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use shared::error_code::ErrorCode;
    use shared::types::EventId;

    use super::*;

    #[test]
    fn events_are_framed_as_the_contract_says() {
        assert_eq!(
            to_sse(&StreamEvent::Delta("a\nb".into())),
            "event: delta\ndata: {\"text\":\"a\\nb\"}\n\n"
        );
        let id = EventId::new_v7();
        assert_eq!(
            to_sse(&StreamEvent::Done {
                event_id: id,
                chars: 3
            }),
            format!("event: done\ndata: {{\"chars\":3,\"event_id\":\"{id}\"}}\n\n")
        );
        assert_eq!(
            to_sse(&StreamEvent::Error {
                code: ErrorCode::PublishFailed,
                message: "m".into()
            }),
            "event: error\ndata: {\"code\":\"publish_failed\",\"message\":\"m\"}\n\n"
        );
    }

    #[tokio::test]
    async fn silence_becomes_keep_alive_comments_and_a_terminal_event_ends_the_stream(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = Box::pin(sse_stream(None, rx, Duration::from_millis(50)));
        assert_eq!(
            body.next().await.ok_or("the stream ended early")?,
            KEEPALIVE.as_bytes()
        );
        tx.send(StreamEvent::Delta("x".into()))
            .map_err(|e| format!("send delta: {e:?}"))?;
        assert!(body
            .next()
            .await
            .ok_or("the stream ended early")?
            .starts_with(b"event: delta"));
        tx.send(StreamEvent::Error {
            code: ErrorCode::ProviderError,
            message: "m".into(),
        })
        .map_err(|e| format!("send error: {e:?}"))?;
        assert!(body
            .next()
            .await
            .ok_or("the stream ended early")?
            .starts_with(b"event: error"));
        assert!(body.next().await.is_none());
        Ok(())
    }
}
