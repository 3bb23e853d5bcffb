//! The AWS SDK configuration, loaded at most once per process and shared by every client.

use std::sync::Arc;

use aws_config::SdkConfig;
use tokio::sync::OnceCell;

/// The standard AWS configuration chain (region, credentials, `AWS_ENDPOINT_URL_SQS` for local
/// emulators), loaded on first use: the local runner with the offline provider and its
/// in-process queue never needs it. Cheap to clone; clones share the one load.
#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    cell: Arc<OnceCell<SdkConfig>>,
}

impl AwsConfig {
    /// A configuration that has not been loaded yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration, loading it the first time.
    pub async fn get(&self) -> &SdkConfig {
        self.cell
            .get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
            .await
    }
}
