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
    db: TestDb,
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
        db,
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

/// A Function URL (v2) event signed by the IAM user `iam_user` (AWS_IAM auth).
fn function_url_iam_event(iam_user: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "abc.lambda-url.us-east-1.on.aws", "content-type": "application/json"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "authorizer": {"iam": {
                "accessKey": "AKIAEXAMPLE", "accountId": "123456789012", "callerId": iam_user,
                "userArn": format!("arn:aws:iam::123456789012:user/{iam_user}"), "userId": iam_user
            }},
            "domainName": "abc.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abc",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "test"},
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 1767225600000_i64
        },
        "body": body.map(|b| b.to_string()),
        "isBase64Encoded": false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_routes_serve_the_iam_caller_only_and_metrics_reach_the_log() {
    use memory_consumer::{handle_batch, Consumer};
    use shared::memory::dedup::DedupPolicy;

    let setup = setup().await;
    let invoke = |event: Value| {
        let url = format!(
            "{}/2015-03-31/functions/elaborate/invocations",
            setup.watch.base_url()
        );
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .body(event.to_string())
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let hikmah = json!({"hikmah": "Patience is the key to relief."});
    let (status, text) = invoke(function_url_iam_event(
        "AIDAALICE",
        "POST",
        "/hikmah/elaborate/stream",
        Some(hikmah),
    ))
    .await;
    assert_eq!(status, 200, "{text}\n{}", setup.watch.log());
    assert!(text.contains("event: done"), "{text}");

    // The consumer applies the queued event (in process, with the real model).
    let messages = setup
        .sqs
        .receive_message()
        .queue_url(&setup.queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    let records: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            (
                m.message_id().unwrap().to_owned(),
                m.body().unwrap().to_owned(),
            )
        })
        .collect();
    let batch = serde_json::from_str(&hikmah_tests::sqs::sqs_event_json(
        &records,
        hikmah_tests::sqs::STANDARD_ARN,
    ))
    .unwrap();
    let consumer = Consumer::postgres(
        setup.db.db().await,
        hikmah_tests::model::embedder(),
        DedupPolicy::default(),
    );
    assert!(handle_batch(&consumer, batch).await.all_applied());

    let (status, text) = invoke(function_url_iam_event(
        "AIDAALICE",
        "GET",
        "/hikmah/memory",
        None,
    ))
    .await;
    assert_eq!(status, 200, "{text}");
    let page: Value = serde_json::from_str(&text).unwrap();
    let notes = page["notes"].as_array().unwrap().clone();
    assert!(!notes.is_empty(), "{page}");
    let first = notes[0]["id"].as_i64().unwrap();

    // Another IAM caller sees nothing and cannot delete alice's note.
    let (_, text) = invoke(function_url_iam_event(
        "AIDABOB",
        "GET",
        "/hikmah/memory",
        None,
    ))
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["notes"],
        json!([])
    );
    let (status, _) = invoke(function_url_iam_event(
        "AIDABOB",
        "DELETE",
        &format!("/hikmah/memory/{first}"),
        None,
    ))
    .await;
    assert_eq!(status, 404);

    let (status, text) = invoke(function_url_iam_event(
        "AIDAALICE",
        "GET",
        "/hikmah/memory/export",
        None,
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(text.lines().count(), notes.len());
    let (status, text) = invoke(function_url_iam_event(
        "AIDAALICE",
        "DELETE",
        "/hikmah/memory",
        None,
    ))
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["deleted"]["notes"],
        notes.len()
    );

    // The function's log holds its EMF lines: the stream's and the 404's.
    let log = setup.watch.log();
    let emf: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v["_aws"]["CloudWatchMetrics"].is_array())
        .collect();
    assert!(
        emf.iter()
            .any(|v| v["service"] == "elaborate" && v["FirstDeltaMs"].is_number()),
        "no stream metrics in the function's log:\n{log}"
    );
    assert!(
        emf.iter().any(|v| v["RejectedNotFound"] == 1.0),
        "no rejection metrics in the function's log:\n{log}"
    );
}
