//! `hikmah serve`: the whole pipeline on one machine, with the code that runs in Lambda.
//!
//! - HTTP: the elaborate function's own axum [`elaborate::router`] through
//!   [`elaborate::serve_http_until`] (plain HTTP/1.1 with `TCP_NODELAY`)
//!   on `127.0.0.1:3000` (`PORT` overrides), so the SSE stream is the real one, chunk by chunk.
//! - Memory: the memory consumer's own [`memory_consumer::handle_batch`], fed
//!   - by default through an in-process queue: the publisher hands each completed elaboration to
//!     a worker that wraps it in a real `SqsEvent` (batches of up to 10, like the event source
//!     mapping) and redelivers the records the handler reports as failed, up to
//!     [`MAX_RECEIVES`] times, then "dead-letters" them to the log with their full body;
//!   - or, when `MEMORY_QUEUE_URL` is set, through that SQS-compatible queue (moto, LocalStack,
//!     or real SQS): elaborate publishes with the SDK and the consumer's [`Poller`] receives,
//!     invokes the handler and deletes the successes, exactly as in AWS.
//!
//! Local defaults (each overridable by the environment): `POOL_MAX_SIZE=4`, `TRUST_BODY_USER_ID=true` (no
//! authorizer here, so the body's `user_id` is the caller; on loopback addresses only, see
//! `local_env`), and the LLM provider is `offline` unless one is configured. Migrations run at start (locally only; in AWS a deploy runs them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use futures::future::BoxFuture;
use memory_consumer::{handle_batch, Consumer, Poller};
use shared::aws::AwsConfig;
use shared::config::{Env, QueueConfig};
use shared::db;
use shared::events::ElaborationCompleted;
use shared::metrics::{MetricsEmitter, MetricsSink};
use shared::publish::{PublishError, Publisher, SqsPublisher};
use tokio::sync::{mpsc, watch};

/// Receives of one record before the in-process queue gives up on it (the template's
/// `maxReceiveCount`).
pub const MAX_RECEIVES: u32 = 5;

/// Most records per batch, as the event source mapping's `BatchSize` in template.yaml.
const BATCH_SIZE: usize = 10;

/// How long the in-process queue waits to fill a batch (the template's batching window is 1 s;
/// locally a short wait keeps the memory visible within a moment).
const BATCHING_WINDOW: Duration = Duration::from_millis(50);

/// Pool size of each function's pool when `POOL_MAX_SIZE` is unset.
const DEFAULT_POOL_SIZE: usize = 4;

/// Most events the in-process queue holds; beyond that a publish fails (`publish_failed`)
/// instead of the runner's memory growing without bound.
pub const QUEUE_CAPACITY: usize = 1_000;

/// How long a stopping runner lets the in-process queue finish what it already accepted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `hikmah serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
    /// Address to listen on; keep the loopback default unless you mean to expose the runner.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
}

/// Serves the elaborate handler and runs the memory consumer locally until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = local_env(std::env::vars().collect(), args.host)?;
    let queue = QueueConfig::optional_from_env(&env)?;

    // Both functions' own composition roots, so what runs here is wired as in Lambda; two pools,
    // as in AWS where each function has its own.
    // Metrics (EMF lines) go to the log here, beside every other line, not to standard output.
    let metrics = |service| -> anyhow::Result<MetricsEmitter> {
        Ok(MetricsEmitter::from_env(&env, service)?.with_sink(MetricsSink::Stderr))
    };
    let consumer = Consumer::from_env(&env)
        .await
        .context(
            "starting the memory consumer (DATABASE_URL, EMBED_MODEL_DIR, ORT_DYLIB_PATH); \
             the README's first command provisions all three",
        )?
        .with_metrics(metrics(memory_consumer::consumer::METRICS_SERVICE)?);
    let report = db::migrate(consumer.db())
        .await
        .context("applying migrations")?;
    for (version, name) in &report.applied {
        tracing::info!(version, name, "migration applied");
    }

    let aws = AwsConfig::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (publisher, queue_label, consumer_task): (Arc<dyn Publisher>, String, _) = match &queue {
        Some(queue) => {
            let client = aws_sdk_sqs::Client::new(aws.get().await);
            let poller = Poller::new(client.clone(), queue.url.clone()).await?;
            let consumer = consumer.clone();
            let mut stop = stop_rx.clone();
            let task = tokio::spawn(async move {
                let handler = |event: SqsEvent| {
                    let consumer = consumer.clone();
                    async move { handle_batch(&consumer, event).await.to_response() }
                };
                let report = poller
                    .run(handler, async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    })
                    .await;
                tracing::info!(?report, "SQS poller stopped");
            });
            let publisher = SqsPublisher::new(client, queue.clone());
            (Arc::new(publisher), format!("SQS {}", queue.url), task)
        }
        None => {
            let (queue, worker) = InProcessQueue::new(consumer.clone(), stop_rx.clone());
            let task = tokio::spawn(worker.run());
            (Arc::new(queue), "in-process".to_owned(), task)
        }
    };
    let state = elaborate::AppState::build(&env, &aws, publisher)
        .await?
        .with_metrics(metrics(elaborate::METRICS_SERVICE)?);
    let elaborate_db = state.db().cloned();
    let model = state.model().to_owned();

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| {
            format!(
                "listening on {}:{} (set PORT to use another port)",
                args.host, args.port
            )
        })?;
    let addr = listener.local_addr()?;
    print_ready(addr, &model, &queue_label);

    elaborate::serve_http_until(listener, state, shutdown_signal())
        .await
        .context("serving HTTP")?;

    tracing::info!("stopping: finishing queued memory work");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, consumer_task)
        .await
        .is_err()
    {
        tracing::warn!(
            "the memory consumer did not finish within {DRAIN_TIMEOUT:?}; pending events are lost"
        );
    }
    if let Some(db) = elaborate_db {
        db.close();
    }
    consumer.db().close();
    Ok(ExitCode::SUCCESS)
}

/// The process environment with the local defaults added where unset.
///
/// `TRUST_BODY_USER_ID` defaults to true only on a loopback address: there no one else can
/// reach the runner. On any other address it would let anyone on the network act as any user,
/// so it defaults to false there, and an explicit `true` is refused.
fn local_env(mut vars: HashMap<String, String>, host: IpAddr) -> anyhow::Result<Env> {
    let trust = vars
        .get("TRUST_BODY_USER_ID")
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    if !host.is_loopback() {
        if matches!(trust.as_deref(), Some("true" | "1" | "yes" | "on")) {
            anyhow::bail!(
                "refusing to serve on {host} with TRUST_BODY_USER_ID=true: anyone who can reach \
                 this address could act as any user. Serve on 127.0.0.1 (the default), or unset \
                 TRUST_BODY_USER_ID (requests then need an authorizer identity, which only AWS \
                 provides)"
            );
        }
        if trust.is_none() {
            tracing::warn!(
                %host,
                "serving on a non-loopback address: TRUST_BODY_USER_ID stays false, so requests \
                 without an authorizer identity are refused (401)"
            );
            vars.insert("TRUST_BODY_USER_ID".to_owned(), "false".to_owned());
        }
    }
    // No authorizer runs locally: on loopback the body's user_id is the caller.
    vars.entry("TRUST_BODY_USER_ID".to_owned())
        .or_insert_with(|| "true".to_owned());
    // One process serves many requests at once here, unlike an elaborate environment.
    vars.entry("POOL_MAX_SIZE".to_owned())
        .or_insert_with(|| DEFAULT_POOL_SIZE.to_string());
    Ok(Env::from_pairs(vars))
}

fn print_ready(addr: SocketAddr, model: &str, queue: &str) {
    let base = format!("http://{addr}");
    println!("hikmah serve: listening on {base} (model: {model}; memory queue: {queue})");
    println!("Stream an elaboration:");
    println!(
        "  curl -N {base}{} -H 'content-type: application/json' \\\n    -d '{{\"user_id\": \"u-123\", \"hikmah\": \"Patience is the key to relief.\"}}'",
        elaborate::ROUTE
    );
    // scripts/run.sh points this at a wrapper that carries the runner's environment.
    let cli = std::env::var("HIKMAH_CLI").unwrap_or_else(|_| "hikmah".to_owned());
    println!("Then see what was remembered (or: {cli} memory list --user u-123):");
    println!("  curl '{base}/hikmah/memory?user_id=u-123'");
    println!("Export it, delete one note, or forget everything:");
    println!("  curl '{base}/hikmah/memory/export?user_id=u-123'");
    println!("  curl -X DELETE '{base}/hikmah/memory/NOTE_ID?user_id=u-123'");
    println!("  curl -X DELETE '{base}/hikmah/memory?user_id=u-123'");
    println!("Stop with Ctrl-C.");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// One message on the in-process queue.
#[derive(Debug, Clone)]
struct Delivery {
    message_id: String,
    body: String,
    receives: u32,
}

/// The default memory queue of `hikmah serve`: accepted events go to a worker task that runs
/// the consumer's handler on real `SqsEvent`s.
#[derive(Debug, Clone)]
pub struct InProcessQueue {
    tx: mpsc::Sender<Delivery>,
}

/// Failed records waiting out their pause before redelivery, by message id.
type Waiting = Arc<std::sync::Mutex<HashMap<String, Delivery>>>;

/// The worker behind [`InProcessQueue`].
pub struct InProcessWorker {
    consumer: Consumer,
    rx: mpsc::Receiver<Delivery>,
    tx: mpsc::Sender<Delivery>,
    stop: watch::Receiver<bool>,
    waiting: Waiting,
}

impl InProcessQueue {
    /// A queue and the worker that drains it into `consumer` until `stop` turns true.
    pub fn new(consumer: Consumer, stop: watch::Receiver<bool>) -> (Self, InProcessWorker) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        (
            Self { tx: tx.clone() },
            InProcessWorker {
                consumer,
                rx,
                tx,
                stop,
                waiting: Waiting::default(),
            },
        )
    }
}

impl Publisher for InProcessQueue {
    fn publish<'a>(
        &'a self,
        event: &'a ElaborationCompleted,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let delivery = Delivery {
                message_id: uuid::Uuid::new_v4().to_string(),
                body: event.to_body(),
                receives: 0,
            };
            self.tx.try_send(delivery).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PublishError::Other(format!(
                    "the in-process memory queue is full ({QUEUE_CAPACITY} events waiting for \
                     the memory consumer)"
                )),
                mpsc::error::TrySendError::Closed(_) => PublishError::Other(
                    "the in-process memory queue is closed (the runner is stopping)".into(),
                ),
            })
        })
    }
}

impl InProcessWorker {
    /// Runs batches until stopped; then finishes what is already queued (not later redeliveries).
    pub async fn run(mut self) {
        loop {
            let first = tokio::select! {
                biased;
                d = self.rx.recv() => d,
                _ = self.stop.wait_for(|stopped| *stopped) => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            let window = tokio::time::sleep(BATCHING_WINDOW);
            tokio::pin!(window);
            while batch.len() < BATCH_SIZE {
                tokio::select! {
                    d = self.rx.recv() => match d {
                        Some(d) => batch.push(d),
                        None => break,
                    },
                    () = &mut window => break,
                }
            }
            self.deliver(batch).await;
        }
        // Stopping: what was accepted before the stop is still applied, and failed records
        // still waiting out their pause get one last attempt now.
        let mut rest = Vec::new();
        while let Ok(d) = self.rx.try_recv() {
            rest.push(d);
        }
        let waiting: Vec<Delivery> = match self.waiting.lock() {
            Ok(mut w) => w.drain().map(|(_, d)| d).collect(),
            Err(_) => Vec::new(),
        };
        if !waiting.is_empty() {
            tracing::warn!(
                records = waiting.len(),
                "stopping: redelivering the failed records now instead of after their pause"
            );
        }
        rest.extend(waiting);
        for chunk in rest.chunks(BATCH_SIZE) {
            let failed = self.deliver_once(chunk.to_vec()).await;
            for d in failed {
                tracing::error!(
                    message_id = d.message_id,
                    receives = d.receives,
                    body = d.body,
                    "not applied: the runner stopped before this event could be applied; \
                     replay the body once the cause is fixed"
                );
            }
        }
    }

    /// Delivers a batch once; returns the records that failed.
    async fn deliver_once(&self, mut batch: Vec<Delivery>) -> Vec<Delivery> {
        for d in &mut batch {
            d.receives += 1;
        }
        let report = handle_batch(&self.consumer, to_sqs_event(&batch)).await;
        let failed: Vec<&str> = report.failures().map(|(id, _)| id).collect();
        batch
            .into_iter()
            .filter(|d| failed.contains(&d.message_id.as_str()))
            .collect()
    }

    async fn deliver(&self, batch: Vec<Delivery>) {
        for d in self.deliver_once(batch).await {
            if d.receives >= MAX_RECEIVES {
                tracing::error!(
                    message_id = d.message_id,
                    receives = d.receives,
                    body = d.body,
                    "dead-lettered: the memory consumer failed this event {MAX_RECEIVES} times; \
                     replay the body once the cause is fixed"
                );
                continue;
            }
            // Like the visibility timeout: try again later, with a growing pause.
            let tx = self.tx.clone();
            let pause = Duration::from_millis(500 * 2u64.pow(d.receives.min(6)));
            tracing::warn!(
                message_id = d.message_id,
                receives = d.receives,
                ?pause,
                "record failed; redelivering"
            );
            let id = d.message_id.clone();
            if let Ok(mut w) = self.waiting.lock() {
                w.insert(id.clone(), d);
            }
            let waiting = self.waiting.clone();
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                // Gone when the worker took it at shutdown.
                let d = waiting.lock().ok().and_then(|mut w| w.remove(&id));
                if let Some(d) = d {
                    let _ = tx.send(d).await;
                }
            });
        }
    }
}

/// The `SqsEvent` Lambda would build for these messages (one local queue ARN).
fn to_sqs_event(batch: &[Delivery]) -> SqsEvent {
    memory_consumer::sqs::event(batch.iter().map(|d| {
        let received = memory_consumer::sqs::Received {
            message_id: d.message_id.clone(),
            receipt_handle: Some(format!("in-process-{}-{}", d.message_id, d.receives)),
            body: d.body.clone(),
            attributes: HashMap::from([(
                "ApproximateReceiveCount".to_owned(),
                d.receives.to_string(),
            )]),
        };
        memory_consumer::sqs::record(
            received,
            "arn:aws:sqs:local:000000000000:hikmah-in-process",
            "local",
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::DbConfig;
    use shared::db::Db;
    use shared::memory::extract::NoteExtractor;
    use shared::memory::plan::{Candidate, KnownNote};
    use shared::memory::service::{MemoryService, TextEmbedder};
    use shared::memory::store::{MemoryStore, PreparedRecord, StoreOutcome};
    use shared::memory::MemoryError;
    use shared::types::{Embedding, UserId};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct NoNotes;
    impl NoteExtractor for NoNotes {
        fn extract(&self, _: &ElaborationCompleted) -> Vec<String> {
            Vec::new()
        }
    }

    struct NoEmbeddings;
    impl TextEmbedder for NoEmbeddings {
        fn embed_texts(
            &self,
            _: Vec<String>,
        ) -> BoxFuture<'_, Result<Vec<Embedding>, MemoryError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    /// Fails its first `failures` calls (as a database that is briefly away), then applies.
    struct Flaky {
        failures: usize,
        calls: AtomicUsize,
        applied: AtomicUsize,
    }
    impl MemoryStore for Flaky {
        fn apply<'a>(
            &'a self,
            _: &'a PreparedRecord,
        ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>> {
            Box::pin(async move {
                if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                    return Err(MemoryError::Db(shared::db::DbError::PoolClosed));
                }
                self.applied.fetch_add(1, Ordering::SeqCst);
                Ok(StoreOutcome::default())
            })
        }

        fn known_notes<'a>(
            &'a self,
            _: &'a UserId,
        ) -> BoxFuture<'a, Result<Vec<KnownNote>, MemoryError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn import<'a>(
            &'a self,
            _: &'a UserId,
            _: &'a [Candidate],
        ) -> BoxFuture<'a, Result<StoreOutcome, MemoryError>> {
            Box::pin(async { Ok(StoreOutcome::default()) })
        }
    }

    async fn consumer(store: Arc<Flaky>) -> anyhow::Result<Consumer> {
        let cfg = DbConfig::from_env(
            &Env::from_pairs([("DATABASE_URL", "postgres://u@127.0.0.1:9/none")]),
            1,
        )?;
        let db = Db::connect_lazy(&cfg).await?;
        let service = MemoryService::new(Arc::new(NoNotes), Arc::new(NoEmbeddings), store);
        Ok(Consumer::new(service, db, 1))
    }

    fn event(i: usize) -> anyhow::Result<ElaborationCompleted> {
        Ok(ElaborationCompleted::new(
            UserId::parse(&format!("u-{i}"))?,
            "Patience.".into(),
            None,
            "text".into(),
            "m".into(),
        ))
    }

    fn flaky(failures: usize) -> Arc<Flaky> {
        Arc::new(Flaky {
            failures,
            calls: AtomicUsize::new(0),
            applied: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn the_in_process_queue_is_bounded_and_a_full_queue_is_a_publish_error(
    ) -> anyhow::Result<()> {
        let (_stop_tx, stop_rx) = watch::channel(false);
        // The worker is not running: nothing drains the queue.
        let (queue, _worker) = InProcessQueue::new(consumer(flaky(0)).await?, stop_rx);
        for i in 0..QUEUE_CAPACITY {
            queue.publish(&event(i)?).await?;
        }
        let err = queue.publish(&event(0)?).await.unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_record_waiting_for_redelivery_at_shutdown_is_tried_once_more_not_dropped(
    ) -> anyhow::Result<()> {
        let store = flaky(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (queue, worker) = InProcessQueue::new(consumer(store.clone()).await?, stop_rx);
        let worker = tokio::spawn(worker.run());
        queue.publish(&event(1)?).await?;
        // The first delivery fails; its redelivery waits a second.
        while store.calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_tx.send(true)?;
        tokio::time::timeout(Duration::from_millis(900), worker).await??;
        assert_eq!(store.applied.load(Ordering::SeqCst), 1);
        Ok(())
    }

    fn env_for(trust: Option<&str>, host: &str) -> anyhow::Result<Env> {
        let mut vars = HashMap::new();
        if let Some(t) = trust {
            vars.insert("TRUST_BODY_USER_ID".to_owned(), t.to_owned());
        }
        local_env(vars, host.parse()?)
    }

    #[test]
    fn the_body_user_id_is_trusted_by_default_only_on_loopback() -> anyhow::Result<()> {
        for host in ["127.0.0.1", "::1"] {
            let env = env_for(None, host)?;
            assert_eq!(
                env.get("TRUST_BODY_USER_ID").as_deref(),
                Some("true"),
                "{host}"
            );
        }
        for host in ["0.0.0.0", "::", "192.168.1.20"] {
            let env = env_for(None, host)?;
            assert_eq!(
                env.get("TRUST_BODY_USER_ID").as_deref(),
                Some("false"),
                "{host}"
            );
            let refused = env_for(Some("true"), host).map(|_| ()).unwrap_err();
            assert!(
                refused.to_string().contains("TRUST_BODY_USER_ID=true"),
                "{refused}"
            );
            let env = env_for(Some("false"), host)?;
            assert_eq!(env.get("TRUST_BODY_USER_ID").as_deref(), Some("false"));
        }
        Ok(())
    }
}
