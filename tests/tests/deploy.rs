//! The deploy half (template.yaml): the sample events are valid Lambda events of the shapes the
//! functions take, and `migrate-on-deploy` speaks the CloudFormation custom-resource protocol
//! against a real PostgreSQL (the ResponseURL is a real HTTP server on 127.0.0.1).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::cloudformation::CloudFormationCustomResourceRequest;
use aws_lambda_events::event::sqs::SqsEvent;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::put;
use hikmah_tests::lambda::LambdaWatch;
use hikmah_tests::pg::TestDb;
use lambda_http::request::LambdaRequest;
use serde_json::Value;
use shared::config::Env;
use shared::db::LATEST_SCHEMA_VERSION;
use shared::events::ElaborationCompleted;
use tokio::sync::mpsc;

fn event_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn the_sample_sqs_batch_is_an_sqs_event_with_exactly_one_poison_record() {
    let batch: SqsEvent = serde_json::from_str(&event_file("sqs-batch.json")).unwrap();
    assert_eq!(batch.records.len(), 3);
    let bad: Vec<_> = batch
        .records
        .iter()
        .filter(|r| ElaborationCompleted::parse(r.body.as_deref().unwrap_or_default()).is_err())
        .map(|r| r.message_id.clone().unwrap_or_default())
        .collect();
    assert_eq!(bad, ["7b6c3c1e-0003-4c4e-9a57-000000000003"]);
}

#[test]
fn the_sample_http_events_are_rest_v1_and_function_url_v2_requests_for_the_stream_route() {
    let rest: LambdaRequest = serde_json::from_str(&event_file("apigw-rest-request.json")).unwrap();
    assert!(
        matches!(rest, LambdaRequest::ApiGatewayV1(_)),
        "apigw-rest-request.json is not a REST (v1) event"
    );
    let url: LambdaRequest =
        serde_json::from_str(&event_file("function-url-request.json")).unwrap();
    assert!(
        matches!(url, LambdaRequest::ApiGatewayV2(_)),
        "function-url-request.json is not a v2 event"
    );
    for request in [rest, url] {
        let request = lambda_http::Request::from(request);
        assert_eq!(request.method(), "POST");
        assert!(
            request.uri().path().ends_with("/hikmah/elaborate/stream"),
            "{}",
            request.uri()
        );
    }
}

#[test]
fn the_sample_cloudformation_event_is_a_custom_resource_create() {
    let request: CloudFormationCustomResourceRequest =
        serde_json::from_str(&event_file("cloudformation-create.json")).unwrap();
    assert!(matches!(
        request,
        CloudFormationCustomResourceRequest::Create(_)
    ));
}

/// A stand-in for the pre-signed S3 URL: records every PUT body.
async fn response_url() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/response",
            put(
                |State(tx): State<mpsc::UnboundedSender<Value>>, body: Bytes| async move {
                    let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/response"), rx)
}

fn request(kind: &str, url: &str) -> CloudFormationCustomResourceRequest {
    let mut v: Value = serde_json::from_str(&event_file("cloudformation-create.json")).unwrap();
    v["RequestType"] = kind.into();
    v["ResponseURL"] = url.into();
    if kind != "Create" {
        v["PhysicalResourceId"] = migrate_on_deploy::PHYSICAL_RESOURCE_ID.into();
    }
    if kind == "Update" {
        v["OldResourceProperties"] = serde_json::json!({});
    }
    serde_json::from_value(v).unwrap()
}

async fn invoke(
    kind: &str,
    env: &Env,
    rx_url: &str,
    rx: &mut mpsc::UnboundedReceiver<Value>,
) -> Value {
    let deadline = SystemTime::now() + Duration::from_secs(60);
    let http = reqwest::Client::new();
    migrate_on_deploy::handle(request(kind, rx_url), deadline, env, &http)
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn migrate_on_deploy_migrates_on_create_and_update_keeps_data_on_delete_and_always_answers() {
    let db = TestDb::empty().await;
    let (url, mut rx) = response_url().await;

    let created = invoke("Create", &db.env(), &url, &mut rx).await;
    assert_eq!(created["Status"], "SUCCESS", "{created}");
    assert_eq!(
        created["PhysicalResourceId"],
        migrate_on_deploy::PHYSICAL_RESOURCE_ID
    );
    assert_eq!(created["LogicalResourceId"], "DatabaseMigrations");
    assert_eq!(
        created["Data"]["SchemaVersion"],
        LATEST_SCHEMA_VERSION.to_string()
    );
    assert_ne!(created["Data"]["Applied"], "none");

    let updated = invoke("Update", &db.env(), &url, &mut rx).await;
    assert_eq!(updated["Status"], "SUCCESS", "{updated}");
    assert_eq!(
        updated["Data"]["Applied"], "none",
        "a second run applies nothing"
    );

    let deleted = invoke("Delete", &db.env(), &url, &mut rx).await;
    assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
    let admin = db.admin().await;
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'memory_notes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "a stack delete must not drop the data");
    drop(admin);
    db.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_database_is_reported_as_failed_with_the_reason_well_before_the_deadline() {
    let (url, mut rx) = response_url().await;
    // A port nothing listens on: connection refused, quickly.
    let env = Env::from_pairs(HashMap::from([
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:9/none"),
        ("DB_CONNECT_TIMEOUT_MS", "500"),
    ]));
    let started = std::time::Instant::now();
    let failed = invoke("Create", &env, &url, &mut rx).await;
    assert_eq!(failed["Status"], "FAILED", "{failed}");
    let reason = failed["Reason"].as_str().unwrap();
    assert!(
        reason.contains("127.0.0.1:9"),
        "the reason names the database: {reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn migrate_on_deploy_answers_cloudformation_through_the_lambda_runtime_protocol() {
    let db = TestDb::empty().await;
    let (url, mut rx) = response_url().await;
    let env = db.env_pairs();
    let watch = tokio::task::spawn_blocking(move || {
        LambdaWatch::start("migrate-on-deploy", "migrate-on-deploy", &env)
    })
    .await
    .unwrap();
    let payload = serde_json::to_string(&request("Create", &url)).unwrap();
    let watch = std::sync::Arc::new(watch);
    let invoked = {
        let watch = watch.clone();
        tokio::task::spawn_blocking(move || watch.invoke_json(&payload))
            .await
            .unwrap()
    };
    assert_eq!(
        invoked,
        Value::Null,
        "the function answers CloudFormation, not its caller"
    );
    let reply = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no PUT to the ResponseURL; emulator log:\n{}", watch.log()))
        .unwrap();
    assert_eq!(reply["Status"], "SUCCESS", "{reply}\n{}", watch.log());
    assert_eq!(
        reply["Data"]["SchemaVersion"],
        LATEST_SCHEMA_VERSION.to_string()
    );
    drop(watch);
    db.cleanup().await;
}

#[tokio::test]
async fn a_panic_during_migrations_is_answered_as_failed_not_left_unanswered() {
    let (url, mut rx) = response_url().await;
    let deadline = SystemTime::now() + Duration::from_secs(60);
    let http = reqwest::Client::new();
    migrate_on_deploy::handle_with(request("Create", &url), deadline, &http, |_| async {
        if std::hint::black_box(true) {
            panic!("a bug in a migration step");
        }
        Ok(HashMap::new())
    })
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["Status"], "FAILED", "{reply}");
    let reason = reply["Reason"].as_str().unwrap();
    assert!(reason.contains("a bug in a migration step"), "{reason}");
}

#[tokio::test]
async fn a_migration_blocked_by_a_lock_is_abandoned_by_the_server_before_cloudformation_hears_failed(
) {
    let db = TestDb::new().await;
    // Another session holds the migrators' lock (as a stuck migrator or a long DDL would hold a
    // table lock) and does not let go.
    let blocker = db.admin().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&shared::db::MIGRATION_LOCK_KEY],
        )
        .await
        .unwrap();
    let blocker_pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let (url, mut rx) = response_url().await;
    // 10 s left: the function allows the migrations half of it and then reports FAILED.
    let deadline = SystemTime::now() + Duration::from_secs(10);
    let http = reqwest::Client::new();
    migrate_on_deploy::handle(request("Update", &url), deadline, &db.env(), &http)
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["Status"], "FAILED", "{reply}");

    // CloudFormation has been told: nothing of the migrator may still be waiting on the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = db.admin().await;
    let waiting: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> $1 AND wait_event_type = 'Lock'",
            &[&blocker_pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        waiting, 0,
        "a migrator session is still queued for a lock after FAILED was sent"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
    drop((blocker, admin));
    db.cleanup().await;
}

/// The `Default:` of a template parameter, read from template.yaml's text.
fn template_default(parameter: &str) -> String {
    let template =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"))
            .unwrap();
    let block = template
        .split_once(&format!("\n  {parameter}:\n"))
        .unwrap_or_else(|| panic!("no parameter {parameter}"))
        .1;
    block
        .lines()
        .take_while(|l| l.starts_with("    "))
        .find_map(|l| l.trim().strip_prefix("Default:"))
        .unwrap_or_else(|| panic!("{parameter} has no Default"))
        .trim()
        .trim_matches('"')
        .to_owned()
}

#[test]
fn the_default_connection_budget_is_bounded_for_both_functions() {
    let consumer: u32 = template_default("ConsumerMaxConcurrency").parse().unwrap();
    let pool: u32 = template_default("PoolSize").parse().unwrap();
    let elaborate: u32 = template_default("ElaborateReservedConcurrency")
        .parse()
        .unwrap();
    assert!(
        elaborate > 0,
        "elaborate's concurrency (hence connections) is unbounded by default"
    );
    let total = consumer * pool + elaborate + 1;
    assert!(total <= 25, "{total} connections by default");
    let deploy = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy.md"),
    )
    .unwrap();
    assert!(
        deploy.contains(&format!("= {total} with the defaults")),
        "docs/deploy.md states the default budget"
    );
}
