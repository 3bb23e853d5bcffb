//! The optional LLM judge for the ambiguous band (`DEDUP_JUDGE=llm`), end to end: the consumer's
//! handler against real PostgreSQL and the real model, the judge asking the fake OpenAI server
//! over its real SSE wire format. The pairs' cosines are the real model's (band 0.70..0.90,
//! threshold 0.80):
//! - "Patience is the key to relief." / "Patience is what unlocks relief." 0.74: the rules keep
//!   them apart (below the threshold);
//! - "Patience is the key to relief." / "Relief comes with patience." 0.87: the rules merge them;
//! - "How do I stay patient when things go wrong?" / "How do I keep my patience when life goes
//!   wrong?" 0.81: the rules merge them.

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::SqsEvent;
use hikmah_tests::events::event;
use hikmah_tests::fake_llm::{FakeLlm, Script};
use hikmah_tests::model::embedder;
use hikmah_tests::pg::TestDb;
use hikmah_tests::sqs::{sqs_event_json, STANDARD_ARN};
use memory_consumer::{handle_batch, BatchReport, Consumer};
use shared::aws::AwsConfig;
use shared::config::{Env, GenerationLimits, JudgeConfig};
use shared::events::ElaborationCompleted;
use shared::memory::dedup::DedupPolicy;
use shared::memory::judge::{Judge, SYSTEM};
use shared::memory::service::MemoryService;

const PATIENCE: &str = "Patience is the key to relief.";
/// 0.74 with [`PATIENCE`]: the rules keep it apart.
const UNLOCKS: &str = "Patience is what unlocks relief.";
/// 0.87 with [`PATIENCE`]: the rules merge it.
const WITH_PATIENCE: &str = "Relief comes with patience.";
const QUESTION: &str = "How do I stay patient when things go wrong?";
/// 0.81 with [`QUESTION`]: the rules merge it.
const QUESTION_REWORDED: &str = "How do I keep my patience when life goes wrong?";

fn batch(e: &ElaborationCompleted) -> SqsEvent {
    let records = [(uuid::Uuid::new_v4().to_string(), e.to_body())];
    serde_json::from_str(&sqs_event_json(&records, STANDARD_ARN)).unwrap()
}

#[track_caller]
fn assert_applied(r: &BatchReport) {
    let failed: Vec<String> = r.failures().map(|(id, e)| format!("{id}: {e}")).collect();
    assert!(failed.is_empty(), "records failed: {failed:#?}");
}

/// The judge's settings pointing at `fake`, plus `extra` (`DEDUP_JUDGE_*`).
fn judge_env(fake: &FakeLlm, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs = vec![
        ("DEDUP_JUDGE".to_owned(), "llm".to_owned()),
        ("LLM_PROVIDER".to_owned(), "openai".to_owned()),
        ("OPENAI_BASE_URL".to_owned(), fake.base_url()),
        ("LLM_MODEL".to_owned(), "judge-model".to_owned()),
    ];
    pairs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    pairs
}

/// A consumer on `tdb` whose judge asks `fake` (default band, timeout and budget unless `extra`
/// sets them), built from the same configuration the composition root reads.
async fn judged_consumer(tdb: &TestDb, fake: &FakeLlm, extra: &[(&str, &str)]) -> Consumer {
    let cfg = JudgeConfig::from_env(&Env::from_pairs(judge_env(fake, extra)))
        .unwrap()
        .expect("DEDUP_JUDGE=llm");
    let judge = Judge::from_config(&cfg, &GenerationLimits::default(), &AwsConfig::new())
        .await
        .unwrap();
    let db = tdb.db().await;
    let policy = DedupPolicy::default();
    let service = MemoryService::postgres(db.clone(), embedder(), policy).with_judge(judge, policy);
    Consumer::new(service, db, 2)
}

/// (content, times_seen) of the user's notes, oldest first.
async fn notes(tdb: &TestDb, user: &str) -> Vec<(String, i32)> {
    tdb.notes(user).await
}

/// (content, reason) of the variants of the user's notes, oldest first.
async fn variants(tdb: &TestDb, user: &str) -> Vec<(String, String)> {
    tdb.admin()
        .await
        .query(
            "SELECT v.content, v.reason FROM note_variants v \
             JOIN memory_notes n ON n.id = v.note_id WHERE n.user_id = $1 ORDER BY v.id",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn owned(rows: &[(&str, i32)]) -> Vec<(String, i32)> {
    rows.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
}

/// Applies `first`, then `second`, one record per batch.
async fn apply_both(
    consumer: &Consumer,
    first: &ElaborationCompleted,
    second: &ElaborationCompleted,
) {
    assert_applied(&handle_batch(consumer, batch(first)).await);
    assert_applied(&handle_batch(consumer, batch(second)).await);
}

#[tokio::test]
async fn a_same_verdict_merges_an_in_band_paraphrase_the_rules_keep_apart() {
    let tdb = TestDb::new().await;
    // The answer arrives in two deltas, like a real stream.
    let fake = FakeLlm::start(Script::chunks(&[" Sa", "me\n"], Duration::ZERO)).await;
    let consumer = judged_consumer(&tdb, &fake, &[]).await;
    apply_both(
        &consumer,
        &event("user-j", PATIENCE, None),
        &event("user-j", UNLOCKS, None),
    )
    .await;

    assert_eq!(notes(&tdb, "user-j").await, owned(&[(PATIENCE, 2)]));
    assert_eq!(
        variants(&tdb, "user-j").await,
        [(UNLOCKS.to_owned(), "judged_same".to_owned())],
        "the merge is lossless: the candidate is a variant, with the judge as its reason"
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "the first event had nothing to judge");
    assert_eq!(requests[0]["model"], "judge-model");
    assert_eq!(requests[0]["messages"][0]["content"], SYSTEM);
    assert_eq!(
        fake.user_prompts(),
        [format!(
            "Note A: \"{PATIENCE}\"\nNote B: \"{UNLOCKS}\"\nSame or different?"
        )]
    );
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_different_verdict_keeps_apart_a_paraphrase_the_rules_merge() {
    let tdb = TestDb::new().await;
    let fake = FakeLlm::start(Script::says("DIFFERENT")).await;
    let consumer = judged_consumer(&tdb, &fake, &[]).await;
    apply_both(
        &consumer,
        &event("user-j", PATIENCE, None),
        &event("user-j", WITH_PATIENCE, None),
    )
    .await;
    assert_eq!(
        notes(&tdb, "user-j").await,
        owned(&[(PATIENCE, 1), (WITH_PATIENCE, 1)])
    );
    assert!(variants(&tdb, "user-j").await.is_empty());
    assert_eq!(fake.requests().len(), 1);
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn each_ambiguous_pair_of_a_record_gets_its_own_verdict() {
    let tdb = TestDb::new().await;
    let fake = FakeLlm::start(Script::by_prompt(
        &[("unlocks relief", Script::says("same"))],
        Script::says("different"),
    ))
    .await;
    let consumer = judged_consumer(&tdb, &fake, &[]).await;
    apply_both(
        &consumer,
        &event("user-j", PATIENCE, Some(QUESTION)),
        &event("user-j", UNLOCKS, Some(QUESTION_REWORDED)),
    )
    .await;
    assert_eq!(
        notes(&tdb, "user-j").await,
        owned(&[(PATIENCE, 2), (QUESTION, 1), (QUESTION_REWORDED, 1)])
    );
    assert_eq!(fake.requests().len(), 2, "both pairs asked, at once");
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_judge_that_does_not_answer_in_time_leaves_the_candidate_a_new_note() {
    let tdb = TestDb::new().await;
    let fake = FakeLlm::start(Script::chunks(&["same"], Duration::from_secs(30))).await;
    let consumer = judged_consumer(&tdb, &fake, &[("DEDUP_JUDGE_TIMEOUT_MS", "300")]).await;
    assert_applied(&handle_batch(&consumer, batch(&event("user-t", PATIENCE, None))).await);

    let started = Instant::now();
    assert_applied(&handle_batch(&consumer, batch(&event("user-t", WITH_PATIENCE, None))).await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the record waited for the judge ({took:?}) instead of its 300 ms timeout"
    );
    assert_eq!(
        notes(&tdb, "user-t").await,
        owned(&[(PATIENCE, 1), (WITH_PATIENCE, 1)]),
        "no verdict: kept as a new note, though the rules alone would merge it"
    );
    assert_eq!(fake.requests().len(), 1);
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_garbage_answer_or_a_provider_error_leaves_the_candidate_a_new_note() {
    let tdb = TestDb::new().await;
    let fake = FakeLlm::start(Script::says("same")).await;
    let consumer = judged_consumer(&tdb, &fake, &[]).await;
    let bad = [
        ("user-g1", Script::says("Yes, they are the same.")),
        ("user-g2", Script::says("{\"verdict\": \"same\"}")),
        ("user-g3", Script::says("same.")),
        ("user-g4", Script::says("")),
        ("user-g5", Script::fail(503, "overloaded")),
        ("user-g6", Script::dies_after(&["sa"], Duration::ZERO)),
    ];
    for (user, script) in bad {
        assert_applied(&handle_batch(&consumer, batch(&event(user, PATIENCE, None))).await);
        fake.set_script(script.clone());
        assert_applied(&handle_batch(&consumer, batch(&event(user, WITH_PATIENCE, None))).await);
        assert_eq!(
            notes(&tdb, user).await,
            owned(&[(PATIENCE, 1), (WITH_PATIENCE, 1)]),
            "{script:?}"
        );
    }
    assert_eq!(
        fake.requests().len(),
        6,
        "one judge call per user's second event"
    );
    drop(consumer);
    tdb.cleanup().await;
}

#[tokio::test]
async fn a_spent_budget_leaves_the_remaining_ambiguous_pairs_apart() {
    let tdb = TestDb::new().await;
    let fake = FakeLlm::start(Script::says("same")).await;
    let consumer = judged_consumer(&tdb, &fake, &[("DEDUP_JUDGE_BUDGET", "1")]).await;
    apply_both(
        &consumer,
        &event("user-b", PATIENCE, Some(QUESTION)),
        &event("user-b", UNLOCKS, Some(QUESTION_REWORDED)),
    )
    .await;
    // The first candidate's pair is asked (same: merged); the question's pair, which the rules
    // alone would merge, is not asked, so it is kept apart.
    assert_eq!(
        notes(&tdb, "user-b").await,
        owned(&[(PATIENCE, 2), (QUESTION, 1), (QUESTION_REWORDED, 1)])
    );
    assert_eq!(fake.requests().len(), 1);
    drop(consumer);
    tdb.cleanup().await;
}

/// The composition root's environment: the test database, the model files, then `extra`.
fn consumer_env(tdb: &TestDb, extra: Vec<(String, String)>) -> Env {
    let mut pairs = tdb.env_pairs();
    for name in ["EMBED_MODEL_DIR", "ORT_DYLIB_PATH"] {
        if let Ok(v) = std::env::var(name) {
            pairs.push((name.to_owned(), v));
        }
    }
    pairs.extend(extra);
    Env::from_pairs(pairs)
}

#[tokio::test]
async fn the_composition_root_asks_the_provider_only_with_dedup_judge_llm() {
    let tdb = TestDb::new().await;
    let fake = FakeLlm::start(Script::says("same")).await;

    // A provider is configured, but DEDUP_JUDGE is unset (= rules): it is never called.
    let mut provider_only = judge_env(&fake, &[]);
    provider_only.retain(|(k, _)| k != "DEDUP_JUDGE");
    let rules = Consumer::from_env(&consumer_env(&tdb, provider_only))
        .await
        .unwrap();
    apply_both(
        &rules,
        &event("user-r", PATIENCE, None),
        &event("user-r", UNLOCKS, None),
    )
    .await;
    assert_eq!(
        notes(&tdb, "user-r").await,
        owned(&[(PATIENCE, 1), (UNLOCKS, 1)])
    );
    assert!(
        fake.requests().is_empty(),
        "DEDUP_JUDGE=rules called the provider"
    );
    drop(rules);

    let judged = Consumer::from_env(&consumer_env(&tdb, judge_env(&fake, &[])))
        .await
        .unwrap();
    apply_both(
        &judged,
        &event("user-l", PATIENCE, None),
        &event("user-l", UNLOCKS, None),
    )
    .await;
    assert_eq!(notes(&tdb, "user-l").await, owned(&[(PATIENCE, 2)]));
    assert_eq!(fake.requests().len(), 1);
    drop(judged);

    // The offline provider cannot judge: a start-up error naming DEDUP_JUDGE.
    let mut offline = judge_env(&fake, &[]);
    offline.retain(|(k, _)| k != "LLM_PROVIDER");
    offline.push(("LLM_PROVIDER".into(), "offline".into()));
    let err = Consumer::from_env(&consumer_env(&tdb, offline))
        .await
        .expect_err("DEDUP_JUDGE=llm with the offline provider is a start-up error");
    assert!(err.to_string().contains("DEDUP_JUDGE"), "{err}");
    tdb.cleanup().await;
}

/// `hikmah dedup --eval FILE --split all --json --judge` with the judge asking `fake`.
fn eval_with_judge(file: &std::path::Path, env: &[(String, String)]) -> std::process::Output {
    std::process::Command::new(hikmah_tests::bins::bin("hikmah"))
        .args(["dedup", "--eval"])
        .arg(file)
        .args(["--split", "all", "--json", "--judge"])
        .env_remove("DEDUP_THRESHOLD")
        .env_remove("DEDUP_JUDGE")
        .envs(env.iter().cloned())
        .output()
        .expect("run hikmah dedup --eval --judge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hikmah_dedup_eval_with_judge_asks_it_about_the_in_band_pairs_only() {
    let fake = FakeLlm::start(Script::says("same")).await;
    let file = std::env::temp_dir().join(format!("judge-pairs-{}.jsonl", uuid::Uuid::new_v4()));
    let pair = |a: &str, b: &str, label: &str, class: &str| {
        serde_json::json!({"a": a, "b": b, "label": label, "class": class}).to_string()
    };
    std::fs::write(
        &file,
        [
            // In the band, below the threshold: the rules miss it, the judge finds it.
            pair(PATIENCE, UNLOCKS, "dup", "paraphrase"),
            // A text guard (opposite terms) decides it: the judge is not asked.
            pair(
                "She finds it easy to forgive others.",
                "She finds it hard to forgive others.",
                "distinct",
                "antonym",
            ),
        ]
        .join("\n"),
    )
    .unwrap();

    let out = eval_with_judge(&file, &judge_env(&fake, &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(printed["judge"]["calls"], 1, "{printed}");
    assert_eq!(printed["judge"]["same"], 1, "{printed}");
    assert_eq!(printed["all"]["overall"]["recall"], 1.0, "{printed}");
    assert_eq!(printed["all"]["overall"]["precision"], 1.0, "{printed}");
    assert_eq!(fake.requests().len(), 1);

    // Without DEDUP_JUDGE=llm, --judge says what to set.
    let mut no_judge = judge_env(&fake, &[]);
    no_judge.retain(|(k, _)| k != "DEDUP_JUDGE");
    let out = eval_with_judge(&file, &no_judge);
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DEDUP_JUDGE=llm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
