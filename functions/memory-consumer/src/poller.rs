//! A queue driver that does what Lambda's SQS event source mapping does, for the local runner
//! and the tests: long-poll up to 10 messages, hand the handler a real [`SqsEvent`] built from
//! them, and delete only the messages the handler did not report as failed. A failed message
//! becomes visible again after the visibility timeout, and the queue's redrive policy moves it
//! to the DLQ after `maxReceiveCount` receives: the same semantics as in AWS.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};

/// Why the poller could not talk to the queue.
#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    /// An SQS call failed (endpoint unreachable, queue missing, credentials...).
    #[error("SQS {operation} on {queue_url} failed: {detail} (check MEMORY_QUEUE_URL, AWS_ENDPOINT_URL_SQS and AWS_REGION)")]
    Sqs {
        /// The API call.
        operation: &'static str,
        /// The queue.
        queue_url: String,
        /// The SDK's error with its causes.
        detail: String,
    },
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Messages received.
    pub received: usize,
    /// Messages handled and deleted.
    pub deleted: usize,
    /// Messages the handler reported as failed (left for redelivery).
    pub failed: usize,
}

/// Drives a handler from an SQS queue.
#[derive(Debug, Clone)]
pub struct Poller {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    region: String,
    wait_time: Duration,
    max_messages: i32,
    visibility_timeout: Option<Duration>,
}

impl Poller {
    /// A poller for `queue_url`; reads the queue's ARN (it goes into every record, as in Lambda).
    pub async fn new(
        client: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
    ) -> Result<Self, PollerError> {
        let queue_url = queue_url.into();
        let attrs = client
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sqs_error("GetQueueAttributes", &queue_url, e))?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default();
        let region = client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
        Ok(Self {
            client,
            queue_url,
            queue_arn,
            region,
            wait_time: Duration::from_secs(20),
            max_messages: 10,
            visibility_timeout: None,
        })
    }

    /// Long-poll wait per receive (0..=20 s; default 20 s).
    pub fn with_wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait.min(Duration::from_secs(20));
        self
    }

    /// Messages per batch (1..=10; default 10, the event source mapping's default).
    pub fn with_batch_size(mut self, n: i32) -> Self {
        self.max_messages = n.clamp(1, 10);
        self
    }

    /// Visibility timeout of received messages (default: the queue's own).
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// The queue's ARN.
    pub fn queue_arn(&self) -> &str {
        &self.queue_arn
    }

    /// Receives one batch (waiting up to the long-poll time), runs `handler` on it if it is not
    /// empty, and deletes the messages not reported as failed.
    pub async fn poll_once<F, Fut>(&self, handler: &F) -> Result<PollReport, PollerError>
    where
        F: Fn(SqsEvent) -> Fut,
        Fut: Future<Output = SqsBatchResponse>,
    {
        let messages = self.receive().await?;
        self.handle(messages, handler).await
    }

    /// Polls until `shutdown` completes. A batch being handled is finished (and its successes
    /// deleted) before returning; only a waiting receive is abandoned. Receive errors are logged
    /// and retried after a pause, so a queue outage does not end the loop.
    pub async fn run<F, Fut>(&self, handler: F, shutdown: impl Future<Output = ()>) -> PollReport
    where
        F: Fn(SqsEvent) -> Fut,
        Fut: Future<Output = SqsBatchResponse>,
    {
        let mut total = PollReport::default();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let received = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = self.receive() => r,
            };
            match received {
                Ok(messages) => match self.handle(messages, &handler).await {
                    Ok(r) => {
                        total.received += r.received;
                        total.deleted += r.deleted;
                        total.failed += r.failed;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "deleting handled messages failed; they will be redelivered")
                    }
                },
                Err(err) => {
                    tracing::warn!(error = %err, "receiving from the queue failed; retrying in 1 s");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        total
    }

    async fn receive(&self) -> Result<Vec<Message>, PollerError> {
        let mut req = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.max_messages)
            .wait_time_seconds(i32::try_from(self.wait_time.as_secs()).unwrap_or(20))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All");
        if let Some(v) = self.visibility_timeout {
            req = req.visibility_timeout(i32::try_from(v.as_secs()).unwrap_or(i32::MAX));
        }
        let out = req
            .send()
            .await
            .map_err(|e| sqs_error("ReceiveMessage", &self.queue_url, e))?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn handle<F, Fut>(
        &self,
        messages: Vec<Message>,
        handler: &F,
    ) -> Result<PollReport, PollerError>
    where
        F: Fn(SqsEvent) -> Fut,
        Fut: Future<Output = SqsBatchResponse>,
    {
        if messages.is_empty() {
            return Ok(PollReport::default());
        }
        let received = messages.len();
        let receipts: Vec<(String, String)> = messages
            .iter()
            .filter_map(|m| Some((m.message_id.clone()?, m.receipt_handle.clone()?)))
            .collect();
        let event = self.to_event(messages);
        let response = handler(event).await;
        let failed: HashSet<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let entries: Vec<DeleteMessageBatchRequestEntry> = receipts
            .iter()
            .filter(|(id, _)| !failed.contains(id.as_str()))
            .enumerate()
            .filter_map(|(i, (_, receipt))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect();
        let to_delete = entries.len();
        if !entries.is_empty() {
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sqs_error("DeleteMessageBatch", &self.queue_url, e))?;
            for f in out.failed() {
                tracing::warn!(
                    entry = f.id(),
                    code = f.code(),
                    "a handled message could not be deleted; it will be redelivered"
                );
            }
        }
        Ok(PollReport {
            received,
            deleted: to_delete,
            failed: received - to_delete,
        })
    }

    /// The event Lambda would build from these messages.
    pub fn to_event(&self, messages: Vec<Message>) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = messages.into_iter().map(|m| self.to_record(m)).collect();
        event
    }

    fn to_record(&self, m: Message) -> SqsMessage {
        let mut r = SqsMessage::default();
        r.attributes = m
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect::<HashMap<_, _>>();
        r.message_attributes = m
            .message_attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let mut a = SqsMessageAttribute::default();
                a.string_value = v.string_value;
                a.string_list_values = v.string_list_values.unwrap_or_default();
                a.data_type = Some(v.data_type);
                (k, a)
            })
            .collect();
        r.message_id = m.message_id;
        r.receipt_handle = m.receipt_handle;
        r.body = m.body;
        r.md5_of_body = m.md5_of_body;
        r.md5_of_message_attributes = m.md5_of_message_attributes;
        r.event_source_arn = Some(self.queue_arn.clone());
        r.event_source = Some("aws:sqs".into());
        r.aws_region = Some(self.region.clone());
        r
    }
}

fn sqs_error<E: std::error::Error>(
    operation: &'static str,
    queue_url: &str,
    err: E,
) -> PollerError {
    PollerError::Sqs {
        operation,
        queue_url: queue_url.to_owned(),
        detail: shared::error::chain(&err),
    }
}
