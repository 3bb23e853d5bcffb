//! The memory routes end to end, in process: the real router served on 127.0.0.1 with real
//! PostgreSQL, a fake OpenAI-compatible provider (the only fake), moto for the queue and the
//! real consumer with the real model. Identity through lambda_http's own event parsing for the
//! authorizer cases, the `user_id` query parameter (TRUST_BODY_USER_ID) otherwise.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use elaborate::{router, AppState};
use hikmah_tests::fake_llm::{FakeLlm, Script};
use hikmah_tests::model::embedder;
use hikmah_tests::pg::TestDb;
use hikmah_tests::sqs::{sqs_event_json, STANDARD_ARN};
use memory_consumer::{handle_batch, Consumer};
use serde_json::{json, Value};
use shared::config::{ElaborateConfig, QueueConfig};
use shared::elaboration::{Elaborator, PgNotes};
use shared::llm::OpenAiProvider;
use shared::memory::account::MemoryAccount;
use shared::memory::dedup::DedupPolicy;
use shared::metrics::{MetricsConfig, MetricsEmitter, MetricsSink};
use shared::publish::SqsPublisher;

struct Harness {
    base: String,
    db: TestDb,
    state: AppState,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    _fake: FakeLlm,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn harness(trust_body_user_id: bool) -> Harness {
    harness_with(trust_body_user_id, MetricsSink::Stdout).await
}

async fn harness_with(trust_body_user_id: bool, metrics: MetricsSink) -> Harness {
    let sqs = hikmah_tests::sqs::client().await;
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("memory-routes-{}", uuid::Uuid::new_v4().simple()))
        .send()
        .await
        .expect("create a queue on moto (run scripts/test.sh, or source /tmp/testenv.sh)")
        .queue_url()
        .unwrap()
        .to_owned();
    let db = TestDb::new().await;
    let fake = FakeLlm::start(Script::chunks(
        &["Patience ", "opens ", "doors."],
        Duration::from_millis(5),
    ))
    .await;
    let provider = OpenAiProvider::with_settings(
        &fake.base_url(),
        None,
        "fake-model",
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    let pool = db.db().await;
    let publisher = SqsPublisher::new(
        sqs.clone(),
        QueueConfig {
            url: queue_url.clone(),
        },
    );
    let elaborator = Elaborator::new(
        Arc::new(provider),
        Arc::new(PgNotes::new(pool.clone())),
        Arc::new(publisher),
        5,
    );
    let config = ElaborateConfig {
        memory_context_notes: 5,
        trust_body_user_id,
        keepalive: Duration::from_secs(15),
    };
    let state = AppState::new(elaborator, config)
        .with_memory(MemoryAccount::postgres(pool))
        .with_metrics(MetricsEmitter::new(
            MetricsConfig::new(elaborate::METRICS_SERVICE),
            metrics,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = state.clone();
    let server = tokio::spawn(async move {
        elaborate::serve_http(listener, served).await.unwrap();
    });
    Harness {
        base,
        db,
        state,
        sqs,
        queue_url,
        _fake: fake,
        server,
    }
}

impl Harness {
    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path).await
    }

    /// `GET /hikmah/memory/export?user_id=USER`: the JSON lines, parsed.
    async fn export(&self, user: &str) -> Vec<Value> {
        let response = reqwest::get(format!("{}/hikmah/memory/export?user_id={user}", self.base))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        assert_eq!(response.headers()["cache-control"], "no-store");
        response
            .text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every note id of USER through `GET /hikmah/memory`, page after page.
    async fn listed_ids(&self, user: &str, limit: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/hikmah/memory?user_id={user}&limit={limit}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get(&path).await;
            assert_eq!(status, 200, "{page}");
            let notes = page["notes"].as_array().unwrap();
            assert!(notes.len() <= limit);
            ids.extend(notes.iter().map(|n| n["id"].as_i64().unwrap()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return ids,
            }
        }
    }

    /// Streams one elaboration for USER and returns the queued message body.
    async fn elaborate(&self, user: &str, hikmah: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/hikmah/elaborate/stream", self.base))
            .json(&json!({ "user_id": user, "hikmah": hikmah }))
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        assert!(text.contains("event: done"), "{text}");
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        assert_eq!(messages.len(), 1);
        self.sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(messages[0].receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
        messages[0].body().unwrap().to_owned()
    }

    async fn insert_note(&self, user: &str, content: &str, age_secs: i32) -> i64 {
        self.db
            .admin()
            .await
            .query_one(
                "INSERT INTO memory_notes (user_id, content, content_hash, embedding, created_at) \
                 VALUES ($1, $2, md5($2), array_fill(0::real, ARRAY[384]), \
                         now() - make_interval(secs => $3)) RETURNING id",
                &[&user, &content, &f64::from(age_secs)],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn count(&self, table: &str, user: &str) -> i64 {
        self.db
            .admin()
            .await
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE user_id = $1"),
                &[&user],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The router called with an API Gateway REST event whose IAM caller is `iam_user`.
    async fn as_iam_user(
        &self,
        iam_user: &str,
        method: &str,
        path: &str,
        query: Option<Value>,
    ) -> (u16, Value) {
        use lambda_http::tower::ServiceExt;
        let event = json!({
            "resource": path,
            "path": path,
            "httpMethod": method,
            "headers": {"host": "example.execute-api.us-east-1.amazonaws.com"},
            "multiValueHeaders": {},
            "queryStringParameters": query,
            "multiValueQueryStringParameters": query.as_ref().map(|q| {
                q.as_object().unwrap().iter().map(|(k, v)| (k.clone(), json!([v]))).collect::<serde_json::Map<_, _>>()
            }),
            "pathParameters": null,
            "stageVariables": null,
            "requestContext": {
                "accountId": "123456789012",
                "resourceId": "abc",
                "stage": "v1",
                "requestId": "req-1",
                "identity": {"sourceIp": "127.0.0.1", "user": iam_user,
                             "userArn": format!("arn:aws:iam::123456789012:user/{iam_user}")},
                "resourcePath": path,
                "httpMethod": method,
                "path": format!("/v1{path}"),
            },
            "body": null,
            "isBase64Encoded": false
        });
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn sqs_event(body: &str) -> SqsEvent {
    let records = [(uuid::Uuid::new_v4().to_string(), body.to_owned())];
    serde_json::from_str(&sqs_event_json(&records, STANDARD_ARN)).unwrap()
}

#[tokio::test]
async fn the_list_pages_newest_first_with_an_opaque_cursor_and_each_note_has_the_contract_fields() {
    let h = harness(true).await;
    let mut expected = Vec::new();
    for age in [50, 40, 30, 20, 10] {
        expected.push(
            h.insert_note("alice", &format!("note aged {age}"), age)
                .await,
        );
    }
    expected.reverse();
    assert_eq!(h.listed_ids("alice", 2).await, expected, "newest first");
    assert_eq!(h.listed_ids("alice", 100).await, expected);

    let (status, page) = h.get("/hikmah/memory?user_id=alice&limit=1").await;
    assert_eq!(status, 200);
    let note = &page["notes"][0];
    for field in ["id", "content", "times_seen", "created_at", "last_seen_at"] {
        assert!(!note[field].is_null(), "{field} missing: {note}");
    }
    assert_eq!(note["content"], "note aged 10");
    assert!(page["next_cursor"].is_string());
    let (_, empty) = h.get("/hikmah/memory?user_id=nobody").await;
    assert_eq!(empty, json!({"notes": [], "next_cursor": null}));
}

#[tokio::test]
async fn one_user_never_reaches_another_users_notes_through_any_route() {
    let h = harness(true).await;
    let alices = h
        .insert_note("alice", "Alice finds calm in walks", 10)
        .await;
    let bobs = h.insert_note("bob", "Bob is learning patience", 10).await;

    // List and export: each sees only their own.
    assert_eq!(h.listed_ids("bob", 20).await, [bobs]);
    let exported = h.export("bob").await;
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["content"], "Bob is learning patience");

    // Delete one: another user's note is 404, as if it did not exist, and stays.
    let (status, body) = h
        .delete(&format!("/hikmah/memory/{alices}?user_id=bob"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["field"], "note_id");
    let (status, missing) = h
        .delete(&format!("/hikmah/memory/{}?user_id=bob", alices + 1000))
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&(alices + 1000).to_string(), "N"),
        body["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&alices.to_string(), "N"),
        "another user's note and no note at all are indistinguishable"
    );
    assert_eq!(h.count("memory_notes", "alice").await, 1);

    // Forget everything: only bob's rows go.
    let (status, forgotten) = h.delete("/hikmah/memory?user_id=bob").await;
    assert_eq!(status, 200, "{forgotten}");
    assert_eq!(forgotten["deleted"]["notes"], 1);
    assert_eq!(h.count("memory_notes", "bob").await, 0);
    assert_eq!(h.listed_ids("alice", 20).await, [alices]);

    // With an authorizer identity, a query user_id never overrides it.
    for (method, path) in [
        ("GET", "/hikmah/memory"),
        ("GET", "/hikmah/memory/export"),
        ("DELETE", "/hikmah/memory"),
    ] {
        let (status, body) = h
            .as_iam_user("bob", method, path, Some(json!({"user_id": "alice"})))
            .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, body) = h
        .as_iam_user("bob", "DELETE", &format!("/hikmah/memory/{alices}"), None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, page) = h.as_iam_user("alice", "GET", "/hikmah/memory", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["notes"][0]["id"], alices, "the IAM caller is the user");
    assert_eq!(h.count("memory_notes", "alice").await, 1);
}

#[tokio::test]
async fn bad_limit_cursor_and_note_id_are_400s_naming_them_and_other_methods_are_405() {
    let h = harness(true).await;
    for (path, field) in [
        ("/hikmah/memory?user_id=u&limit=0", "limit"),
        ("/hikmah/memory?user_id=u&limit=101", "limit"),
        ("/hikmah/memory?user_id=u&limit=ten", "limit"),
        ("/hikmah/memory?user_id=u&cursor=garbage", "cursor"),
        ("/hikmah/memory?user_id=not%20valid", "user_id"),
    ] {
        let (status, body) = h.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{path}");
        assert_eq!(body["error"]["field"], field, "{path}");
    }
    let (status, body) = h.delete("/hikmah/memory/abc?user_id=u").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("note_id"))
    );

    let response = reqwest::Client::new()
        .put(format!("{}/hikmah/memory?user_id=u", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, DELETE");

    // A stage prefix reaches the same routes.
    let (status, _) = h.get("/Prod/hikmah/memory?user_id=u").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_an_identity_or_trust_in_the_request_every_memory_route_is_401_and_counted() {
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = harness_with(false, MetricsSink::Memory(lines.clone())).await;
    h.insert_note("alice", "Alice finds calm in walks", 10)
        .await;
    for (method, path) in [
        (reqwest::Method::GET, "/hikmah/memory?user_id=alice"),
        (reqwest::Method::GET, "/hikmah/memory/export?user_id=alice"),
        (reqwest::Method::DELETE, "/hikmah/memory/1?user_id=alice"),
        (reqwest::Method::DELETE, "/hikmah/memory?user_id=alice"),
    ] {
        let (status, body) = h.call(method.clone(), path).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    assert_eq!(h.count("memory_notes", "alice").await, 1);
    // One EMF line per rejected request, counting it in total and by code.
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for line in lines {
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["service"], "elaborate");
        assert_eq!(v["RejectedRequests"], 1.0);
        assert_eq!(v["RejectedUnauthenticated"], 1.0);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service"]])
        );
    }
}

#[tokio::test]
async fn a_redelivered_event_after_forget_brings_no_note_back_and_a_new_event_does() {
    let h = harness(true).await;
    let consumer = Consumer::postgres(h.db.db().await, embedder(), DedupPolicy::default());

    // Stream, then the consumer applies the queued event.
    let old = h
        .elaborate("carol", "Gratitude turns what we have into enough.")
        .await;
    let report = handle_batch(&consumer, sqs_event(&old)).await;
    assert!(report.all_applied());
    let before = h.listed_ids("carol", 20).await;
    assert!(!before.is_empty());

    // Delete one note: a redelivery finds its processed_events row and restores nothing.
    let (status, _) = h
        .delete(&format!("/hikmah/memory/{}?user_id=carol", before[0]))
        .await;
    assert_eq!(status, 200);
    let report = handle_batch(&consumer, sqs_event(&old)).await;
    let outcome = report.records[0].result.as_ref().unwrap();
    assert!(outcome.already_applied);
    assert_eq!(h.listed_ids("carol", 20).await.len(), before.len() - 1);

    // Forget everything: notes and processed events go, the answer says how many.
    let (status, forgotten) = h.delete("/hikmah/memory?user_id=carol").await;
    assert_eq!(status, 200, "{forgotten}");
    assert_eq!(
        forgotten["deleted"]["notes"].as_u64().unwrap() as usize,
        before.len() - 1
    );
    assert_eq!(forgotten["deleted"]["processed_events"], 1);
    assert!(forgotten["forgotten_at"].is_string());
    assert_eq!(h.count("processed_events", "carol").await, 0);
    assert!(h.export("carol").await.is_empty());

    // The old event redelivered (its processed_events row is gone): acknowledged, no note.
    let report = handle_batch(&consumer, sqs_event(&old)).await;
    let outcome = report.records[0].result.as_ref().unwrap();
    assert!(outcome.forgotten, "{outcome:?}");
    assert_eq!(outcome.notes_added, 0);
    assert!(h.listed_ids("carol", 20).await.is_empty());
    assert_eq!(h.count("processed_events", "carol").await, 0);

    // A new elaboration after forgetting is remembered again.
    let new = h
        .elaborate("carol", "Gratitude turns what we have into enough.")
        .await;
    let report = handle_batch(&consumer, sqs_event(&new)).await;
    assert!(report.all_applied());
    assert!(!report.records[0].result.as_ref().unwrap().forgotten);
    assert_eq!(h.listed_ids("carol", 20).await.len(), before.len());
}

#[tokio::test]
async fn the_export_carries_each_notes_variants_and_forget_removes_them() {
    let h = harness(true).await;
    let consumer = Consumer::postgres(h.db.db().await, embedder(), DedupPolicy::default());
    for hikmah in [
        "Patience is the key to relief.",
        "Relief comes through patience.",
    ] {
        let event = hikmah_tests::events::event("dana", hikmah, None);
        assert!(handle_batch(&consumer, sqs_event(&event.to_body()))
            .await
            .all_applied());
    }

    let exported = h.export("dana").await;
    assert_eq!(exported.len(), 1, "the paraphrase was merged: {exported:?}");
    let variants = exported[0]["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 1, "{exported:?}");
    assert_eq!(variants[0]["content"], "Relief comes through patience.");
    for field in ["id", "cosine", "reason", "created_at", "event_id"] {
        assert!(
            !variants[0][field].is_null(),
            "{field} missing: {variants:?}"
        );
    }

    let (status, _) = h.delete("/hikmah/memory?user_id=dana").await;
    assert_eq!(status, 200);
    let left: i64 =
        h.db.admin()
            .await
            .query_one("SELECT count(*) FROM note_variants", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(left, 0, "forget removes the variants with the notes");
}
