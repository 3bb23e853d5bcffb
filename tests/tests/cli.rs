//! The `hikmah` command as people and scripts use it: real binary, real database, real model.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use hikmah_tests::bins::bin;
use hikmah_tests::model::embed_config;
use hikmah_tests::pg::TestDb;

/// Runs `hikmah ARGS` with the test database and model files, and no other configuration.
fn hikmah(db: &TestDb, args: &[&str], extra_env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let cfg = embed_config();
    let mut cmd = Command::new(bin("hikmah"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("EMBED_MODEL_DIR", &cfg.model_dir)
        .env("ORT_DYLIB_PATH", &cfg.ort_dylib_path)
        .env("EMBED_THREADS", "1")
        .envs(db.env_pairs())
        .envs(extra_env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn hikmah");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for hikmah")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_doctor_then_passes() {
    let db = TestDb::empty().await;

    let before = hikmah(&db, &["doctor"], &[], None);
    assert!(
        !before.status.success(),
        "doctor must fail before migrations"
    );
    assert!(
        text(&before.stdout).contains("✗ schema version"),
        "{}",
        text(&before.stdout)
    );
    assert!(
        text(&before.stdout).contains("hikmah migrate"),
        "doctor says what to do"
    );

    let first = hikmah(&db, &["migrate"], &[], None);
    assert!(first.status.success(), "migrate: {}", text(&first.stderr));
    let second = hikmah(&db, &["migrate"], &[], None);
    assert!(
        second.status.success(),
        "second migrate: {}",
        text(&second.stderr)
    );
    assert!(
        text(&second.stdout).to_lowercase().contains("up to date"),
        "second migrate applies nothing: {}",
        text(&second.stdout)
    );

    let after = hikmah(&db, &["doctor"], &[], None);
    assert!(
        after.status.success(),
        "doctor: {}{}",
        text(&after.stdout),
        text(&after.stderr)
    );
    assert!(!text(&after.stdout).contains('✗'));
    db.cleanup().await;
}

#[tokio::test]
async fn doctor_reports_missing_model_files_with_the_fix_and_fails() {
    let db = TestDb::new().await;
    let empty = std::env::temp_dir().join(format!("hikmah-no-model-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = hikmah(
        &db,
        &["doctor"],
        &[("EMBED_MODEL_DIR", empty.to_str().unwrap())],
        None,
    );
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("✗ model file"), "{stdout}");
    assert!(stdout.contains("scripts/setup.sh"), "{stdout}");
    assert!(stdout.contains("✓ database reachable"), "{stdout}");
    db.cleanup().await;
}

#[tokio::test]
async fn doctor_names_a_malformed_variable() {
    let db = TestDb::new().await;
    let out = hikmah(&db, &["doctor"], &[("DEDUP_THRESHOLD", "lots")], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("DEDUP_THRESHOLD"),
        "{}",
        text(&out.stdout)
    );
    db.cleanup().await;
}

#[tokio::test]
async fn embed_prints_one_unit_vector_of_384_per_text_from_args_and_from_stdin() {
    let db = TestDb::new().await;
    let from_args = hikmah(
        &db,
        &["embed", "Patience is the key to relief.", "sabr"],
        &[],
        None,
    );
    assert!(from_args.status.success(), "{}", text(&from_args.stderr));
    let from_stdin = hikmah(
        &db,
        &["embed"],
        &[],
        Some("Patience is the key to relief.\nsabr\n"),
    );
    assert!(from_stdin.status.success(), "{}", text(&from_stdin.stderr));

    let parse = |out: &Output| -> Vec<Vec<f32>> {
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Vec<f32>>(l).expect("a JSON array per line"))
            .collect()
    };
    let (a, b) = (parse(&from_args), parse(&from_stdin));
    assert_eq!(a.len(), 2);
    assert_eq!(a, b, "the same texts give the same vectors either way");
    for v in &a {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn a_missing_database_url_is_an_error_naming_it() {
    let db = TestDb::new().await;
    let out = hikmah(&db, &["migrate"], &[("DATABASE_URL", "")], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("DATABASE_URL"),
        "{}",
        text(&out.stderr)
    );
    db.cleanup().await;
}

#[tokio::test]
async fn a_merged_variant_is_listed_split_back_into_a_note_and_forgotten_with_its_note() {
    use shared::events::ElaborationCompleted;
    use shared::memory::dedup::DedupPolicy;
    use shared::memory::service::MemoryService;
    use shared::types::UserId;

    let t = TestDb::new().await;
    let service = MemoryService::postgres(
        t.db().await,
        hikmah_tests::model::embedder(),
        DedupPolicy::default(),
    );
    let user = UserId::parse("u-split").unwrap();
    for text in [
        "Patience is the key to relief.",
        "Relief comes through patience.",
    ] {
        let e = ElaborationCompleted::new(user.clone(), text.into(), None, "e".into(), "m".into());
        service.apply(&e).await.unwrap();
    }

    let list = |t: &TestDb| {
        let out = hikmah(
            t,
            &["memory", "list", "--user", "u-split", "--json"],
            &[],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let notes = list(&t);
    assert_eq!(notes.as_array().unwrap().len(), 1, "{notes}");
    let variants = notes[0]["variants"].as_array().unwrap().clone();
    assert_eq!(variants.len(), 1, "{notes}");
    let v = &variants[0];
    assert_eq!(v["content"], "Relief comes through patience.");
    assert_eq!(v["reason"], "semantic_match");
    assert!(v["cosine"].as_f64().unwrap() >= 0.8, "{v}");
    assert!(v["id"].is_i64() && v["created_at"].is_string(), "{v}");

    // Undo the merge.
    let id = v["id"].to_string();
    let out = hikmah(
        &t,
        &["memory", "split", "--user", "u-split", "--variant", &id],
        &[],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let notes = list(&t);
    let contents: Vec<&str> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 2, "{notes}");
    assert!(
        contents.contains(&"Relief comes through patience."),
        "{notes}"
    );
    assert!(notes
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["variants"] == serde_json::json!([])));
    let admin = t.admin().await;
    let emb_len: i32 = admin
        .query_one(
            "SELECT array_length(embedding, 1) FROM memory_notes WHERE content = 'Relief comes through patience.'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(emb_len, 384, "the split note is embedded");

    // Splitting it again, or another user's variant, is an error naming the variant.
    let out = hikmah(
        &t,
        &["memory", "split", "--user", "u-split", "--variant", &id],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("no variant {id}")),
        "{}",
        text(&out.stderr)
    );

    // Forget takes variants with the notes.
    let e = ElaborationCompleted::new(
        user.clone(),
        "Relief comes with patience.".into(),
        None,
        "e".into(),
        "m".into(),
    );
    service.apply(&e).await.unwrap();
    async fn count(admin: &tokio_postgres::Client) -> i64 {
        admin
            .query_one("SELECT count(*) FROM note_variants", &[])
            .await
            .unwrap()
            .get(0)
    }
    assert!(count(&admin).await >= 1);
    let out = hikmah(&t, &["memory", "forget", "--user", "u-split"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(count(&admin).await, 0);
    drop(service);
    t.cleanup().await;
}

fn note_rows(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test]
async fn memory_import_deduplicates_as_the_consumer_does_and_export_brings_the_notes_back() {
    let db = TestDb::new().await;
    let first = "{\"content\": \"Patience is the key to relief.\"}\n";
    let out = hikmah(
        &db,
        &["memory", "import", "--user", "u-imp"],
        &[],
        Some(first),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Within the import: an exact repeat and a negation (kept: the guard); against the stored
    // note: a case/punctuation variant (reinforces it).
    let input = "{\"content\": \"Charity never decreases wealth.\"}\n\
                 \n\
                 {\"content\": \"charity never decreases wealth\", \"times_seen\": 9}\n\
                 {\"content\": \"Charity decreases wealth.\"}\n\
                 {\"content\": \"PATIENCE is the key to relief\"}\n";
    let out = hikmah(
        &db,
        &["memory", "import", "--user", "u-imp"],
        &[],
        Some(input),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("embedded 4/4"), "progress on stderr: {err}");
    assert!(
        err.contains("2 added, 1 reinforced, 2 duplicate(s)"),
        "{err}"
    );
    assert!(err.contains("notes/s"), "{err}");

    let out = hikmah(&db, &["memory", "export", "--user", "u-imp"], &[], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = note_rows(&out);
    let contents: Vec<&str> = rows
        .iter()
        .map(|r| r["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        [
            "Patience is the key to relief.",
            "Charity never decreases wealth.",
            "Charity decreases wealth."
        ]
    );
    assert_eq!(rows[0]["times_seen"], 2);

    // An export imports as is: the same notes for another user.
    let exported = text(&out.stdout);
    let out = hikmah(
        &db,
        &["memory", "import", "--user", "u-copy"],
        &[],
        Some(&exported),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copy = hikmah(&db, &["memory", "export", "--user", "u-copy"], &[], None);
    let copied: Vec<serde_json::Value> = note_rows(&copy);
    let copied: Vec<&str> = copied
        .iter()
        .map(|r| r["content"].as_str().unwrap())
        .collect();
    assert_eq!(copied, contents);
    db.cleanup().await;
}

#[tokio::test]
async fn a_bad_import_line_is_an_error_naming_it_and_nothing_is_imported() {
    let db = TestDb::new().await;
    let input = "{\"content\": \"Patience is the key to relief.\"}\n\
                 {\"content\": \"Gratitude keeps blessings.\"}\n\
                 {\"content\": \"Charity never decreases wealth.\"\n";
    let out = hikmah(
        &db,
        &["memory", "import", "--user", "u-bad"],
        &[],
        Some(input),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    let export = hikmah(&db, &["memory", "export", "--user", "u-bad"], &[], None);
    assert!(export.status.success());
    assert!(note_rows(&export).is_empty(), "nothing half-imported");
    db.cleanup().await;
}
