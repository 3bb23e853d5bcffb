//! A fake OpenAI-compatible LLM: a real HTTP server on 127.0.0.1 that answers
//! `POST /v1/chat/completions` with a scripted Server-Sent Events stream.
//!
//! It is the only faked part of the end-to-end tests. Scripts set the chunks and the pause before
//! each one, and failure modes (an HTTP error with a JSON body, a connection dropped mid-stream);
//! a script can depend on the request's user message ([`Script::by_prompt`]), so one server
//! answers several concurrent prompts (the dedup judge's) each its own way.
//! Every request body is recorded, and every chunk's send time, so tests can check what the
//! prompt contained and that the client saw text before the server had finished.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use axum::Router;
use futures::StreamExt;

/// How the fake answers every request.
#[derive(Debug, Clone)]
pub enum Script {
    /// A 200 event stream: each chunk after its pause, then the ending.
    Stream {
        /// `(pause before sending, delta text)`.
        chunks: Vec<(Duration, String)>,
        /// What happens after the last chunk.
        end: End,
    },
    /// A non-2xx answer with the OpenAI error body `{"error":{"message":..}}`.
    Fail {
        /// HTTP status.
        status: u16,
        /// The error message in the body.
        message: String,
    },
    /// The script of the first rule whose text the request's user message contains, else
    /// `otherwise`.
    ByPrompt {
        /// `(text the user message contains, script)`, tried in order.
        rules: Vec<(String, Script)>,
        /// The script when no rule matches.
        otherwise: Box<Script>,
    },
}

/// How a scripted stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A final chunk with `finish_reason: stop`, then `data: [DONE]`.
    Done,
    /// The connection is dropped without finishing (the provider dies mid-stream).
    Die,
}

impl Script {
    /// `texts` streamed with `pause` before each, then `[DONE]`.
    pub fn chunks(texts: &[&str], pause: Duration) -> Self {
        Self::Stream {
            chunks: texts.iter().map(|t| (pause, (*t).to_owned())).collect(),
            end: End::Done,
        }
    }

    /// Like [`Script::chunks`], but the connection drops after the last chunk.
    pub fn dies_after(texts: &[&str], pause: Duration) -> Self {
        Self::Stream {
            chunks: texts.iter().map(|t| (pause, (*t).to_owned())).collect(),
            end: End::Die,
        }
    }

    /// An HTTP error with an OpenAI-style error body.
    pub fn fail(status: u16, message: &str) -> Self {
        Self::Fail {
            status,
            message: message.to_owned(),
        }
    }

    /// `text` as the whole answer, at once.
    pub fn says(text: &str) -> Self {
        Self::chunks(&[text], Duration::ZERO)
    }

    /// Answers each request with the script of the first rule whose text its user message
    /// contains, else with `otherwise`.
    pub fn by_prompt(rules: &[(&str, Script)], otherwise: Script) -> Self {
        Self::ByPrompt {
            rules: rules
                .iter()
                .map(|(needle, script)| ((*needle).to_owned(), script.clone()))
                .collect(),
            otherwise: Box::new(otherwise),
        }
    }

    /// The script that answers a request whose user message is `user`.
    fn for_prompt(self, user: &str) -> Self {
        match self {
            Self::ByPrompt { rules, otherwise } => rules
                .into_iter()
                .find(|(needle, _)| user.contains(needle.as_str()))
                .map_or(*otherwise, |(_, script)| script)
                .for_prompt(user),
            other => other,
        }
    }
}

#[derive(Default)]
struct Recorded {
    requests: Vec<serde_json::Value>,
    sent: Vec<(Instant, String)>,
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<Script>>,
    recorded: Arc<Mutex<Recorded>>,
}

/// A running fake; the server stops when this is dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    /// Starts a fake on a free port of 127.0.0.1.
    pub async fn start(script: Script) -> Self {
        let shared = Shared {
            script: Arc::new(Mutex::new(script)),
            recorded: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake LLM to 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake LLM address");
        // Like a real provider's server: each SSE chunk goes out at once (no Nagle delay).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// The base URL to put in `OPENAI_BASE_URL` (ends in `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the script for the following requests.
    pub fn set_script(&self, script: Script) {
        *self.shared.script.lock().expect("script lock") = script;
    }

    /// The JSON bodies received so far, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.shared
            .recorded
            .lock()
            .expect("record lock")
            .requests
            .clone()
    }

    /// The user message (`messages[role=user].content`) of every request so far.
    pub fn user_prompts(&self) -> Vec<String> {
        self.requests().iter().filter_map(user_message).collect()
    }

    /// When each delta chunk was handed to the connection, with its text.
    pub fn sent_chunks(&self) -> Vec<(Instant, String)> {
        self.shared
            .recorded
            .lock()
            .expect("record lock")
            .sent
            .clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn completions(State(shared): State<Shared>, body: Bytes) -> Response {
    let request: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let streaming = request["stream"] == serde_json::json!(true);
    let user = user_message(&request).unwrap_or_default();
    shared
        .recorded
        .lock()
        .expect("record lock")
        .requests
        .push(request);
    let script = shared
        .script
        .lock()
        .expect("script lock")
        .clone()
        .for_prompt(&user);
    if !streaming {
        return (
            StatusCode::BAD_REQUEST,
            "this fake only speaks stream: true",
        )
            .into_response();
    }
    match script {
        Script::Fail { status, message } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({"error": {"message": message, "type": "fake_error", "code": null}});
            (status, axum::Json(body)).into_response()
        }
        Script::ByPrompt { .. } => unreachable!("for_prompt resolves every ByPrompt"),
        Script::Stream { chunks, end } => {
            let recorded = shared.recorded.clone();
            let role = futures::stream::once(async {
                Ok::<_, std::io::Error>(Bytes::from(chunk_event(
                    serde_json::json!({"role": "assistant", "content": ""}),
                    None,
                )))
            });
            let deltas = futures::stream::iter(chunks).then(move |(pause, text)| {
                let recorded = recorded.clone();
                async move {
                    tokio::time::sleep(pause).await;
                    recorded
                        .lock()
                        .expect("record lock")
                        .sent
                        .push((Instant::now(), text.clone()));
                    // CRLF line ends here, LF elsewhere: the client must accept both.
                    let event = chunk_event(serde_json::json!({"content": text}), None)
                        .replace('\n', "\r\n");
                    Ok::<_, std::io::Error>(Bytes::from(event))
                }
            });
            let ending = futures::stream::once(async move {
                match end {
                    End::Done => {
                        let last = chunk_event(serde_json::json!({}), Some("stop"));
                        Ok(Bytes::from(format!(
                            ": finishing\n\n{last}data: [DONE]\n\n"
                        )))
                    }
                    End::Die => {
                        // Let the last chunk reach the wire first: the connection dies after it.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "fake LLM died",
                        ))
                    }
                }
            });
            let body = Body::from_stream(role.chain(deltas).chain(ending));
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }
    }
}

/// The request's user message (`messages[role=user].content`).
fn user_message(request: &serde_json::Value) -> Option<String> {
    request["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "user")?["content"]
        .as_str()
        .map(str::to_owned)
}

fn chunk_event(delta: serde_json::Value, finish_reason: Option<&str>) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    format!("data: {chunk}\n\n")
}

/// A fake Amazon Bedrock runtime: `POST /model/{id}/converse-stream` answered with an AWS
/// event stream (`application/vnd.amazon.eventstream`) of `ConverseStream` events, or an error.
/// Point an SDK client at it with `endpoint_url`.
pub struct FakeBedrock {
    addr: SocketAddr,
    recorded: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    server: tokio::task::JoinHandle<()>,
}

/// How the fake Bedrock answers.
#[derive(Debug, Clone)]
pub enum BedrockScript {
    /// `messageStart`, one `contentBlockDelta` per text (after `pause`), `contentBlockStop`,
    /// `messageStop`, `metadata`.
    Stream {
        /// The text deltas.
        texts: Vec<String>,
        /// Pause before each delta.
        pause: Duration,
    },
    /// An error answer: status, `x-amzn-errortype` and message.
    Fail {
        /// HTTP status.
        status: u16,
        /// The error type (`AccessDeniedException`, `ValidationException`, ...).
        error_type: String,
        /// The message.
        message: String,
    },
}

impl FakeBedrock {
    /// Starts the fake on a free port of 127.0.0.1.
    pub async fn start(script: BedrockScript) -> Self {
        let recorded: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let rec = recorded.clone();
        let app = Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let rec = rec.clone();
            let script = script.clone();
            async move {
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                rec.lock()
                    .expect("record lock")
                    .push((uri.path().to_owned(), json));
                bedrock_answer(script)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Bedrock");
        let addr = listener.local_addr().expect("fake Bedrock address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            recorded,
            server,
        }
    }

    /// The endpoint URL for the SDK.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(path, JSON body)` of every request so far.
    pub fn requests(&self) -> Vec<(String, serde_json::Value)> {
        self.recorded.lock().expect("record lock").clone()
    }
}

impl Drop for FakeBedrock {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn bedrock_answer(script: BedrockScript) -> Response {
    match script {
        BedrockScript::Fail {
            status,
            error_type,
            message,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({ "message": message }).to_string();
            (
                status,
                [
                    ("x-amzn-errortype", error_type),
                    ("content-type", "application/json".into()),
                ],
                body,
            )
                .into_response()
        }
        BedrockScript::Stream { texts, pause } => {
            let mut events = vec![(
                Duration::ZERO,
                "messageStart",
                serde_json::json!({"role": "assistant"}),
            )];
            events.extend(texts.into_iter().map(|t| {
                (
                    pause,
                    "contentBlockDelta",
                    serde_json::json!({"contentBlockIndex": 0, "delta": {"text": t}}),
                )
            }));
            events.push((
                Duration::ZERO,
                "contentBlockStop",
                serde_json::json!({"contentBlockIndex": 0}),
            ));
            events.push((
                Duration::ZERO,
                "messageStop",
                serde_json::json!({"stopReason": "end_turn"}),
            ));
            events.push((
                Duration::ZERO,
                "metadata",
                serde_json::json!({"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 1}}),
            ));
            let frames = futures::stream::iter(events).then(|(pause, kind, payload)| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(Bytes::from(event_frame(kind, &payload)))
            });
            (
                [(header::CONTENT_TYPE, "application/vnd.amazon.eventstream")],
                Body::from_stream(frames),
            )
                .into_response()
        }
    }
}

fn event_frame(kind: &'static str, payload: &serde_json::Value) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let message = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(":event-type", HeaderValue::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
        .expect("encode an event-stream frame");
    out
}
