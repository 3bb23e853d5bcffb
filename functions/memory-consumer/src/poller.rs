//! A queue driver that does what Lambda's SQS event source mapping does, for the local runner
//! and the tests: long-poll up to 10 messages, hand the handler a real [`SqsEvent`] built from
//! them, and delete only the messages the handler did not report as failed. A failed message
//! becomes visible again after the visibility timeout, and the queue's redrive policy moves it
//! to the DLQ after `maxReceiveCount` receives: the same semantics as in AWS.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use crate::sqs::Received;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};

/// Messages per receive: the event source mapping's default batch size (and SQS's maximum).
const BATCH_SIZE: i32 = 10;

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
        })
    }

    /// Long-poll wait per receive (0..=20 s; default 20 s).
    pub fn with_wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait.min(Duration::from_secs(20));
        self
    }

    /// The queue's ARN.
    pub fn queue_arn(&self) -> &str {
        &self.queue_arn
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
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(BATCH_SIZE)
            .wait_time_seconds(i32::try_from(self.wait_time.as_secs()).unwrap_or(20))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
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
    fn to_event(&self, messages: Vec<Message>) -> SqsEvent {
        crate::sqs::event(messages.into_iter().map(|m| self.to_record(m)))
    }

    fn to_record(&self, m: Message) -> SqsMessage {
        let received = Received {
            message_id: m.message_id.unwrap_or_default(),
            receipt_handle: m.receipt_handle,
            body: m.body.unwrap_or_default(),
            attributes: m
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect(),
        };
        let mut r = crate::sqs::record(received, &self.queue_arn, &self.region);
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
        r.md5_of_body = m.md5_of_body;
        r.md5_of_message_attributes = m.md5_of_message_attributes;
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
