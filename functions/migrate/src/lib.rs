//! `migrate-on-deploy`: applies the embedded SQL migrations ([`shared::db::migrate`]) when
//! CloudFormation creates or updates the stack, and answers the custom-resource protocol.
//!
//! The protocol: CloudFormation invokes the function (asynchronously) with a request naming a
//! pre-signed S3 `ResponseURL`; the function must PUT a JSON result there, `SUCCESS` or `FAILED`
//! with a reason. Without that PUT the stack waits for the resource's `ServiceTimeout`, so every
//! path here ends in a PUT: a configuration error, an unreachable database, a failed migration
//! and a migration still running near the Lambda deadline all become `FAILED` with a reason the
//! operator can act on. A delete does nothing: data outlives the stack.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::cloudformation::{
    CloudFormationCustomResourceRequest as Request,
    CloudFormationCustomResourceResponse as Response,
    CloudFormationCustomResourceResponseStatus as Status,
};
use shared::config::{DbConfig, Env};
use shared::db::{self, Db};

/// The physical id of the one migrations resource; stable, so an update never replaces it.
pub const PHYSICAL_RESOURCE_ID: &str = "hikmah-database-migrations";

/// Time kept back from the Lambda deadline to send the response after a slow migration.
pub const RESPONSE_MARGIN: Duration = Duration::from_secs(15);

/// Time allowed to the migrations when the invocation carries no usable deadline.
pub const FALLBACK_BUDGET: Duration = Duration::from_secs(60);

/// How long the migrations may take: the time left before the Lambda deadline minus
/// [`RESPONSE_MARGIN`] for the reply (half the time left when that is short). A deadline already
/// past cannot come from Lambda itself (the function would have been stopped), only from an
/// emulator that does not set it (cargo lambda's): then [`FALLBACK_BUDGET`].
pub fn migration_budget(deadline: SystemTime, now: SystemTime) -> Duration {
    match deadline.duration_since(now) {
        Ok(left) if left > RESPONSE_MARGIN * 2 => left - RESPONSE_MARGIN,
        Ok(left) if !left.is_zero() => left / 2,
        _ => {
            tracing::warn!(
                "the invocation deadline is already past (an emulator?); allowing {FALLBACK_BUDGET:?}"
            );
            FALLBACK_BUDGET
        }
    }
}

/// How much sooner than the client the server aborts a migration statement (see
/// [`run_migrations`]).
pub const SERVER_TIMEOUT_MARGIN: Duration = Duration::from_secs(3);

/// Longest reason sent back (the whole response must stay under CloudFormation's 4 KiB).
const MAX_REASON_CHARS: usize = 1_000;

/// The response could not be delivered to CloudFormation.
#[derive(Debug, thiserror::Error)]
#[error(
    "could not deliver the {status} response to CloudFormation after {attempts} attempts: {detail}"
)]
pub struct RespondError {
    /// `SUCCESS` or `FAILED`: what CloudFormation did not hear.
    pub status: &'static str,
    /// How many PUTs were tried.
    pub attempts: u32,
    /// The last failure.
    pub detail: String,
}

/// What a request asks for, with the fields every response echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// `Create`, `Update` or `Delete`.
    pub kind: &'static str,
    /// Pre-signed S3 URL the result is PUT to.
    pub response_url: String,
    /// Echoed back.
    pub stack_id: String,
    /// Echoed back.
    pub request_id: String,
    /// Echoed back.
    pub logical_resource_id: String,
    /// The id CloudFormation knows the resource by (ours, after the first create).
    pub physical_resource_id: String,
}

impl RequestInfo {
    /// Extracts the echoed fields from a request.
    pub fn of(request: &Request) -> RequestInfo {
        let (kind, url, stack, req, logical, physical) = match request {
            Request::Create(r) => (
                "Create",
                &r.response_url,
                &r.stack_id,
                &r.request_id,
                &r.logical_resource_id,
                None,
            ),
            Request::Update(r) => (
                "Update",
                &r.response_url,
                &r.stack_id,
                &r.request_id,
                &r.logical_resource_id,
                Some(&r.physical_resource_id),
            ),
            Request::Delete(r) => (
                "Delete",
                &r.response_url,
                &r.stack_id,
                &r.request_id,
                &r.logical_resource_id,
                Some(&r.physical_resource_id),
            ),
            // The enum is non-exhaustive; a future request type is answered like a delete (no-op).
            #[allow(unreachable_patterns)]
            _ => (
                "Unknown",
                &String::new(),
                &String::new(),
                &String::new(),
                &String::new(),
                None,
            ),
        };
        RequestInfo {
            kind,
            response_url: url.clone(),
            stack_id: stack.clone(),
            request_id: req.clone(),
            logical_resource_id: logical.clone(),
            physical_resource_id: physical
                .cloned()
                .unwrap_or_else(|| PHYSICAL_RESOURCE_ID.to_owned()),
        }
    }
}

/// Handles one custom-resource request: migrate on create/update, nothing on delete, then PUT
/// the result. Returns an error only when CloudFormation could not be told (so Lambda's retry
/// of the asynchronous invocation gets another chance to tell it).
pub async fn handle(
    request: Request,
    deadline: SystemTime,
    env: &Env,
    http: &reqwest::Client,
) -> Result<(), RespondError> {
    let env = env.clone();
    handle_with(request, deadline, http, move |budget| async move {
        run_migrations(&env, budget).await
    })
    .await
}

/// [`handle`] with the work of a create or update given as `work(budget)`. The work runs on
/// its own task, so a panic in it (a bug, or a dependency's) still becomes a `FAILED` response
/// instead of an invocation that ends without one (CloudFormation would wait for the
/// resource's `ServiceTimeout`).
pub async fn handle_with<W, Fut>(
    request: Request,
    deadline: SystemTime,
    http: &reqwest::Client,
    work: W,
) -> Result<(), RespondError>
where
    W: FnOnce(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<HashMap<String, String>, String>> + Send + 'static,
{
    let info = RequestInfo::of(&request);
    let budget = migration_budget(deadline, SystemTime::now());
    tracing::info!(
        request = info.kind,
        stack = info.stack_id,
        budget_ms = budget.as_millis() as u64,
        "custom resource request"
    );
    let outcome = match info.kind {
        "Create" | "Update" => match tokio::spawn(work(budget)).await {
            Ok(outcome) => outcome,
            Err(join) => Err(if join.is_panic() {
                format!(
                    "the migration code panicked ({}): nothing was committed; this is a bug, \
                     report it with the function's logs",
                    shared::error::panic_message(&*join.into_panic())
                )
            } else {
                "the migration task was cancelled (the function is shutting down)".to_owned()
            }),
        },
        _ => Ok(HashMap::from([(
            "Skipped".to_owned(),
            "delete keeps the database as it is".to_owned(),
        )])),
    };
    match &outcome {
        Ok(data) => tracing::info!(request = info.kind, ?data, "migrations done"),
        Err(reason) => tracing::error!(request = info.kind, %reason, "migrations failed"),
    }
    respond(http, &info, outcome).await
}

/// Connects with the function's configuration and applies pending migrations within `budget`.
pub async fn run_migrations(
    env: &Env,
    budget: Duration,
) -> Result<HashMap<String, String>, String> {
    let started = std::time::Instant::now();
    let work = async {
        let cfg = DbConfig::from_env(env, 1).map_err(|e| e.to_string())?;
        let db = Db::connect(&cfg).await.map_err(|e| e.to_string())?;
        // The server gives up on a blocked statement before this function gives up on the
        // server: otherwise a DDL waiting for a lock would keep queueing every query on its table
        // behind it after CloudFormation was told FAILED.
        let server_budget = budget.saturating_sub(started.elapsed() + SERVER_TIMEOUT_MARGIN);
        let report = db::migrate_within(&db, server_budget)
            .await
            .map_err(|e| e.to_string());
        db.close();
        let report = report?;
        let applied: Vec<String> = report
            .applied
            .iter()
            .map(|(v, name)| format!("{v}_{name}"))
            .collect();
        Ok(HashMap::from([
            ("SchemaVersion".to_owned(), report.version.to_string()),
            (
                "Applied".to_owned(),
                if applied.is_empty() {
                    "none".to_owned()
                } else {
                    applied.join(",")
                },
            ),
        ]))
    };
    tokio::time::timeout(budget, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
            "migrations did not finish within {}s (the function's timeout minus {}s to report): \
             the migration transaction is rolled back; check for long-held locks on the tables, \
             then redeploy",
            budget.as_secs(),
            RESPONSE_MARGIN.as_secs()
        ))
        })
}

/// The JSON body CloudFormation expects at the response URL.
pub fn response_body(
    info: &RequestInfo,
    outcome: Result<HashMap<String, String>, String>,
) -> Response {
    let mut response = Response::default();
    match outcome {
        Ok(data) => {
            response.status = Status::Success;
            response.data = data;
        }
        Err(reason) => {
            response.status = Status::Failed;
            let mut reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
            reason.push_str(" (see the migrate function's CloudWatch logs)");
            response.reason = Some(reason);
        }
    }
    response.physical_resource_id = info.physical_resource_id.clone();
    response.stack_id = info.stack_id.clone();
    response.request_id = info.request_id.clone();
    response.logical_resource_id = info.logical_resource_id.clone();
    response
}

/// PUTs the result to the pre-signed URL, retrying transient failures a few times.
pub async fn respond(
    http: &reqwest::Client,
    info: &RequestInfo,
    outcome: Result<HashMap<String, String>, String>,
) -> Result<(), RespondError> {
    let response = response_body(info, outcome);
    let status = match response.status {
        Status::Success => "SUCCESS",
        _ => "FAILED",
    };
    let fail = |attempts, detail: String| RespondError {
        status,
        attempts,
        detail,
    };
    let body = serde_json::to_vec(&response)
        .map_err(|e| fail(0, format!("cannot encode the response: {e}")))?;
    const ATTEMPTS: u32 = 3;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        // The URL is signed without a content type: send an empty one, as cfn-response does.
        let sent = http
            .put(&info.response_url)
            .header(reqwest::header::CONTENT_TYPE, "")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(attempt, error = %last, "response PUT failed");
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
    }
    Err(fail(ATTEMPTS, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str) -> Result<Request, Box<dyn std::error::Error>> {
        let physical = if kind == "Create" {
            ""
        } else {
            r#","PhysicalResourceId":"hikmah-database-migrations""#
        };
        let old = if kind == "Update" {
            r#","OldResourceProperties":{}"#
        } else {
            ""
        };
        Ok(serde_json::from_str(&format!(
            r#"{{"RequestType":"{kind}","ServiceToken":"arn:aws:lambda:us-east-1:123456789012:function:m",
                "ResponseURL":"http://127.0.0.1:1/r","StackId":"arn:aws:cloudformation:us-east-1:123456789012:stack/s/1",
                "RequestId":"req-1","ResourceType":"Custom::DatabaseMigrations","LogicalResourceId":"DatabaseMigrations",
                "ResourceProperties":{{"ServiceToken":"x","CodeVersion":"3"}}{physical}{old}}}"#
        ))?)
    }

    #[test]
    fn every_request_type_keeps_the_same_physical_id() -> Result<(), Box<dyn std::error::Error>> {
        for kind in ["Create", "Update", "Delete"] {
            let info = RequestInfo::of(&request(kind)?);
            assert_eq!(info.kind, kind);
            assert_eq!(info.physical_resource_id, PHYSICAL_RESOURCE_ID);
            assert_eq!(info.request_id, "req-1");
        }
        Ok(())
    }

    #[test]
    fn a_failure_is_reported_with_a_bounded_reason_and_the_echoed_ids(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let info = RequestInfo::of(&request("Create")?);
        let body = serde_json::to_value(response_body(&info, Err("x".repeat(10_000))))?;
        assert_eq!(body["Status"], "FAILED");
        assert_eq!(body["LogicalResourceId"], "DatabaseMigrations");
        assert_eq!(
            body["StackId"],
            "arn:aws:cloudformation:us-east-1:123456789012:stack/s/1"
        );
        assert!(body["Reason"].as_str().ok_or("no Reason")?.len() < 1_100);
        Ok(())
    }

    #[test]
    fn the_budget_leaves_time_to_reply_before_the_deadline() {
        let now = SystemTime::now();
        let budget = |secs| migration_budget(now + Duration::from_secs(secs), now);
        assert_eq!(budget(300), Duration::from_secs(285));
        assert_eq!(budget(20), Duration::from_secs(10));
        assert_eq!(
            migration_budget(now - Duration::from_secs(1), now),
            FALLBACK_BUDGET
        );
    }

    #[tokio::test]
    async fn a_configuration_error_becomes_a_failed_migration_not_a_hang() {
        let outcome = run_migrations(&Env::from_pairs([("X", "1")]), Duration::from_secs(5)).await;
        assert!(outcome.unwrap_err().contains("DATABASE_URL"));
    }
}
