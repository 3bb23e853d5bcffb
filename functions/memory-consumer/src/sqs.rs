//! The one builder of the `SqsEvent` Lambda hands the function, for everything that plays the
//! event source mapping outside AWS (the poller, the local runner's in-process queue, the bench).

use std::collections::HashMap;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};

/// A received message, as the event source mapping describes it to the function.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// The queue's message id (the id reported back in `batchItemFailures`).
    pub message_id: String,
    /// The receipt handle of this receive.
    pub receipt_handle: Option<String>,
    /// The message body.
    pub body: String,
    /// System attributes (`ApproximateReceiveCount`, `MessageGroupId`, ...).
    pub attributes: HashMap<String, String>,
}

/// A record as Lambda builds it for `queue_arn` in `region`.
pub fn record(message: Received, queue_arn: &str, region: &str) -> SqsMessage {
    let mut r = SqsMessage::default();
    r.message_id = Some(message.message_id);
    r.receipt_handle = message.receipt_handle;
    r.body = Some(message.body);
    r.attributes = message.attributes;
    r.event_source = Some("aws:sqs".into());
    r.event_source_arn = Some(queue_arn.to_owned());
    r.aws_region = Some(region.to_owned());
    r
}

/// The event of a batch of records.
pub fn event(records: impl IntoIterator<Item = SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records.into_iter().collect();
    event
}
