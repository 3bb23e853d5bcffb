//! The Bedrock provider against a fake Bedrock runtime on 127.0.0.1 that speaks the real wire
//! format (`ConverseStream` over an AWS event stream), through the real AWS SDK client.

use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::config::{Credentials, Region};
use futures::StreamExt;
use hikmah_tests::fake_llm::{BedrockScript, FakeBedrock};
use shared::llm::{BedrockProvider, LlmProvider, Prompt};

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

async fn provider(fake: &FakeBedrock, idle: Duration) -> BedrockProvider {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(fake.endpoint_url())
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .load()
        .await;
    BedrockProvider::new(&sdk, MODEL.into(), idle)
}

fn prompt() -> Prompt {
    Prompt {
        system: "You are a teacher.".into(),
        user: "Hikmah: \"Patience.\"".into(),
        hikmah: "Patience.".into(),
        question: None,
        notes_used: 0,
    }
}

#[tokio::test]
async fn converse_stream_text_deltas_arrive_one_by_one_and_in_order() {
    let texts = ["Patience ", "is ", "light."];
    let fake = FakeBedrock::start(BedrockScript::Stream {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        pause: Duration::from_millis(150),
    })
    .await;
    let provider = provider(&fake, Duration::from_secs(5)).await;
    assert_eq!((provider.name(), provider.model()), ("bedrock", MODEL));

    let mut stream = provider.stream(prompt());
    let mut got = Vec::new();
    while let Some(delta) = stream.next().await {
        got.push((Instant::now(), delta.unwrap()));
    }
    assert_eq!(
        got.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        texts
    );
    assert!(
        got[2].0 - got[0].0 >= Duration::from_millis(200),
        "deltas are yielded as they arrive"
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let (path, body) = &requests[0];
    assert!(
        path.starts_with("/model/") && path.ends_with("/converse-stream"),
        "{path}"
    );
    assert_eq!(body["system"][0]["text"], "You are a teacher.");
    assert_eq!(body["messages"][0]["role"], "user");
    assert_eq!(
        body["messages"][0]["content"][0]["text"],
        "Hikmah: \"Patience.\""
    );
}

#[tokio::test]
async fn an_access_denied_answer_is_an_error_naming_bedrock_and_its_message() {
    let fake = FakeBedrock::start(BedrockScript::Fail {
        status: 403,
        error_type: "AccessDeniedException".into(),
        message: "You don't have access to the model with the specified model ID.".into(),
    })
    .await;
    let provider = provider(&fake, Duration::from_secs(5)).await;
    let results: Vec<_> = provider.stream(prompt()).collect().await;
    assert_eq!(results.len(), 1, "one error ends the stream");
    let err = results.into_iter().next().unwrap().unwrap_err();
    let text = err.to_string();
    assert_eq!(err.code(), "provider_error");
    assert!(
        text.contains("bedrock") && text.contains("don't have access"),
        "{text}"
    );
}

#[tokio::test]
async fn a_silent_bedrock_fails_with_the_idle_timeout() {
    let fake = FakeBedrock::start(BedrockScript::Stream {
        texts: vec!["late".into()],
        pause: Duration::from_secs(3),
    })
    .await;
    let provider = provider(&fake, Duration::from_millis(500)).await;
    let started = Instant::now();
    let results: Vec<_> = provider.stream(prompt()).collect().await;
    let err = results.into_iter().last().unwrap().unwrap_err();
    assert_eq!(err.code(), "provider_timeout", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails at the idle timeout, not later"
    );
}

#[tokio::test]
async fn max_tokens_is_sent_as_the_inference_configuration() {
    let fake = FakeBedrock::start(BedrockScript::Stream {
        texts: vec!["Patience.".to_owned()],
        pause: Duration::from_millis(10),
    })
    .await;
    let provider = provider(&fake, Duration::from_secs(5))
        .await
        .with_max_tokens(77);
    let mut stream = provider.stream(prompt());
    while let Some(delta) = stream.next().await {
        delta.unwrap();
    }
    let (_, body) = &fake.requests()[0];
    assert_eq!(body["inferenceConfig"]["maxTokens"], 77, "{body}");
}
