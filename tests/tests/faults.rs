//! The fault suite: the memory consumer driven through the real SQS path (moto + the poller, as
//! the event source mapping drives it in AWS) with the real model and PostgreSQL, while faults
//! are injected. Every run prints a table (to stderr, past the test harness's capture):
//! scenario, messages, faults injected, applied once, lost, duplicated, dead-lettered.
//!
//! - (a) PostgreSQL stopped and started again while 200 messages flow (a cluster of the test's
//!   own, never the shared server);
//! - (b) the consumer process (`hikmah serve` polling the queue) SIGKILLed mid-flow and started
//!   again;
//! - (c) every message delivered twice, plus 5% poison messages;
//! - (d) a TCP proxy cutting the database connections at random points.
//!
//! Expected: every good message applied exactly once, only poison dead-lettered, nothing lost.
//! Time is compressed (visibility timeout 2 s instead of 360 s), and each scenario is bounded.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hikmah_tests::bins::bin;
use hikmah_tests::cluster::Cluster;
use hikmah_tests::model::{embed_config, embedder};
use hikmah_tests::pg::TestDb;
use hikmah_tests::proxy::{upstream_of, Mode, TcpProxy};
use hikmah_tests::sqs::TestQueue;
use memory_consumer::{handle_batch, Consumer, Poller};
use shared::config::{DbConfig, Env};
use shared::db::Db;
use shared::events::ElaborationCompleted;
use shared::memory::dedup::DedupPolicy;

/// Receives before SQS (moto) moves a message to the DLQ, as in the template.
const MAX_RECEIVES: u32 = 5;
/// The queue's visibility timeout (360 s in AWS; compressed here).
const VISIBILITY: Duration = Duration::from_secs(2);
/// Longest one scenario may take before it is reported as not settled.
const SCENARIO_LIMIT: Duration = Duration::from_secs(150);

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    messages: usize,
    faults: usize,
    applied_once: usize,
    lost: usize,
    duplicated: usize,
    dead_lettered: usize,
    poison: usize,
    good_dead_lettered: usize,
    seconds: f64,
}

impl Row {
    fn as_expected(&self, good: usize) -> bool {
        self.applied_once == good
            && self.lost == 0
            && self.duplicated == 0
            && self.dead_lettered == self.poison
            && self.good_dead_lettered == 0
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | messages | faults injected | applied once | lost | duplicated | dead-lettered | seconds |\n\
         | --- | --: | --: | --: | --: | --: | --: | --: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            r.scenario,
            r.messages,
            r.faults,
            r.applied_once,
            r.lost,
            r.duplicated,
            r.dead_lettered,
            r.seconds
        ));
    }
    out
}

/// `n` good events, one user each (so no two are deduplicated against each other).
fn good_events(scenario: &str, n: usize) -> Vec<ElaborationCompleted> {
    (0..n)
        .map(|i| {
            hikmah_tests::events::event(
                &format!("{scenario}-user-{i}"),
                &format!("Fault suite {scenario}: wisdom number {i} is kept exactly once."),
                None,
            )
        })
        .collect()
}

/// Malformed or unknown-version bodies: each must end in the DLQ.
fn poison(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 3 {
            0 => format!("{{not json {i}"),
            1 => format!(
                r#"{{"version": 99, "event_id": "{}", "user_id": "p-{i}", "hikmah": "x", "elaboration": "y", "model": "m", "created_at": "2026-01-01T00:00:00Z"}}"#,
                uuid::Uuid::now_v7()
            ),
            _ => r#"{"version": 1, "event_id": "not a uuid"}"#.to_owned(),
        })
        .collect()
}

/// What the database and the queues say about `good`.
struct Counts {
    applied: usize,
    duplicated: usize,
}

async fn counts(db_url: &str, good: &[ElaborationCompleted]) -> Option<Counts> {
    let (client, connection) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    let ids: Vec<uuid::Uuid> = good
        .iter()
        .map(|e| uuid::Uuid::parse_str(&e.event_id.to_string()).unwrap())
        .collect();
    let applied: i64 = client
        .query_one(
            "SELECT count(*) FROM processed_events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await
        .ok()?
        .get(0);
    // One note per good event (one user each): any extra note or extra sighting is a duplicate.
    let duplicated: i64 = client
        .query_one(
            "SELECT coalesce(sum(times_seen), 0) - count(DISTINCT user_id) FROM memory_notes",
            &[],
        )
        .await
        .ok()?
        .get(0);
    Some(Counts {
        applied: applied as usize,
        duplicated: duplicated as usize,
    })
}

/// Waits until every good event is applied, the poison is dead-lettered and the queue is empty
/// (or the scenario's time is up), then reads the outcome.
/// What a scenario sent and injected.
struct Plan {
    scenario: &'static str,
    messages: usize,
    faults: usize,
    poison: usize,
}

async fn settle(
    plan: Plan,
    started: Instant,
    db_url: &str,
    queue: &TestQueue,
    good: &[ElaborationCompleted],
) -> Row {
    let Plan {
        scenario,
        messages,
        faults,
        poison,
    } = plan;
    let deadline = started + SCENARIO_LIMIT;
    loop {
        let applied = counts(db_url, good).await.map(|c| c.applied);
        let (main, dlq) = (queue.count().await, queue.dlq_count().await);
        if applied == Some(good.len()) && dlq >= poison && main == 0 {
            break;
        }
        if Instant::now() > deadline {
            let _ = writeln!(
                std::io::stderr(),
                "{scenario}: not settled within {SCENARIO_LIMIT:?} (applied {applied:?}, queue {main}, DLQ {dlq})"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let c = counts(db_url, good).await.expect("counting the outcome");
    let dead = queue.drain_dlq().await;
    let good_bodies: std::collections::HashSet<String> =
        good.iter().map(ElaborationCompleted::to_body).collect();
    let good_dead_lettered = dead
        .iter()
        .filter(|m| good_bodies.contains(m.body().unwrap_or_default()))
        .count();
    Row {
        scenario,
        messages,
        faults,
        applied_once: c.applied,
        lost: good.len() - c.applied - good_dead_lettered.min(good.len() - c.applied),
        duplicated: c.duplicated,
        dead_lettered: dead.len(),
        poison,
        good_dead_lettered,
        seconds,
    }
}

/// Prints why records failed, grouped, when a scenario did not hold.
fn report_failures(row: &Row, good: usize, failures: &Failures) {
    if row.as_expected(good) {
        return;
    }
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for f in &failures {
        let kind: String = f
            .split_once(": ")
            .map_or(f.as_str(), |(_, e)| e)
            .chars()
            .take(160)
            .collect();
        *kinds.entry(kind).or_default() += 1;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{}: {} record failures:",
        row.scenario,
        failures.len()
    );
    for (kind, n) in kinds {
        let _ = writeln!(std::io::stderr(), "  {n:>5} x {kind}");
    }
}

/// Why records failed, across a scenario (printed when it does not hold).
type Failures = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The consumer in process, polling `queue` until the returned sender is used or dropped.
fn poll_in_process(
    consumer: Consumer,
    poller: Poller,
    failures: Failures,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        poller
            .run(
                move |batch| {
                    let consumer = consumer.clone();
                    let failures = failures.clone();
                    async move {
                        let report = handle_batch(&consumer, batch).await;
                        if let Ok(mut f) = failures.lock() {
                            f.extend(report.failures().map(|(id, e)| format!("{id}: {e}")));
                        }
                        report.to_response()
                    }
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await;
    });
    (stop, task)
}

async fn poller(queue: &TestQueue) -> Poller {
    Poller::new(queue.client.clone(), queue.url.clone())
        .await
        .unwrap()
        .with_wait_time(Duration::from_secs(1))
}

/// A pool that gives up on a dead database in about a second.
async fn fast_failing_db(url: &str, application_name: &str) -> Db {
    let env = Env::from_pairs([
        ("DATABASE_URL", url),
        ("DB_APPLICATION_NAME", application_name),
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
        ("DB_POOL_WAIT_TIMEOUT_MS", "2000"),
        ("DB_STATEMENT_TIMEOUT_MS", "5000"),
    ]);
    Db::connect(&DbConfig::from_env(&env, 4).unwrap())
        .await
        .unwrap()
}

async fn send_all(queue: &TestQueue, bodies: &[String]) {
    for chunk in bodies.chunks(20) {
        futures::future::join_all(chunk.iter().map(|b| queue.send(b))).await;
    }
}

async fn processed(db_url: &str, good: &[ElaborationCompleted]) -> usize {
    counts(db_url, good).await.map(|c| c.applied).unwrap_or(0)
}

/// (a) PostgreSQL stopped, then started, while 200 messages flow.
async fn postgres_restarted() -> (Row, usize) {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let url = cluster.url();
    let db = fast_failing_db(&url, "hikmah-faults-a").await;
    shared::db::migrate(&db).await.unwrap();
    let consumer = Consumer::postgres(db.clone(), embedder(), DedupPolicy::default());
    let queue = TestQueue::with_dlq("hikmah-faults-a", MAX_RECEIVES, VISIBILITY).await;
    let good = good_events("a", 200);
    send_all(
        &queue,
        &good.iter().map(|e| e.to_body()).collect::<Vec<_>>(),
    )
    .await;

    let failures = Failures::default();
    let started = Instant::now();
    let (stop, task) = poll_in_process(consumer, poller(&queue).await, failures.clone());
    // Mid-flow: stop the server, keep it down for 2 s, start it again.
    while processed(&url, &good).await < 50 && started.elapsed() < SCENARIO_LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        std::thread::sleep(Duration::from_secs(2));
        cluster.start_again();
        cluster
    })
    .await
    .unwrap();
    let row = settle(
        Plan {
            scenario: "(a) PostgreSQL restarted",
            messages: 200,
            faults: 1,
            poison: 0,
        },
        started,
        &url,
        &queue,
        &good,
    )
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    report_failures(&row, good.len(), &failures);
    db.close();
    queue.delete().await;
    drop(cluster);
    (row, good.len())
}

/// `hikmah serve` polling `queue` (its poller and the consumer's handler, as in the local runner).
fn start_consumer_process(tdb: &TestDb, queue: &TestQueue, log: &std::path::Path) -> Child {
    let model = embed_config();
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin("hikmah"))
        .arg("serve")
        .env("DATABASE_URL", tdb.url())
        .env("DB_APPLICATION_NAME", tdb.application_name())
        .env("MEMORY_QUEUE_URL", &queue.url)
        .env("EMBED_MODEL_DIR", &model.model_dir)
        .env("ORT_DYLIB_PATH", &model.ort_dylib_path)
        .env("PORT", "0")
        .env_remove("LLM_PROVIDER")
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawning hikmah serve")
}

/// Messages received and not yet deleted nor visible again.
async fn in_flight(queue: &TestQueue) -> usize {
    use aws_sdk_sqs::types::QueueAttributeName;
    queue
        .client
        .get_queue_attributes()
        .queue_url(&queue.url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .ok()
        .and_then(|out| {
            out.attributes()?
                .get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// (b) The consumer process SIGKILLed mid-batch, then started again.
async fn consumer_killed() -> (Row, usize) {
    let tdb = TestDb::new().await;
    let queue = TestQueue::with_dlq("hikmah-faults-b", MAX_RECEIVES, VISIBILITY).await;
    let good = good_events("b", 100);
    send_all(
        &queue,
        &good.iter().map(|e| e.to_body()).collect::<Vec<_>>(),
    )
    .await;
    let log = std::env::temp_dir().join(format!("hikmah-faults-b-{}.log", tdb.name()));

    let started = Instant::now();
    let mut child = start_consumer_process(&tdb, &queue, &log);
    // Mid-batch: some applied, and a received batch not yet deleted.
    while (processed(tdb.url(), &good).await < 30 || in_flight(&queue).await == 0)
        && started.elapsed() < SCENARIO_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGKILL: no shutdown handler runs; the batch in flight is cut where it stands.
    child.kill().unwrap();
    child.wait().unwrap();
    let cut = in_flight(&queue).await;
    let _ = writeln!(
        std::io::stderr(),
        "(b): killed with {cut} received messages not yet deleted"
    );
    let mut child = start_consumer_process(&tdb, &queue, &log);
    let row = settle(
        Plan {
            scenario: "(b) consumer SIGKILLed",
            messages: 100,
            faults: 1,
            poison: 0,
        },
        started,
        tdb.url(),
        &queue,
        &good,
    )
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    queue.delete().await;
    tdb.cleanup().await;
    (row, good.len())
}

/// (c) Every message delivered twice, plus 5% poison.
async fn delivered_twice_with_poison() -> (Row, usize) {
    let tdb = TestDb::new().await;
    let db = tdb.db().await;
    let consumer = Consumer::postgres(db.clone(), embedder(), DedupPolicy::default());
    let queue = TestQueue::with_dlq("hikmah-faults-c", MAX_RECEIVES, VISIBILITY).await;
    let good = good_events("c", 100);
    let bad = poison(10);
    let mut bodies = Vec::new();
    for (i, e) in good.iter().enumerate() {
        bodies.push(e.to_body());
        bodies.push(e.to_body());
        if i % 10 == 5 {
            bodies.push(bad[i / 10].clone());
        }
    }
    let messages = bodies.len();
    send_all(&queue, &bodies).await;
    let failures = Failures::default();
    let started = Instant::now();
    let (stop, task) = poll_in_process(consumer, poller(&queue).await, failures.clone());
    let row = settle(
        Plan {
            scenario: "(c) every message twice + 5% poison",
            messages,
            faults: good.len() + bad.len(),
            poison: bad.len(),
        },
        started,
        tdb.url(),
        &queue,
        &good,
    )
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    report_failures(&row, good.len(), &failures);
    db.close();
    queue.delete().await;
    tdb.cleanup().await;
    (row, good.len())
}

/// How many times (d) cuts the database connections.
const CUTS: usize = 30;

/// (d) A TCP proxy cutting the database connections at random points.
async fn connections_cut() -> (Row, usize) {
    let tdb = TestDb::new().await;
    let proxy = TcpProxy::start(upstream_of(tdb.url())).await;
    let db = fast_failing_db(&proxy.rewrite_url(tdb.url()), tdb.application_name()).await;
    let consumer = Consumer::postgres(db.clone(), embedder(), DedupPolicy::default());
    let queue = TestQueue::with_dlq("hikmah-faults-d", MAX_RECEIVES, VISIBILITY).await;
    let good = good_events("d", 100);
    send_all(
        &queue,
        &good.iter().map(|e| e.to_body()).collect::<Vec<_>>(),
    )
    .await;

    let failures = Failures::default();
    let started = Instant::now();
    let (stop, task) = poll_in_process(consumer, poller(&queue).await, failures.clone());
    // CUTS cuts at random points of the flow, 100..=610 ms apart. (Unbounded cutting for the
    // whole 150 s, ~2.6 cuts/s, dead-lettered 2 of 100 good messages after 5 failed receives:
    // with the compressed 2 s visibility timeout those 5 receives span 10 s, where in AWS they
    // span 30 min.)
    let cutter = tokio::spawn(async move {
        for _ in 0..CUTS {
            let pause = 100 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 2;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            proxy.set(Mode::Refuse);
            tokio::time::sleep(Duration::from_millis(20)).await;
            proxy.set(Mode::Open);
        }
        proxy
    });
    let _proxy = cutter.await.unwrap();
    let row = settle(
        Plan {
            scenario: "(d) connections cut at random",
            messages: 100,
            faults: CUTS,
            poison: 0,
        },
        started,
        tdb.url(),
        &queue,
        &good,
    )
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    report_failures(&row, good.len(), &failures);
    db.close();
    queue.delete().await;
    tdb.cleanup().await;
    (row, good.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_faults_every_good_message_is_applied_exactly_once_and_only_poison_is_dead_lettered()
{
    let mut rows = Vec::new();
    let mut goods = Vec::new();
    for (row, good) in [
        postgres_restarted().await,
        consumer_killed().await,
        delivered_twice_with_poison().await,
        connections_cut().await,
    ] {
        rows.push(row);
        goods.push(good);
    }
    let table = table(&rows);
    let _ = writeln!(std::io::stderr(), "\nfault suite:\n{table}");
    for (row, good) in rows.iter().zip(goods) {
        assert!(
            row.as_expected(good),
            "{} did not hold (good dead-lettered: {}):\n{table}",
            row.scenario,
            row.good_dead_lettered
        );
    }
}
