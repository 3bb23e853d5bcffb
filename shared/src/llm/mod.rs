//! LLM providers behind one streaming trait: OpenAI-compatible, Bedrock, offline.
//!
//! A provider turns a [`Prompt`] into a stream of text deltas. The stream is lazy: nothing is
//! sent until it is first polled, and it ends after the last delta (or with one error). Callers
//! forward each delta as it arrives, so providers must not buffer.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::aws::AwsConfig;
use crate::config::{GenerationLimits, LlmConfig};
use crate::error_code::ErrorCode;

pub mod bedrock;
pub mod offline;
pub mod openai;
pub mod sse;

pub use bedrock::BedrockProvider;
pub use offline::OfflineProvider;
pub use openai::OpenAiProvider;

/// What the model is asked: the rendered messages plus the inputs they were built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The system message (role and rules).
    pub system: String,
    /// The user message (the hikmah, the question and the user's notes, rendered).
    pub user: String,
    /// The hikmah being elaborated (the offline provider builds its text from it).
    pub hikmah: String,
    /// The user's optional question.
    pub question: Option<String>,
    /// How many of the user's notes were put into the prompt.
    pub notes_used: usize,
}

/// A stream of text deltas; it ends after the last one, or with a single error.
pub type TextStream = BoxStream<'static, Result<String, LlmError>>;

/// A language model that streams its answer.
pub trait LlmProvider: Send + Sync {
    /// Short provider name used in errors and logs (`openai`, `bedrock`, `offline`).
    fn name(&self) -> &'static str;
    /// The model name recorded in queue messages.
    fn model(&self) -> &str;
    /// Starts generating; the request is sent when the stream is first polled.
    fn stream(&self, prompt: Prompt) -> TextStream;
}

/// Why generation failed, naming the provider and what it said.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with a non-success HTTP status.
    #[error("{provider} answered HTTP {status}: {message}")]
    Status {
        /// Provider name.
        provider: &'static str,
        /// HTTP status code.
        status: u16,
        /// The provider's own error message (or the body, truncated).
        message: String,
    },
    /// The provider could not be reached, or the connection broke.
    #[error("{provider} request failed: {detail}")]
    Transport {
        /// Provider name.
        provider: &'static str,
        /// What went wrong (the underlying error chain).
        detail: String,
    },
    /// Nothing arrived from the provider for longer than the idle timeout.
    #[error("{provider} sent nothing for {}s (LLM_IDLE_TIMEOUT_MS)", after.as_secs_f32())]
    IdleTimeout {
        /// Provider name.
        provider: &'static str,
        /// The configured idle timeout.
        after: Duration,
    },
    /// The whole generation took longer than its total deadline.
    #[error("{provider} did not finish within {}s (LLM_TOTAL_TIMEOUT_MS)", after.as_secs_f32())]
    TotalTimeout {
        /// Provider name.
        provider: &'static str,
        /// The configured total deadline.
        after: Duration,
    },
    /// The provider's stream broke its protocol (malformed chunk, ended without finishing).
    #[error("{provider} stream is malformed: {detail}")]
    Protocol {
        /// Provider name.
        provider: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The provider reported an error inside the stream or through its SDK.
    #[error("{provider} reported an error: {message}")]
    Provider {
        /// Provider name.
        provider: &'static str,
        /// The provider's message.
        message: String,
    },
    /// The provider could not be set up from configuration.
    #[error("{provider} cannot be configured: {detail}")]
    Setup {
        /// Provider name.
        provider: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl LlmError {
    /// The stable error code sent to clients (`provider_timeout` or `provider_error`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::IdleTimeout { .. } | Self::TotalTimeout { .. } => ErrorCode::ProviderTimeout,
            Self::Status { .. }
            | Self::Transport { .. }
            | Self::Protocol { .. }
            | Self::Provider { .. }
            | Self::Setup { .. } => ErrorCode::ProviderError,
        }
    }
}

/// Builds the configured provider once, at init (Bedrock uses the process's AWS configuration),
/// asking for at most `limits.max_tokens` per answer.
pub async fn from_config(
    cfg: &LlmConfig,
    limits: &GenerationLimits,
    aws: &AwsConfig,
) -> Result<Arc<dyn LlmProvider>, LlmError> {
    Ok(match cfg {
        LlmConfig::OpenAi { .. } => {
            Arc::new(OpenAiProvider::new(cfg)?.with_max_tokens(limits.max_tokens))
        }
        LlmConfig::Bedrock {
            model,
            idle_timeout,
        } => Arc::new(
            BedrockProvider::new(aws.get().await, model.clone(), *idle_timeout)
                .with_max_tokens(limits.max_tokens),
        ),
        LlmConfig::Offline => Arc::new(OfflineProvider::default()),
    })
}
