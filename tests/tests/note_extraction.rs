//! LLM note extraction (`NOTE_EXTRACTOR=llm`) in the consumer, against the fake OpenAI server (the
//! only fake), real PostgreSQL and the real model: a valid answer becomes notes re-rendered from
//! its fields; invalid JSON, an oversized answer and a provider that is too slow each fall back to
//! the deterministic notes, and the record still succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hikmah_tests::events::event;
use hikmah_tests::fake_llm::{FakeLlm, Script};
use hikmah_tests::model::{embed_config, embedder};
use hikmah_tests::pg::TestDb;
use hikmah_tests::sqs::{sqs_event_json, STANDARD_ARN};
use memory_consumer::{handle_batch, Consumer};
use shared::config::Env;
use shared::events::ElaborationCompleted;
use shared::llm::OpenAiProvider;
use shared::memory::decide::Decider;
use shared::memory::dedup::DedupPolicy;
use shared::memory::extract::{DefaultExtractor, NoteExtractor};
use shared::memory::llm_extract::LlmExtractor;
use shared::memory::service::{ApplyOutcome, Extraction, MemoryService};
use shared::memory::store::PgMemoryStore;

const HIKMAH: &str = "Patience is the key to relief.";
const QUESTION: &str = "How do I stay patient while waiting for news about a job?";
const VALID: &str = r#"{"notes": [{"kind": "interest", "text": "patience in hard times"},
  {"kind": "situation", "text": "waiting for news\u0000 about a job"},
  {"kind": "asked", "text": "how to stay patient while waiting"}]}"#;

fn the_event() -> ElaborationCompleted {
    event("u-llm", HIKMAH, Some(QUESTION))
}

/// A consumer whose service asks the fake at `fake` first, with `timeout`.
fn consumer(db: shared::db::Db, fake: &FakeLlm, timeout: Duration) -> Consumer {
    let provider = OpenAiProvider::with_settings(
        &fake.base_url(),
        None,
        "fake-model",
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .unwrap();
    let service = MemoryService::new(
        Arc::new(DefaultExtractor),
        Arc::new(embedder()),
        Arc::new(PgMemoryStore::new(
            db.clone(),
            Decider::new(DedupPolicy::default(), Arc::new(embedder())),
        )),
    )
    .with_llm_extractor(LlmExtractor::new(Arc::new(provider), timeout));
    Consumer::new(service, db, 4)
}

async fn apply(consumer: &Consumer, event: &ElaborationCompleted) -> ApplyOutcome {
    let records = [(uuid::Uuid::new_v4().to_string(), event.to_body())];
    let batch = serde_json::from_str(&sqs_event_json(&records, STANDARD_ARN)).unwrap();
    let mut report = handle_batch(consumer, batch).await;
    report.records.remove(0).result.unwrap()
}

async fn stored(db: &TestDb, user: &str) -> Vec<String> {
    db.admin()
        .await
        .query(
            "SELECT content FROM memory_notes WHERE user_id = $1 ORDER BY id",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_valid_answer_becomes_notes_rendered_from_its_fields_never_the_raw_text() {
    let db = TestDb::new().await;
    let fake = FakeLlm::start(Script::chunks(
        &[&VALID[..40], &VALID[40..]],
        Duration::from_millis(5),
    ))
    .await;
    let e = the_event();
    let outcome = apply(&consumer(db.db().await, &fake, Duration::from_secs(5)), &e).await;
    assert_eq!(outcome.extraction, Extraction::Llm);
    let notes = stored(&db, "u-llm").await;
    assert_eq!(
        notes,
        [
            "Interested in: patience in hard times",
            "Situation: waiting for news about a job",
            "Asked: how to stay patient while waiting",
        ]
    );
    for note in &notes {
        assert!(!note.contains('{') && !note.contains('"') && !note.contains('\0'));
    }
    // The provider was asked about this event: hikmah, question and elaboration.
    let prompt = &fake.user_prompts()[0];
    assert!(
        prompt.contains(HIKMAH) && prompt.contains(QUESTION),
        "{prompt}"
    );
    assert!(prompt.contains(&e.elaboration), "{prompt}");
}

/// The deterministic notes of the event, as they are stored without an LLM.
fn default_notes() -> Vec<String> {
    DefaultExtractor.extract(&the_event())
}

#[tokio::test]
async fn invalid_json_falls_back_to_the_default_notes() {
    let db = TestDb::new().await;
    let fake = FakeLlm::start(Script::chunks(
        &["Sure! The user likes patience."],
        Duration::from_millis(5),
    ))
    .await;
    let outcome = apply(
        &consumer(db.db().await, &fake, Duration::from_secs(5)),
        &the_event(),
    )
    .await;
    assert_eq!(outcome.extraction, Extraction::LlmFallback);
    assert_eq!(stored(&db, "u-llm").await, default_notes());
}

#[tokio::test]
async fn an_oversized_answer_falls_back_to_the_default_notes() {
    let db = TestDb::new().await;
    let chunk = format!(
        r#"{{"notes": [{{"kind": "interest", "text": "{}"#,
        "x".repeat(500)
    );
    let rest = "y".repeat(500);
    let chunks: Vec<&str> = std::iter::once(chunk.as_str())
        .chain(std::iter::repeat_n(rest.as_str(), 6))
        .collect();
    let fake = FakeLlm::start(Script::chunks(&chunks, Duration::from_millis(5))).await;
    let outcome = apply(
        &consumer(db.db().await, &fake, Duration::from_secs(5)),
        &the_event(),
    )
    .await;
    assert_eq!(outcome.extraction, Extraction::LlmFallback);
    assert_eq!(stored(&db, "u-llm").await, default_notes());
}

#[tokio::test]
async fn a_provider_slower_than_the_timeout_falls_back_to_the_default_notes_in_time() {
    let db = TestDb::new().await;
    let fake = FakeLlm::start(Script::chunks(&[VALID], Duration::from_secs(5))).await;
    let started = Instant::now();
    let outcome = apply(
        &consumer(db.db().await, &fake, Duration::from_millis(300)),
        &the_event(),
    )
    .await;
    assert_eq!(outcome.extraction, Extraction::LlmFallback);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "gave up at the timeout, not when the provider answered"
    );
    assert_eq!(stored(&db, "u-llm").await, default_notes());
}

#[tokio::test]
async fn note_extractor_llm_is_wired_by_the_consumers_composition_root() {
    let db = TestDb::new().await;
    let fake = FakeLlm::start(Script::chunks(&[VALID], Duration::from_millis(5))).await;
    let embed = embed_config();
    let mut pairs = db.env_pairs();
    for (k, v) in [
        ("NOTE_EXTRACTOR", "llm".to_owned()),
        ("LLM_PROVIDER", "openai".to_owned()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("LLM_MODEL", "fake-model".to_owned()),
        ("EMBED_MODEL_DIR", embed.model_dir.display().to_string()),
        ("ORT_DYLIB_PATH", embed.ort_dylib_path.display().to_string()),
    ] {
        pairs.push((k.to_owned(), v));
    }
    let consumer = Consumer::from_env(&Env::from_pairs(pairs.clone()))
        .await
        .unwrap();
    let outcome = apply(&consumer, &the_event()).await;
    assert_eq!(outcome.extraction, Extraction::Llm);
    assert_eq!(stored(&db, "u-llm").await.len(), 3);

    // The offline provider cannot extract anything: refused at start, naming the variable.
    pairs.retain(|(k, _)| k != "LLM_PROVIDER" && k != "OPENAI_BASE_URL");
    pairs.push(("LLM_PROVIDER".into(), "offline".into()));
    let err = Consumer::from_env(&Env::from_pairs(pairs))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOTE_EXTRACTOR"), "{err}");
}
