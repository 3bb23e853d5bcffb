//! Publishing completed elaborations to the memory queue (SQS).

use futures::future::BoxFuture;

use crate::aws::AwsConfig;
use crate::config::QueueConfig;
use crate::events::ElaborationCompleted;

/// Why an event could not be handed to the queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// SQS refused the message or could not be reached.
    #[error("sending to {queue_url} failed: {detail}")]
    Sqs {
        /// The queue the message was meant for.
        queue_url: String,
        /// The SDK's error with its context (code, message, cause).
        detail: String,
    },
    /// Another publisher (the local runner's in-process queue) failed.
    #[error("publishing failed: {0}")]
    Other(String),
}

/// Hands a completed elaboration to the memory consumer.
pub trait Publisher: Send + Sync {
    /// Publishes one event; `Ok` means the queue has durably accepted it.
    fn publish<'a>(
        &'a self,
        event: &'a ElaborationCompleted,
    ) -> BoxFuture<'a, Result<(), PublishError>>;
}

/// Publishes to an SQS queue (standard or FIFO).
#[derive(Debug, Clone)]
pub struct SqsPublisher {
    client: aws_sdk_sqs::Client,
    queue: QueueConfig,
}

impl SqsPublisher {
    /// Wraps a client built once at init.
    pub fn new(client: aws_sdk_sqs::Client, queue: QueueConfig) -> Self {
        Self { client, queue }
    }

    /// A client from the process's one AWS configuration, which honours `AWS_ENDPOINT_URL_SQS`
    /// (local emulators such as moto).
    pub async fn from_aws(aws: &AwsConfig, queue: QueueConfig) -> Self {
        Self::new(aws_sdk_sqs::Client::new(aws.get().await), queue)
    }
}

impl Publisher for SqsPublisher {
    fn publish<'a>(
        &'a self,
        event: &'a ElaborationCompleted,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let mut request = self
                .client
                .send_message()
                .queue_url(&self.queue.url)
                .message_body(event.to_body());
            if self.queue.is_fifo() {
                // One group per user keeps a user's events ordered without serialising everyone;
                // the event id makes a retried send a no-op within SQS's dedup window.
                request = request
                    .message_group_id(event.user_id.as_str())
                    .message_deduplication_id(event.event_id.to_string());
            }
            request
                .send()
                .await
                .map(|_| ())
                .map_err(|e| PublishError::Sqs {
                    queue_url: self.queue.url.clone(),
                    detail: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
                })
        })
    }
}
