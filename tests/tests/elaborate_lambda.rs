//! The `elaborate` binary through the Lambda runtime protocol: served by `cargo lambda watch`,
//! with a response-streaming invocation for a Function URL (v2) request and for an API Gateway
//! REST (v1) event. The stream must arrive incrementally: the client's chunk arrival times follow
//! the provider's pauses instead of arriving all at once at the end.
//!
//! Needs cargo-lambda, PostgreSQL and moto: run `scripts/test.sh`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hikmah_tests::fake_llm::{FakeLlm, Script};
use hikmah_tests::lambda::LambdaWatch;
use hikmah_tests::pg::TestDb;
use serde_json::{json, Value};
use shared::events::ElaborationCompleted;
use shared::llm::sse::{SseItem, SseParser};

const PAUSE: Duration = Duration::from_millis(400);
const CHUNKS: [&str; 4] = ["Patience ", "is ", "quiet ", "strength."];

struct Setup {
    _db: TestDb,
    fake: FakeLlm,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    watch: LambdaWatch,
}

async fn setup() -> Setup {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SQS").unwrap_or_else(|_| {
        panic!("AWS_ENDPOINT_URL_SQS is not set: these tests need moto. Run scripts/test.sh.")
    });
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let name = format!("elaborate-lambda-{}", uuid::Uuid::new_v4().simple());
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a queue on moto at {endpoint}: {}. Run scripts/test.sh.",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })
        .queue_url()
        .unwrap()
        .to_owned();
    let db = TestDb::new().await;
    let fake = FakeLlm::start(Script::chunks(&CHUNKS, PAUSE)).await;

    let mut env: Vec<(String, String)> = db.env_pairs();
    for (k, v) in [
        ("MEMORY_QUEUE_URL", queue_url.clone()),
        ("LLM_PROVIDER", "openai".into()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("LLM_MODEL", "fake-model".into()),
        ("TRUST_BODY_USER_ID", "true".into()),
        ("AWS_ENDPOINT_URL_SQS", endpoint),
    ] {
        env.push((k.into(), v));
    }
    for k in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.into(), v));
        }
    }
    let watch =
        tokio::task::spawn_blocking(move || LambdaWatch::start("elaborate", "elaborate", &env))
            .await
            .unwrap();
    Setup {
        _db: db,
        fake,
        sqs,
        queue_url,
        watch,
    }
}

/// Reads the streamed response, timing each `delta`/`done`/`error` event's arrival.
async fn read_events(
    response: reqwest::Response,
    watch: &LambdaWatch,
) -> Vec<(Instant, String, Value)> {
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        panic!(
            "expected 200, got {status}: {body}\n--- emulator log ---\n{}",
            watch.log()
        );
    }
    assert_eq!(content_type.unwrap(), "text/event-stream; charset=utf-8");
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next())
        .await
        .expect("stream stalled")
    {
        let chunk = chunk
            .unwrap_or_else(|e| panic!("stream broke: {e}\n--- emulator log ---\n{}", watch.log()));
        let at = Instant::now();
        for item in parser.push(&chunk).unwrap() {
            if let SseItem::Event(e) = item {
                out.push((
                    at,
                    e.event.unwrap_or_default(),
                    serde_json::from_str(&e.data).unwrap(),
                ));
            }
        }
    }
    out
}

/// The stream is complete, and its deltas arrived spread out like the provider's chunks.
async fn assert_incremental_and_published(
    setup: &Setup,
    events: &[(Instant, String, Value)],
    user: &str,
) {
    let deltas: Vec<&(Instant, String, Value)> =
        events.iter().filter(|(_, n, _)| n == "delta").collect();
    let text: String = deltas
        .iter()
        .map(|(_, _, v)| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, CHUNKS.concat());
    assert_eq!(events.last().unwrap().1, "done", "{events:?}");

    let sent = setup.fake.sent_chunks();
    assert!(
        deltas[0].0 < sent.last().unwrap().0,
        "the first delta arrived before the provider's last chunk was sent"
    );
    // Consecutive arrivals keep (most of) the provider's pause between chunks: nothing buffered.
    for pair in deltas.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= PAUSE / 2,
            "deltas bunched together ({gap:?} apart): the stream was buffered"
        );
    }

    let out = setup
        .sqs
        .receive_message()
        .queue_url(&setup.queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let messages = out.messages.unwrap_or_default();
    assert_eq!(messages.len(), 1);
    let event = ElaborationCompleted::parse(messages[0].body().unwrap()).unwrap();
    assert_eq!(event.user_id.as_str(), user);
    assert_eq!(event.elaboration, CHUNKS.concat());

    // The line logged by the elaboration's own task still carries the invocation's requestId.
    let log = setup.watch.log();
    let published = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|l| {
            l["message"] == "elaboration published" && l["event_id"] == event.event_id.to_string()
        })
        .unwrap_or_else(|| panic!("no published line for {} in:\n{log}", event.event_id));
    let invoke = &published["spans"][0];
    assert_eq!(invoke["name"], "Lambda runtime invoke", "{published}");
    assert!(
        invoke["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{published}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_url_request_streams_sse_incrementally_through_the_lambda_runtime() {
    let setup = setup().await;
    let url = format!(
        "{}/lambda-url/elaborate/hikmah/elaborate/stream",
        setup.watch.base_url()
    );
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(
            json!({"user_id": "furl-user", "hikmah": "Patience is the key to relief."}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let events = read_events(response, &setup.watch).await;
    assert_incremental_and_published(&setup, &events, "furl-user").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_gateway_rest_event_with_a_stage_and_authorizer_claims_streams_sse_incrementally() {
    let setup = setup().await;
    // As API Gateway REST sends it with response streaming: the stage prefixes the path, and the
    // Cognito authorizer's `sub` is the user (no user_id in the body).
    let event = json!({
        "resource": "/hikmah/elaborate/stream",
        "path": "/hikmah/elaborate/stream",
        "httpMethod": "POST",
        "headers": {"content-type": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"content-type": ["application/json"]},
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012",
            "resourceId": "r1",
            "stage": "Prod",
            "requestId": "req-rest-1",
            "identity": {"sourceIp": "127.0.0.1"},
            "resourcePath": "/hikmah/elaborate/stream",
            "httpMethod": "POST",
            "path": "/Prod/hikmah/elaborate/stream",
            "authorizer": {"claims": {"sub": "rest-user"}}
        },
        "body": json!({"hikmah": "Patience is the key to relief."}).to_string(),
        "isBase64Encoded": false
    });
    let url = format!(
        "{}/2015-03-31/functions/elaborate/invocations",
        setup.watch.base_url()
    );
    let response = reqwest::Client::new()
        .post(url)
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    let events = read_events(response, &setup.watch).await;
    assert_incremental_and_published(&setup, &events, "rest-user").await;
}
