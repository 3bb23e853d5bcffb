//! `hikmah serve` as a newcomer uses it: start the built binary, stream an elaboration over HTTP
//! reading the SSE events, and find the note in PostgreSQL through `hikmah memory list --json`;
//! the same request again adds no note; five users at once each get theirs. Once with the
//! default in-process queue, once through a moto SQS queue (`MEMORY_QUEUE_URL`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hikmah_tests::bins::bin;
use hikmah_tests::pg::TestDb;
use hikmah_tests::proxy::{upstream_of, Mode, TcpProxy};
use hikmah_tests::sqs::TestQueue;
use serde_json::Value;

/// How long a note may take to appear after `done` (the brief says "within a few seconds").
const NOTE_DEADLINE: Duration = Duration::from_secs(10);

/// A running `hikmah serve`; killed when dropped.
struct Runner {
    child: Child,
    base: String,
    stderr: PathBuf,
    db_url: String,
}

impl Runner {
    async fn start(db: &TestDb, queue_url: Option<&str>) -> Runner {
        Self::start_with_url(db, db.url(), queue_url).await
    }

    /// Like [`Runner::start`], the runner reaching the database at `runner_url` (a proxy).
    async fn start_with_url(db: &TestDb, runner_url: &str, queue_url: Option<&str>) -> Runner {
        // Fail early, with what to do, when the model files are missing.
        hikmah_tests::model::embed_config();
        let stderr = std::env::temp_dir().join(format!("hikmah-serve-{}.log", db.name()));
        let log = std::fs::File::create(&stderr).unwrap();
        let mut cmd = Command::new(bin("hikmah"));
        cmd.arg("serve")
            .env("DATABASE_URL", runner_url)
            .env("DB_APPLICATION_NAME", db.application_name())
            .env("PORT", "0")
            .env_remove("LLM_PROVIDER")
            .env_remove("OPENAI_API_KEY")
            .env_remove("TRUST_BODY_USER_ID")
            .env_remove("MEMORY_QUEUE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(url) = queue_url {
            cmd.env("MEMORY_QUEUE_URL", url);
        }
        let mut child = cmd.spawn().expect("spawning hikmah serve");
        // A thread reads stdout (and keeps draining it, so the runner never blocks on a full
        // pipe); the address line comes back through the channel.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.strip_prefix("hikmah serve: listening on ") {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
        });
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap();
        let Ok(base) = ready else {
            let _ = child.kill();
            panic!(
                "hikmah serve did not print its address; its log:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Runner {
            child,
            base,
            stderr,
            db_url: db.url().to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// POSTs an elaboration request and reads the stream to its end: the `(event, data)` pairs.
    async fn elaborate(&self, user: &str, hikmah: &str) -> Vec<(String, Value)> {
        let response = reqwest::Client::new()
            .post(format!("{}/hikmah/elaborate/stream", self.base))
            .json(&serde_json::json!({ "user_id": user, "hikmah": hikmah }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let mut text = String::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        parse_sse(&text)
    }

    /// `hikmah memory list --user USER --json`, as a script would run it.
    async fn notes(&self, user: &str) -> Vec<Value> {
        let mut cmd = Command::new(bin("hikmah"));
        cmd.args(["memory", "list", "--user", user, "--json"])
            .env("DATABASE_URL", &self.db_url);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "hikmah memory list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `hikmah ARGS` against the runner's database; whether it succeeded.
    async fn cli(&self, args: &[&str]) -> bool {
        let mut cmd = Command::new(bin("hikmah"));
        cmd.args(args)
            .env("DATABASE_URL", &self.db_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.status())
            .await
            .unwrap()
            .unwrap()
            .success()
    }

    /// Polls the notes until `done` says yes, or fails with the runner's log.
    async fn wait_for_notes(&self, user: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.wait_for_notes_within(NOTE_DEADLINE, user, done).await
    }

    async fn wait_for_notes_within(
        &self,
        deadline: Duration,
        user: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let notes = self.notes(user).await;
            if done(&notes) {
                return notes;
            }
            if started.elapsed() > deadline {
                panic!(
                    "user {user}'s notes did not reach the expected state within {deadline:?}: {notes:?}\nrunner log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Some((event?, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}

fn assert_streamed_and_done(events: &[(String, Value)]) {
    let deltas = events.iter().filter(|(e, _)| e == "delta").count();
    assert!(deltas >= 1, "no delta event: {events:?}");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "done", "the stream must end with done: {events:?}");
    assert!(data["event_id"].is_string(), "{data}");
}

/// The walkthrough: one elaboration becomes a note; the same again reinforces it instead of
/// adding one; five users at once each get theirs.
async fn walkthrough(runner: &Runner) {
    let hikmah = "Patience is the key to relief.";
    assert_streamed_and_done(&runner.elaborate("newcomer-1", hikmah).await);
    let notes = runner.wait_for_notes("newcomer-1", |n| !n.is_empty()).await;
    let count = notes.len();
    assert!(notes.iter().all(|n| n["times_seen"] == 1), "{notes:?}");

    assert_streamed_and_done(&runner.elaborate("newcomer-1", hikmah).await);
    // Applied once the matched note is reinforced; no new note may appear.
    let notes = runner
        .wait_for_notes("newcomer-1", |n| n.iter().any(|n| n["times_seen"] == 2))
        .await;
    assert_eq!(
        notes.len(),
        count,
        "the same request again added a note: {notes:?}"
    );

    // A paraphrase is merged losslessly: the note is reinforced and keeps it as a variant,
    // which `hikmah memory split` turns back into a note of its own.
    let paraphrase = "Relief comes through patience.";
    assert_streamed_and_done(&runner.elaborate("newcomer-1", paraphrase).await);
    let notes = runner
        .wait_for_notes("newcomer-1", |n| {
            n.iter().any(|n| {
                n["variants"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|v| v["content"] == paraphrase))
            })
        })
        .await;
    assert_eq!(notes.len(), count, "the paraphrase added a note: {notes:?}");
    let variant = notes
        .iter()
        .flat_map(|n| n["variants"].as_array().unwrap())
        .find(|v| v["content"] == paraphrase)
        .unwrap()["id"]
        .to_string();
    assert!(
        runner
            .cli(&[
                "memory",
                "split",
                "--user",
                "newcomer-1",
                "--variant",
                &variant
            ])
            .await
    );
    let notes = runner.notes("newcomer-1").await;
    assert_eq!(notes.len(), count + 1, "{notes:?}");
    assert!(
        notes.iter().any(|n| n["content"] == paraphrase),
        "{notes:?}"
    );

    let users: Vec<String> = (1..=5).map(|i| format!("concurrent-{i}")).collect();
    let streams = futures::future::join_all(users.iter().enumerate().map(|(i, user)| {
        let hikmah = format!("Gratitude number {i} turns what we have into enough.");
        async move { runner.elaborate(user, &hikmah).await }
    }))
    .await;
    for events in &streams {
        assert_streamed_and_done(events);
    }
    for user in &users {
        let notes = runner.wait_for_notes(user, |n| !n.is_empty()).await;
        assert!(
            notes
                .iter()
                .all(|n| n["content"].as_str().unwrap().contains("Gratitude")),
            "{user} got someone else's notes: {notes:?}"
        );
    }
    assert!(
        runner.notes("nobody").await.is_empty(),
        "a user who never asked has notes"
    );
}

#[tokio::test]
async fn serve_with_the_in_process_queue_turns_streams_into_deduplicated_notes() {
    let db = TestDb::new().await;
    let runner = Runner::start(&db, None).await;
    walkthrough(&runner).await;

    // Forgetting: one note that does not exist is an error; a user's notes go, others stay.
    assert!(
        !runner
            .cli(&[
                "memory",
                "forget",
                "--user",
                "concurrent-1",
                "--note",
                "999999"
            ])
            .await
    );
    assert!(
        runner
            .cli(&["memory", "forget", "--user", "concurrent-1"])
            .await
    );
    assert!(runner.notes("concurrent-1").await.is_empty());
    assert!(!runner.notes("concurrent-2").await.is_empty());
    drop(runner);
    db.cleanup().await;
}

#[tokio::test]
async fn serve_with_an_sqs_queue_turns_streams_into_deduplicated_notes() {
    let db = TestDb::new().await;
    let queue = TestQueue::with_dlq("hikmah-serve", 5, Duration::from_secs(30)).await;
    let runner = Runner::start(&db, Some(&queue.url)).await;
    walkthrough(&runner).await;
    assert_eq!(queue.dlq_count().await, 0, "nothing may be dead-lettered");
    drop(runner);
    queue.delete().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_memory_update_that_fails_while_the_database_is_down_is_redelivered_and_applied_later() {
    let db = TestDb::new().await;
    let proxy = TcpProxy::start(upstream_of(db.url())).await;
    let runner = Runner::start_with_url(&db, &proxy.rewrite_url(db.url()), None).await;

    proxy.set(Mode::Refuse);
    // The stream does not need the database (its notes only personalise the prompt) ...
    assert_streamed_and_done(
        &runner
            .elaborate("outage-user", "Hardship is followed by ease.")
            .await,
    );
    // ... but applying the memory does: the record fails and is redelivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(runner.notes("outage-user").await.is_empty());
    proxy.set(Mode::Open);

    runner
        .wait_for_notes_within(Duration::from_secs(30), "outage-user", |n| !n.is_empty())
        .await;
    assert!(
        runner.log().contains("redelivering"),
        "the record should have failed at least once:\n{}",
        runner.log()
    );
    drop(runner);
    db.cleanup().await;
}

/// `GET`/`DELETE` on the runner, as curl would: (status, JSON body, or the raw text).
async fn http(runner: &Runner, method: reqwest::Method, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", runner.base))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// The EMF lines of `service` in the runner's log.
fn emf_lines(log: &str, service: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["_aws"]["CloudWatchMetrics"].is_array() && v["service"] == service)
        .collect()
}

#[tokio::test]
async fn a_newcomer_lists_exports_deletes_and_forgets_their_memory_over_http_and_old_notes_never_return(
) {
    let db = TestDb::new().await;
    let runner = Runner::start(&db, None).await;
    let user = "newcomer-memory";

    assert_streamed_and_done(
        &runner
            .elaborate(user, "Patience is the key to relief.")
            .await,
    );
    runner.wait_for_notes(user, |n| !n.is_empty()).await;
    let (status, body) = http(
        &runner,
        reqwest::Method::GET,
        &format!("/hikmah/memory?user_id={user}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let notes = page["notes"].as_array().unwrap().clone();
    assert!(!notes.is_empty());
    assert!(notes[0]["content"].as_str().unwrap().contains("Patience"));

    let (status, export) = http(
        &runner,
        reqwest::Method::GET,
        &format!("/hikmah/memory/export?user_id={user}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(export.lines().count(), notes.len(), "{export}");

    let (status, body) = http(
        &runner,
        reqwest::Method::DELETE,
        &format!("/hikmah/memory/{}?user_id={user}", notes[0]["id"]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(runner.notes(user).await.len(), notes.len() - 1);

    let (status, body) = http(
        &runner,
        reqwest::Method::DELETE,
        &format!("/hikmah/memory?user_id={user}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let forgotten: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(forgotten["deleted"]["processed_events"], 1, "{forgotten}");
    assert!(runner.notes(user).await.is_empty());

    // Streaming again remembers the new elaboration only.
    assert_streamed_and_done(
        &runner
            .elaborate(user, "Gratitude turns what we have into enough.")
            .await,
    );
    let notes = runner.wait_for_notes(user, |n| !n.is_empty()).await;
    assert!(
        notes
            .iter()
            .all(|n| !n["content"].as_str().unwrap().contains("Patience")),
        "an old note came back: {notes:?}"
    );

    // One EMF line per stream and per batch, in the log like any other line.
    let log = runner.log();
    let streams = emf_lines(&log, "elaborate");
    assert!(
        streams.iter().any(|v| v["FirstDeltaMs"].is_number()
            && v["StreamMs"].is_number()
            && v["PublishFailures"] == 0.0),
        "no stream metrics in the log:\n{log}"
    );
    let batches = emf_lines(&log, "memory-consumer");
    assert!(
        batches.iter().any(|v| v["NotesAdded"].as_f64() > Some(0.0)),
        "no consumer metrics in the log:\n{log}"
    );
    drop(runner);
    db.cleanup().await;
}
