//! The built `memory-consumer` binary through the Lambda runtime protocol: served by
//! `cargo lambda watch` (cargo-lambda's emulator), invoked by `cargo lambda invoke --data-file`
//! with an SQS event file.

use hikmah_tests::lambda::LambdaWatch;
use hikmah_tests::model::embed_config;
use hikmah_tests::pg::TestDb;
use hikmah_tests::sqs::{sqs_event_json, STANDARD_ARN};
use shared::events::ElaborationCompleted;

fn event(user: &str, hikmah: &str) -> ElaborationCompleted {
    hikmah_tests::events::event(user, hikmah, None)
}

/// The function's environment: the test database, the model, two records at once.
fn consumer_env(tdb: &TestDb, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let model = embed_config();
    let mut env = tdb.env_pairs();
    env.extend([
        (
            "EMBED_MODEL_DIR".to_owned(),
            model.model_dir.display().to_string(),
        ),
        (
            "ORT_DYLIB_PATH".to_owned(),
            model.ort_dylib_path.display().to_string(),
        ),
        ("POOL_MAX_SIZE".to_owned(), "2".to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// Run against the binary `cargo lambda build --release` makes (scripts/test.sh points
/// `HIKMAH_BIN_DIR` at it for a second run of this module): that build decides the panic strategy
/// from the workspace's release profile, and with `panic = "abort"` (cargo-lambda's default when
/// the workspace does not say) the whole process dies and every record of the batch is retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_record_fails_alone_in_the_binary_under_the_lambda_emulator() {
    let tdb = TestDb::new().await;
    let env = consumer_env(&tdb, &[("HIKMAH_FAULT_INJECTION", "panic-on:BOOM")]);
    let watch = tokio::task::spawn_blocking(move || {
        LambdaWatch::start("memory-consumer", "memory-consumer", &env)
    })
    .await
    .unwrap();
    let records = vec![
        (
            "m-1".to_owned(),
            event("user-a", "Fine wisdom one.").to_body(),
        ),
        ("m-2".to_owned(), event("user-a", "BOOM wisdom.").to_body()),
        (
            "m-3".to_owned(),
            event("user-b", "Fine wisdom two.").to_body(),
        ),
    ];
    let payload = sqs_event_json(&records, STANDARD_ARN);
    let (watch, response) = tokio::task::spawn_blocking(move || {
        let r = watch.try_invoke_json(&payload);
        (watch, r)
    })
    .await
    .unwrap();
    assert_eq!(
        response,
        Ok(serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-2"}]})),
        "emulator log:\n{}",
        watch.log()
    );
    let applied: i64 = tdb
        .admin()
        .await
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 2);
    // The process survived the panic: a second invocation is served by the same environment.
    let payload = sqs_event_json(
        &[(
            "m-4".to_owned(),
            event("user-c", "After the panic.").to_body(),
        )],
        STANDARD_ARN,
    );
    let (watch, response) = tokio::task::spawn_blocking(move || {
        let r = watch.try_invoke_json(&payload);
        (watch, r)
    })
    .await
    .unwrap();
    assert_eq!(
        response,
        Ok(serde_json::json!({"batchItemFailures": []})),
        "{}",
        watch.log()
    );
    assert_eq!(
        watch.log().matches("memory-consumer initialised").count(),
        1,
        "{}",
        watch.log()
    );
    tokio::task::spawn_blocking(move || drop(watch))
        .await
        .unwrap();
    tdb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_under_the_lambda_emulator_reports_exactly_the_failed_records() {
    let tdb = TestDb::new().await;
    let env = consumer_env(&tdb, &[]);
    let watch = tokio::task::spawn_blocking(move || {
        LambdaWatch::start("memory-consumer", "memory-consumer", &env)
    })
    .await
    .unwrap();

    let records = vec![
        (
            "m-1".to_owned(),
            event("user-a", "Patience is the key to relief.").to_body(),
        ),
        ("m-2".to_owned(), "{not json".to_owned()),
        (
            "m-3".to_owned(),
            event("user-b", "Gratitude turns what we have into enough.").to_body(),
        ),
        (
            "m-4".to_owned(),
            event("user-a", "Patience is the key to relief!").to_body(),
        ),
    ];
    let payload = sqs_event_json(&records, STANDARD_ARN);
    let (watch, response) = tokio::task::spawn_blocking(move || {
        let r = watch.invoke_json(&payload);
        (watch, r)
    })
    .await
    .unwrap();

    assert_eq!(
        response,
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-2"}]}),
        "emulator log:\n{}",
        watch.log()
    );
    let admin = tdb.admin().await;
    let applied: i64 = admin
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 3);
    let rows = admin
        .query(
            "SELECT user_id, content, times_seen FROM memory_notes ORDER BY user_id",
            &[],
        )
        .await
        .unwrap();
    let mut rows: Vec<(String, String, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // m-1 and m-4 run concurrently and say the same thing: whichever commits first is the
    // note, the other reinforces it.
    if rows[0].1 == "Patience is the key to relief!" {
        rows[0].1 = "Patience is the key to relief.".into();
    }
    assert_eq!(
        rows,
        vec![
            ("user-a".into(), "Patience is the key to relief.".into(), 2),
            (
                "user-b".into(),
                "Gratitude turns what we have into enough.".into(),
                1
            ),
        ]
    );
    // The init line reports each step's duration.
    assert!(
        watch.log().contains("memory-consumer initialised"),
        "{}",
        watch.log()
    );
    // Every line about a record is a JSON line carrying the invocation's requestId and the
    // record's own span, and the failure says why.
    let log = watch.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect();
    let about = |message: &str, id: &str| {
        lines
            .iter()
            .find(|l| {
                l["message"] == message
                    && l["spans"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["message_id"] == id))
            })
            .unwrap_or_else(|| panic!("no {message:?} line for {id} in:\n{log}"))
    };
    let failed = about("record failed; reported for redelivery", "m-2");
    let spans = failed["spans"].as_array().unwrap();
    assert_eq!(spans[0]["name"], "Lambda runtime invoke", "{failed}");
    assert!(
        spans[0]["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{failed}"
    );
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("malformed message body")),
        "{failed}"
    );
    let applied = about("record applied", "m-3");
    let record = applied["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "record"))
        .unwrap();
    assert_eq!(record["user_id"], "user-b", "{applied}");
    assert!(record["event_id"].as_str().is_some(), "{applied}");

    // A paraphrase in a later invocation is merged losslessly: kept as a variant of the note.
    let paraphrase = "Relief comes through patience.";
    let payload = sqs_event_json(
        &[("m-5".to_owned(), event("user-a", paraphrase).to_body())],
        STANDARD_ARN,
    );
    let (watch, response) = tokio::task::spawn_blocking(move || {
        let r = watch.invoke_json(&payload);
        (watch, r)
    })
    .await
    .unwrap();
    assert_eq!(
        response,
        serde_json::json!({"batchItemFailures": []}),
        "emulator log:\n{}",
        watch.log()
    );
    let variants: Vec<(String, String, i32)> = admin
        .query(
            "SELECT n.user_id, v.content, n.times_seen FROM note_variants v \
             JOIN memory_notes n ON n.id = v.note_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(variants, vec![("user-a".into(), paraphrase.into(), 3)]);
    tokio::task::spawn_blocking(move || drop(watch))
        .await
        .unwrap();
    tdb.cleanup().await;
}
