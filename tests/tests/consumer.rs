//! The memory consumer's handler against real PostgreSQL and the real model, invoked with
//! Lambda-shaped SQS event JSON: the original service's test plan and beyond.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::SqsEvent;
use hikmah_tests::events::event;
use hikmah_tests::model::embedder;
use hikmah_tests::pg::TestDb;
use hikmah_tests::proxy::{upstream_of, Mode, TcpProxy};
use hikmah_tests::sqs::{sqs_event_json, FIFO_ARN, STANDARD_ARN};
use memory_consumer::{handle_batch, BatchReport, Consumer, RecordError};
use shared::config::{DbConfig, Env};
use shared::db::Db;
use shared::events::ElaborationCompleted;
use shared::events::EventError;
use shared::memory::decide::Decider;
use shared::memory::dedup::DedupPolicy;
use shared::memory::extract::{DefaultExtractor, NoteExtractor};
use shared::memory::service::MemoryService;
use shared::memory::store::PgMemoryStore;

const PATIENCE: &str = "Patience is the key to relief.";
const PATIENCE_QUESTION: &str = "How do I stay patient when things go wrong?";

/// Pool settings for `tdb` reached through `proxy`, with short timeouts (plus `extra`).
fn proxied_config(
    tdb: &TestDb,
    proxy: &TcpProxy,
    extra: &[(&str, &str)],
    pool_size: usize,
) -> DbConfig {
    let mut pairs = tdb.env_pairs();
    pairs.retain(|(k, _)| k != "DATABASE_URL");
    pairs.push(("DATABASE_URL".to_owned(), proxy.rewrite_url(tdb.url())));
    let timeouts = [
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
        ("DB_RECYCLE_TIMEOUT_MS", "1000"),
        ("DB_STATEMENT_TIMEOUT_MS", "5000"),
    ];
    pairs.extend(
        timeouts
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    DbConfig::from_env(&Env::from_pairs(pairs), pool_size).unwrap()
}

/// A Lambda SQS event built from JSON (as Lambda sends it), one record per body.
fn batch_of(bodies: &[String], arn: &str) -> (SqsEvent, Vec<String>) {
    let records: Vec<(String, String)> = bodies
        .iter()
        .map(|b| (uuid::Uuid::new_v4().to_string(), b.clone()))
        .collect();
    let ids = records.iter().map(|(id, _)| id.clone()).collect();
    (
        serde_json::from_str(&sqs_event_json(&records, arn)).unwrap(),
        ids,
    )
}

fn batch(events: &[&ElaborationCompleted]) -> SqsEvent {
    batch_of(
        &events.iter().map(|e| e.to_body()).collect::<Vec<_>>(),
        STANDARD_ARN,
    )
    .0
}

/// The failed records' message ids, sorted.
fn failures(r: &BatchReport) -> Vec<String> {
    let mut ids: Vec<String> = r.failures().map(|(id, _)| id.to_owned()).collect();
    ids.sort();
    ids
}

/// Asserts every record was applied, naming each failure's reason otherwise.
#[track_caller]
fn assert_applied(r: &BatchReport) {
    let failed: Vec<String> = r.failures().map(|(id, e)| format!("{id}: {e}")).collect();
    assert!(failed.is_empty(), "records failed: {failed:#?}");
}

/// The reason each failed record failed, in batch order.
fn reasons(r: &BatchReport) -> Vec<&RecordError> {
    r.failures().map(|(_, e)| e).collect()
}

fn consumer_with(db: Db) -> Consumer {
    Consumer::postgres(db, embedder(), DedupPolicy::default())
}

struct Setup {
    tdb: TestDb,
    consumer: Consumer,
}

async fn setup() -> Setup {
    let tdb = TestDb::new().await;
    let consumer = consumer_with(tdb.db().await);
    Setup { tdb, consumer }
}

/// (content, times_seen) of the user's notes, oldest first.
async fn notes(tdb: &TestDb, user: &str) -> Vec<(String, i32)> {
    tdb.notes(user).await
}

async fn processed_events(tdb: &TestDb) -> i64 {
    tdb.admin()
        .await
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await
        .unwrap()
        .get(0)
}

/// Everything the consumer writes, for "nothing changed" comparisons.
async fn snapshot(tdb: &TestDb) -> Vec<String> {
    let admin = tdb.admin().await;
    let mut rows: Vec<String> = admin
        .query(
            "SELECT format('%s|%s|%s|%s|%s', user_id, content, times_seen, last_seen_at, source_event_id) FROM memory_notes ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let events = admin
        .query(
            "SELECT format('%s|%s|%s|%s|%s', event_id, user_id, processed_at, notes_added, notes_reinforced) FROM processed_events ORDER BY event_id",
            &[],
        )
        .await
        .unwrap();
    rows.extend(events.iter().map(|r| r.get::<_, String>(0)));
    rows
}

#[tokio::test]
async fn first_event_for_a_user_creates_its_notes() {
    let s = setup().await;
    let e = event("user-a", PATIENCE, Some(PATIENCE_QUESTION));
    let r = handle_batch(&s.consumer, batch(&[&e])).await;
    assert_applied(&r);
    assert_eq!(
        notes(&s.tdb, "user-a").await,
        vec![(PATIENCE.to_owned(), 1), (PATIENCE_QUESTION.to_owned(), 1)]
    );
    let row = s
        .tdb
        .admin()
        .await
        .query_one("SELECT user_id, notes_added, notes_reinforced FROM processed_events WHERE event_id = $1", &[&e
            .event_id
            .as_uuid()])
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, i32>(2)
        ),
        ("user-a".into(), 2, 0)
    );
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn the_same_content_under_a_new_event_id_reinforces_instead_of_adding() {
    let s = setup().await;
    let first = event("user-a", PATIENCE, Some(PATIENCE_QUESTION));
    let again = event("user-a", PATIENCE, Some(PATIENCE_QUESTION));
    assert_ne!(first.event_id, again.event_id);
    assert_applied(&handle_batch(&s.consumer, batch(&[&first])).await);
    assert_applied(&handle_batch(&s.consumer, batch(&[&again])).await);
    assert_eq!(
        notes(&s.tdb, "user-a").await,
        vec![(PATIENCE.to_owned(), 2), (PATIENCE_QUESTION.to_owned(), 2)]
    );
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn a_paraphrase_adds_no_note_and_reinforces_the_original() {
    let s = setup().await;
    let first = event("user-a", PATIENCE, None);
    let paraphrase = event("user-a", "Relief comes through patience.", None);
    assert_applied(&handle_batch(&s.consumer, batch(&[&first])).await);
    assert_applied(&handle_batch(&s.consumer, batch(&[&paraphrase])).await);
    assert_eq!(
        notes(&s.tdb, "user-a").await,
        vec![(PATIENCE.to_owned(), 2)]
    );
    s.tdb.cleanup().await;
}

/// (content, reason, event_id) of the variants of the user's notes, oldest first.
async fn variants(tdb: &TestDb, user: &str) -> Vec<(String, String, uuid::Uuid)> {
    tdb.admin()
        .await
        .query(
            "SELECT v.content, v.reason, v.event_id FROM note_variants v \
             JOIN memory_notes n ON n.id = v.note_id WHERE n.user_id = $1 ORDER BY v.id",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn a_merged_paraphrase_is_kept_as_a_variant_and_an_exact_repeat_only_reinforces() {
    let s = setup().await;
    let first = event("user-a", PATIENCE, None);
    let paraphrase = event("user-a", "Relief comes through patience.", None);
    let exact = event("user-a", "patience is the KEY to relief", None);
    for e in [&first, &paraphrase, &exact] {
        assert_applied(&handle_batch(&s.consumer, batch(&[e])).await);
    }
    assert_eq!(
        notes(&s.tdb, "user-a").await,
        vec![(PATIENCE.to_owned(), 3)]
    );
    assert_eq!(
        variants(&s.tdb, "user-a").await,
        vec![(
            "Relief comes through patience.".to_owned(),
            "semantic_match".to_owned(),
            paraphrase.event_id.as_uuid()
        )],
        "the paraphrase is a variant; the exact repeat is not"
    );
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn variants_are_bounded_to_the_most_recent_per_note() {
    let tdb = TestDb::new().await;
    let db = tdb.db().await;
    let service =
        MemoryService::postgres_with_variants(db.clone(), embedder(), DedupPolicy::default(), 2);
    let consumer = Consumer::new(service, db, 1);
    let paraphrases = [
        "Relief comes through patience.",
        "Patience is the key to relief!!",
        "Relief comes through patience, truly.",
        "Relief comes with patience.",
    ];
    assert_applied(&handle_batch(&consumer, batch(&[&event("user-v", PATIENCE, None)])).await);
    for p in paraphrases {
        assert_applied(&handle_batch(&consumer, batch(&[&event("user-v", p, None)])).await);
    }
    let kept: Vec<String> = variants(&tdb, "user-v")
        .await
        .into_iter()
        .map(|v| v.0)
        .collect();
    let semantic: Vec<&str> = paraphrases
        .iter()
        .copied()
        .filter(|p| {
            shared::memory::normalize::content_hash(p)
                != shared::memory::normalize::content_hash(PATIENCE)
        })
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept, semantic[semantic.len() - 2..].to_vec());
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_negation_of_an_existing_note_is_kept_as_a_new_note() {
    let s = setup().await;
    let a = event("user-a", "She finds it easy to forgive others.", None);
    let b = event("user-a", "She finds it hard to forgive others.", None);
    assert_applied(&handle_batch(&s.consumer, batch(&[&a])).await);
    assert_applied(&handle_batch(&s.consumer, batch(&[&b])).await);
    assert_eq!(notes(&s.tdb, "user-a").await.len(), 2);
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn a_different_users_event_touches_only_that_users_notes() {
    let s = setup().await;
    let a = event("user-a", PATIENCE, None);
    assert_applied(&handle_batch(&s.consumer, batch(&[&a])).await);
    let before = notes(&s.tdb, "user-a").await;
    let b = event("user-b", PATIENCE, None);
    assert_applied(&handle_batch(&s.consumer, batch(&[&b])).await);
    assert_eq!(
        notes(&s.tdb, "user-b").await,
        vec![(PATIENCE.to_owned(), 1)]
    );
    assert_eq!(notes(&s.tdb, "user-a").await, before);
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn five_users_in_one_batch_are_all_applied() {
    let s = setup().await;
    let events: Vec<ElaborationCompleted> = (0..5)
        .map(|i| {
            event(
                &format!("user-{i}"),
                &format!("Wisdom number {i} about patience and gratitude."),
                None,
            )
        })
        .collect();
    let r = handle_batch(&s.consumer, batch(&events.iter().collect::<Vec<_>>())).await;
    assert_applied(&r);
    for i in 0..5 {
        assert_eq!(
            notes(&s.tdb, &format!("user-{i}")).await.len(),
            1,
            "user-{i}"
        );
    }
    assert_eq!(processed_events(&s.tdb).await, 5);
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn fifty_identical_events_through_concurrent_invocations_make_exactly_one_note() {
    let tdb = TestDb::new().await;
    // Five execution environments, each with its own pool, each invoked with 10 of the events.
    let mut consumers = Vec::new();
    for _ in 0..5 {
        consumers.push(consumer_with(tdb.db().await));
    }
    let events: Vec<ElaborationCompleted> =
        (0..50).map(|_| event("user-a", PATIENCE, None)).collect();
    let invocations = consumers.iter().zip(events.chunks(10)).map(|(c, chunk)| {
        let b = batch(&chunk.iter().collect::<Vec<_>>());
        let c = c.clone();
        tokio::spawn(async move { handle_batch(&c, b).await })
    });
    for r in futures::future::join_all(invocations).await {
        let r = r.unwrap();
        assert_applied(&r);
    }
    assert_eq!(notes(&tdb, "user-a").await, vec![(PATIENCE.to_owned(), 50)]);
    assert_eq!(processed_events(&tdb).await, 50);
    tdb.cleanup().await;
}

#[tokio::test]
async fn the_same_sqs_event_delivered_twice_changes_nothing_the_second_time() {
    let s = setup().await;
    let events: Vec<ElaborationCompleted> = vec![
        event("user-a", PATIENCE, Some(PATIENCE_QUESTION)),
        event("user-b", "Gratitude turns what we have into enough.", None),
        event("user-a", PATIENCE, None),
    ];
    let delivery = batch(&events.iter().collect::<Vec<_>>());
    assert_applied(&handle_batch(&s.consumer, delivery.clone()).await);
    let after_first = snapshot(&s.tdb).await;
    assert_applied(&handle_batch(&s.consumer, delivery).await);
    assert_eq!(snapshot(&s.tdb).await, after_first);
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn malformed_bodies_and_an_unknown_version_fail_only_their_own_records() {
    let s = setup().await;
    let mut bodies: Vec<String> = (0..7)
        .map(|i| {
            event(
                &format!("user-{i}"),
                &format!("Good wisdom number {i}."),
                None,
            )
            .to_body()
        })
        .collect();
    let mut unknown: serde_json::Value =
        serde_json::from_str(&event("user-x", PATIENCE, None).to_body()).unwrap();
    unknown["version"] = serde_json::json!(2);
    bodies.insert(2, "{not json".into());
    bodies.insert(5, r#"{"version": 1, "event_id": "not-a-uuid"}"#.into());
    bodies.insert(8, unknown.to_string());
    let (event, ids) = batch_of(&bodies, STANDARD_ARN);
    assert_eq!(event.records.len(), 10);

    let r = handle_batch(&s.consumer, event).await;
    let mut expected = vec![ids[2].clone(), ids[5].clone(), ids[8].clone()];
    expected.sort();
    assert_eq!(failures(&r), expected);
    let why = reasons(&r);
    assert!(
        matches!(
            why[..],
            [
                RecordError::Event(EventError::Malformed(_)),
                RecordError::Event(EventError::Malformed(_)),
                RecordError::Event(EventError::UnknownVersion { .. }),
            ]
        ),
        "{why:?}"
    );
    assert_eq!(processed_events(&s.tdb).await, 7);
    assert!(notes(&s.tdb, "user-x").await.is_empty());
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn a_fifo_batch_stops_at_the_first_failure_and_reports_every_later_record() {
    let s = setup().await;
    let bodies: Vec<String> = vec![
        event("user-a", "First wisdom.", None).to_body(),
        "{not json".into(),
        event("user-a", "Third wisdom.", None).to_body(),
        event("user-b", "Fourth wisdom.", None).to_body(),
    ];
    let (event, ids) = batch_of(&bodies, FIFO_ARN);
    let r = handle_batch(&s.consumer, event).await;
    let mut expected = ids[1..].to_vec();
    expected.sort();
    assert_eq!(failures(&r), expected);
    let why = reasons(&r);
    assert!(
        matches!(
            why[..],
            [
                RecordError::Event(_),
                RecordError::SkippedAfterFifoFailure,
                RecordError::SkippedAfterFifoFailure,
            ]
        ),
        "{why:?}"
    );
    assert_eq!(processed_events(&s.tdb).await, 1);
    s.tdb.cleanup().await;
}

/// An extractor that panics on one marker, to prove a panic fails only its record.
struct PanicsOn(&'static str);

impl NoteExtractor for PanicsOn {
    fn extract(&self, event: &ElaborationCompleted) -> Vec<String> {
        assert!(
            !event.hikmah.contains(self.0),
            "extractor bug triggered by {}",
            self.0
        );
        DefaultExtractor.extract(event)
    }
}

#[tokio::test]
async fn a_panicking_record_is_a_failed_record_not_a_crashed_batch() {
    let tdb = TestDb::new().await;
    let db = tdb.db().await;
    let service = MemoryService::new(
        Arc::new(PanicsOn("BOOM")),
        Arc::new(embedder()),
        Arc::new(PgMemoryStore::new(
            db.clone(),
            Decider::new(DedupPolicy::default(), Arc::new(embedder())),
        )),
    );
    let consumer = Consumer::new(service, db, 4);
    let bodies = vec![
        event("user-a", "Fine wisdom one.", None).to_body(),
        event("user-a", "BOOM wisdom.", None).to_body(),
        event("user-b", "Fine wisdom two.", None).to_body(),
    ];
    let (event, ids) = batch_of(&bodies, STANDARD_ARN);
    let r = handle_batch(&consumer, event).await;
    assert_eq!(failures(&r), vec![ids[1].clone()]);
    assert!(
        matches!(reasons(&r)[..], [RecordError::Panicked(m)] if m.contains("extractor bug triggered by BOOM")),
        "{:?}",
        reasons(&r)
    );
    assert_eq!(processed_events(&tdb).await, 2);
    tdb.cleanup().await;
}

#[tokio::test]
async fn stale_connections_between_invocations() {
    let s = setup().await;
    let first = event("user-a", PATIENCE, None);
    assert_applied(&handle_batch(&s.consumer, batch(&[&first])).await);

    // As if the server (or a proxy, or an idle timeout) closed every connection while the
    // execution environment was frozen.
    assert!(s.tdb.terminate_app_backends().await >= 1);

    let events: Vec<ElaborationCompleted> = (0..6)
        .map(|i| {
            event(
                &format!("user-{i}"),
                &format!("Wisdom {i} after the restart."),
                None,
            )
        })
        .collect();
    let r = handle_batch(&s.consumer, batch(&events.iter().collect::<Vec<_>>())).await;
    assert_applied(&r);
    assert_eq!(processed_events(&s.tdb).await, 7);
    s.tdb.cleanup().await;
}

#[tokio::test]
async fn database_unreachable_fails_records_within_the_timeouts_and_redelivery_applies_once() {
    let tdb = TestDb::new().await;
    let proxy = TcpProxy::start(upstream_of(tdb.url())).await;
    let cfg = proxied_config(&tdb, &proxy, &[("DB_POOL_WAIT_TIMEOUT_MS", "3000")], 4);
    let consumer = consumer_with(Db::connect(&cfg).await.unwrap());

    let warm = event("user-a", PATIENCE, None);
    assert_applied(&handle_batch(&consumer, batch(&[&warm])).await);

    let events: Vec<ElaborationCompleted> = (0..3)
        .map(|i| {
            event(
                &format!("user-{i}"),
                &format!("Wisdom {i} during the outage."),
                None,
            )
        })
        .collect();
    let delivery = batch(&events.iter().collect::<Vec<_>>());
    for mode in [Mode::Blackhole, Mode::Refuse] {
        proxy.set(mode);
        let started = Instant::now();
        let r = handle_batch(&consumer, delivery.clone()).await;
        let took = started.elapsed();
        let why = reasons(&r);
        assert_eq!(why.len(), 3, "{mode:?}: {why:?}");
        assert!(
            why.iter()
                .all(|e| matches!(e, RecordError::Memory(m) if m.is_connection())),
            "{mode:?}: {why:?}"
        );
        // Connect (1 s) twice per record (one retry) plus waits: seconds, never the Lambda timeout.
        assert!(
            took < Duration::from_secs(30),
            "{mode:?}: failing took {took:?}"
        );
    }

    proxy.set(Mode::Open);
    let r = handle_batch(&consumer, delivery.clone()).await;
    assert_applied(&r);
    let r = handle_batch(&consumer, delivery).await;
    assert_applied(&r);
    for i in 0..3 {
        assert_eq!(
            notes(&tdb, &format!("user-{i}")).await,
            vec![(format!("Wisdom {i} during the outage."), 1)]
        );
    }
    assert_eq!(processed_events(&tdb).await, 4);
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_database_that_goes_silent_mid_transaction_fails_the_record_at_the_record_timeout() {
    let tdb = TestDb::new().await;
    let proxy = TcpProxy::start(upstream_of(tdb.url())).await;
    let cfg = proxied_config(&tdb, &proxy, &[], 2);
    let consumer =
        consumer_with(Db::connect(&cfg).await.unwrap()).with_record_timeout(Duration::from_secs(3));
    let warm = event("user-w", PATIENCE, None);
    assert_applied(&handle_batch(&consumer, batch(&[&warm])).await);

    // Hold the user's lock from outside the proxy so the record's query is in flight, then
    // partition the network: the server's answer (even its statement timeout) never arrives.
    let mut admin = tdb.admin().await;
    let lock_holder = admin.transaction().await.unwrap();
    lock_holder
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
            &[&"user-s", &shared::memory::store::USER_LOCK_SEED],
        )
        .await
        .unwrap();
    let stalled = event("user-s", "Wisdom sent into a partition.", None);
    let delivery = batch(&[&stalled]);
    let started = Instant::now();
    let invocation = {
        let (consumer, delivery) = (consumer.clone(), delivery.clone());
        tokio::spawn(async move { handle_batch(&consumer, delivery).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set(Mode::Stall);
    let r = tokio::time::timeout(Duration::from_secs(20), invocation)
        .await
        .expect("the invocation must not hang")
        .unwrap();
    assert!(
        matches!(reasons(&r)[..], [RecordError::TimedOut(_)]),
        "{:?}",
        reasons(&r)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    lock_holder.rollback().await.unwrap();

    proxy.set(Mode::Open);
    let r = handle_batch(&consumer, delivery).await;
    assert_applied(&r);
    assert_eq!(
        notes(&tdb, "user-s").await,
        vec![("Wisdom sent into a partition.".to_owned(), 1)]
    );
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn candidates_of_one_event_are_deduplicated_among_themselves() {
    let s = setup().await;
    let e = event("user-a", PATIENCE, Some("Relief comes through patience."));
    let r = handle_batch(&s.consumer, batch(&[&e])).await;
    assert_applied(&r);
    assert_eq!(
        notes(&s.tdb, "user-a").await,
        vec![(PATIENCE.to_owned(), 1)]
    );
    let row = s
        .tdb
        .admin()
        .await
        .query_one(
            "SELECT notes_added, notes_reinforced FROM processed_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 0));
    s.tdb.cleanup().await;
}

fn lambda_event(payload: SqsEvent, deadline_in: Duration) -> lambda_http::LambdaEvent<SqsEvent> {
    let mut context = lambda_http::Context::default();
    let deadline = std::time::SystemTime::now() + deadline_in;
    context.deadline = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    lambda_http::LambdaEvent::new(payload, context)
}

#[tokio::test]
async fn the_lambda_deadline_leaves_normal_records_alone_and_bounds_stuck_ones() {
    let s = setup().await;
    let e = event("user-a", PATIENCE, None);
    let r = memory_consumer::lambda::function_handler(
        &s.consumer,
        lambda_event(batch(&[&e]), Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert!(r.batch_item_failures.is_empty(), "{r:?}");
    assert_eq!(
        notes(&s.tdb, "user-a").await,
        vec![(PATIENCE.to_owned(), 1)]
    );

    // A record stuck behind another session's lock of its user: reported before the deadline.
    let mut admin = s.tdb.admin().await;
    let holder = admin.transaction().await.unwrap();
    holder
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
            &[&"user-a", &shared::memory::store::USER_LOCK_SEED],
        )
        .await
        .unwrap();
    let stuck = event("user-a", "A wisdom that waits for its lock.", None);
    let started = Instant::now();
    let r = memory_consumer::lambda::function_handler(
        &s.consumer,
        lambda_event(batch(&[&stuck]), Duration::from_secs(3)),
    )
    .await
    .unwrap();
    assert_eq!(r.batch_item_failures.len(), 1, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "reported after the deadline: {:?}",
        started.elapsed()
    );
    holder.rollback().await.unwrap();
    s.tdb.cleanup().await;
}
