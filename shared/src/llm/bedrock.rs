//! Amazon Bedrock `ConverseStream`: one model-agnostic streaming API for every Bedrock model.

use std::time::Duration;

use aws_sdk_bedrockruntime::error::DisplayErrorContext;
use aws_sdk_bedrockruntime::operation::converse_stream::builders::ConverseStreamFluentBuilder;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamOutput as Response;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ConversationRole, ConverseStreamOutput,
    InferenceConfiguration, Message, SystemContentBlock,
};
use futures::stream::StreamExt;

use super::{LlmError, LlmProvider, Prompt, TextStream};

const NAME: &str = "bedrock";

/// Streams answers from a Bedrock model through `ConverseStream`.
#[derive(Debug, Clone)]
pub struct BedrockProvider {
    client: aws_sdk_bedrockruntime::Client,
    model: String,
    idle_timeout: Duration,
    max_tokens: Option<u32>,
}

impl BedrockProvider {
    /// Builds the provider from a loaded AWS configuration (region and credentials from it).
    pub fn new(sdk: &aws_config::SdkConfig, model: String, idle_timeout: Duration) -> Self {
        Self {
            client: aws_sdk_bedrockruntime::Client::new(sdk),
            model,
            idle_timeout,
            max_tokens: None,
        }
    }

    /// Caps each answer at `max_tokens` (`inferenceConfig.maxTokens`).
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
}

impl LlmProvider for BedrockProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self, prompt: Prompt) -> TextStream {
        let message = Message::builder()
            .role(ConversationRole::User)
            .content(ContentBlock::Text(prompt.user))
            .build();
        let state = match message {
            Ok(message) => State::Start(Box::new(
                self.client
                    .converse_stream()
                    .model_id(&self.model)
                    .system(SystemContentBlock::Text(prompt.system))
                    .messages(message)
                    .set_inference_config(self.max_tokens.map(|n| {
                        InferenceConfiguration::builder()
                            .max_tokens(i32::try_from(n).unwrap_or(i32::MAX))
                            .build()
                    })),
            )),
            Err(e) => State::Failed(LlmError::Setup {
                provider: NAME,
                detail: e.to_string(),
            }),
        };
        let idle = self.idle_timeout;
        futures::stream::unfold(state, move |state| next(state, idle)).boxed()
    }
}

enum State {
    Start(Box<ConverseStreamFluentBuilder>),
    Reading(Box<Response>),
    Failed(LlmError),
    Finished,
}

/// An SDK error (request or event stream) as the provider error the client sees.
fn provider_error<E: std::error::Error>(e: &E) -> LlmError {
    LlmError::Provider {
        provider: NAME,
        message: DisplayErrorContext(e).to_string(),
    }
}

async fn next(mut state: State, idle: Duration) -> Option<(Result<String, LlmError>, State)> {
    let timeout = || LlmError::IdleTimeout {
        provider: NAME,
        after: idle,
    };
    loop {
        state = match state {
            State::Finished => return None,
            State::Failed(e) => return Some((Err(e), State::Finished)),
            State::Start(request) => match tokio::time::timeout(idle, request.send()).await {
                Err(_) => return Some((Err(timeout()), State::Finished)),
                Ok(Err(e)) => return Some((Err(provider_error(&e)), State::Finished)),
                Ok(Ok(output)) => State::Reading(Box::new(output)),
            },
            State::Reading(mut events) => match tokio::time::timeout(idle, events.stream.recv())
                .await
            {
                Err(_) => return Some((Err(timeout()), State::Finished)),
                Ok(Err(e)) => return Some((Err(provider_error(&e)), State::Finished)),
                Ok(Ok(None)) | Ok(Ok(Some(ConverseStreamOutput::MessageStop(_)))) => return None,
                Ok(Ok(Some(ConverseStreamOutput::ContentBlockDelta(event)))) => match event.delta()
                {
                    Some(ContentBlockDelta::Text(text)) if !text.is_empty() => {
                        return Some((Ok(text.clone()), State::Reading(events)));
                    }
                    _ => State::Reading(events),
                },
                // Start/stop of blocks, metadata (usage) and future event kinds carry no text.
                Ok(Ok(Some(_))) => State::Reading(events),
            },
        }
    }
}
