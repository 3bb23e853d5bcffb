//! SQS for tests: queues (with a dead-letter queue) on the moto server at
//! `AWS_ENDPOINT_URL_SQS`, and Lambda-shaped SQS event JSON.

use std::time::Duration;

use aws_sdk_sqs::types::{Message, QueueAttributeName};
use aws_sdk_sqs::Client;

/// The moto endpoint from `AWS_ENDPOINT_URL_SQS`, or a panic telling the developer what to run.
pub fn endpoint() -> String {
    match std::env::var("AWS_ENDPOINT_URL_SQS") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "AWS_ENDPOINT_URL_SQS not set: run scripts/test.sh (it starts a moto server), or start \
             `moto_server -H 127.0.0.1 -p 5055` and set AWS_ENDPOINT_URL_SQS=http://127.0.0.1:5055"
        ),
    }
}

/// An SQS client for the moto endpoint (region and credentials from the environment, with
/// test defaults; moto accepts any).
pub async fn client() -> Client {
    let endpoint = endpoint();
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let creds = aws_sdk_sqs::config::Credentials::new(
        std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
        None,
        None,
        "hikmah-tests",
    );
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .credentials_provider(creds)
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = Client::new(&config);
    if let Err(e) = client.list_queues().send().await {
        panic!(
            "moto at {endpoint} is not answering ({e}): run scripts/test.sh, or start \
             `moto_server -H 127.0.0.1 -p 5055`"
        );
    }
    client
}

/// A uniquely named queue with a redrive policy to its own DLQ.
#[derive(Debug, Clone)]
pub struct TestQueue {
    /// The client used to create it.
    pub client: Client,
    /// The main queue.
    pub url: String,
    /// The main queue's ARN.
    pub arn: String,
    /// The dead-letter queue.
    pub dlq_url: String,
    /// The dead-letter queue's ARN.
    pub dlq_arn: String,
}

impl TestQueue {
    /// Creates `name-<unique>` and its DLQ; a message is moved to the DLQ when it is received
    /// more than `max_receive_count` times; received messages stay invisible for
    /// `visibility_timeout`.
    pub async fn with_dlq(
        name: &str,
        max_receive_count: u32,
        visibility_timeout: Duration,
    ) -> Self {
        let client = client().await;
        let unique = format!(
            "{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let dlq_url = create(&client, &format!("{unique}-dlq"), &[]).await;
        let dlq_arn = arn(&client, &dlq_url).await;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receive_count.to_string(),
        })
        .to_string();
        let url = create(
            &client,
            &unique,
            &[
                (QueueAttributeName::RedrivePolicy, redrive),
                (
                    QueueAttributeName::VisibilityTimeout,
                    visibility_timeout.as_secs().to_string(),
                ),
            ],
        )
        .await;
        let arn = arn(&client, &url).await;
        Self {
            client,
            url,
            arn,
            dlq_url,
            dlq_arn,
        }
    }

    /// Sends `body` to the main queue; returns the message id.
    pub async fn send(&self, body: &str) -> String {
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("SendMessage to {}: {e}", self.url));
        out.message_id.unwrap_or_default()
    }

    /// Visible plus in-flight messages of the main queue.
    pub async fn count(&self) -> usize {
        count(&self.client, &self.url).await
    }

    /// Visible plus in-flight messages of the DLQ.
    pub async fn dlq_count(&self) -> usize {
        count(&self.client, &self.dlq_url).await
    }

    /// Receives (and deletes) every message of the DLQ.
    pub async fn drain_dlq(&self) -> Vec<Message> {
        let mut all = Vec::new();
        loop {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap_or_else(|e| panic!("ReceiveMessage from {}: {e}", self.dlq_url));
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return all;
            }
            for m in &messages {
                if let Some(receipt) = &m.receipt_handle {
                    let _ = self
                        .client
                        .delete_message()
                        .queue_url(&self.dlq_url)
                        .receipt_handle(receipt)
                        .send()
                        .await;
                }
            }
            all.extend(messages);
        }
    }

    /// Deletes both queues (best-effort).
    pub async fn delete(&self) {
        for url in [&self.url, &self.dlq_url] {
            let _ = self.client.delete_queue().queue_url(url).send().await;
        }
    }
}

async fn create(client: &Client, name: &str, attrs: &[(QueueAttributeName, String)]) -> String {
    let mut req = client.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("CreateQueue {name}: {e}"))
        .queue_url
        .unwrap_or_else(|| panic!("CreateQueue {name} returned no URL"))
}

async fn arn(client: &Client, url: &str) -> String {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetQueueAttributes {url}: {e}"))
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_else(|| panic!("queue {url} has no ARN"))
}

async fn count(client: &Client, url: &str) -> usize {
    let attrs = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetQueueAttributes {url}: {e}"))
        .attributes
        .unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|k| {
        attrs
            .get(k)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// ARN of a standard test queue in Lambda-shaped events.
pub const STANDARD_ARN: &str = "arn:aws:sqs:us-east-1:000000000000:hikmah-memory";
/// ARN of a FIFO test queue in Lambda-shaped events.
pub const FIFO_ARN: &str = "arn:aws:sqs:us-east-1:000000000000:hikmah-memory.fifo";

/// The JSON Lambda sends for an SQS batch: one record per `(message_id, body)`.
pub fn sqs_event_json(records: &[(String, String)], event_source_arn: &str) -> String {
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|(id, body)| {
            serde_json::json!({
                "messageId": id,
                "receiptHandle": format!("receipt-{id}"),
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1700000000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1700000000001"
                },
                "messageAttributes": {},
                "md5OfBody": "00000000000000000000000000000000",
                "eventSource": "aws:sqs",
                "eventSourceARN": event_source_arn,
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::json!({ "Records": records }).to_string()
}
