//! Any OpenAI-compatible `/v1/chat/completions` endpoint with `stream: true` (OpenAI, Ollama,
//! vLLM, LM Studio, ...), read as Server-Sent Events.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use serde::Deserialize;

use super::sse::{SseItem, SseParser};
use super::{LlmError, LlmProvider, Prompt, TextStream};
use crate::config::{LlmConfig, Secret};
use crate::error::chain;

const NAME: &str = "openai";
/// Longest provider error message carried into our own errors.
const MAX_ERROR_MESSAGE: usize = 500;

/// Streams chat completions from an OpenAI-compatible server.
#[derive(Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    url: String,
    api_key: Option<Secret>,
    model: String,
    idle_timeout: Duration,
    max_tokens: Option<u32>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Builds the provider (and its connection pool) from an [`LlmConfig::OpenAi`] section.
    pub fn new(cfg: &LlmConfig) -> Result<Self, LlmError> {
        match cfg {
            LlmConfig::OpenAi {
                base_url,
                api_key,
                model,
                connect_timeout,
                idle_timeout,
            } => Self::with_settings(
                base_url,
                api_key.clone(),
                model,
                *connect_timeout,
                *idle_timeout,
            ),
            other => Err(LlmError::Setup {
                provider: NAME,
                detail: format!("LLM_PROVIDER is {other:?}, not openai"),
            }),
        }
    }

    /// Builds the provider from explicit settings; `base_url` ends in `/v1`.
    pub fn with_settings(
        base_url: &str,
        api_key: Option<Secret>,
        model: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, LlmError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            // Deltas are tiny; Nagle would hold them back.
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LlmError::Setup {
                provider: NAME,
                detail: chain(&e),
            })?;
        Ok(Self {
            client,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            model: model.to_owned(),
            idle_timeout,
            max_tokens: None,
        })
    }

    /// Caps each answer at `max_tokens` (sent as `max_tokens`, which OpenAI-compatible servers
    /// read); without it the server's own default applies.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
}

impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self, prompt: Prompt) -> TextStream {
        let mut body = serde_json::json!({
            "model": self.model,
            "stream": true,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
        });
        if let Some(max_tokens) = self.max_tokens {
            body["max_tokens"] = max_tokens.into();
        }
        let mut request = self
            .client
            .post(&self.url)
            .header("accept", "text/event-stream")
            .json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let idle = self.idle_timeout;
        futures::stream::unfold(State::Start(Box::new(request)), move |state| {
            next(state, idle)
        })
        .boxed()
    }
}

enum State {
    Start(Box<reqwest::RequestBuilder>),
    Reading(Box<Reader>),
    Finished,
}

struct Reader {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    ready: VecDeque<String>,
    /// `data: [DONE]` was seen: hand out what is ready, then end.
    done: bool,
    /// A choice carried a `finish_reason`: the answer is complete even without `[DONE]`.
    finished: bool,
}

async fn next(mut state: State, idle: Duration) -> Option<(Result<String, LlmError>, State)> {
    loop {
        state = match state {
            State::Finished => return None,
            State::Start(request) => match start(*request, idle).await {
                Ok(reader) => State::Reading(Box::new(reader)),
                Err(e) => return Some((Err(e), State::Finished)),
            },
            State::Reading(mut r) => {
                if let Some(text) = r.ready.pop_front() {
                    return Some((Ok(text), State::Reading(r)));
                }
                if r.done {
                    return None;
                }
                match tokio::time::timeout(idle, r.body.next()).await {
                    Err(_) => {
                        return Some((
                            Err(LlmError::IdleTimeout {
                                provider: NAME,
                                after: idle,
                            }),
                            State::Finished,
                        ))
                    }
                    Ok(None) if r.finished => return None,
                    Ok(None) => {
                        let detail = "the stream ended before `data: [DONE]`".to_owned();
                        return Some((
                            Err(LlmError::Protocol {
                                provider: NAME,
                                detail,
                            }),
                            State::Finished,
                        ));
                    }
                    Ok(Some(Err(e))) => {
                        let err = LlmError::Transport {
                            provider: NAME,
                            detail: chain(&e),
                        };
                        return Some((Err(err), State::Finished));
                    }
                    Ok(Some(Ok(bytes))) => match r.absorb(&bytes) {
                        Ok(()) => State::Reading(r),
                        Err(e) => return Some((Err(e), State::Finished)),
                    },
                }
            }
        }
    }
}

async fn start(request: reqwest::RequestBuilder, idle: Duration) -> Result<Reader, LlmError> {
    let response = match tokio::time::timeout(idle, request.send()).await {
        Err(_) => {
            return Err(LlmError::IdleTimeout {
                provider: NAME,
                after: idle,
            })
        }
        Ok(Err(e)) => {
            return Err(LlmError::Transport {
                provider: NAME,
                detail: chain(&e),
            })
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if !status.is_success() {
        let body = tokio::time::timeout(idle, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Err(LlmError::Status {
            provider: NAME,
            status: status.as_u16(),
            message: error_message(&body, status),
        });
    }
    Ok(Reader {
        body: response.bytes_stream().boxed(),
        parser: SseParser::new(),
        ready: VecDeque::new(),
        done: false,
        finished: false,
    })
}

impl Reader {
    /// Parses a network chunk, queueing the text deltas it completes.
    fn absorb(&mut self, bytes: &[u8]) -> Result<(), LlmError> {
        let items = self.parser.push(bytes).map_err(|e| LlmError::Protocol {
            provider: NAME,
            detail: e.to_string(),
        })?;
        for item in items {
            let SseItem::Event(event) = item else {
                continue;
            };
            if self.done {
                break;
            }
            let data = event.data.trim();
            if data == "[DONE]" {
                self.done = true;
                continue;
            }
            if data.is_empty() {
                continue;
            }
            let chunk: Chunk = serde_json::from_str(data).map_err(|e| LlmError::Protocol {
                provider: NAME,
                detail: format!(
                    "chunk is not a chat.completion.chunk ({e}): {}",
                    truncate(data)
                ),
            })?;
            if let Some(error) = chunk.error {
                return Err(LlmError::Provider {
                    provider: NAME,
                    message: message_of(&error),
                });
            }
            for choice in chunk.choices {
                if let Some(text) = choice
                    .delta
                    .and_then(|d| d.content)
                    .filter(|t| !t.is_empty())
                {
                    self.ready.push_back(text);
                }
                if choice.finish_reason.is_some() {
                    self.finished = true;
                }
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

/// The provider's own message from an error body (`{"error":{"message":..}}`, `{"error":".."}`,
/// `{"message":..}`), else the body itself, else the status text.
fn error_message(body: &str, status: reqwest::StatusCode) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .map(|v| match v.get("error") {
            Some(e) => message_of(e),
            None => message_of(&v),
        });
    let message = from_json.unwrap_or_else(|| body.trim().to_owned());
    if message.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        truncate(&message)
    }
}

fn message_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => match other.get("message").and_then(|m| m.as_str()) {
            Some(m) => m.to_owned(),
            None => other.to_string(),
        },
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> Reader {
        Reader {
            body: futures::stream::empty().boxed(),
            parser: SseParser::new(),
            ready: VecDeque::new(),
            done: false,
            finished: false,
        }
    }

    #[test]
    fn deltas_are_taken_from_content_and_role_only_chunks_are_skipped(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut r = reader();
        r.absorb(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n")?;
        r.absorb(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")?;
        assert_eq!(r.ready, vec!["Hel".to_owned(), "lo".to_owned()]);
        assert!(r.done && r.finished);
        Ok(())
    }

    #[test]
    fn an_error_object_in_the_stream_is_a_provider_error() {
        let mut r = reader();
        let err = r
            .absorb(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n")
            .unwrap_err();
        assert!(err.to_string().contains("overloaded"), "{err}");
    }

    #[test]
    fn error_messages_come_from_the_common_error_shapes() {
        let s = reqwest::StatusCode::UNAUTHORIZED;
        assert_eq!(
            error_message(r#"{"error":{"message":"bad key","type":"x"}}"#, s),
            "bad key"
        );
        assert_eq!(
            error_message(r#"{"error":"model not found"}"#, s),
            "model not found"
        );
        assert_eq!(error_message("plain text", s), "plain text");
        assert_eq!(error_message("", s), "Unauthorized");
    }
}
