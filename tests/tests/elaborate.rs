//! The elaborate handler end to end, in process: the real router served on 127.0.0.1, a real
//! HTTP client reading the event stream, a fake OpenAI-compatible provider (the only fake),
//! real PostgreSQL for the user's notes and moto for SQS.
//!
//! Needs `DATABASE_URL` and `AWS_ENDPOINT_URL_SQS` (moto): run `scripts/test.sh`, or
//! `source /tmp/hikmah-dev.env` with moto started as that file says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use elaborate::{router, AppState};
use futures::StreamExt;
use hikmah_tests::fake_llm::{FakeLlm, Script};
use hikmah_tests::pg::TestDb;
use serde_json::{json, Value};
use shared::config::{DbConfig, ElaborateConfig, Env, QueueConfig};
use shared::db::Db;
use shared::elaboration::{Elaborator, NotesSource, PgNotes};
use shared::events::ElaborationCompleted;
use shared::llm::sse::{SseItem, SseParser};
use shared::llm::OpenAiProvider;
use shared::publish::SqsPublisher;

const ENDPOINT: &str = "/hikmah/elaborate/stream";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

async fn sqs() -> aws_sdk_sqs::Client {
    assert!(
        std::env::var("AWS_ENDPOINT_URL_SQS").is_ok(),
        "AWS_ENDPOINT_URL_SQS is not set: these tests need moto. Run scripts/test.sh (it provisions \
         everything), or `source /tmp/hikmah-dev.env` and start moto as that file says."
    );
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_sqs::Client::new(&sdk)
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, fifo: bool) -> String {
    let mut name = format!("elaborate-test-{}", uuid::Uuid::new_v4().simple());
    let mut request = sqs.create_queue();
    if fifo {
        name.push_str(".fifo");
        request = request.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let out = request.queue_name(&name).send().await.unwrap_or_else(|e| {
        panic!(
            "cannot create an SQS queue on moto ({}): {}. Run scripts/test.sh, or start moto as \
             /tmp/hikmah-dev.env says.",
            std::env::var("AWS_ENDPOINT_URL_SQS").unwrap_or_default(),
            aws_sdk_sqs::error::DisplayErrorContext(&e)
        )
    });
    out.queue_url().expect("queue url").to_owned()
}

/// Every message on the queue (receives until two empty polls in a row).
async fn drain(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive from moto");
        let got = out.messages.unwrap_or_default();
        if got.is_empty() {
            empty += 1;
        } else {
            empty = 0;
            all.extend(got);
        }
    }
    all
}

struct Harness {
    base: String,
    fake: FakeLlm,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    db: Arc<TestDb>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Options {
    script: Script,
    fifo: bool,
    trust_body_user_id: bool,
    keepalive: Duration,
    context_notes: usize,
    /// Publish to a queue that does not exist.
    missing_queue: bool,
    /// Read notes from a database that is down instead of the test database.
    dead_database: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            script: Script::chunks(
                &["Patience ", "opens ", "doors."],
                Duration::from_millis(20),
            ),
            fifo: false,
            trust_body_user_id: true,
            keepalive: Duration::from_secs(15),
            context_notes: 5,
            missing_queue: false,
            dead_database: false,
        }
    }
}

async fn harness(opts: Options) -> Harness {
    let sqs = sqs().await;
    let mut queue_url = create_queue(&sqs, opts.fifo).await;
    if opts.missing_queue {
        queue_url = format!("{queue_url}-missing");
    }
    let db = Arc::new(TestDb::new().await);
    let notes: Arc<dyn NotesSource> = if opts.dead_database {
        // A port nothing listens on, with short timeouts: the notes read fails fast.
        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:9/postgres"),
            ("DB_CONNECT_TIMEOUT_MS", "300"),
            ("DB_POOL_WAIT_TIMEOUT_MS", "300"),
        ]);
        let cfg = DbConfig::from_env(&env, 1).unwrap();
        Arc::new(PgNotes::new(Db::connect_lazy(&cfg).await.unwrap()))
    } else {
        Arc::new(PgNotes::new(db.db().await))
    };
    let fake = FakeLlm::start(opts.script).await;
    let provider = OpenAiProvider::with_settings(
        &fake.base_url(),
        None,
        "fake-model",
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    let publisher = SqsPublisher::new(
        sqs.clone(),
        QueueConfig {
            url: queue_url.clone(),
        },
    );
    let elaborator = Elaborator::new(
        Arc::new(provider),
        notes,
        Arc::new(publisher),
        opts.context_notes,
    );
    let config = ElaborateConfig {
        memory_context_notes: opts.context_notes,
        trust_body_user_id: opts.trust_body_user_id,
        keepalive: opts.keepalive,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        elaborate::serve_http(listener, AppState::new(elaborator, config))
            .await
            .unwrap();
    });
    Harness {
        base,
        fake,
        sqs,
        queue_url,
        db,
        server,
    }
}

impl Harness {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn messages(&self) -> Vec<aws_sdk_sqs::types::Message> {
        drain(&self.sqs, &self.queue_url).await
    }
}

/// One received event-stream item and when it arrived.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    item: SseItem,
}

impl Received {
    fn event(&self) -> Option<(&str, Value)> {
        match &self.item {
            SseItem::Event(e) => Some((
                e.event.as_deref().unwrap_or("message"),
                serde_json::from_str(&e.data).unwrap(),
            )),
            SseItem::Comment(_) => None,
        }
    }
}

/// Reads the whole event stream, timing each item's arrival.
async fn read_sse(response: reqwest::Response) -> Vec<Received> {
    assert_eq!(
        response.status(),
        200,
        "expected a stream, got {}",
        response.status()
    );
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("stream stalled")
    {
        let chunk = chunk.expect("stream broke");
        let at = Instant::now();
        out.extend(
            parser
                .push(&chunk)
                .unwrap()
                .into_iter()
                .map(|item| Received { at, item }),
        );
    }
    out
}

fn events(received: &[Received]) -> Vec<(String, Value)> {
    received
        .iter()
        .filter_map(|r| r.event().map(|(n, v)| (n.to_owned(), v)))
        .collect()
}

fn deltas_text(received: &[Received]) -> String {
    events(received)
        .iter()
        .filter(|(n, _)| n == "delta")
        .map(|(_, v)| v["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn error_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "errors before streaming are JSON"
    );
    (status, response.json().await.unwrap())
}

fn request(user: &str) -> Value {
    json!({"user_id": user, "hikmah": "Patience is the key to relief.", "question": "How do I practise it?"})
}

// ---------------------------------------------------------------------------------------------
// Streaming and hand-off
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn deltas_stream_before_the_provider_finishes_then_done_and_exactly_one_contract_message_is_queued(
) {
    let chunks = ["Patience ", "is ", "light ", "in ", "darkness."];
    let h = harness(Options {
        script: Script::chunks(&chunks, Duration::from_millis(300)),
        ..Default::default()
    })
    .await;

    let received = read_sse(h.post(ENDPOINT, request("u-stream")).await).await;

    let sent = h.fake.sent_chunks();
    let last_sent = sent.last().unwrap().0;
    let first_delta = received
        .iter()
        .find(|r| matches!(r.event(), Some(("delta", _))))
        .unwrap();
    assert!(
        first_delta.at < last_sent,
        "the first delta must reach the client before the provider's last chunk"
    );
    assert_eq!(deltas_text(&received), chunks.concat());
    let evs = events(&received);
    assert_eq!(
        evs.iter().filter(|(n, _)| n == "delta").count(),
        chunks.len(),
        "one delta per provider chunk"
    );
    let (name, done) = evs.last().unwrap();
    assert_eq!(name, "done");
    assert_eq!(done["chars"], chunks.concat().chars().count());

    let messages = h.messages().await;
    assert_eq!(messages.len(), 1, "exactly one message on the queue");
    let body = messages[0].body().unwrap();
    let raw: Value = serde_json::from_str(body).unwrap();
    let mut keys: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "elaboration",
            "event_id",
            "hikmah",
            "model",
            "question",
            "user_id",
            "version"
        ]
    );
    let event = ElaborationCompleted::parse(body).unwrap();
    assert_eq!(
        event.event_id.to_string(),
        done["event_id"].as_str().unwrap()
    );
    assert_eq!(event.event_id.as_uuid().get_version_num(), 7);
    assert_eq!(event.user_id.as_str(), "u-stream");
    assert_eq!(event.hikmah, "Patience is the key to relief.");
    assert_eq!(event.question.as_deref(), Some("How do I practise it?"));
    assert_eq!(event.elaboration, chunks.concat());
    assert_eq!(event.model, "fake-model");
}

#[tokio::test]
async fn a_fifo_queue_gets_the_user_as_group_and_the_event_id_as_deduplication_id() {
    let h = harness(Options {
        fifo: true,
        ..Default::default()
    })
    .await;
    let received = read_sse(h.post(ENDPOINT, request("u-fifo")).await).await;
    let (_, done) = events(&received).pop().unwrap();
    let messages = h.messages().await;
    assert_eq!(messages.len(), 1);
    let attrs = messages[0].attributes().unwrap();
    assert_eq!(attrs[&MessageSystemAttributeName::MessageGroupId], "u-fifo");
    assert_eq!(
        attrs[&MessageSystemAttributeName::MessageDeduplicationId],
        done["event_id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn the_route_also_answers_under_an_api_gateway_stage_prefix() {
    let h = harness(Options::default()).await;
    let received = read_sse(
        h.post(&format!("/Prod{ENDPOINT}"), request("u-stage"))
            .await,
    )
    .await;
    assert_eq!(events(&received).last().unwrap().0, "done");
}

#[tokio::test]
async fn silence_from_the_provider_is_filled_with_keep_alive_comments() {
    let script = Script::Stream {
        chunks: vec![(Duration::from_millis(2500), "late".into())],
        end: hikmah_tests::fake_llm::End::Done,
    };
    let h = harness(Options {
        script,
        keepalive: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let received = read_sse(h.post(ENDPOINT, request("u-slow")).await).await;
    let keepalives_before_text = received
        .iter()
        .take_while(|r| r.event().is_none())
        .filter(|r| r.item == SseItem::Comment("keep-alive".into()))
        .count();
    assert!(
        keepalives_before_text >= 2,
        "expected keep-alives during 2.5 s of silence: {received:?}"
    );
    assert_eq!(deltas_text(&received), "late");
    assert_eq!(events(&received).last().unwrap().0, "done");
}

#[tokio::test]
async fn a_client_that_disconnects_stops_neither_generation_nor_the_publish() {
    let chunks = ["one ", "two ", "three ", "four."];
    let h = harness(Options {
        script: Script::chunks(&chunks, Duration::from_millis(200)),
        ..Default::default()
    })
    .await;
    let response = h.post(ENDPOINT, request("u-gone")).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: delta"));
    drop(body);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut messages = Vec::new();
    while messages.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        messages = h.messages().await;
    }
    assert_eq!(
        messages.len(),
        1,
        "the elaboration is published although the client left"
    );
    let event = ElaborationCompleted::parse(messages[0].body().unwrap()).unwrap();
    assert_eq!(
        event.elaboration,
        chunks.concat(),
        "generation ran to the end"
    );
}

#[tokio::test]
async fn five_concurrent_requests_for_five_users_all_end_with_done_and_five_messages_are_published()
{
    let h = harness(Options {
        script: Script::chunks(&["a ", "b ", "c."], Duration::from_millis(100)),
        ..Default::default()
    })
    .await;
    let users: Vec<String> = (1..=5).map(|i| format!("user-{i}")).collect();
    let streams = futures::future::join_all(
        users
            .iter()
            .map(|u| async { read_sse(h.post(ENDPOINT, request(u)).await).await }),
    )
    .await;
    for received in &streams {
        assert_eq!(events(received).last().unwrap().0, "done");
    }
    let mut published: Vec<String> = h
        .messages()
        .await
        .iter()
        .map(|m| {
            ElaborationCompleted::parse(m.body().unwrap())
                .unwrap()
                .user_id
                .as_str()
                .to_owned()
        })
        .collect();
    published.sort();
    assert_eq!(published, users);
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_provider_dying_mid_stream_ends_the_stream_with_an_error_event_and_publishes_nothing() {
    let h = harness(Options {
        script: Script::dies_after(&["half ", "an "], Duration::from_millis(50)),
        ..Default::default()
    })
    .await;
    let received = read_sse(h.post(ENDPOINT, request("u-dies")).await).await;
    let evs = events(&received);
    assert_eq!(deltas_text(&received), "half an ");
    let (name, error) = evs.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(error["code"], "provider_error");
    assert!(
        error["message"].as_str().unwrap().contains("openai"),
        "{error}"
    );
    assert!(!evs.iter().any(|(n, _)| n == "done"));
    assert!(
        h.messages().await.is_empty(),
        "nothing is published for a failed generation"
    );
}

#[tokio::test]
async fn a_provider_answering_401_or_500_is_a_json_error_naming_the_provider_and_its_message() {
    for (status, message) in [
        (401, "Incorrect API key provided"),
        (500, "The server had an error"),
    ] {
        let h = harness(Options {
            script: Script::fail(status, message),
            ..Default::default()
        })
        .await;
        let (code, body) = error_body(h.post(ENDPOINT, request("u-fail")).await).await;
        assert_eq!(code, 502, "{body}");
        assert_eq!(body["error"]["code"], "provider_error");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(
            text.contains("openai") && text.contains(&status.to_string()) && text.contains(message),
            "{text}"
        );
        assert!(h.messages().await.is_empty());
    }
}

#[tokio::test]
async fn a_publish_failure_is_an_in_band_publish_failed_error_without_done() {
    let h = harness(Options {
        missing_queue: true,
        ..Default::default()
    })
    .await;
    let received = read_sse(h.post(ENDPOINT, request("u-nopub")).await).await;
    let evs = events(&received);
    assert_eq!(deltas_text(&received), "Patience opens doors.");
    let (name, error) = evs.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(error["code"], "publish_failed");
    assert!(!evs.iter().any(|(n, _)| n == "done"));
}

/// A malformed request and the error it must get.
struct Case {
    what: &'static str,
    body: String,
    content_type: &'static str,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

impl Case {
    fn new(
        what: &'static str,
        body: &str,
        content_type: &'static str,
        status: u16,
        code: &'static str,
        field: Option<&'static str>,
    ) -> Self {
        Self {
            what,
            body: body.to_owned(),
            content_type,
            status,
            code,
            field,
        }
    }
}

#[tokio::test]
async fn malformed_requests_are_4xx_json_errors_naming_the_field_and_publish_nothing() {
    let h = harness(Options::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}{ENDPOINT}", h.base);
    let long_hikmah = "h".repeat(8001);
    let long_question = "q".repeat(2001);
    const JSON: &str = "application/json";
    let big = format!(
        "{{\"user_id\":\"u\",\"hikmah\":\"{}\"}}",
        "x".repeat(1 << 20)
    );
    let cases = [
        Case::new("invalid JSON", "{not json", JSON, 400, "invalid_json", None),
        Case::new(
            "missing hikmah",
            &json!({"user_id": "u"}).to_string(),
            JSON,
            400,
            "missing_field",
            Some("hikmah"),
        ),
        Case::new(
            "empty hikmah",
            &json!({"user_id": "u", "hikmah": ""}).to_string(),
            JSON,
            400,
            "invalid_field",
            Some("hikmah"),
        ),
        Case::new(
            "over-long hikmah",
            &json!({"user_id": "u", "hikmah": long_hikmah}).to_string(),
            JSON,
            400,
            "invalid_field",
            Some("hikmah"),
        ),
        Case::new(
            "over-long question",
            &json!({"user_id": "u", "hikmah": "h", "question": long_question}).to_string(),
            JSON,
            400,
            "invalid_field",
            Some("question"),
        ),
        Case::new(
            "bad user_id",
            &json!({"user_id": "no spaces", "hikmah": "h"}).to_string(),
            JSON,
            400,
            "invalid_field",
            Some("user_id"),
        ),
        Case::new(
            "wrong content type",
            &json!({"user_id": "u", "hikmah": "h"}).to_string(),
            "text/plain",
            415,
            "unsupported_media_type",
            None,
        ),
        Case::new("1 MiB body", &big, JSON, 413, "body_too_large", None),
    ];
    for case in cases {
        let response = client
            .post(&url)
            .header("content-type", case.content_type)
            .body(case.body)
            .send()
            .await
            .unwrap();
        let (got, json) = error_body(response).await;
        let what = case.what;
        assert_eq!(got, case.status, "{what}: {json}");
        assert_eq!(json["error"]["code"], case.code, "{what}: {json}");
        assert_eq!(
            json["error"]["field"].as_str(),
            case.field,
            "{what}: {json}"
        );
        assert!(
            !json["error"]["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
    }
    assert!(
        h.fake.requests().is_empty(),
        "no malformed request reaches the provider"
    );
    assert!(h.messages().await.is_empty(), "nothing is published");
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405_in_json() {
    let h = harness(Options::default()).await;
    let client = reqwest::Client::new();
    let (status, body) =
        error_body(client.get(format!("{}/nope", h.base)).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let response = client
        .get(format!("{}{ENDPOINT}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    let (status, body) = error_body(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

// ---------------------------------------------------------------------------------------------
// Personalisation
// ---------------------------------------------------------------------------------------------

async fn insert_note(db: &TestDb, user: &str, content: &str, times_seen: i32) {
    let client = db.admin().await;
    client
        .execute(
            "INSERT INTO memory_notes (user_id, content, content_hash, embedding, times_seen) \
             VALUES ($1, $2, md5($2), array_fill(0::real, ARRAY[384]), $3)",
            &[&user, &content, &times_seen],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_prompt_carries_the_users_most_reinforced_notes_and_never_another_users() {
    let h = harness(Options {
        context_notes: 2,
        ..Default::default()
    })
    .await;
    insert_note(&h.db, "alice", "Alice finds calm in morning walks", 5).await;
    insert_note(&h.db, "alice", "Alice struggles with waiting in queues", 3).await;
    insert_note(&h.db, "alice", "Alice once read about stoicism", 1).await;

    read_sse(h.post(ENDPOINT, request("alice")).await).await;
    read_sse(h.post(ENDPOINT, request("bob")).await).await;

    let prompts = h.fake.user_prompts();
    assert_eq!(prompts.len(), 2);
    assert!(
        prompts[0].contains("Alice finds calm in morning walks"),
        "{}",
        prompts[0]
    );
    assert!(
        prompts[0].contains("Alice struggles with waiting in queues"),
        "{}",
        prompts[0]
    );
    assert!(
        !prompts[0].contains("stoicism"),
        "only MEMORY_CONTEXT_NOTES=2 notes: {}",
        prompts[0]
    );
    assert!(
        !prompts[1].contains("Alice"),
        "bob's prompt holds none of alice's notes: {}",
        prompts[1]
    );
    assert!(prompts[1].contains("Patience is the key to relief."));
}

async fn insert_note_seen(
    db: &TestDb,
    user: &str,
    content: &str,
    times_seen: i32,
    seen_ago_secs: f64,
) {
    db.admin()
        .await
        .execute(
            "INSERT INTO memory_notes (user_id, content, content_hash, embedding, times_seen, last_seen_at) \
             VALUES ($1, $2, md5($2), array_fill(0::real, ARRAY[384]), $3, now() - make_interval(secs => $4))",
            &[&user, &content, &times_seen, &seen_ago_secs],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_prompt_takes_the_top_k_notes_by_times_seen_then_recency_and_each_user_only_their_own()
{
    let h = harness(Options {
        context_notes: 2,
        ..Default::default()
    })
    .await;
    insert_note_seen(&h.db, "alice", "alice-older-pair", 2, 3600.0).await;
    insert_note_seen(&h.db, "alice", "alice-recent-pair", 2, 1.0).await;
    insert_note_seen(&h.db, "alice", "alice-seen-once-just-now", 1, 0.0).await;
    insert_note_seen(&h.db, "bob", "bob-most-reinforced", 9, 10.0).await;
    insert_note_seen(&h.db, "bob", "bob-second", 3, 10.0).await;

    read_sse(h.post(ENDPOINT, request("alice")).await).await;
    read_sse(h.post(ENDPOINT, request("bob")).await).await;
    let prompts = h.fake.user_prompts();
    assert_eq!(prompts.len(), 2);
    let (alice, bob) = (&prompts[0], &prompts[1]);

    // Top 2 by times_seen; equal times_seen → the more recently seen first.
    let recent = alice.find("alice-recent-pair").expect(alice);
    let older = alice.find("alice-older-pair").expect(alice);
    assert!(recent < older, "recency breaks the tie: {alice}");
    assert!(
        !alice.contains("alice-seen-once"),
        "only k=2 notes: {alice}"
    );
    assert!(
        bob.contains("bob-most-reinforced") && bob.contains("bob-second"),
        "{bob}"
    );

    // Never another user's.
    assert!(!alice.contains("bob-"), "{alice}");
    assert!(!bob.contains("alice-"), "{bob}");
}

#[tokio::test]
async fn a_database_failure_while_reading_notes_still_streams_to_done() {
    let h = harness(Options {
        dead_database: true,
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    let received = read_sse(h.post(ENDPOINT, request("u-nodb")).await).await;
    assert_eq!(events(&received).last().unwrap().0, "done");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the notes read fails within its timeouts"
    );
    assert_eq!(h.messages().await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Identity (through lambda_http's own event parsing, as in Lambda)
// ---------------------------------------------------------------------------------------------

/// An API Gateway REST (v1) proxy event with a Cognito authorizer whose `sub` is `sub`.
fn apigw_v1_event(sub: &str, body: &Value) -> String {
    json!({
        "resource": "/hikmah/elaborate/stream",
        "path": "/hikmah/elaborate/stream",
        "httpMethod": "POST",
        "headers": {"content-type": "application/json", "host": "example.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"content-type": ["application/json"]},
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012",
            "resourceId": "abc",
            "stage": "Prod",
            "requestId": "req-1",
            "identity": {"sourceIp": "127.0.0.1"},
            "resourcePath": "/hikmah/elaborate/stream",
            "httpMethod": "POST",
            "path": "/Prod/hikmah/elaborate/stream",
            "authorizer": {"claims": {"sub": sub, "email": "x@example.com"}}
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
    .to_string()
}

async fn call_router(h: &Harness, trust: bool, event: &str) -> (u16, Value, String) {
    use lambda_http::tower::ServiceExt;
    let request = lambda_http::request::from_str(event).unwrap();
    let provider = OpenAiProvider::with_settings(
        &h.fake.base_url(),
        None,
        "fake-model",
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    let publisher = SqsPublisher::new(
        h.sqs.clone(),
        QueueConfig {
            url: h.queue_url.clone(),
        },
    );
    let notes = Arc::new(PgNotes::new(h.db.db().await));
    let elaborator = Elaborator::new(Arc::new(provider), notes, Arc::new(publisher), 5);
    let config = ElaborateConfig {
        memory_context_notes: 5,
        trust_body_user_id: trust,
        keepalive: Duration::from_secs(15),
    };
    let response = router(AppState::new(elaborator, config))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, text)
}

#[tokio::test]
async fn with_an_authorizer_identity_a_different_body_user_id_is_403() {
    let h = harness(Options::default()).await;
    // Trusting the body changes nothing once an authorizer has spoken.
    let (status, json, _) =
        call_router(&h, true, &apigw_v1_event("alice", &request("mallory"))).await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"]["field"], "user_id");
    assert!(h.fake.requests().is_empty());
}

#[tokio::test]
async fn with_an_authorizer_identity_the_stream_is_for_that_user() {
    let h = harness(Options::default()).await;
    let body = json!({"hikmah": "Patience is the key to relief."});
    let (status, _, text) = call_router(&h, false, &apigw_v1_event("alice", &body)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("event: done"), "{text}");
    let messages = h.messages().await;
    assert_eq!(
        ElaborationCompleted::parse(messages[0].body().unwrap())
            .unwrap()
            .user_id
            .as_str(),
        "alice"
    );
}

#[tokio::test]
async fn without_identity_and_without_trust_body_user_id_the_request_is_401() {
    let h = harness(Options {
        trust_body_user_id: false,
        ..Default::default()
    })
    .await;
    let (status, json) = error_body(h.post(ENDPOINT, request("alice")).await).await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(json["error"]["code"], "unauthenticated");
    assert!(h.fake.requests().is_empty());
    assert!(h.messages().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Provider timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_provider_silent_for_longer_than_the_idle_timeout_fails_with_provider_timeout() {
    use shared::llm::LlmProvider;
    let fake = FakeLlm::start(Script::chunks(&["late"], Duration::from_secs(3))).await;
    let provider = OpenAiProvider::with_settings(
        &fake.base_url(),
        None,
        "fake-model",
        Duration::from_secs(2),
        Duration::from_millis(500),
    )
    .unwrap();
    let started = Instant::now();
    let results: Vec<_> = provider
        .stream(shared::elaboration::prompt::build(
            &shared::elaboration::ElaborateRequest {
                user_id: None,
                hikmah: "h".into(),
                question: None,
            },
            &[],
        ))
        .collect()
        .await;
    let err = results.into_iter().last().unwrap().unwrap_err();
    assert_eq!(err.code(), "provider_timeout", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up at the idle timeout"
    );
}

#[tokio::test]
async fn an_unreachable_provider_is_a_502_naming_it() {
    let h = harness(Options::default()).await;
    // A provider on a port nothing listens on, behind the same handler.
    let provider = OpenAiProvider::with_settings(
        "http://127.0.0.1:9/v1",
        None,
        "fake-model",
        Duration::from_secs(1),
        Duration::from_secs(5),
    )
    .unwrap();
    let publisher = SqsPublisher::new(
        h.sqs.clone(),
        QueueConfig {
            url: h.queue_url.clone(),
        },
    );
    let notes = Arc::new(PgNotes::new(h.db.db().await));
    let elaborator = Elaborator::new(Arc::new(provider), notes, Arc::new(publisher), 5);
    let config = ElaborateConfig {
        memory_context_notes: 5,
        trust_body_user_id: true,
        keepalive: Duration::from_secs(15),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(elaborate::serve_http(
        listener,
        AppState::new(elaborator, config),
    ));
    let response = reqwest::Client::new()
        .post(format!("{base}{ENDPOINT}"))
        .header("content-type", "application/json")
        .body(request("u-down").to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = error_body(response).await;
    server.abort();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "provider_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("openai"),
        "{body}"
    );
    assert!(h.messages().await.is_empty());
}

/// Sends one request on a fresh connection and reads the response head and body; then reports
/// whether the server closed the connection right after it.
async fn raw_exchange(base: &str, content_type: &str, body: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {ENDPOINT} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and stop reading) before the whole body is sent.
    let _ = tcp.write_all(body).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let (head, body_len) = loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response head");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            break (head, end + 4 + len);
        }
    };
    while got.len() < body_len {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the whole response body");
        got.extend_from_slice(&buf[..n]);
    }
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    );
    (head, closed)
}

#[tokio::test]
async fn a_connection_the_server_closes_after_an_early_error_is_announced_with_connection_close() {
    let h = harness(Options::default()).await;
    let too_large = format!(
        "{{\"user_id\":\"u\",\"hikmah\":\"{}\"}}",
        "x".repeat(200 * 1024)
    );
    for (what, content_type, body) in [
        ("413", "application/json", too_large.as_bytes()),
        ("415", "text/plain", &b"hikmah"[..]),
        ("400", "application/json", &b"{not json"[..]),
    ] {
        let (head, closed) = raw_exchange(&h.base, content_type, body).await;
        if closed {
            assert!(
                head.contains("\r\nconnection: close"),
                "{what}: the server closed the connection without saying so:\n{head}"
            );
        }
    }
}

#[tokio::test]
async fn a_hikmah_with_characters_sqs_rejects_is_published_escaped_and_reads_back_unchanged() {
    let h = harness(Options::default()).await;
    let hikmah = "Patience\u{fffe} is the key\u{ffff} to relief.";
    let received = read_sse(
        h.post(ENDPOINT, json!({"user_id": "u-nonchar", "hikmah": hikmah}))
            .await,
    )
    .await;
    assert!(
        events(&received).iter().any(|(name, _)| name == "done"),
        "{:?}",
        events(&received)
    );
    let messages = h.messages().await;
    assert_eq!(messages.len(), 1);
    let body = messages[0].body().unwrap();
    assert!(
        body.chars().all(shared::events::sqs_allows),
        "the body holds characters SQS rejects: {body:?}"
    );
    assert_eq!(ElaborationCompleted::parse(body).unwrap().hikmah, hikmah);
}

#[tokio::test]
async fn the_configured_max_tokens_is_sent_to_an_openai_compatible_provider() {
    let fake = FakeLlm::start(Script::chunks(&["Patience."], Duration::ZERO)).await;
    let env = Env::from_pairs([
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", fake.base_url().as_str()),
        ("LLM_MAX_TOKENS", "77"),
    ]);
    let limits = shared::config::GenerationLimits::from_env(&env).unwrap();
    let provider = shared::llm::from_config(
        &shared::config::LlmConfig::from_env(&env).unwrap(),
        &limits,
        &shared::aws::AwsConfig::new(),
    )
    .await
    .unwrap();
    let mut stream = provider.stream(shared::llm::Prompt {
        system: "s".into(),
        user: "u".into(),
        hikmah: "h".into(),
        question: None,
        notes_used: 0,
    });
    while let Some(delta) = stream.next().await {
        delta.unwrap();
    }
    assert_eq!(fake.requests()[0]["max_tokens"], 77);
}

#[tokio::test]
async fn a_generation_that_never_ends_is_cut_at_the_total_deadline_as_provider_timeout() {
    // A chunk every 100 ms: never idle long enough for the idle timeout (2 s), never done.
    let texts: Vec<String> = (0..600).map(|i| format!("word{i} ")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let fake = FakeLlm::start(Script::chunks(&texts, Duration::from_millis(100))).await;
    let provider = OpenAiProvider::with_settings(
        &fake.base_url(),
        None,
        "fake-model",
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .unwrap();
    let publisher = Arc::new(SqsPublisher::new(
        sqs().await,
        QueueConfig {
            url: create_queue(&sqs().await, false).await,
        },
    ));
    let elaborator = Elaborator::new(
        Arc::new(provider),
        Arc::new(shared::elaboration::NoNotes),
        publisher,
        0,
    )
    .with_generation_deadline(Duration::from_secs(1));
    let request =
        shared::elaboration::ElaborateRequest::parse(br#"{"hikmah": "Patience."}"#).unwrap();
    let started = Instant::now();
    let mut rx = elaborator.spawn(shared::types::UserId::parse("u-slow").unwrap(), request);
    let mut last = None;
    while let Some(e) = rx.recv().await {
        last = Some(e);
    }
    assert!(
        matches!(
            &last,
            Some(shared::elaboration::StreamEvent::Error { code, message })
                if *code == shared::error_code::ErrorCode::ProviderTimeout && message.contains("LLM_TOTAL_TIMEOUT_MS")
        ),
        "{last:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The sample Function URL event (IAM auth) with the caller's `userId` and Cognito identity.
fn function_url_iam_event(
    user_id: &str,
    cognito_identity_id: Option<&str>,
    body: &Value,
) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events/function-url-request.json");
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let iam = &mut event["requestContext"]["authorizer"]["iam"];
    iam["userId"] = user_id.into();
    iam["cognitoIdentity"] = match cognito_identity_id {
        Some(id) => {
            json!({"amr": ["authenticated"], "identityId": id, "identityPoolId": "us-east-1:pool"})
        }
        None => Value::Null,
    };
    event["body"] = body.to_string().into();
    event["isBase64Encoded"] = false.into();
    event.to_string()
}

/// The REST (v1) event signed by an IAM caller.
fn apigw_v1_iam_event(user: &str, cognito_identity_id: Option<&str>, body: &Value) -> String {
    let mut event: Value = serde_json::from_str(&apigw_v1_event("x", body)).unwrap();
    event["requestContext"]["authorizer"] = Value::Null;
    event["requestContext"]["identity"] = json!({
        "sourceIp": "127.0.0.1",
        "user": user,
        "userArn": format!("arn:aws:sts::123456789012:assumed-role/r/{user}"),
        "cognitoIdentityId": cognito_identity_id,
        "cognitoAuthenticationType": cognito_identity_id.map(|_| "authenticated"),
    });
    event.to_string()
}

#[tokio::test]
async fn cognito_identity_pool_callers_signing_through_one_role_are_different_users() {
    let h = harness(Options::default()).await;
    let body = json!({"hikmah": "Patience is the key to relief."});
    let shared_session = "AROAEXAMPLEROLEID:CognitoIdentityCredentials";
    let a = "us-east-1:11111111-1111-1111-1111-111111111111";
    let b = "us-east-1:22222222-2222-2222-2222-222222222222";
    let (status, _, text) = call_router(
        &h,
        false,
        &apigw_v1_iam_event(shared_session, Some(a), &body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = call_router(
        &h,
        false,
        &function_url_iam_event(shared_session, Some(b), &body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let mut users: Vec<String> = h
        .messages()
        .await
        .iter()
        .map(|m| {
            ElaborationCompleted::parse(m.body().unwrap())
                .unwrap()
                .user_id
                .as_str()
                .to_owned()
        })
        .collect();
    users.sort();
    assert_eq!(users, [a, b]);

    // The shared session alone identifies no one.
    for event in [
        apigw_v1_iam_event(shared_session, None, &body),
        function_url_iam_event(shared_session, None, &body),
    ] {
        let (status, json, _) = call_router(&h, false, &event).await;
        assert_eq!(status, 403, "{json}");
    }
}

#[tokio::test]
async fn an_iam_role_session_name_with_plus_equals_and_comma_is_a_user() {
    let h = harness(Options::default()).await;
    let user = "AROAEXAMPLEROLEID:jane+ops=admin,eu@corp.example";
    let body = json!({"hikmah": "Patience is the key to relief."});
    for event in [
        apigw_v1_iam_event(user, None, &body),
        function_url_iam_event(user, None, &body),
    ] {
        let (status, _, text) = call_router(&h, false, &event).await;
        assert_eq!(status, 200, "{text}");
    }
    for m in h.messages().await {
        assert_eq!(
            ElaborationCompleted::parse(m.body().unwrap())
                .unwrap()
                .user_id
                .as_str(),
            user
        );
    }
}
